"""Propagation methods against each other (``contour``, ITK's morphological contour interpolation, is the reference
peer): seconds and Dice against the ground truth on the non-annotated slices between the first and last annotated
slice, at several annotation intervals.

Inputs: the ``slicerio`` chest CT and its segmentation (real anatomy, 34 axial slices of 10 mm), pyvista's frog
tissue label map (136 slices of 500 x 470, about 25 tissues; labels only) when pyvista is installed, and a
synthetic volume of ellipsoids, 300 x 512 x 512 by default, for speed at clinical size. Methods that need the
image (sli2vol, star, model) run where there is one (the chest CT, the ellipsoids). The model of star and model is
trained for the benchmark on the annotated slices of each interval (``star-small``, from random initialisation); its
training time is reported apart. On the ellipsoids only methods without a model run (training one on 512 x 512
slices would measure the training).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from ..io.segmentation import Segmentation
from ..metrics import dice
from ..progress import ProgressReporter, RecordingProgress, report
from ..propagation import PROPAGATORS, propagate
from ..propagation.auto import reported_choices
from ..propagation.sli2vol import forget_trained_networks
from ..selection.cold_start import centred_offset
from ..session import annotation_only
from ..volume import Geometry, Segment, SliceStack
from . import checked_names

DEFAULT_METHODS = ("sdf", "contour", "sli2vol", "auto", "star", "model")
BENCHMARK_PRESET = "star-small"  # a STAR model is also a segmentation model: one training serves star and model


def annotated_grid(n_slices: int, interval: int) -> np.ndarray:
    """Every ``interval``-th slice, centred in the volume (what ``fixed_interval`` picks)."""
    return np.arange(centred_offset(n_slices, interval), n_slices, interval)


def ellipsoid_stack(shape: tuple[int, int, int] = (300, 512, 512), seed: int = 0) -> SliceStack:
    """Five random non-overlapping ellipsoids of labels 1..5 in a (slices, rows, columns) volume, with an image:
    smooth noise (float32) with each ellipsoid a little brighter than the last, so image-based methods (sli2vol)
    run on it too."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for value in range(1, 6):
        centre = rng.uniform([0.2, 0.2, 0.2], [0.8, 0.8, 0.8]) * shape
        radii = rng.uniform([0.08, 0.05, 0.05], [0.3, 0.15, 0.15]) * shape
        inside = ((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + (
            (i - centre[2]) / radii[2]
        ) ** 2 <= 1
        labels[inside & (labels == 0)] = value
    image = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=(1, 3, 3))
    image += 0.5 * labels
    segments = tuple(Segment(f"ellipsoid {value}", value) for value in range(1, 6))
    return SliceStack(image, labels, segments, Geometry(labels.shape, spacing=(0.8, 0.8, 1.5)))


def mean_dice(stack: SliceStack, pseudo_masks: dict[str, np.ndarray], evaluated: np.ndarray) -> float:
    """Mean Dice over the segments present on the ``evaluated`` slices (in the truth or the propagation)."""
    scores = []
    for segment in stack.segments:
        truth = np.take(stack.segment_mask(segment), evaluated, axis=stack.slice_axis)
        found = np.take(pseudo_masks[segment.identifier], evaluated, axis=stack.slice_axis)
        if truth.any() or found.any():
            scores.append(dice(found, truth))
    return float(np.mean(scores)) if scores else float("nan")


def train_benchmark_model(stack: SliceStack, annotated: np.ndarray, device, epochs: int):
    """A :data:`BENCHMARK_PRESET` model trained on the annotated slices of ``stack`` (seed 0), and its seconds."""
    from ..learning import train_on_stack
    from ..training import TrainingConfig

    started = time.perf_counter()
    training = TrainingConfig(max_epochs=epochs, iterations_per_epoch=None, validation_fraction=0.0, seed=0)
    outcome = train_on_stack(stack, annotated, preset=BENCHMARK_PRESET, training=training, device=device)
    return outcome.model, time.perf_counter() - started


def measure_stack(
    stack: SliceStack,
    dataset: str,
    methods: Sequence[str],
    intervals: Sequence[int],
    progress: ProgressReporter | None = None,
    device="cpu",
    train_epochs: int = 30,
    with_models: bool = True,
) -> list[dict]:
    """One row per (method, interval): seconds :func:`~spatial_al.propagation.propagate` takes to fill every label
    layer from a cold start (sli2vol learns its network again for each row), splitting the layers into segment masks
    and merging them into the segmentation left out (the same for every method), and the mean Dice on the evaluated
    slices. Methods that need an image are skipped on a label-only stack, methods that need a model without
    ``with_models``; ``train_seconds`` is the training of the model they use."""
    from ..propagation.base import method_info

    truth = Segmentation(stack.label_layers, stack.segments, stack.geometry)
    infos = {m: method_info(PROPAGATORS.get(m)) for m in methods}
    runnable = [
        m
        for m in methods
        if (stack.image is not None or not infos[m].image) and (with_models or infos[m].model is None)
    ]
    rows = []
    for interval in intervals:
        annotated = annotated_grid(stack.n_slices, interval)
        evaluated = np.setdiff1d(np.arange(annotated[0], annotated[-1] + 1), annotated)
        annotation = annotation_only(truth, annotated, stack.slice_axis)
        model = train_seconds = None
        for method in runnable:
            info = method_info(PROPAGATORS.get(method))
            if info.model is not None and model is None:
                model, train_seconds = train_benchmark_model(stack, annotated, device, train_epochs)
            forget_trained_networks()  # each method starts cold, as a user's first propagation of a scan does
            reports = RecordingProgress()
            started = time.perf_counter()
            result = propagate(
                annotation.label_layers,
                annotated,
                method,
                stack.image,
                stack.geometry.array_spacing,
                stack.slice_axis,
                segments=stack.segments,
                model=model if info.model else None,
                device=device,
                progress=reports,
            )
            seconds = time.perf_counter() - started
            masks = {s.identifier: result.labels[s.layer] == s.label_value for s in stack.segments}
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "interval": int(interval),
                    "annotated_slices": int(annotated.size),
                    "seconds": round(seconds, 3),
                    "train_seconds": round(train_seconds, 3) if info.model else None,
                    "dice": round(mean_dice(stack, masks, evaluated), 4),
                }
                | ({"choices": dict(reported_choices(m for _, _, m in reports.reports))} if method == "auto" else {})
            )
            report(progress, len(rows), len(intervals) * len(runnable), f"{dataset}: {method}, interval {interval}")
    return rows


