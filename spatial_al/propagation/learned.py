"""Learned propagation with a trained model: STAR's spatial aggregation (``star``) and the segmentation model's own
prediction (``model``); the anchored windows and their blending, which ``sli2vol`` uses for its two cascades.

Torch is imported inside the functions, so importing the package stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..progress import report
from .base import PROPAGATORS, MethodInfo, PropagationTask, gaps, needs

if TYPE_CHECKING:
    import torch

    from ..selection.base import PoolVolume

# Slices per forward pass of a chunk (bounds the memory of probabilities and attention).
CHUNK_SLICES = 32
WEIGHTINGS = ("distance", "uniform")


def anchored_runs(annotated: np.ndarray, n_slices: int, extrapolate: bool) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """Runs of slices filled from the same annotated slices (their anchors), in slice order.

    A gap between consecutive annotated slices a < b is one run anchored at (a, b); with ``extrapolate`` the
    slices before the first and after the last annotated slice are runs anchored at that slice alone.
    """
    runs = [(np.arange(a + 1, b), (a, b)) for a, b in gaps(annotated)]
    if extrapolate and annotated[0] > 0:
        runs.insert(0, (np.arange(0, annotated[0]), (int(annotated[0]),)))
    if extrapolate and annotated[-1] < n_slices - 1:
        runs.append((np.arange(annotated[-1] + 1, n_slices), (int(annotated[-1]),)))
    return runs


def check_weighting(weighting: str) -> None:
    """Raise ValueError unless ``weighting`` is one of :data:`WEIGHTINGS`."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}.")


def anchor_weights(slices: np.ndarray, anchors: tuple[int, ...], weighting: str) -> np.ndarray:
    """Weight of each anchor's propagation on each slice, shape (len(anchors), len(slices)), summing to 1 per slice:
    linear in the distance to the other anchor ("distance"), or equal ("uniform")."""
    if len(anchors) == 1:
        return np.ones((1, slices.size))
    if weighting == "uniform":
        return np.full((2, slices.size), 0.5)
    first, last = anchors
    position = (slices - first) / (last - first)
    return np.stack([1.0 - position, position])


