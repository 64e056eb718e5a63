"""Pseudo-label selection for semi-supervised rounds: which unlabeled slices a model predicts confidently enough to
train on. Each selector returns slices with a confidence in [0, 1] for the propagation module and the trainer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compatibility import check_model
from ..progress import ProgressReporter
from ..registry import Registry
from ..volume import Segment
from .base import PoolVolume, RankingContext, RankingVolume, to_pool_volume
from .spatial import annotated_groups, group_annotated_slices
from .uncertainty import shannon_entropy


@dataclass
class PseudoLabelSelection:
    """Slices chosen for pseudo-labels, most confident first.

    Attributes:
        slices: slice indices along the axis, shape (n,).
        confidence: one confidence in [0, 1] per slice, shape (n,) (1 - normalised mean entropy).
        method: the selector's name.
    """

    slices: np.ndarray
    confidence: np.ndarray
    method: str


# A selector maps (context, volume) to a confidence per candidate slice of the volume, shape (n,).
PSEUDO_LABEL_SELECTORS: Registry = Registry("pseudo-label selector")


@PSEUDO_LABEL_SELECTORS.register("ceal")
def ceal_confidence(context: RankingContext, volume: PoolVolume) -> np.ndarray:
    """CEAL (Wang et al. 2016): the model's own most confident predictions, confidence = 1 - normalised entropy."""
    predictor = context.predictor()
    probabilities = predictor.probabilities(volume.model_inputs(volume.candidates), context.progress)
    return 1.0 - shannon_entropy(probabilities, predictor.head)


@PSEUDO_LABEL_SELECTORS.register("star_entropy")
def star_entropy_confidence(context: RankingContext, volume: PoolVolume) -> np.ndarray:
    """STAR's top-N: slices whose STAR propagation from their group's annotated slices has the lowest entropy."""
    predictor = context.predictor()
    config = context.model.config
    confidence = np.empty(volume.candidates.size)
    groups = annotated_groups(volume.annotated, volume.candidates)
    for group in np.unique(groups):
        members = group_annotated_slices(volume.annotated, group)
        targets = volume.label_inputs(members, config)
        rows = np.flatnonzero(groups == group)
        probabilities, _ = predictor.propagate(
            volume.model_inputs(volume.candidates[rows]), volume.model_inputs(members), targets, context.progress
        )
        confidence[rows] = 1.0 - shannon_entropy(probabilities, predictor.head)
    return confidence


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
    """The unlabeled slices to pseudo-label: the ``count`` most confident, and/or those above ``min_confidence``.

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
    from ..device import resolve_device

    selector = PSEUDO_LABEL_SELECTORS.get(method)
    if count is None and min_confidence is None:
        raise ValueError("Say how many pseudo-labels to keep: give count (top-N) and/or min_confidence.")
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")
    volume = to_pool_volume(RankingVolume(image, labels, tuple(segments), annotated), axis, 0)
    kind = "star" if method == "star_entropy" else "segmentation"
    check_model(model, f"The pseudo-label selector {method!r}", kind, axis, [(volume.name, volume.segments)])
    if method == "star_entropy" and volume.annotated.size == 0:
        raise ValueError("star_entropy propagates from annotated slices and none is annotated; annotate some first.")
    context = RankingContext(
        volumes=(volume,),
        budget=count or volume.candidates.size,
        rng=np.random.default_rng(0),
        model=model,
        device=resolve_device(device),
        batch_size=batch_size,
        progress=progress,
    )
    confidence = selector(context, volume)
    order = np.lexsort((volume.candidates, -confidence))
    if min_confidence is not None:
        order = order[confidence[order] >= min_confidence]
    order = order[:count]
    return PseudoLabelSelection(volume.candidates[order], confidence[order], method)