def contour_process_seconds() -> float:
    """Seconds ``contour`` takes on a trivial input: starting its ITK worker process and loading ITK (the fixed
    cost each call pays; ITK cannot share SimpleITK's process, see the method's docstring)."""
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[[0, 2], 2:6, 2:6] = 1
    started = time.perf_counter()
    propagate(labels, [0, 2], "contour")
    return time.perf_counter() - started


def measure_propagation(
    methods: Sequence[str] | None = None,
    intervals: Sequence[int] = (5, 10, 15),
    speed_shape: tuple[int, int, int] | None = (300, 512, 512),
    include_frog: bool = True,
    progress: ProgressReporter | None = None,
    device="cpu",
    train_epochs: int = 30,
) -> list[dict]:
    """Rows for the chest CT and the frog (``include_frog``, needs pyvista) at each interval, then the ellipsoid
    volume of ``speed_shape`` (slices, rows, columns) at interval 10 (skipped when None). ``contour`` rows also carry
    ``process_seconds``, its fixed worker cost. Learned methods run on ``device``; ``train_epochs`` trains the
    model of star and model."""
    from ..data import chest_ct_files
    from ..io import load_stack

    methods = checked_names(PROPAGATORS, methods or DEFAULT_METHODS)
    learning = {"device": device, "train_epochs": train_epochs}
    rows = measure_stack(load_stack(*chest_ct_files()), "chest CT", methods, intervals, progress, **learning)
    if include_frog:
        from ..data import frog_tissues_stack

        rows += measure_stack(frog_tissues_stack(), "frog tissues", methods, intervals, progress, **learning)
    if speed_shape is not None:
        name = "ellipsoids " + "x".join(map(str, speed_shape))
        rows += measure_stack(ellipsoid_stack(speed_shape), name, methods, (10,), progress, device, with_models=False)
    if "contour" in methods:
        process = round(contour_process_seconds(), 3)
        rows = [{**row, "process_seconds": process} if row["method"] == "contour" else row for row in rows]
    return rows


def speedups(rows: Sequence[dict], reference: str = "contour") -> list[dict]:
    """Each row with ``speedup`` (reference seconds / seconds), ``speedup_in_process`` (the same without the
    reference's fixed worker cost) and ``dice_gain`` (Dice - reference Dice) against the reference row of the same
    dataset and interval; None without one."""
    by_key = {(r["dataset"], r["interval"]): r for r in rows if r["method"] == reference}
    compared = []
    for row in rows:
        peer = by_key.get((row["dataset"], row["interval"]))
        compared.append(
            {
                **row,
                "speedup": round(peer["seconds"] / row["seconds"], 2) if peer and row["seconds"] > 0 else None,
                "speedup_in_process": (
                    round((peer["seconds"] - peer.get("process_seconds", 0.0)) / row["seconds"], 2)
                    if peer and row["seconds"] > 0 and row["method"] != reference
                    else None
                ),
                "dice_gain": round(row["dice"] - peer["dice"], 4) if peer else None,
            }
        )
    return compared


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a table; "(in-process)" is the speedup without contour's fixed worker cost."""
    header = ["seconds", "training s", "Dice", "x contour", "(in-process)", "Dice gain"]
    lines = [f"{'dataset':26s} {'interval':>8s} {'method':10s} " + " ".join(f"{h:>12s}" for h in header)]
    for r in rows:
        cells = [
            f"{r['seconds']:.2f}",
            "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.1f}",
            f"{r['dice']:.4f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.1f}",
            "-" if r["speedup_in_process"] is None else f"{r['speedup_in_process']:.1f}",
            "-" if r["dice_gain"] is None else f"{r['dice_gain']:+.4f}",
        ]
        lines.append(f"{r['dataset']:26s} {r['interval']:8d} {r['method']:10s} " + " ".join(f"{c:>12s}" for c in cells))
    return "\n".join(lines)