def blended_runs(
    task: PropagationTask,
    propagate_from: Callable[[int, np.ndarray], torch.Tensor],
    extrapolate: bool,
    weighting: str,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Each run's slices and their probabilities (n, C, H, W): every anchor propagates to the whole run (its window
    reaches the next annotated slice on either side, so the windows of neighbouring annotated slices overlap on
    the gap between them) and the overlapping propagations are averaged with :func:`anchor_weights`.

    Args:
        task: the propagation task (annotated slices, progress).
        propagate_from: (anchor, slices of a run in ascending order) -> probabilities (n, C, H, W) of those slices.
        extrapolate: also fill the slices beyond the first and the last annotated slice.
        weighting: "distance" or "uniform".
    """
    runs = anchored_runs(task.annotated, task.n_slices, extrapolate)
    for index, (slices, anchors) in enumerate(runs):
        report(task.progress, index, len(runs), f"slices {slices[0]}-{slices[-1]}")
        weights = anchor_weights(slices, anchors, weighting)
        blended = None
        for anchor, weight in zip(anchors, weights, strict=True):
            weighted = propagate_from(anchor, slices) * torch_column(weight)
            blended = weighted if blended is None else blended + weighted
        yield slices, blended
    report(task.progress, len(runs), len(runs), "done")


def torch_column(values: np.ndarray) -> torch.Tensor:
    """(n,) weights as a float tensor (n, 1, 1, 1) that broadcasts over (n, C, H, W)."""
    import torch

    return torch.as_tensor(values, dtype=torch.float32)[:, None, None, None]


def slice_confidence(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """1 - normalised mean pixel entropy of each slice's probabilities (n, C, H, W), shape (n,): STAR's measure for
    choosing its top-N pseudo-labels."""
    from ..selection.uncertainty import shannon_entropy

    return 1.0 - shannon_entropy(probabilities, head)


def model_volume(task: PropagationTask) -> PoolVolume:
    """The task as model-based code sees a volume: normalised slices, the annotated slices' labels as the model's
    classes (``PoolVolume.model_inputs`` / ``label_inputs``)."""
    from ..selection.base import PoolVolume

    return PoolVolume(
        image=task.image,
        label_layers=task.label_layers,
        segments=task.segments,
        annotated=task.annotated,
        pseudo_labeled=np.zeros(0, dtype=np.int64),
        candidates=np.setdiff1d(np.arange(task.n_slices), task.annotated),
        name="the segmentation",
    )


def write_classes(task: PropagationTask, filled: np.ndarray, slices: np.ndarray, probabilities: torch.Tensor) -> None:
    """Write a model's probabilities (n, out_channels, H, W) of ``slices`` into ``filled`` (L, S, H, W) as the
    segments of its classes: the likeliest class (softmax, 0 = background) or every class above 0.5 (sigmoid)."""
    from ..models.inference import most_likely_class
    from ..training.data import match_classes

    config = task.model.config
    classes = match_classes(task.segments, config.class_names)
    if config.head == "softmax":
        chosen = most_likely_class(probabilities).numpy()
        present = [chosen == index + 1 for index in range(len(classes))]
    else:
        present = list((probabilities > 0.5).numpy().transpose(1, 0, 2, 3))
    for segment, mask in zip(classes, present, strict=True):
        layer = filled[segment.layer, slices]
        layer[mask] = segment.label_value
        filled[segment.layer, slices] = layer


@PROPAGATORS.register("model")
@needs(MethodInfo(image=True, model="segmentation", reads_annotation=False, fills_everywhere=True))
def model_prediction(task: PropagationTask) -> tuple[np.ndarray, np.ndarray]:
    """The segmentation model's own prediction on every slice not annotated (CEAL-style pseudo-labels, Wang 2016).

    Fills every slice, inside the annotated range or not; confidence is 1 - normalised mean entropy, and
    ``most_confident`` keeps CEAL's most confident slices only. Needs a model trained on these segments.
    """
    from ..device import resolve_device
    from ..models.inference import SlicePredictor

    volume = model_volume(task)
    predictor = SlicePredictor(task.model, resolve_device(task.device), task.batch_size)
    filled = np.zeros_like(task.label_layers)
    confidence = np.full(task.n_slices, np.nan, dtype=np.float32)
    for start in range(0, volume.candidates.size, CHUNK_SLICES):
        slices = volume.candidates[start : start + CHUNK_SLICES]
        probabilities = predictor.probabilities(volume.model_inputs(slices))
        write_classes(task, filled, slices, probabilities)
        confidence[slices] = slice_confidence(probabilities, predictor.head)
        report(task.progress, start + slices.size, volume.candidates.size, "predicting")
    return filled, confidence


@PROPAGATORS.register("star")
@needs(MethodInfo(image=True, model="star"))
def star_propagation(task: PropagationTask, *, extrapolate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """STAR spatial aggregation (Ma et al., MICCAI 2025): each slice attends to its group's annotated slices (eq. 2).

    A slice between annotated slices a < k < b attends, in one softmax, over every bottleneck position of a and b
    (with their labels, through the labeled-slice encoder f_L); the readout is decoded into its pseudo-label. This
    is the computation of STAR's top-N pseudo-labels (``star_entropy``): both call
    :func:`~spatial_al.selection.spatial.star_aggregation`. Confidence is 1 - normalised mean entropy, the measure
    STAR ranks its top-N pseudo-labels by (``most_confident``).

    Keyword Args:
        extrapolate: also fill the slices before the first and after the last annotated slice, from that slice
            alone (STAR's groups at the volume's ends).
    """
    from ..device import resolve_device
    from ..models.inference import SlicePredictor
    from ..selection.spatial import star_aggregation

    volume = model_volume(task)
    predictor = SlicePredictor(task.model, resolve_device(task.device), task.batch_size)
    first, last = task.annotated[0], task.annotated[-1]
    slices = (
        volume.candidates
        if extrapolate
        else volume.candidates[(volume.candidates > first) & (volume.candidates < last)]
    )
    filled = np.zeros_like(task.label_layers)
    confidence = np.full(task.n_slices, np.nan, dtype=np.float32)
    for start in range(0, slices.size, CHUNK_SLICES):
        chunk = slices[start : start + CHUNK_SLICES]
        probabilities = star_aggregation(predictor, volume, chunk)
        write_classes(task, filled, chunk, probabilities)
        confidence[chunk] = slice_confidence(probabilities, predictor.head)
        report(task.progress, start + chunk.size, slices.size, "STAR aggregation")
    return filled, confidence
