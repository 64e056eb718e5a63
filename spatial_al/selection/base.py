"""The ranking driver shared by every strategy: checks, budget, the result."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..progress import ProgressReporter
from ..registry import Registry
from ..volume import check_label_dtype, check_scalar_volume, check_slice_axis, normalize_slice_indices


@dataclass(frozen=True)
class RankingContext:
    """What a strategy may look at.

    Attributes:
        image: intensities, slice-first (S, H, W), or None.
        labels: label map, slice-first (S, H, W), or None; only annotated slices are meaningful.
        annotated: sorted indices of annotated slices.
        candidates: sorted indices a strategy may pick (every slice not annotated).
        budget: how many slices to pick.
        rng: the seeded random generator of this call.
        model: a segmentation model for model-based strategies, or None.
        progress: progress reporter, or None.
    """

    image: np.ndarray | None
    labels: np.ndarray | None
    annotated: np.ndarray
    candidates: np.ndarray
    budget: int
    rng: np.random.Generator
    model: Any = None
    progress: ProgressReporter | None = None

    @property
    def n_slices(self) -> int:
        return int(self.annotated.size + self.candidates.size)


# A strategy maps a context (and its keyword-only options) to (slices, scores): the picked slices in rank order,
# best first, with one score each (higher = annotate sooner).
Strategy = Callable[..., tuple[np.ndarray, np.ndarray]]

STRATEGIES: Registry[Strategy] = Registry("strategy")


class RankedSlice(NamedTuple):
    rank: int  # 1 = annotate first
    slice: int
    score: float


@dataclass
class RankingResult:
    """Slices to annotate next, best first.

    Attributes:
        slices: slice indices along ``axis``, shape (n,), in rank order.
        scores: one score per slice, shape (n,) (higher = annotate sooner; its meaning depends on the strategy).
        strategy: registry name of the strategy.
        axis: slice axis.
    """

    slices: np.ndarray
    scores: np.ndarray
    strategy: str
    axis: int

    def __iter__(self) -> Iterator[RankedSlice]:
        for rank, (index, score) in enumerate(zip(self.slices, self.scores, strict=True), start=1):
            yield RankedSlice(rank, int(index), float(score))

    def __len__(self) -> int:
        return int(self.slices.size)

    def write_csv(self, path: str | Path, with_strategy: bool = False) -> Path:
        """CSV with columns ``rank,slice,score`` (and ``strategy`` when asked)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["rank", "slice", "score", *(["strategy"] if with_strategy else [])])
            for row in self:
                writer.writerow([row.rank, row.slice, f"{row.score:.6g}", *([self.strategy] if with_strategy else [])])
        return path


def rank(
    image: np.ndarray | None,
    strategy: str,
    budget: int,
    labels: np.ndarray | None = None,
    annotated: Iterable[int] = (),
    axis: int = 0,
    model: Any = None,
    seed: int = 0,
    progress: ProgressReporter | None = None,
    **options,
) -> RankingResult:
    """Rank the slices to annotate next.

    Args:
        image: intensities, 3D (K, J, I) or any 3D order ``axis`` refers to; may be None when ``labels`` is given.
        strategy: a name from :data:`STRATEGIES` (``spatial-al strategies``).
        budget: how many slices to pick, at least 1 and at most the number of slices not yet annotated.
        labels: label map on the same grid (read on annotated slices only), or None.
        annotated: slices already annotated; never picked again.
        axis: the slice axis (array axis 0, 1 or 2).
        model: segmentation model, for model-based strategies.
        seed: seed of every random choice (same inputs and seed, same ranking).
        progress: receives progress reports and can cancel.
        **options: options of the strategy (see its docstring).

    Returns:
        A :class:`RankingResult`, best slice first.

    Raises:
        ValueError: a budget larger than what is left, every slice annotated, an index out of range, an unknown
            strategy (with the closest name) or option, a 4D/RGB image.
    """
    if image is None and labels is None:
        raise ValueError("rank needs an image or a label map to know the slices.")
    reference = image if image is not None else labels
    reference = np.asarray(reference)
    check_scalar_volume(reference, "image" if image is not None else "labels")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != reference.shape:
            raise ValueError(f"labels shape {labels.shape} differs from image shape {reference.shape}.")
        check_label_dtype(labels)
    axis = check_slice_axis(axis)
    function = STRATEGIES.get(strategy)
    STRATEGIES.check_options(strategy, options)
    n_slices = reference.shape[axis]
    annotated_slices = normalize_slice_indices(annotated, n_slices)
    candidates = np.setdiff1d(np.arange(n_slices), annotated_slices)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a whole number of slices, at least 1; got {budget!r}.")
    if candidates.size == 0:
        raise ValueError(f"Every slice ({n_slices}) is already annotated: there is nothing left to rank.")
    if budget > candidates.size:
        raise ValueError(
            f"budget {budget} is larger than the {candidates.size} slices left unannotated "
            f"(of {n_slices}); ask for at most {candidates.size}."
        )
    context = RankingContext(
        image=None if image is None else np.moveaxis(np.asarray(image), axis, 0),
        labels=None if labels is None else np.moveaxis(labels, axis, 0),
        annotated=annotated_slices,
        candidates=candidates,
        budget=int(budget),
        rng=np.random.default_rng(seed),
        model=model,
        progress=progress,
    )
    slices, scores = function(context, **options)
    return RankingResult(np.asarray(slices, dtype=np.int64), np.asarray(scores, dtype=float), strategy, axis)
