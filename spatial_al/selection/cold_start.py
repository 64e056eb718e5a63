"""Model-free strategies for the first round, when no model exists yet: random, grids and strided blocks."""

from __future__ import annotations

import numpy as np

from .base import STRATEGIES, Picks, RankingContext, spaced_by_construction


@STRATEGIES.register("random")
def random_slices(context: RankingContext) -> np.ndarray:
    """Uniformly random slices (the baseline of every active-learning study); score = the random priority drawn.

    Each candidate slice draws a priority uniformly in [0, 1); the ``budget`` highest are picked.
    """
    return context.rng.random(context.pool_slice.size)


def centred_offset(n_slices: int, interval: int) -> int:
    """First grid slice so that a grid of step ``interval`` leaves equal margins at both ends of the volume."""
    return ((n_slices - 1) % interval) // 2


def _per_volume_picks(context: RankingContext, pick, shares: list[int] | None = None) -> Picks:
    """Run ``pick(volume, budget) -> slices`` on each volume with its share of the budget (default: equal shares,
    :meth:`RankingContext.volume_budgets`); score 1 per pick."""
    positions = []
    shares = context.volume_budgets() if shares is None else shares
    for index, (volume, share) in enumerate(zip(context.volumes, shares, strict=True)):
        if share:
            picked = pick(volume, share)
            positions.append(context.pool_range(index).start + np.searchsorted(volume.candidates, picked))
    chosen = np.concatenate(positions).astype(np.int64) if positions else np.zeros(0, np.int64)
    return Picks(chosen, np.ones(chosen.size))


def farthest_fill(candidates: np.ndarray, taken: np.ndarray, count: int) -> np.ndarray:
    """``count`` more of ``candidates``, each the one farthest from every slice taken so far (annotated or picked;
    ties to the lower slice): how a grid that cannot place its whole budget keeps covering the volume evenly."""
    taken = list(taken)
    free = np.setdiff1d(candidates, taken)
    added = []
    for _ in range(min(count, free.size)):
        distance = np.min(np.abs(free[:, None] - np.asarray(taken)[None]), axis=1) if taken else np.full(free.size, 1)
        chosen = int(free[np.argmax(distance)])
        added.append(chosen)
        taken.append(chosen)
        free = free[free != chosen]
    return np.asarray(added, dtype=np.int64)


@STRATEGIES.register("fixed_interval")
@spaced_by_construction()
def fixed_interval(context: RankingContext, *, interval: int | None = None, offset: int | None = None) -> Picks:
    """Every j-th slice (STAR's initialisation, j=10; the MIDL 2025 study's "fixed"); score 1 for every pick.

    The grid is ``offset, offset + j, offset + 2j, ...``. Without ``interval``, j is the largest step that fits
    the volume's share of the budget, and when no whole step fits it exactly the picks are spread over the volume
    with gaps that differ by at most one slice (a fixed interval of n / budget, as the MIDL 2025 study's density
    rho needs); without ``offset``, the grid is centred (equal margins at both ends). Grid slices already annotated
    are skipped; when that leaves fewer than the budget, the rest are the slices farthest from every annotated and
    picked slice (:func:`farthest_fill`); when a given interval's grid holds more than the budget, that many are
    taken evenly spread. Picks are in slice order, volume by volume.

    Keyword Args:
        interval: j, the step between picked slices (>= 1).
        offset: index of the first grid slice.
    """
    if interval is not None and interval < 1:
        raise ValueError(f"interval must be at least 1, got {interval}.")

    def grid_slices(volume, budget: int) -> np.ndarray:
        n_slices = volume.n_slices
        step = interval or (max(1, (n_slices - 1) // max(budget - 1, 1)) if budget > 1 else n_slices)
        start = centred_offset(n_slices, step) if offset is None else offset
        if not 0 <= start < n_slices:
            raise ValueError(f"offset must be a slice index (0 to {n_slices - 1}), got {start}.")
        grid = np.arange(start, n_slices, step)
        if interval is None and offset is None and grid.size > budget:
            grid = np.unique(np.round(np.linspace(0, n_slices - 1, budget)).astype(int))
        picks = np.intersect1d(grid, volume.candidates)
        if picks.size > budget:
            picks = picks[np.round(np.linspace(0, picks.size - 1, budget)).astype(int)]
        filled = farthest_fill(volume.candidates, np.union1d(volume.annotated, picks), budget - picks.size)
        return np.sort(np.concatenate([picks, filled]))

    return _per_volume_picks(context, grid_slices)


def balanced_volume_budgets(context: RankingContext) -> list[int]:
    """The budget shared so that volumes stay equally annotated ("Less Is More"'s stratified sampling): slice by slice,
    to the volume with the lowest annotated fraction (counting the slices given so far; ties drawn at random), at
    most ceil(budget / volumes) per volume, so a cohort with as many volumes as the budget gets one slice each."""
    cap = -(-context.budget // len(context.volumes))
    shares = [0] * len(context.volumes)
    tie_break = context.rng.random(len(context.volumes))
    for _ in range(context.budget):
        open_volumes = [i for i, v in enumerate(context.volumes) if shares[i] < min(cap, v.candidates.size)]
        if not open_volumes:
            break
        chosen = min(
            open_volumes,
            key=lambda i: ((context.volumes[i].annotated.size + shares[i]) / context.volumes[i].n_slices, tie_break[i]),
        )
        shares[chosen] += 1
    return shares


@STRATEGIES.register("stratified")
@spaced_by_construction()
def stratified(context: RankingContext, *, within: str = "strata") -> Picks:
    """Equal slices per volume, each volume's slices spread by strata or drawn at random ("Less Is More"'s StrRS).

    The budget goes slice by slice to the volume with the lowest annotated fraction (ties at random), at most
    ceil(budget / volumes) per volume, so volumes stay equally annotated across rounds and a cohort with at least
    as many volumes as the budget gives one slice per volume. Within a volume: one random slice from each of equal
    runs of consecutive candidates ("strata", which covers the volume like ``fixed_interval`` while keeping random
    sampling's independence from the grid), or uniformly random slices ("random", the paper's). Score 1 for every
    pick; picks are in slice order, volume by volume.

    Keyword Args:
        within: "strata" or "random".
    """
    if within not in ("strata", "random"):
        raise ValueError(f"within must be 'strata' or 'random', got {within!r}.")

    def pick(volume, budget: int) -> np.ndarray:
        if within == "random":
            return np.sort(context.rng.choice(volume.candidates, size=budget, replace=False))
        strata = np.array_split(volume.candidates, budget)
        return np.array([stratum[context.rng.integers(stratum.size)] for stratum in strata])

    return _per_volume_picks(context, pick, balanced_volume_budgets(context))
