"""Spatial strategies: STAR's similarity to the annotated slices around a slice, SBC-AL's structure and
boundary consistency."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..progress import report
from .base import STRATEGIES, Picks, RankingContext, select_top, uses_model
from .uncertainty import score_pool, slice_chunks

if TYPE_CHECKING:
    import torch

    from ..models.inference import SlicePredictor
    from ..progress import ProgressReporter
    from .base import PoolVolume


def star_groups(volume: PoolVolume, slices: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """STAR's group of each of ``slices`` (shape (n,)) and the annotated slices of each of those groups.

    With ``volume.group_slices`` (the paper's form), groups are fixed at the start: two consecutive slices of that
    first every-j-th grid and the slices between them, j+1 slices; a group's annotated set grows as queries land
    inside it, and the groups at the volume's ends (before the first grid slice, after the last) are supplemented to
    j+1 slices with slices of their neighbour (the paper's footnote 3). Without it, the groups are the runs between
    consecutive annotated slices now (a group at either end sees one annotated slice): the form for annotations made
    by hand, which follow no grid.

    Returns:
        (group id per slice, shape (n,); group id -> its annotated slices, sorted).

    Raises:
        ValueError: a group that holds no annotated slice (a grid slice not annotated).
    """
    grid = volume.group_slices if volume.group_slices.size else volume.annotated
    last = volume.n_slices - 1
    supplement = int(np.diff(grid).max()) if volume.group_slices.size > 1 else 0
    groups = np.searchsorted(grid, slices)
    members = {}
    for group in np.unique(groups).tolist():
        if group == 0:
            low, high = 0, max(int(grid[0]), min(supplement, last))
        elif group == grid.size:
            low, high = min(int(grid[-1]), max(last - supplement, 0)), last
        else:
            low, high = int(grid[group - 1]), int(grid[group])
        inside = volume.annotated[(volume.annotated >= low) & (volume.annotated <= high)]
        if inside.size == 0:
            raise ValueError(
                f"{volume.name}: STAR's group of slices {low}-{high} holds no annotated slice; annotate a slice of "
                "it (the grid slices of the first annotation bound the groups)."
            )
        members[group] = inside
    return groups, members


def star_aggregation(
    predictor: SlicePredictor, volume: PoolVolume, slices: np.ndarray, progress: ProgressReporter | None = None
) -> torch.Tensor:
    """STAR's spatial aggregation (eq. 2) of ``slices`` of ``volume``: probabilities (n, out_channels, H, W).

    Each slice attends, in one softmax, over every bottleneck position of its group's annotated slices
    (:func:`star_groups`) through the STAR network; the readout is decoded into its pseudo-label. The one
    aggregation path of the package: the ``star`` propagation method and the ``star_entropy`` pseudo-labels both
    call it.
    """
    import torch

    slices = np.asarray(slices, dtype=np.int64)
    probabilities: torch.Tensor | None = None
    groups, members = star_groups(volume, slices)
    for done, group in enumerate(members, start=1):
        rows = np.flatnonzero(groups == group)
        group_probabilities, _ = predictor.propagate(
            volume.model_inputs(slices[rows]),
            volume.model_inputs(members[group]),
            volume.label_inputs(members[group], predictor.model.config),
        )
        if probabilities is None:
            probabilities = torch.empty((slices.size, *group_probabilities.shape[1:]), dtype=torch.float32)
        probabilities[torch.as_tensor(rows)] = group_probabilities
        report(progress, done, len(members), f"STAR aggregation ({volume.name})")
    if probabilities is None:
        raise ValueError("STAR aggregation needs at least one slice to fill.")
    return probabilities


@STRATEGIES.register("star_similarity")
@uses_model("star")
def star_similarity(context: RankingContext, *, per_group: bool = False) -> Picks:
    """The slices least similar to the annotated slices of their group (STAR, eq. 4).

    Groups as :func:`star_groups` gives them. Similarity is the mean, over the group's annotated slices, of the cosine
    similarity between the unlabeled slice's f_U bottleneck and the annotated slice's f_L bottleneck (image and
    label). Score = 1 - mean cosine similarity; the budget goes to the least similar slices of the whole pool, as
    the paper's code queries.

    Keyword Args:
        per_group: every group gives its least similar slice before any gives a second (spreads the picks).
    """
    import torch

    predictor = context.predictor()
    scores, groups = [], []
    for index, volume in enumerate(context.volumes):
        if volume.annotated.size == 0:
            raise ValueError(
                f"{volume.name}: star_similarity compares slices with the annotated slices around them and none is "
                "annotated; annotate a first set (e.g. fixed_interval, every 10th slice) first."
            )
        targets = volume.label_inputs(volume.annotated, context.model.config)
        labeled = predictor.labeled_features(volume.model_inputs(volume.annotated), targets).flatten(1)
        labeled = torch.nn.functional.normalize(labeled, dim=1)  # (m, D*h*w)
        volume_groups, members = star_groups(volume, volume.candidates)
        columns = {group: np.searchsorted(volume.annotated, slices) for group, slices in members.items()}
        similarity = np.empty(volume.candidates.size)
        for positions in slice_chunks(volume, np.arange(volume.candidates.size)):
            unlabeled = predictor.features(volume.model_inputs(volume.candidates[positions])).flatten(1)
            cosine = (torch.nn.functional.normalize(unlabeled, dim=1) @ labeled.T).numpy()  # (n, m)
            for row, (position, group) in enumerate(zip(positions, volume_groups[positions], strict=True)):
                similarity[position] = cosine[row, columns[group]].mean()
            done = int(positions[-1]) + 1
            report(context.progress, done, volume.candidates.size, f"STAR similarity ({volume.name})")
        scores.append(1.0 - similarity)
        groups.append(index * (volume.n_slices + 1) + volume_groups)
    return select_top(context, np.concatenate(scores), np.concatenate(groups) if per_group else None)


def hausdorff_pixels(first: np.ndarray, second: np.ndarray) -> float:
    """Symmetric Hausdorff distance in pixels between two (H, W) masks, over every pixel of each: the largest
    distance from a pixel of one mask to the other, read off the Euclidean distance transform of the other's
    complement (scipy; exact, and one transform per mask instead of point-to-point distances). 0 when both masks are
    empty, the slice diagonal when only one is (the largest distance a slice allows)."""
    from scipy.ndimage import distance_transform_edt

    if not first.any() and not second.any():
        return 0.0
    if not first.any() or not second.any():
        return float(np.hypot(*first.shape))
    return float(max(distance_transform_edt(~second)[first].max(), distance_transform_edt(~first)[second].max()))


def soft_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Soft Dice of two non-negative maps, 2 sum(ab) / (sum(a^2) + sum(b^2)) (V-Net's form: 1 for identical maps,
    binary or not, 0 for disjoint ones); 1 when both are zero."""
    total = float((a * a).sum() + (b * b).sum())
    return 1.0 if total == 0 else 2.0 * float((a * b).sum()) / total


def linear_dice(a: np.ndarray, b: np.ndarray) -> float:
    """SBC-AL's Dice of two maps as printed, 2 sum(ab) / (sum(a) + sum(b)) (the Dice coefficient of binary masks;
    for distance maps it is not bounded by 1); 1 when both are zero."""
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a * b).sum()) / total


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two maps as vectors; 1 when both are zero, 0 when only one is."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float((a * b).sum()) / norms


