"""Strided blocks ("Less Is More", Burmeister et al. 2022): annotate the two end slices of a block, interpolate
the slices between them."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .base import STRATEGIES, Picks, RankingContext, spaced_by_construction
from .uncertainty import probability_measure, score_pool

BLOCK_CHOICES = ("random", "uncertainty")


class Block(NamedTuple):
    volume: int
    first: int  # slice index of one end
    last: int  # slice index of the other end (first + size - 1)

    @property
    def cost(self) -> int:
        """Slices to annotate: both ends, or the single slice of a block of one."""
        return 1 if self.first == self.last else 2


def free_runs(free: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1D boolean array (stop exclusive)."""
    edges = np.diff(np.concatenate([[0], free.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def blocks_of_size(free: np.ndarray, size: int, volume: int) -> list[Block]:
    """Every block of ``size`` consecutive free slices (overlapping ones included)."""
    return [
        Block(volume, start, start + size - 1)
        for run_start, run_stop in free_runs(free)
        for start in range(run_start, run_stop - size + 1)
    ]


@STRATEGIES.register("strided_blocks")
@spaced_by_construction(model_optional=True)
def strided_blocks(
    context: RankingContext, *, block_size: int = 5, blocks: str = "random", measure: str = "least_confidence"
) -> Picks:
    """Both end slices of non-overlapping blocks of consecutive slices; the inside is left to interpolation.

    Blocks never overlap annotated slices or each other. They are drawn at random, or by the model's mean
    uncertainty over the block. When no block of ``block_size`` is left the size shrinks (down to a single
    slice). Slices holding pseudo-labels are avoided until no unlabeled slice is left; then blocks over them
    become eligible, so pseudo-labels get replaced by true labels. Each block costs two slices of the budget
    (one for a block of one slice); the picked blocks are in ``details["blocks"]`` as (volume, first, last).

    Keyword Args:
        block_size: l, the block thickness in slices (5, 10 or 15 in the paper).
        blocks: "random" or "uncertainty" (needs a model).
        measure: the uncertainty of a slice for ``blocks="uncertainty"``: least_confidence, entropy, shannon
            or margin.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1 slice, got {block_size}.")
    if blocks not in BLOCK_CHOICES:
        raise ValueError(f"blocks must be one of {', '.join(BLOCK_CHOICES)}; got {blocks!r}.")
    if blocks == "uncertainty" and context.model is None:
        raise ValueError("strided_blocks with blocks='uncertainty' needs a trained model: pass --model CKPT.")
    slice_scores = None
    if blocks == "uncertainty":
        uncertainty = score_pool(context, probability_measure(measure), f"block uncertainty ({measure})")
        slice_scores = [np.full(v.n_slices, np.nan) for v in context.volumes]
        for index, volume in enumerate(context.volumes):
            slice_scores[index][volume.candidates] = uncertainty[context.pool_range(index)]

    occupied = [np.zeros(v.n_slices, bool) for v in context.volumes]
    for volume, taken in zip(context.volumes, occupied, strict=True):
        taken[volume.annotated] = True
    chosen: list[tuple[Block, float]] = []
    left = context.budget
    for avoid_pseudo_labels in (True, False):
        for size in range(block_size, 0, -1):
            if left == 0:
                break
            candidates = []
            for index, volume in enumerate(context.volumes):
                free = ~occupied[index]
                if avoid_pseudo_labels:
                    free[volume.pseudo_labeled] = False
                candidates.extend(blocks_of_size(free, size, index))
            if not candidates:
                continue
            if slice_scores is None:
                priority = context.rng.random(len(candidates))
            else:
                priority = np.array([slice_scores[b.volume][b.first : b.last + 1].mean() for b in candidates])
            # best first; ties to the lower volume, then the lower slice
            order = np.lexsort(([b.first for b in candidates], [b.volume for b in candidates], -priority))
            for position in order:
                block = candidates[position]
                if block.cost > left or occupied[block.volume][block.first : block.last + 1].any():
                    continue
                occupied[block.volume][block.first : block.last + 1] = True
                chosen.append((block, float(priority[position])))
                left -= block.cost
    slice_positions = {
        (index, int(s)): context.pool_range(index).start + position
        for index, volume in enumerate(context.volumes)
        for position, s in enumerate(volume.candidates)
    }
    positions, scores = [], []
    for block, priority in chosen:
        for end in dict.fromkeys((block.first, block.last)):
            positions.append(slice_positions[(block.volume, end)])
            scores.append(priority)
    details = {"blocks": [[b.volume, b.first, b.last] for b, _ in chosen]}
    return Picks(np.asarray(positions, dtype=np.int64), np.asarray(scores, dtype=float), details)
