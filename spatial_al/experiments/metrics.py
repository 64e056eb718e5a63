"""Study metrics: test Dice per volume in 3D and as the mean of per-slice 2D Dice, IoU, Dice and IoU pooled over the
test set ("batched") and averaged over batches of test slices (the MIDL 2025 study's "average batched IoU"), HD95,
pseudo-label Dice and IoU, and S% (the labeled percent at which a run reaches the fully supervised Dice).

Masks are multi-hot (S, C, H, W) arrays, slices along axis 0, C classes; spacing is (3,) mm, slice thickness first.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

# Per-slice Dice smoothing of the STAR code: (2|P∩T| + eps) / (|P| + |T| + eps), so a slice where both are empty
# scores 1 and a slice with a false positive on an empty truth scores ~0.
SLICE_DICE_EPSILON = 1e-5


def one_hot_prediction(labels: np.ndarray, classes: int) -> np.ndarray:
    """Class-index predictions (S, H, W) (0 = background) as multi-hot masks (S, classes, H, W) bool."""
    return np.stack([labels == c for c in range(1, classes + 1)], axis=1)


def dice_3d(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of each class over the whole volume, shape (C,); 1 where both are empty."""
    intersection = np.count_nonzero(prediction & truth, axis=(0, 2, 3))
    total = np.count_nonzero(prediction, axis=(0, 2, 3)) + np.count_nonzero(truth, axis=(0, 2, 3))
    return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1))