SBC_FORMS = ("paper", "normalized")


def structure_boundary_scores(
    outputs: dict[str, torch.Tensor],
    head: str,
    weights: tuple[float, float, float, float],
    form: str = "paper",
    distance_scale: str = "normalized",
) -> np.ndarray:
    """SBC-AL's inconsistency per slice (N,) from :meth:`SlicePredictor.structure` outputs; higher = query sooner.

    ``form="paper"`` (Section 2 of the paper): CS = w_s SCS + w_b BCS with SCS = w_c Q_cos + w_d Q_dice, Q_cos = 1 -
    cosine similarity (the printed formula, -sum(d_s d_o) / (||d_s||^2 ||d_o||^2), reads as a typo of this: a
    cosine with squared norms and a minus sign is neither bounded nor a consistency) and Q_dice = 1 - 2 sum(d_s d_o) /
    (sum d_s + sum d_o), as printed, between the distance transform of the **refined** segmentation d_s and the SFP
    output d_o, and BCS = the symmetric Hausdorff distance in pixels between the coarse and the refined
    segmentation; the score is CS. BCS is unbounded, so where the two segmentations disagree the boundary term
    dominates.

    ``form="normalized"`` (this project's earlier variant): both terms are consistencies in [0, 1] (SCS between the
    distance transform of the **coarse** segmentation and d_o, V-Net's soft Dice with squares, BCS = 1 - Hausdorff /
    slice diagonal) and the score is 1 - CS. Every term is averaged over the classes.

    ``distance_scale`` is the model's (``ModelConfig.distance_scale``): d_s is made on the scale SFP regresses.
    A model without SFP (``distance`` None, the paper's ablation) scores by BCS alone; without ASR the refined
    segmentation is the coarse one, so BCS is 0 and SCS ranks.
    """
    from ..models.inference import most_likely_class
    from ..training.data import distance_targets

    if form not in SBC_FORMS:
        raise ValueError(f"Unknown SBC-AL form {form!r}; choose one of {', '.join(SBC_FORMS)}.")
    w_s, w_b, w_c, w_d = weights
    classes = outputs["coarse"].shape[1] - (1 if head == "softmax" else 0)

    def masks(probabilities: torch.Tensor) -> np.ndarray:  # (N, C_out, H, W) -> (N, classes, H, W) bool
        if head == "softmax":
            labels = most_likely_class(probabilities)
            return np.stack([(labels == c + 1).numpy() for c in range(classes)], axis=1)
        return (probabilities > 0.5).numpy()

    coarse, refined = masks(outputs["coarse"]), masks(outputs["refined"])
    predicted_distance = None if outputs["distance"] is None else outputs["distance"].numpy()
    diagonal = float(np.hypot(*coarse.shape[-2:]))

    def score(n: int) -> float:
        structure = w_c + w_d  # full consistency: no SFP, no structure term
        if predicted_distance is not None:
            expected = distance_targets(refined[n] if form == "paper" else coarse[n], distance_scale)
            pairs = [(expected[c], predicted_distance[n, c]) for c in range(classes)]
            dice = linear_dice if form == "paper" else soft_dice
            structure = np.mean([w_c * cosine(a, b) + w_d * dice(a, b) for a, b in pairs])
        distance = np.mean([hausdorff_pixels(coarse[n, c], refined[n, c]) for c in range(classes)])
        if form == "paper":
            return w_s * ((w_c + w_d) - structure) + w_b * distance
        return 1.0 - (w_s * structure + w_b * (1.0 - distance / diagonal))

    # the distance transforms (scipy) release the GIL: the slices are scored on every core at once
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        return np.fromiter(pool.map(score, range(len(coarse))), dtype=float, count=len(coarse))


