"""Reader of VTK XML image data (``.vti``) label maps, without VTK.

The backend may not import VTK (Slicer's own copy must stay untouched, and SimpleITK does not read ``.vti``), and
the format is small: an XML header and one inline ``binary`` data array, base64-encoded, optionally compressed in
zlib blocks. This reads the single-scalar ImageData files that ship real label maps (pyvista's frog tissues).
"""

from __future__ import annotations

import base64
import math
import xml.etree.ElementTree as ElementTree
import zlib
from pathlib import Path

import numpy as np

from ..volume import Geometry

VTK_TYPES = {
    "Int8": np.int8,
    "UInt8": np.uint8,
    "Int16": np.int16,
    "UInt16": np.uint16,
    "Int32": np.int32,
    "UInt32": np.uint32,
    "Int64": np.int64,
    "UInt64": np.uint64,
    "Float32": np.float32,
    "Float64": np.float64,
}


def _decode_binary(text: str, header_type: np.dtype, compressed: bool) -> bytes:
    """The raw bytes of an inline ``format="binary"`` array (VTK's base64 layout: the header, then the data)."""
    text = "".join(text.split())
    header_size = np.dtype(header_type).itemsize
    if not compressed:  # one base64 run: [byte count][data]
        raw = base64.b64decode(text)
        count = int(np.frombuffer(raw[:header_size], header_type)[0])
        return raw[header_size : header_size + count]
    # compressed: header [blocks, block size, last block size, compressed size of each block], encoded on its own
    first = base64.b64decode(text[: 4 * math.ceil(header_size / 3)])
    blocks = int(np.frombuffer(first[:header_size], header_type)[0])
    header_chars = 4 * math.ceil((3 + blocks) * header_size / 3)
    header = np.frombuffer(base64.b64decode(text[:header_chars]), header_type)[: 3 + blocks]
    data = base64.b64decode(text[header_chars:])
    sizes = np.cumsum(np.concatenate([[0], header[3:]])).astype(int)
    return b"".join(zlib.decompress(data[sizes[n] : sizes[n + 1]]) for n in range(blocks))


def read_vti(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """The point scalars of a ``.vti`` file as a KJI array (K = z), and its grid.

    Raises:
        ValueError: not ImageData, appended or ASCII data, or a byte order other than little endian.
    """
    path = Path(path)
    root = ElementTree.parse(path).getroot()
    if root.get("type") != "ImageData":
        raise ValueError(f"{path}: not a VTK ImageData file (type {root.get('type')!r}).")
    if root.get("byte_order", "LittleEndian") != "LittleEndian":
        raise ValueError(f"{path}: big-endian .vti files are not supported.")
    image = root.find("ImageData")
    array = image.find("Piece/PointData/DataArray")
    if array is None or array.get("format") != "binary" or int(array.get("NumberOfComponents", "1")) != 1:
        raise ValueError(f"{path}: only one inline binary scalar array is supported.")
    extent = [int(v) for v in image.get("WholeExtent").split()]
    shape_xyz = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    header_type = np.uint64 if root.get("header_type") == "UInt64" else np.uint32
    raw = _decode_binary(array.text or "", header_type, root.get("compressor") is not None)
    values = np.frombuffer(raw, VTK_TYPES[array.get("type")]).reshape(shape_xyz[::-1])  # x varies fastest
    spacing = tuple(float(v) for v in image.get("Spacing", "1 1 1").split())
    origin = tuple(float(v) for v in image.get("Origin", "0 0 0").split())
    direction = tuple(float(v) for v in image.get("Direction", "1 0 0 0 1 0 0 0 1").split())
    return values.copy(), Geometry(values.shape, spacing=spacing, origin=origin, direction=direction)
