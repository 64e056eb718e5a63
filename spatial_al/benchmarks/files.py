"""Write and read seconds of the files a session leaves, on a synthetic label map (default 300 x 512 x 512).

Two label maps, because gzip's speed depends on the content: ``organs`` (ten smooth ellipsoids, what a radiologist's
segmentation looks like) and ``prediction`` (fine speckle, what an untrained network predicts; the worst case for
gzip). Each is written and read back as ``.seg.nrrd`` (its read timed beside slicerio's own read of the same file),
as a label map ``.nii.gz``, and as a scene bundle ``.mrb`` with a CT-like volume when a scene writer is given (the
CLI gives Slicer's, from slicer-core). Every file read back is compared with what was written.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..io import read_segmentation, write_segmentation
from ..io.segmentation import Segmentation
from ..progress import ProgressReporter, report
from ..volume import Geometry, Segment

LABEL_MAPS = ("organs", "prediction")
SPACING_KJI = (1.5, 0.8, 0.8)
ORGANS = 10

# (image (K, J, I) int16, segmentation, path) -> None, and path -> segmentation read back on the image grid.
SceneWriter = Callable[[np.ndarray, Segmentation, Path], None]
SegmentationReader = Callable[[Path], Segmentation]


def synthetic_label_map(kind: str, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A (K, J, I) uint8 label map: ``organs`` (labels 1..10, smooth ellipsoids) or ``prediction`` (label 1, speckle
    of about half the voxels, from smoothed noise thresholded)."""
    rng = np.random.default_rng(seed)
    if kind == "prediction":
        noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
        return (noise > 0.05).astype(np.uint8)
    if kind != "organs":
        raise ValueError(f"Unknown label map {kind!r}: use one of {', '.join(LABEL_MAPS)}.")
    extent = np.array(shape, float)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    for value in range(1, ORGANS + 1):
        center = rng.uniform(0.2, 0.8, 3) * extent
        radii = rng.uniform(0.06, 0.15, 3) * extent
        inside = ((k - center[0]) / radii[0]) ** 2 + ((j - center[1]) / radii[1]) ** 2
        labels[(inside + ((i - center[2]) / radii[2]) ** 2) < 1] = value
    return labels


def ct_like(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A (K, J, I) int16 volume: air at -1000 HU, structures at 40 HU, with +-20 HU of noise."""
    noise = np.random.default_rng(seed).integers(-20, 21, labels.shape, dtype=np.int16)
    return np.where(labels > 0, np.int16(40), np.int16(-1000)) + noise


def _timed(function: Callable[..., Any], *arguments: Any) -> tuple[float, Any]:
    """(seconds, result) of ``function(*arguments)``."""
    start = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - start, result


def _write_and_read(
    kind: str, path: Path, segmentation: Segmentation, write: Callable[[Path], Any], read: SegmentationReader
) -> dict[str, Any]:
    write_seconds, _ = _timed(write, path)
    read_seconds, read_back = _timed(read, path)
    return {
        "label_map": kind,
        "file": "".join(path.suffixes),
        "write_s": write_seconds,
        "read_s": read_seconds,
        "megabytes": path.stat().st_size / 1e6,
        "read_equals_written": bool(np.array_equal(read_back.label_map(), segmentation.label_map())),
    }


def measure_files(
    label_maps: Sequence[str] | None = None,
    shape: tuple[int, int, int] = (300, 512, 512),
    scene_files: tuple[SceneWriter, SegmentationReader] | None = None,
    progress: ProgressReporter | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per label map and file: seconds to write and read, megabytes, whether the read equals the written.

    Args:
        label_maps: kinds from :data:`LABEL_MAPS` (default both).
        shape: (K, J, I) of the label maps.
        scene_files: writer and reader of a ``.mrb`` scene bundle; None leaves the bundle out.
    """
    import slicerio

    kinds = list(label_maps or LABEL_MAPS)
    for kind in kinds:
        if kind not in LABEL_MAPS:
            raise ValueError(f"Unknown label map {kind!r}: use one of {', '.join(LABEL_MAPS)}.")
    rows = []
    with tempfile.TemporaryDirectory(prefix="spatial_al_files_") as folder:
        for index, kind in enumerate(kinds):
            report(progress, index, len(kinds), kind)
            labels = synthetic_label_map(kind, shape, seed)
            values = range(1, int(labels.max()) + 1)
            segmentation = Segmentation(
                labels, tuple(Segment(f"structure {value}", value) for value in values), Geometry(shape, SPACING_KJI)
            )
            for suffix in (".seg.nrrd", ".nii.gz"):
                path = Path(folder) / f"{kind}{suffix}"
                row = _write_and_read(
                    kind, path, segmentation, partial(write_segmentation, segmentation=segmentation), read_segmentation
                )
                if suffix == ".seg.nrrd":
                    row["slicerio_read_s"] = _timed(slicerio.read_segmentation, str(path))[0]
                rows.append(row)
            if scene_files is not None:
                write_scene, read_scene = scene_files
                image = ct_like(labels, seed)
                path = Path(folder) / f"{kind}.mrb"
                rows.append(
                    _write_and_read(kind, path, segmentation, partial(write_scene, image, segmentation), read_scene)
                )
    report(progress, len(kinds), len(kinds))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as aligned text; the slicerio column is its own read of the same ``.seg.nrrd``."""
    lines = [
        f"{'label map':12s}{'file':>11s}{'write s':>9s}{'read s':>8s}{'slicerio read s':>17s}{'MB':>8s}  read = written"
    ]
    for row in rows:
        reference = f"{row['slicerio_read_s']:.2f}" if "slicerio_read_s" in row else "-"
        lines.append(
            f"{row['label_map']:12s}{row['file']:>11s}{row['write_s']:9.2f}{row['read_s']:8.2f}{reference:>17s}"
            f"{row['megabytes']:8.1f}  {'yes' if row['read_equals_written'] else 'NO'}"
        )
    return "\n".join(lines)
