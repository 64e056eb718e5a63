"""Speed of the DICOM path on a clinical-size CT: reading a 300-slice 512 x 512 series, writing and reading its SEG.

    python docs/results/benchmarks/dicom_speed.py [--slices 300] [--size 512] [--segments 10] [--repeats 3]
        [--output dicom-speed.json]

The CT (int16, smooth structure plus noise) and ten ellipsoid segments are made here and written as a single-frame
CT series (``spatial_al.data.dicom_series``). Timed: SimpleITK's own series read (GDCM file names, then
``ImageSeriesReader``) beside ``spatial_al.io.read_volume`` on the folder (series found, checked and sorted from the
headers by pydicom, pixels by SimpleITK); the DICOM-SEG write in BINARY and LABELMAP (uncompressed: highdicom's
parallel frame encoding applies to compressed transfer syntaxes only, and BINARY allows JPEG 2000 alone); the BINARY
SEG read back onto the series' grid. Prints a table (median and worst of ``--repeats``)
and writes JSON with the configuration and versions (a benchmark, not a test: nothing is asserted).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spatial_al.data.dicom_series import write_ct_series
from spatial_al.io import choose_series, load_stack, read_volume
from spatial_al.io.dicom_seg import write_dicom_seg
from spatial_al.io.segmentation import Segmentation
from spatial_al.provenance import environment, write_json
from spatial_al.volume import Geometry, Segment

GOALS = {"series read / SimpleITK": 1.5, "SEG write BINARY": 10.0}


def synthetic_case(slices: int, size: int, segments: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """A CT-like int16 volume (K, J, I) and a label map of ``segments`` non-overlapping ellipsoids."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 300.0, (slices // 10 + 2, size // 32 + 2, size // 32 + 2))
    image = ndimage.zoom(coarse, np.divide((slices, size, size), coarse.shape), order=1)[:slices, :size, :size]
    image = (image + rng.normal(0.0, 20.0, image.shape)).astype(np.int16)
    labels = np.zeros(image.shape, dtype=np.uint8)
    k, j, i = np.ogrid[:slices, :size, :size]
    for value in range(1, segments + 1):
        angle = 2 * np.pi * value / segments
        centre = (slices / 2, size / 2 + size / 3.5 * np.sin(angle), size / 2 + size / 3.5 * np.cos(angle))
        radii = (slices / 3, size / 14, size / 16)
        inside = sum(((axis - c) / r) ** 2 for axis, c, r in zip((k, j, i), centre, radii, strict=True)) <= 1
        labels[inside & (labels == 0)] = value
    geometry = Geometry((slices, size, size), (0.7, 0.7, 1.0), (-180.0, -180.0, -150.0))
    return image, labels, geometry


def timed(function, repeats: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def sitk_series_read(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="dicom-speed.json")
    args = parser.parse_args()

    image, labels, geometry = synthetic_case(args.slices, args.size, args.segments)
    segmentation = Segmentation(
        labels, tuple(Segment(f"structure {v}", v) for v in range(1, args.segments + 1)), geometry
    )
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "ct"
        write_ct_series(folder, image, geometry)
        rows["SimpleITK series read"], reference = timed(lambda: sitk_series_read(folder), args.repeats)
        rows["series read (spatial_al)"], (array, _) = timed(lambda: read_volume(folder), args.repeats)
        assert np.array_equal(array, reference), "the two readers disagree"
        source = choose_series(folder)
        outputs = {}
        for kind in ("BINARY", "LABELMAP"):
            path = Path(scratch) / f"{kind}.dcm"
            rows[f"SEG write {kind}"], _ = timed(
                lambda kind=kind, path=path: write_dicom_seg(path, segmentation, source, kind), args.repeats
            )
            outputs[f"SEG write {kind}"] = path.stat().st_size
        seg_path = Path(scratch) / "BINARY.dcm"
        rows["SEG read onto the series"], stack = timed(lambda: load_stack(folder, seg_path), args.repeats)
        assert np.array_equal(stack.label_layers[0], labels), "the SEG did not read back"

    ratio = statistics.median(rows["series read (spatial_al)"]) / statistics.median(rows["SimpleITK series read"])
    print(f"{'step':32s} {'median s':>9s} {'worst s':>8s}")
    for name, seconds in rows.items():
        size = f"  ({outputs[name] / 1e6:.1f} MB)" if name in outputs else ""
        print(f"{name:32s} {statistics.median(seconds):9.2f} {max(seconds):8.2f}{size}")
    print(f"series read / SimpleITK: {ratio:.2f}x (goal <= {GOALS['series read / SimpleITK']}x)")
    write_json(
        args.output,
        {
            "configuration": vars(args),
            "environment": environment(),
            "goals": GOALS,
            "seconds": rows,
            "median_seconds": {name: statistics.median(seconds) for name, seconds in rows.items()},
            "seg_bytes": outputs,
            "series_read_ratio": ratio,
        },
    )
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
