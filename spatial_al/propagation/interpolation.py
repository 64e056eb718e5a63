"""Interpolation between annotated slices: signed-distance (``sdf``) and ITK morphological contour (``contour``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from ..progress import ProgressReporter, check_cancelled, report
from ..volume import zeros_in_small_pages
from .base import PROPAGATORS, MethodInfo, gaps, interpolation_confidence, needs, per_label_map


def signed_distance(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance of a 2D mask in mm: positive inside, negative outside, shape of ``mask``.

    ``edt(mask) - edt(~mask)`` with pixel spacing ``spacing`` (rows, columns); the zero level lies between the last
    inside and the first outside pixel centre. Outside the array counts as background, so a structure touching
    the border has its boundary there.
    """
    padded = np.pad(mask, 1)
    inside = ndimage.distance_transform_edt(padded, sampling=spacing)
    outside = ndimage.distance_transform_edt(~padded, sampling=spacing)
    return (inside - outside)[1:-1, 1:-1]


def paper_signed_distance(mask: np.ndarray) -> np.ndarray:
    """ "Less Is More"'s signed distance of a 2D mask in pixels: ``edt(mask) - edt(~mask) + 0.5``, shape of ``mask``
    (positive inside; the +0.5 puts the zero level half-way between the last inside and the first outside pixel)."""
    return ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask) + 0.5


SDF_VARIANTS = ("shrink_tips", "paper")


def bounding_box(*masks: np.ndarray, margin: int = 1) -> tuple[slice, slice] | None:
    """Rows and columns covering every True pixel of the 2D masks, grown by ``margin``; None if all are empty."""
    union = np.logical_or.reduce(masks)
    rows, columns = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if rows.size == 0:
        return None
    height, width = union.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, height)),
        slice(max(columns[0] - margin, 0), min(columns[-1] + margin + 1, width)),
    )


Box = tuple[slice, slice]


def union_box(boxes: list[Box | None], shape: tuple[int, int], margin: int = 1) -> Box | None:
    """The smallest box holding every given box, grown by ``margin`` and clipped to ``shape``; None if all are None."""
    present = [box for box in boxes if box is not None]
    if not present:
        return None
    return tuple(  # type: ignore[return-value]
        slice(max(min(b[axis].start for b in present) - margin, 0), min(max(b[axis].stop for b in present) + margin, n))
        for axis, n in enumerate(shape)
    )


def within(box: Box, outer: Box) -> Box:
    """``box`` in the coordinates of the crop ``outer`` (which contains it)."""
    return tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer, strict=True))  # type: ignore


