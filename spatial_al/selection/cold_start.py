"""Model-free strategies for the first round, when no model exists yet."""

from __future__ import annotations

import numpy as np

from .base import STRATEGIES, RankingContext


@STRATEGIES.register("random")
def random_slices(context: RankingContext) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random slices (the baseline of every active-learning study); score = the random priority drawn.

    Each candidate slice draws a priority uniformly in [0, 1); the ``budget`` highest are picked.
    """
    priority = context.rng.random(context.candidates.size)
    order = np.argsort(-priority, kind="stable")[: context.budget]
    return context.candidates[order], priority[order]


def centred_offset(n_slices: int, interval: int) -> int:
    """First grid slice so that a grid of step ``interval`` leaves equal margins at both ends of the volume."""
    return ((n_slices - 1) % interval) // 2


@STRATEGIES.register("fixed_interval")
def fixed_interval(
    context: RankingContext, *, interval: int | None = None, offset: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every j-th slice (STAR's initialisation, j=10; the MIDL 2025 study's "fixed"); score 1 for every pick.

    The grid is ``offset, offset + j, offset + 2j, ...``. Without ``interval``, j is the largest step that fits
    ``budget`` slices in the volume; without ``offset``, the grid is centred (equal margins at both ends). Grid
    slices already annotated are skipped, so fewer than ``budget`` slices may come back; when the grid holds more
    than ``budget`` candidates, ``budget`` of them are taken evenly spread. Picks are in slice order.

    Keyword Args:
        interval: j, the step between picked slices (>= 1).
        offset: index of the first grid slice.
    """
    n_slices = context.n_slices
    if interval is None:
        interval = max(1, (n_slices - 1) // max(context.budget - 1, 1)) if context.budget > 1 else n_slices
    if interval < 1:
        raise ValueError(f"interval must be at least 1, got {interval}.")
    if offset is None:
        offset = centred_offset(n_slices, interval)
    if not 0 <= offset < n_slices:
        raise ValueError(f"offset must be a slice index (0 to {n_slices - 1}), got {offset}.")
    grid = np.arange(offset, n_slices, interval)
    picks = np.intersect1d(grid, context.candidates)
    if picks.size > context.budget:
        picks = picks[np.round(np.linspace(0, picks.size - 1, context.budget)).astype(int)]
    return picks, np.ones(picks.size)


@STRATEGIES.register("stratified")
def stratified(context: RankingContext) -> tuple[np.ndarray, np.ndarray]:
    """One random slice from each of ``budget`` equal runs of consecutive candidate slices; score 1 for every pick.

    Covers the whole volume like ``fixed_interval`` while keeping random sampling's independence from the grid.
    Picks are in slice order.
    """
    strata = np.array_split(context.candidates, context.budget)
    picks = np.array([stratum[context.rng.integers(stratum.size)] for stratum in strata])
    return picks, np.ones(picks.size)