def iou_3d(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Intersection over union of each class over the whole volume, shape (C,); 1 where both are empty."""
    intersection = np.count_nonzero(prediction & truth, axis=(0, 2, 3))
    union = np.count_nonzero(prediction | truth, axis=(0, 2, 3))
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def slice_dice(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Smoothed 2D Dice of every slice and class, shape (S, C) (see :data:`SLICE_DICE_EPSILON`)."""
    intersection = np.count_nonzero(prediction & truth, axis=(2, 3))
    total = np.count_nonzero(prediction, axis=(2, 3)) + np.count_nonzero(truth, axis=(2, 3))
    return (2.0 * intersection + SLICE_DICE_EPSILON) / (total + SLICE_DICE_EPSILON)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> list[float | None]:
    """MONAI's 95th percentile Hausdorff distance in mm of each class; None where either mask is empty (undefined)."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    distances: list[float | None] = []
    for c in range(truth.shape[1]):
        if not prediction[:, c].any() or not truth[:, c].any():
            distances.append(None)
            continue
        pair = [torch.as_tensor(mask[:, c][None, None]) for mask in (prediction, truth)]
        with warnings.catch_warnings():  # MONAI passes its own deprecated argument internally
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            distance = compute_hausdorff_distance(*pair, include_background=True, percentile=95, spacing=list(spacing))
        distances.append(float(distance[0, 0]))
    return distances


def volume_metrics(
    labels: np.ndarray, truth: np.ndarray, spacing: Sequence[float], with_hd95: bool = True
) -> dict[str, list[float | None]]:
    """Per-class metrics of one test volume: predicted class indices (S, H, W) against multi-hot truth (S, C, H, W).

    Returns:
        ``dice_3d``, ``iou_3d``, ``dice_2d`` (mean over slices of the smoothed per-slice Dice), ``hd95_mm`` (None
        where undefined), each a list with one value per class; ``counts``, the (3, C) :func:`overlap_counts` that
        :func:`summarize` pools over volumes, and ``slice_counts``, those of each slice (S, 3, C), that it pools
        over batches of slices.
    """
    truth = truth.astype(bool)
    prediction = one_hot_prediction(labels, truth.shape[1])
    metrics = {
        "dice_3d": dice_3d(prediction, truth).tolist(),
        "iou_3d": iou_3d(prediction, truth).tolist(),
        "dice_2d": slice_dice(prediction, truth).mean(0).tolist(),
        "counts": overlap_counts(prediction, truth).tolist(),
        "slice_counts": slice_overlap_counts(prediction, truth),
    }
    metrics["hd95_mm"] = hd95(prediction, truth, spacing) if with_hd95 else [None] * truth.shape[1]
    return metrics


def summarize(per_volume: Sequence[dict], class_names: Sequence[str], batch_slices: int = 16) -> dict:
    """Means over volumes and classes of :func:`volume_metrics` results, and the mean of each class.

    HD95 is averaged over the (volume, class) pairs where it is defined; ``hd95_defined`` says how many.
    ``dice_batched`` and ``iou_batched`` pool the pixel counts of every test volume first (:func:`pooled_scores`).
    ``dice_batch_mean`` and ``iou_batch_mean`` (the MIDL 2025 study's "average batched IoU") pool them over each
    batch of ``batch_slices`` consecutive test slices, volume after volume as an evaluation loader meets them, and
    average over the batches.
    ``per_volume`` holds each volume's ``dice_3d`` (mean over its classes), in the order of ``per_volume``, for
    paired tests between arms.
    """
    summary: dict = {"per_class": {}, "per_volume": {}}
    counts = np.sum([m["counts"] for m in per_volume], axis=0)  # (3, C)
    summary["dice_batched"], summary["iou_batched"] = pooled_scores(counts)
    per_class = [pooled_scores(counts[:, [c]]) for c in range(len(class_names))]
    summary["per_class"]["dice_batched"] = {name: score[0] for name, score in zip(class_names, per_class, strict=True)}
    summary["per_class"]["iou_batched"] = {name: score[1] for name, score in zip(class_names, per_class, strict=True)}
    slices = np.concatenate([m["slice_counts"] for m in per_volume])  # (test slices, 3, C)
    summary["dice_batch_mean"], summary["iou_batch_mean"] = batch_mean_scores(slices, batch_slices)
    per_class = [batch_mean_scores(slices[:, :, [c]], batch_slices) for c in range(len(class_names))]
    summary["per_class"]["dice_batch_mean"] = {n: score[0] for n, score in zip(class_names, per_class, strict=True)}
    summary["per_class"]["iou_batch_mean"] = {n: score[1] for n, score in zip(class_names, per_class, strict=True)}
    for name in ("dice_3d", "iou_3d", "dice_2d", "hd95_mm"):
        values = np.array([[np.nan if v is None else v for v in m[name]] for m in per_volume], dtype=float)
        defined = ~np.isnan(values)
        summary[name] = float(np.nanmean(values)) if defined.any() else None
        summary["per_class"][name] = {
            class_name: float(np.nanmean(values[:, c])) if defined[:, c].any() else None
            for c, class_name in enumerate(class_names)
        }
        if name == "hd95_mm":
            summary["hd95_defined"] = int(defined.sum())
        if name == "dice_3d":
            summary["per_volume"][name] = [
                float(np.nanmean(row)) if ok.any() else None for row, ok in zip(values, defined, strict=True)
            ]
    return summary


def overlap_counts(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(3, C) pixel counts of multi-hot (S, C, H, W) masks per class: prediction and truth, prediction, truth."""
    return slice_overlap_counts(prediction, truth).sum(0)


def slice_overlap_counts(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(S, 3, C) :func:`overlap_counts` of each slice of multi-hot (S, C, H, W) masks."""
    return np.stack(
        [np.count_nonzero(mask, axis=(2, 3)) for mask in (prediction & truth, prediction, truth)], axis=1
    ).astype(np.int64)


def batch_mean_scores(slice_counts: np.ndarray, batch_slices: int) -> tuple[float, float]:
    """(Dice, IoU) pooled over each batch of ``batch_slices`` consecutive slices of ``slice_counts`` (S, 3, C)
    (:func:`pooled_scores`), averaged over the batches."""
    batches = [slice_counts[start : start + batch_slices].sum(0) for start in range(0, len(slice_counts), batch_slices)]
    dice, iou = np.mean([pooled_scores(batch) for batch in batches], axis=0)
    return float(dice), float(iou)


def pooled_scores(counts: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of counts (3, C) pooled over a batch of slices (:func:`overlap_counts`, summed), each averaged
    over the classes present in the prediction or the truth; (1, 1) when none is. Pooled IoU is the "batched IoU"
    of the MIDL 2025 slice-selection study: one intersection over one union for the whole batch, so an empty slice
    neither helps nor hurts."""
    intersection, predicted, true = np.asarray(counts, dtype=float)
    total = predicted + true
    present = total > 0
    if not present.any():
        return 1.0, 1.0
    dice = 2.0 * intersection[present] / total[present]
    iou = intersection[present] / (total[present] - intersection[present])
    return float(dice.mean()), float(iou.mean())


def pooled_dice(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float | None:
    """Dice of pseudo-labels against the hidden truth, pooled over all their slices (each (C, H, W)), averaged over
    the classes present in either; None without slices, 1 when every class is absent from both."""
    return pooled_overlap(predictions, truths)[0]


def pooled_overlap(
    predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> tuple[float | None, float | None]:
    """(Dice, IoU) of masks (each (C, H, W)) against the truth, pooled over all of them (:func:`pooled_scores`);
    (None, None) without masks."""
    if not predictions:
        return None, None
    return pooled_scores(overlap_counts(np.stack(predictions).astype(bool), np.stack(truths).astype(bool)))


def value_at(x: Sequence[float], y: Sequence[float], at: float, reach: float = 0.0) -> float | None:
    """``y`` linearly interpolated at ``at`` on the increasing curve ``x``; the end value up to ``reach`` beyond
    either end (a budget rounded to whole slices lands a little off its nominal percent); None further out."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size == 0 or at < x[0] - reach - 1e-9 or at > x[-1] + reach + 1e-9:
        return None
    return float(np.interp(at, x, y))


def percent_to_reach(percents: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """S%: the smallest labeled percent at which the curve reaches ``target`` (the fully supervised value), linearly
    interpolated between the rounds around the crossing; None when it never does."""
    for index, (percent, value) in enumerate(zip(percents, values, strict=True)):
        if value >= target:
            if index == 0:
                return float(percent)
            before, lower = percents[index - 1], values[index - 1]
            return float(before + (percent - before) * (target - lower) / (value - lower))
    return None