def tip_depth(distance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each pixel's connected component's maximal depth (its largest ``distance``), 0 outside ``mask``."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3)))
    depth = np.asarray(ndimage.maximum(distance, components, index=np.arange(1, count + 1)))
    return np.concatenate([[0.0], depth])[components]


def tip_distance(distance: np.ndarray, mask: np.ndarray, shrink: float) -> np.ndarray:
    """Signed distance of a structure shrunk towards its deepest points, for a structure seen on one side only.

    Each connected component keeps the pixels deeper than ``shrink`` times its own maximal depth: 0 leaves it
    as annotated, 1 leaves nothing. Shape and units of ``distance``.
    """
    return distance - shrink * tip_depth(distance, mask)


@PROPAGATORS.register("sdf")
@needs(MethodInfo(interactive=True))
@per_label_map
def sdf_interpolation(
    labels: np.ndarray,
    annotated: np.ndarray,
    spacing: np.ndarray,
    progress: ProgressReporter | None = None,
    *,
    tip_fraction: float = 0.5,
    variant: str = "shrink_tips",
) -> tuple[np.ndarray, np.ndarray]:
    """Signed-distance interpolation between the nearest annotated slices on each side, per label, in mm.

    For each label and each slice ``k`` between annotated slices ``a < k < b``, the signed distances (in mm,
    in-plane spacing) of the label on ``a`` and ``b`` are blended linearly by position, ``t = (k - a) / (b - a)``,
    and the label is set where the blend is positive. Where labels compete for a pixel, the one it lies deepest
    in wins. Computation is cropped to each label's bounding box on the two slices.

    A structure present on one side only (it starts or ends inside the gap) does not vanish at the annotated slice
    where it is seen, nor appear full-size at the other: it shrinks towards its deepest point(s) and vanishes at
    ``tip_fraction`` of the gap (0.5: the middle, the expected end when it is equally likely anywhere in the gap).
    Slices before the first and after the last annotated slice are not filled (no extrapolation).

    ``variant="paper"`` is "Less Is More"'s definition instead (Burmeister et al. 2022, and its code): distances
    in pixels, ``edt(x) - edt(not x) + 0.5``, the blend kept where it is >= 0, and no pseudo-label of a label in a
    gap where its masks on the two annotated slices do not overlap (one-sided structures included).

    Speed: each annotated slice's labels are located once (``find_objects``), each label's signed distance on an
    annotated slice is computed once for both gaps it bounds (on a crop holding the label on that slice and its two
    neighbours, where the distances are exact), and a gap is blended for all its slices at once, straight into the
    output; the slices, then the gaps, run on every core at once. Nothing of the volume's size is allocated
    besides the output, which lives in base pages (:func:`~spatial_al.volume.zeros_in_small_pages`).

    Keyword Args:
        tip_fraction: where in the gap a one-sided structure vanishes, in (0, 1].
        variant: "shrink_tips" (the above) or "paper".
    """
    if not 0 < tip_fraction <= 1:
        raise ValueError(f"tip_fraction must be in (0, 1], got {tip_fraction}.")
    if variant not in SDF_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(SDF_VARIANTS)}, got {variant!r}.")
    paper = variant == "paper"
    filled = zeros_in_small_pages(labels.shape, labels.dtype)
    plane = labels.shape[1:]
    in_plane = spacing[1:]
    integer = labels.dtype if np.issubdtype(labels.dtype, np.integer) else np.int64

    def locate(slice_index: int) -> list[Box | None]:
        """Each label value's box on an annotated slice (find_objects indexes by value - 1; any integer map)."""
        return ndimage.find_objects(labels[slice_index].astype(integer, copy=False))

    def box_of(slice_index: int, value: int) -> Box | None:
        boxes = located[slice_index]
        return boxes[value - 1] if value - 1 < len(boxes) else None

    neighbours = {int(a): annotated[max(i - 1, 0) : i + 2].tolist() for i, a in enumerate(annotated)}

    def signed(key: tuple[int, int]) -> tuple[Box, np.ndarray, np.ndarray]:
        """The label's mask and signed distance on the crop around it on this slice and both neighbours."""
        slice_index, value = key
        crop = union_box([box_of(n, value) for n in neighbours[slice_index]], plane)
        mask = labels[slice_index][crop] == value
        return crop, mask, paper_signed_distance(mask) if paper else signed_distance(mask, in_plane)

    def fill_gap(gap: tuple[int, int]) -> tuple[int, int]:
        """Blend every label over the slices strictly between ``a`` and ``b``, written into ``filled``."""
        a, b = gap
        values = sorted({v + 1 for s in (a, b) for v, box in enumerate(located[s]) if box is not None})
        gap_boxes = {v: union_box([box_of(a, v), box_of(b, v)], plane) for v in values}
        region = union_box(list(gap_boxes.values()), plane, margin=0)
        if region is None:
            return gap
        t = ((np.arange(a + 1, b) - a) / (b - a))[:, None, None]  # (n, 1, 1)
        winner = filled[a + 1 : b][(slice(None), *region)]  # a view: gaps do not overlap, so threads never share it
        best = np.full(winner.shape, -1.0, dtype=np.float32)
        for value in values:
            box = gap_boxes[value]
            parts = []
            for side in (a, b):
                crop, mask, distance = distances.get((side, value), (None, None, None))
                inner = within(box, crop) if crop is not None else None
                parts.append(None if crop is None else (mask[inner], distance[inner]))
            (first, distance_first), (last, distance_last) = (part or (None, None) for part in parts)
            if paper and (first is None or last is None or not (first & last).any()):
                continue
            if distance_first is not None and distance_last is not None:
                blend = (1 - t) * distance_first + t * distance_last
            elif distance_first is not None:
                blend = distance_first - (t / tip_fraction) * tip_depth(distance_first, first)
            else:
                blend = distance_last - ((1 - t) / tip_fraction) * tip_depth(distance_last, last)
            local = (slice(None), *within(box, region))
            wins = (blend >= 0 if paper else blend > 0) & (blend > best[local])
            np.copyto(best[local], blend, where=wins)
            np.copyto(winner[local], value, where=wins)
        return gap

    # scipy's ndimage and numpy's array operations release the GIL: the confidence, then each annotated slice's
    # boxes and transforms, then the gaps, run on all cores at once
    gap_list = gaps(annotated)
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        confidence = pool.submit(interpolation_confidence, labels, annotated)
        located = dict(zip(annotated.tolist(), pool.map(locate, annotated.tolist()), strict=True))
        keys = [(a, v + 1) for a, boxes in located.items() for v, box in enumerate(boxes) if box is not None]
        distances = dict(zip(keys, pool.map(signed, keys), strict=True))
        # leaving this loop early (cancel) closes map's iterator, which cancels the gaps not yet started
        for done, (a, b) in enumerate(pool.map(fill_gap, gap_list), 1):
            report(progress, done, len(gap_list), f"slices {a}-{b}")
        return filled, confidence.result()


