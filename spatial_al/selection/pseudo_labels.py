"""Pseudo-label selection for semi-supervised rounds: which unlabeled slices a model predicts confidently enough to
train on, and their pseudo-labels. Confidence is 1 - normalised mean entropy, in [0, 1]."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compatibility import check_model
from ..progress import ProgressReporter, report
from ..registry import Registry
from ..volume import Segment
from .base import PoolVolume, RankingContext, RankingVolume, to_pool_volume
from .spatial import star_aggregation
from .uncertainty import shannon_entropy, slice_chunks

if TYPE_CHECKING:
    import torch


@dataclass
class PseudoLabelSelection:
    """Slices chosen for pseudo-labels, most confident first.

    Attributes:
        slices: slice indices along the axis, shape (n,).
        confidence: one confidence in [0, 1] per slice, shape (n,) (1 - normalised mean entropy).
        method: the selector's name.
        volumes: the volume index of each slice, shape (n,) (all 0 for one volume).
        labels: the pseudo-label of each slice, multi-hot over the model's classes, (classes, H, W) uint8; None
            unless asked.
    """

    slices: np.ndarray
    confidence: np.ndarray
    method: str
    volumes: np.ndarray | None = None
    labels: list[np.ndarray] | None = None


# A selector maps (context, volume, slices (n,)) to the model's probabilities (n, out_channels, H, W) on those slices.
PSEUDO_LABEL_SELECTORS: Registry = Registry("pseudo-label selector")


@PSEUDO_LABEL_SELECTORS.register("ceal")
def ceal_probabilities(context: RankingContext, volume: PoolVolume, slices: np.ndarray) -> torch.Tensor:
    """CEAL (Wang et al. 2016): the model's own prediction; its most confident slices are kept."""
    return context.predictor().probabilities(volume.model_inputs(slices))


@PSEUDO_LABEL_SELECTORS.register("star_entropy")
def star_entropy_probabilities(context: RankingContext, volume: PoolVolume, slices: np.ndarray) -> torch.Tensor:
    """STAR's top-N: the spatial aggregation (eq. 2) from each slice's group of annotated slices; the lowest-entropy
    aggregations are kept."""
    return star_aggregation(context.predictor(), volume, slices)


def selector_kind(method: str) -> str:
    """The kind of model a selector needs (see :data:`~spatial_al.compatibility.MODEL_KINDS`)."""
    PSEUDO_LABEL_SELECTORS.get(method)
    return "star" if method == "star_entropy" else "segmentation"


