"""Segmentations from and to files: Slicer's ``.seg.nrrd`` (through ``slicerio``) and plain label maps.

In memory a segmentation is ``label_layers`` of shape (L, K, J, I) plus a :class:`Segment` per structure, as
Slicer stores it: each segment is a label value in one layer, and segments overlap only across layers.
A ``.seg.nrrd`` keeps segment names, IDs, colours, label values, layers, tags and geometry; a label map file
(``.nrrd``, ``.nii.gz``, ...) keeps label values and geometry and can hold one layer only.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..annotation_record import SliceRecord
from ..files import atomic_path
from ..volume import Geometry, GeometryMismatchError, Segment, check_label_dtype
from .dicom import DicomSeries
from .images import file_suffix, geometry_of, read_sitk_image, require_file, to_sitk_image

SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha")
SEGMENT_TAG_FORBIDDEN = "|"  # separates tags in the .seg.nrrd header


@dataclass
class Segmentation:
    """Segments on a voxel grid.

    Attributes:
        label_layers: shape (L, K, J, I), integer label values.
        segments: one entry per structure (label value + layer).
        geometry: the voxel grid of ``label_layers``.
        referenced_series_uid: the DICOM series a DICOM-SEG segments (None for other files).
    """

    label_layers: np.ndarray
    segments: tuple[Segment, ...]
    geometry: Geometry
    referenced_series_uid: str | None = None

    def __post_init__(self):
        if self.label_layers.ndim == 3:
            self.label_layers = self.label_layers[np.newaxis]
        check_label_dtype(self.label_layers)
        self.segments = tuple(self.segments)
        names = [segment.name for segment in self.segments]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            where = "; ".join(
                f"{name!r}: "
                + ", ".join(f"label {s.label_value} (layer {s.layer})" for s in self.segments if s.name == name)
                for name in repeated
            )
            raise ValueError(
                f"Several segments share a name ({where}); segments are chosen by name, so rename them (Slicer's "
                "Segment Editor, or the label names of the label map) until every name is unique."
            )

    def label_map(self) -> np.ndarray:
        """The single label map (K, J, I); raises ValueError when segments overlap (several layers)."""
        if self.label_layers.shape[0] != 1:
            raise ValueError(
                f"The segmentation has {self.label_layers.shape[0]} layers of overlapping segments, which one "
                "label map cannot hold. Write it as .seg.nrrd, or remove the overlaps first."
            )
        return self.label_layers[0]


def default_color(index: int) -> tuple[float, float, float]:
    """A distinct, saturated RGB colour for the ``index``-th segment (golden-ratio hue steps)."""
    return colorsys.hsv_to_rgb((0.13 + index * 0.618034) % 1.0, 0.75, 0.95)


def segment_color(segments: Sequence[Segment], index: int) -> tuple[float, float, float]:
    color = segments[index].color
    return tuple(color) if color is not None else default_color(index)  # type: ignore[return-value]


def is_seg_nrrd(path: str | Path) -> bool:
    """True for a Slicer segmentation file (by suffix, or a .nrrd whose header has Segment fields)."""
    suffix = file_suffix(path)
    if suffix == ".seg.nrrd":
        return True
    if suffix != ".nrrd":
        return False
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception:  # not a readable NRRD header: the image reader will report it
        return False
    return any(key.startswith("Segment0_") for key in header)


def read_segmentation(path: str | Path, segment_names: dict[int, str] | None = None) -> Segmentation:
    """Read a ``.seg.nrrd``, a DICOM-SEG or a label map file.

    Args:
        path: ``.seg.nrrd`` (segments with names, colours, layers, tags), a DICOM-SEG (``.dcm``; on the grid its
            frames span, see :func:`~spatial_al.io.dicom_seg.read_dicom_seg`) or a label map (.nrrd, .nii.gz, ...),
            whose non-zero values each become a segment.
        segment_names: names of label values for label map files (e.g. from an MSD dataset.json).

    Raises:
        FileNotFoundError, ValueError: missing or unreadable file, or not a label map.
    """
    path = require_file(path, "segmentation")
    if is_seg_nrrd(path):
        return _read_seg_nrrd(path)
    from .dicom_seg import is_dicom_seg, read_dicom_seg

    if is_dicom_seg(path):
        return read_dicom_seg(path)
    image = read_sitk_image(path, "segmentation")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"The segmentation {str(path)!r} is not a 3D label map (size {image.GetSize()}).")
    labels = sitk.GetArrayFromImage(image)
    try:
        check_label_dtype(labels)
    except ValueError as error:
        raise ValueError(f"{error} (file {str(path)!r})") from None
    values = sorted(set(np.unique(labels).tolist()) - {0})
    names = segment_names or {}
    segments = tuple(
        Segment(name=names.get(int(v), f"Segment_{int(v)}"), label_value=int(v), color=default_color(n))
        for n, v in enumerate(values)
    )
    return Segmentation(labels, segments, geometry_of(image))


SEGMENT_FIELD = re.compile(r"^Segment(\d+)_(\w+)$")
NUMERIC_SEGMENT_FIELDS = ("LabelValue", "Layer", "Color", "Extent")


def check_segment_fields(header: dict, path: Path) -> None:
    """Raise ValueError naming the field, its value and the fix when a ``.seg.nrrd`` header's ``SegmentN_...`` fields
    cannot describe its voxels: a label value or layer that is not a whole number, a layer the file does not hold, a
    colour that is not three numbers, an extent that is not six whole numbers, a segment without an ID.

    Args:
        header: the NRRD header (pynrrd's ``read_header``); a 4D file holds ``sizes[0]`` layers, a 3D file one.
        path: the file, for the message.
    """
    layers = int(header["sizes"][0]) if int(header.get("dimension", 3)) == 4 else 1
    fields: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        match = SEGMENT_FIELD.match(key)
        if match:
            fields.setdefault(int(match[1]), {})[match[2]] = str(value).strip()

    def damaged(index: int, field: str, expected: str) -> ValueError:
        value = fields[index].get(field)
        found = "missing" if value is None else f"{value!r}"
        return ValueError(
            f"The segmentation {str(path)!r} has a damaged header: Segment{index}_{field} is {found}, where "
            f"{expected} is expected. Open it in Slicer and save it again, or correct that line of the header."
        )

    for index, segment in sorted(fields.items()):
        if not segment.get("ID"):
            raise damaged(index, "ID", "the segment's identifier")
        numbers = {name: value.split() for name, value in segment.items() if name in NUMERIC_SEGMENT_FIELDS}
        if "LabelValue" in numbers and not (len(numbers["LabelValue"]) == 1 and numbers["LabelValue"][0].isdigit()):
            raise damaged(index, "LabelValue", "a whole number of at least 1")
        if "Layer" in numbers:
            layer = numbers["Layer"]
            if not (len(layer) == 1 and layer[0].isdigit() and int(layer[0]) < layers):
                raise damaged(index, "Layer", f"a layer index from 0 to {layers - 1} (the file holds {layers})")
        if "Color" in numbers and not (len(numbers["Color"]) == 3 and all(map(_is_number, numbers["Color"]))):
            raise damaged(index, "Color", "three numbers (red green blue, 0 to 1)")
        if "Extent" in numbers and not (
            len(numbers["Extent"]) == 6 and all(v.lstrip("-").isdigit() for v in numbers["Extent"])
        ):
            raise damaged(index, "Extent", "six whole numbers")


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


def _read_seg_nrrd(path: Path) -> Segmentation:
    import nrrd
    import slicerio

    if path.stat().st_size == 0:
        raise ValueError(f"The segmentation {str(path)!r} is an empty file (0 bytes); write it again from Slicer.")
    try:
        header = nrrd.read_header(str(path))
    except Exception as error:  # pynrrd raises several types
        cause = str(error).strip() or type(error).__name__
        raise ValueError(f"Could not read the segmentation {str(path)!r}: {cause}.") from None
    check_segment_fields(header, path)
    try:
        data = slicerio.read_segmentation(str(path))
    except Exception as error:  # slicerio and pynrrd raise several types
        cause = str(error).strip() or type(error).__name__
        raise ValueError(f"Could not read the segmentation {str(path)!r}: {cause}.") from None
    voxels = np.asarray(data["voxels"])  # slicerio: (I, J, K) or (L, I, J, K)
    layers_ijk = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    label_layers = np.ascontiguousarray(layers_ijk.transpose(0, 3, 2, 1))
    geometry = Geometry.from_ijk_to_lps(data["ijkToLPS"], label_layers.shape[1:])
    segments = tuple(
        Segment(
            name=info.get("name", info["id"]),
            label_value=int(info.get("labelValue", 1)),
            layer=int(info.get("layer", 0)),
            color=tuple(info["color"]) if "color" in info else None,
            segment_id=info["id"],
            tags=dict(info.get("tags", {})),
        )
        for info in data.get("segments", [])
    )
    for segment in segments:  # a damaged slice record is named now, not when a command misreads it
        record = SliceRecord.from_tags(segment.tags, segment.name)
        if record is not None:
            record.check_range(label_layers.shape[1 + record.slice_axis], segment.name)
    return Segmentation(label_layers, segments, geometry)


def write_segmentation(path: str | Path, segmentation: Segmentation, source: DicomSeries | None = None) -> Path:
    """Write ``.seg.nrrd`` (all metadata), a DICOM-SEG (``.dcm``) or a label map file (``.nrrd``, ``.nii.gz``,
    ``.nii``, ``.mha``), atomically (an interrupted write leaves the previous file, never a partial one).

    A label map keeps the label values; it cannot hold overlapping segments (ValueError then). A DICOM-SEG
    references the series ``source`` the segmentation was drawn on (required for ``.dcm``).
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix == ".dcm":
        if source is None:
            raise ValueError(
                f"Cannot write the DICOM-SEG {str(path)!r}: a DICOM-SEG references the DICOM series it segments, "
                "and the image was not read from one. Give the image as its DICOM folder, or write .seg.nrrd."
            )
        from .dicom_seg import write_dicom_seg

        return write_dicom_seg(path, segmentation, source)
    if suffix not in SEGMENTATION_SUFFIXES:
        raise ValueError(
            f"Cannot write a segmentation to {str(path)!r}: use {', '.join(SEGMENTATION_SUFFIXES)} or .dcm (DICOM-SEG)."
        )
    with atomic_path(path) as temporary:
        if suffix == ".seg.nrrd":
            _write_seg_nrrd(temporary, segmentation)
        else:
            label_map = to_sitk_image(segmentation.label_map(), segmentation.geometry)
            sitk.WriteImage(label_map, str(temporary), useCompression=True)
    return path


# gzip level of the .seg.nrrd written: level 1 compresses a 300 x 512 x 512 label map in 0.2 s (smooth organs) to
# 1.1 s (a noisy prediction), where level 9 (slicerio's default) takes 2 s and 200 s; files are at most 3x larger.
SEG_NRRD_GZIP_LEVEL = 1


def segment_extents_ijk(label_layers: np.ndarray, segments: Sequence[Segment]) -> list[list[int]]:
    """Each segment's voxel extent as Slicer's ``SegmentN_Extent`` writes it: ``[i0, i1, j0, j1, k0, k1]``, inclusive,
    ``[0, -1, 0, -1, 0, -1]`` for an empty segment.

    Args:
        label_layers: (L, K, J, I) label values.
    """
    from scipy import ndimage

    boxes_by_layer = {
        layer: ndimage.find_objects(label_layers[layer]) for layer in {segment.layer for segment in segments}
    }  # one pass over each layer, every label's bounding box (K, J, I slices; None where absent)
    extents = []
    for segment in segments:
        boxes = boxes_by_layer[segment.layer]
        box = boxes[segment.label_value - 1] if 0 < segment.label_value <= len(boxes) else None
        if box is None:
            extents.append([0, -1, 0, -1, 0, -1])
        else:
            extents.append([bound for axis in reversed(box) for bound in (axis.start, axis.stop - 1)])
    return extents


def _write_seg_nrrd(path: Path, segmentation: Segmentation) -> Path:
    import slicerio

    layers = segmentation.label_layers
    for segment in segmentation.segments:
        for key, value in segment.tags.items():
            if SEGMENT_TAG_FORBIDDEN in f"{key}{value}" or ":" in key:
                raise ValueError(f"Segment tag {key!r} of {segment.name!r} contains '|' (or ':' in its key).")
    extents = segment_extents_ijk(layers, segmentation.segments)
    segments = [
        {
            "id": segment.segment_id or f"Segment_{index + 1}",
            "name": segment.name,
            "color": list(segment_color(segmentation.segments, index)),
            "labelValue": segment.label_value,
            "layer": segment.layer,
            "extent": extent,
            "tags": dict(segment.tags),
        }
        for index, (segment, extent) in enumerate(zip(segmentation.segments, extents, strict=True))
    ]
    voxels_ijk = layers.astype(smallest_label_dtype(int(layers.max(initial=0))), copy=False).transpose(0, 3, 2, 1)
    slicerio.write_segmentation(
        str(path),
        {
            "voxels": voxels_ijk if voxels_ijk.shape[0] > 1 else voxels_ijk[0],
            "ijkToLPS": segmentation.geometry.ijk_to_lps,
            "segments": segments,
            "containedRepresentationNames": ["Binary labelmap"],
            "masterRepresentation": "Binary labelmap",
            "referenceImageExtentOffset": [0, 0, 0],
        },
        compression_level=SEG_NRRD_GZIP_LEVEL,
    )
    return path


def smallest_label_dtype(largest: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type that holds label values up to ``largest`` (uint8, uint16 or uint32)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(
        f"Label value {largest} does not fit a segmentation file (at most {np.iinfo(np.uint32).max}); renumber the "
        "labels from 1."
    )


def place_on_grid(segmentation: Segmentation, target: Geometry, series_uid: str | None = None) -> Segmentation:
    """The segmentation on the ``target`` grid.

    A segmentation saved cropped to its segments' extent (Slicer may do this; a DICOM-SEG keeps only the frames
    that hold a segment) shares spacing with its image and is offset by whole voxels: it is padded (or cropped)
    onto the target grid, its axes first reordered or flipped where they run the other way. Any other difference
    raises :class:`GeometryMismatchError` saying what differs.

    Args:
        series_uid: the DICOM series of the target image; a DICOM-SEG that references another series is refused.
    """
    referenced = segmentation.referenced_series_uid
    if series_uid is not None and referenced is not None and referenced != series_uid:
        raise GeometryMismatchError(
            f"The DICOM-SEG segments series {referenced}, not the image's series {series_uid}. Give the series it "
            f"was drawn on (--series {referenced} where the folder holds both), or a SEG made on this series."
        )
    segmentation = reoriented(segmentation, target)
    source = segmentation.geometry
    if not source.differences(target):
        return segmentation
    if source.differences(replace(target, shape=source.shape, origin=source.origin)):
        target.require_same_grid(source, what="segmentation")
    offset_ijk = np.linalg.solve(target.ijk_to_lps[:3, :3], np.subtract(source.origin, target.origin))
    if not np.allclose(offset_ijk, np.round(offset_ijk), atol=1e-3):
        target.require_same_grid(source, what="segmentation")
    offset_kji = np.round(offset_ijk[::-1]).astype(int)
    placed = np.zeros((segmentation.label_layers.shape[0], *target.shape), dtype=segmentation.label_layers.dtype)
    source_slices, target_slices = [], []
    for axis in range(3):
        start = offset_kji[axis]
        lo, hi = max(start, 0), min(start + source.shape[axis], target.shape[axis])
        if hi <= lo:
            raise GeometryMismatchError("The segmentation lies entirely outside the image.")
        target_slices.append(slice(lo, hi))
        source_slices.append(slice(lo - start, hi - start))
    cut = segmentation.label_layers[(slice(None), *source_slices)]
    if np.count_nonzero(cut) != np.count_nonzero(segmentation.label_layers):
        raise GeometryMismatchError("Part of the segmentation lies outside the image; nothing was cropped away.")
    placed[(slice(None), *target_slices)] = cut
    return Segmentation(placed, segmentation.segments, target)


def reoriented(segmentation: Segmentation, target: Geometry) -> Segmentation:
    """The same voxels with axes permuted and flipped so that their directions are ``target``'s; unchanged when the
    directions already agree or are not a signed permutation of each other (the grid check then names it)."""
    source = segmentation.geometry
    # match[b, a]: cosine between target index axis b and source index axis a (I, J, K)
    match = target.direction_matrix.T @ source.direction_matrix
    if np.allclose(match, np.eye(3), atol=1e-4):
        return segmentation
    axis_of = np.argmax(np.abs(match), axis=1)  # the source axis each target axis runs along
    if len(set(axis_of.tolist())) < 3 or not np.allclose(np.abs(match[np.arange(3), axis_of]), 1.0, atol=1e-4):
        return segmentation
    flipped = match[np.arange(3), axis_of] < 0
    sizes_ijk = source.shape[::-1]
    # array axes of the layers: 0 = layer, 1 + (2 - a) = index axis a (KJI order)
    layers = segmentation.label_layers.transpose([0, *(1 + (2 - int(axis_of[2 - n])) for n in range(3))])
    layers = np.flip(layers, axis=[1 + (2 - b) for b in range(3) if flipped[b]])
    origin = np.asarray(source.origin, dtype=float)
    for b in np.flatnonzero(flipped):
        a = int(axis_of[b])
        origin = origin + source.direction_matrix[:, a] * source.spacing[a] * (sizes_ijk[a] - 1)
    direction = source.direction_matrix[:, axis_of] * np.where(flipped, -1.0, 1.0)
    geometry = Geometry(
        layers.shape[1:], tuple(source.spacing[a] for a in axis_of), tuple(origin), tuple(direction.ravel())
    )
    return replace(segmentation, label_layers=np.ascontiguousarray(layers), geometry=geometry)