@PROPAGATORS.register("contour")
@per_label_map
def contour_interpolation(
    labels: np.ndarray,
    annotated: np.ndarray,
    spacing: np.ndarray,
    progress: ProgressReporter | None = None,
    *,
    use_distance_transform: bool = True,
    use_ball_structuring_element: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """ITK morphological contour interpolation, the filter behind Slicer's "Fill between slices" effect.

    Runs ``itk.MorphologicalContourInterpolator`` (Zukić et al., 2016) on each gap between consecutive annotated
    slices, cropped to the labels of its two ends, so an empty annotated slice stays a boundary. A structure
    present on one side of a gap only is not continued into it (the filter needs it on both sides).

    ITK Python runs in a worker process (``itk_contour_worker.py``): once SimpleITK has read an image, loading ITK
    Python's modules into the same process makes SimpleITK's exit handler crash the interpreter (a dlclose of a
    factory handle at exit, seen with SimpleITK 2.5 and ITK 5.4). Each call pays ITK's module loading (about 10 s).

    Keyword Args:
        use_distance_transform: the filter's median-contour algorithm (True, its default) or repeated dilation.
        use_ball_structuring_element: ball instead of cross structuring element for the dilations.
    """
    filled = np.zeros_like(labels)
    work_type = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
    jobs = []
    for a, b in gaps(annotated):
        box = bounding_box(labels[a] != 0, labels[b] != 0)
        if box is not None:
            slab = np.zeros((b - a + 1, *labels[a][box].shape), dtype=work_type)
            slab[0], slab[-1] = labels[a][box], labels[b][box]
            jobs.append((a, b, box, slab))
    if jobs:
        results = run_contour_worker(
            [slab for *_, slab in jobs], (use_distance_transform, use_ball_structuring_element), progress
        )
        for (a, b, box, _), result in zip(jobs, results, strict=True):
            filled[a + 1 : b][(slice(None), *box)] = result[1:-1]
    return filled, interpolation_confidence(labels, annotated)


def run_contour_worker(slabs: list[np.ndarray], options: tuple[bool, bool], progress: ProgressReporter | None):
    """Interpolate slabs in ``itk_contour_worker.py`` (a child process); reports each slab, kills it on cancel."""
    import queue
    import subprocess
    import sys
    import tempfile
    import threading
    from pathlib import Path

    worker = Path(__file__).with_name("itk_contour_worker.py")
    with tempfile.TemporaryDirectory(prefix="spatial_al_contour_") as folder:
        source, destination = Path(folder) / "slabs.npz", Path(folder) / "results.npz"
        errors = Path(folder) / "stderr.txt"
        np.savez(source, options=np.array(options), **{f"slab_{i}": slab for i, slab in enumerate(slabs)})
        with errors.open("w") as error_file:
            process = subprocess.Popen(
                [sys.executable, str(worker), str(source), str(destination)],
                stdout=subprocess.PIPE,
                stderr=error_file,
                text=True,
            )
        finished: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [finished.put(line) for line in process.stdout], daemon=True)
        reader.start()
        done = 0
        try:
            report(progress, 0, len(slabs), "loading ITK")
            while process.poll() is None or not finished.empty():
                try:
                    finished.get(timeout=0.2)
                    done += 1
                    report(progress, done, len(slabs), f"{done} of {len(slabs)} gaps")
                except queue.Empty:
                    check_cancelled(progress)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            reader.join()
        if process.returncode != 0:
            raise RuntimeError(f"ITK contour interpolation failed:\n{errors.read_text()[-2000:]}")
        with np.load(destination) as outputs:
            return [outputs[f"result_{i}"] for i in range(len(slabs))]