def class_masks(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """Multi-hot pseudo-labels (n, classes, H, W) uint8 from probabilities (n, out_channels, H, W): the likeliest
    class (softmax, channel 0 = background) or every class above 0.5 (sigmoid)."""
    from ..models.inference import most_likely_class

    if head == "softmax":
        chosen = most_likely_class(probabilities).numpy()
        return np.stack([chosen == c for c in range(1, probabilities.shape[1])], axis=1).astype(np.uint8)
    return (probabilities > 0.5).numpy().astype(np.uint8)


def select_cohort_pseudo_labels(
    volumes: Sequence[RankingVolume],
    method: str,
    model: Any,
    *,
    count: int | None = None,
    min_confidence: float | None = None,
    with_labels: bool = True,
    axis: int = 0,
    device: Any = "auto",
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> PseudoLabelSelection:
    """The most confident unlabeled slices of a whole cohort (one ranking over every volume, as STAR and CEAL rank
    their pool), and their pseudo-labels.

    Args:
        volumes: the cohort (a :class:`RankingVolume` per volume; annotated slices are never pseudo-labeled, and
            bound STAR's groups).
        method: a name from :data:`PSEUDO_LABEL_SELECTORS` ("ceal", or "star_entropy" with a STAR model).
        model: the trained model.
        count: N of the top-N over the cohort (default: every slice passing ``min_confidence``).
        min_confidence: keep only slices at least this confident.
        with_labels: also compute the pseudo-labels of the chosen slices (``labels`` of the result, slices cut
            along ``axis``).
        axis: slice axis of every volume.
        device: where the model runs.
        batch_size: slices per forward pass.
        progress: progress reporter (one step per volume scored).

    Returns:
        A :class:`PseudoLabelSelection` with ``volumes`` set; ties go to the lower volume, then the lower slice.

    Raises:
        ValueError: unknown method, no model or one of the wrong kind, no annotated slice for star_entropy, neither
            ``count`` nor ``min_confidence``.
    """
    from ..device import resolve_device

    selector = PSEUDO_LABEL_SELECTORS.get(method)
    if count is None and min_confidence is None:
        raise ValueError("Say how many pseudo-labels to keep: give count (top-N) and/or min_confidence.")
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")
    pool = [to_pool_volume(volume, axis, index) for index, volume in enumerate(volumes)]
    segment_sets = [(v.name, v.segments) for v in pool]
    check_model(model, f"The pseudo-label selector {method!r}", selector_kind(method), axis, segment_sets)
    if method == "star_entropy":
        for volume in pool:
            if volume.annotated.size == 0:
                raise ValueError(
                    f"{volume.name}: star_entropy propagates from annotated slices and none is annotated; annotate "
                    "some first."
                )
    context = RankingContext(
        volumes=tuple(pool),
        budget=max(1, sum(v.candidates.size for v in pool)),
        rng=np.random.default_rng(0),
        model=model,
        device=resolve_device(device),
        batch_size=batch_size,
    )
    head = model.config.head
    confidence = []
    for done, volume in enumerate(pool, start=1):
        values = [
            1.0 - shannon_entropy(selector(context, volume, chunk), head)
            for chunk in slice_chunks(volume, volume.candidates)
        ]
        confidence.append(np.concatenate(values) if values else np.zeros(0))
        report(progress, done, len(pool), f"pseudo-label confidence ({method})")
    scores = np.concatenate(confidence)
    volume_of = context.pool_volume
    slice_of = context.pool_slice
    order = np.lexsort((slice_of, volume_of, -scores))
    if min_confidence is not None:
        order = order[scores[order] >= min_confidence]
    order = order[:count]
    labels = None
    if with_labels:
        labels = [None] * order.size
        for index in np.unique(volume_of[order]):
            rows = np.flatnonzero(volume_of[order] == index)
            masks = class_masks(selector(context, pool[index], slice_of[order][rows]), head)
            for row, mask in zip(rows, masks, strict=True):
                labels[row] = mask
    return PseudoLabelSelection(slice_of[order], scores[order], method, volume_of[order], labels)


def select_pseudo_labels(
    image: np.ndarray,
    method: str,
    model: Any,
    *,
    count: int | None = None,
    min_confidence: float | None = None,
    labels: np.ndarray | None = None,
    segments: Sequence[Segment] = (),
    annotated: Iterable[int] = (),
    axis: int = 0,
    device: Any = "auto",
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> PseudoLabelSelection:
    """The unlabeled slices of one volume to pseudo-label: the ``count`` most confident, and/or those above
    ``min_confidence`` (see :func:`select_cohort_pseudo_labels`, which this calls with one volume).

    Args:
        image: (K, J, I) intensities.
        method: a name from :data:`PSEUDO_LABEL_SELECTORS` ("ceal", or "star_entropy" with a STAR model).
        model: the trained model.
        count: N of the top-N (default: every slice passing ``min_confidence``).
        min_confidence: keep only slices at least this confident.
        labels: label layers (L, K, J, I) or map; star_entropy reads the annotated slices' labels.
        segments: the structures in ``labels`` (names = the model's classes).
        annotated: annotated slices (never pseudo-labeled; STAR's groups are bounded by them).
        axis: slice axis.
        device: where the model runs.
        batch_size: slices per forward pass.
        progress: progress reporter.

    Raises:
        ValueError: unknown method, no model, a non-STAR model for star_entropy, no annotated slice for
            star_entropy, neither ``count`` nor ``min_confidence``.
    """
    selection = select_cohort_pseudo_labels(
        [RankingVolume(image, labels, tuple(segments), annotated)],
        method,
        model,
        count=count,
        min_confidence=min_confidence,
        with_labels=False,
        axis=axis,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )
    return PseudoLabelSelection(selection.slices, selection.confidence, method)