@STRATEGIES.register("sbc_consistency")
@uses_model("structure", default_per_volume=1)
def sbc_consistency(
    context: RankingContext,
    *,
    structure_weight: float = 0.8,
    boundary_weight: float = 0.2,
    cosine_weight: float = 0.6,
    dice_weight: float = 0.4,
    form: str = "paper",
) -> np.ndarray:
    """Slices where SBC-AL's structure and boundary outputs disagree most (see :func:`structure_boundary_scores`).

    Paper form: CS = w_s SCS + w_b BCS, SCS = w_c (1 - cos) + w_d (1 - soft Dice) between the distance transform of
    the refined segmentation and the SFP maps, BCS = Hausdorff distance in pixels between the coarse and refined
    segmentations; the K highest CS are queried. ``form="normalized"``: both terms as consistencies in [0, 1].

    Keyword Args:
        structure_weight: w_s (0.8). boundary_weight: w_b (0.2). cosine_weight: w_c (0.6). dice_weight: w_d (0.4).
        form: "paper" or "normalized".
    """
    weights = (structure_weight, boundary_weight, cosine_weight, dice_weight)
    if min(weights) < 0:
        raise ValueError(f"SBC-AL weights must be non-negative, got {weights}.")
    if form not in SBC_FORMS:
        raise ValueError(f"Unknown SBC-AL form {form!r}; choose one of {', '.join(SBC_FORMS)}.")

    def scorer(predictor, inputs):
        scale = predictor.model.config.distance_scale  # d_s on the scale SFP was trained to regress
        return structure_boundary_scores(predictor.structure(inputs), predictor.head, weights, form, scale)

    return score_pool(context, scorer, "structure and boundary consistency")
