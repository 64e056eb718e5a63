"""Diversity and representativeness strategies on the model's bottleneck features.

A slice's feature vector is the bottleneck activation max-pooled over space, (D,) per slice ("Less Is More"). The
strategies here compare candidates with the annotated slices and with each other in that space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

from ..progress import report
from .base import STRATEGIES, Picks, RankingContext, uses_model
from .uncertainty import MC_DROPOUT_MEASURES, mc_dropout_scorer, probability_measure, score_pool, slice_chunks


@dataclass
class PoolFeatures:
    """Max-pooled bottleneck features: ``candidates`` (n, D) in the order asked for, ``annotated`` (m, D)."""

    candidates: np.ndarray
    annotated: np.ndarray


def slice_features(context: RankingContext, positions: np.ndarray | None = None) -> PoolFeatures:
    """Feature vectors of the candidates at pool ``positions`` (default: all) and of every annotated slice,
    computed in chunks with progress."""
    positions = np.arange(context.pool_slice.size) if positions is None else np.asarray(positions)
    jobs = []
    for kind in ("candidates", "annotated"):
        for index, volume in enumerate(context.volumes):
            if kind == "annotated":
                slices = volume.annotated
            else:
                slices = context.pool_slice[positions[context.pool_volume[positions] == index]]
            jobs += [(kind, volume, chunk) for chunk in slice_chunks(volume, slices)]
    predictor = context.predictor()
    features: dict[str, list[np.ndarray]] = {"candidates": [], "annotated": []}
    for done, (kind, volume, slices) in enumerate(jobs, start=1):
        maps = predictor.features(volume.model_inputs(slices))  # (N, D, h, w)
        features[kind].append(maps.amax((2, 3)).numpy().astype(np.float64))
        report(context.progress, done, len(jobs), "bottleneck features")
    candidates = np.concatenate(features["candidates"])
    order = np.argsort(np.argsort(context.pool_volume[positions], kind="stable"), kind="stable")
    annotated = np.concatenate(features["annotated"]) if features["annotated"] else np.zeros((0, candidates.shape[1]))
    return PoolFeatures(candidates[order], annotated)


def reduce_features(features: np.ndarray, dimensions: int = 10, normalize: bool = True) -> np.ndarray:
    """PCA to ``dimensions`` ("Less Is More"), each feature min-max normalised over the slices first unless
    ``normalize`` is False: (n, D) -> (n, min(dimensions, n, D))."""
    from sklearn.decomposition import PCA

    if normalize:
        low, high = features.min(0, keepdims=True), features.max(0, keepdims=True)
        features = (features - low) / (high - low + 1e-10)
    components = min(dimensions, *features.shape)
    return PCA(n_components=components, svd_solver="full").fit_transform(features)


def greedy_picks(
    context: RankingContext,
    count: int,
    best: Callable[[np.ndarray], tuple[int, float]],
    on_pick: Callable[[int], None],
    positions: np.ndarray | None = None,
) -> Picks:
    """Picks made one at a time under the shared controls (slices per volume, spacing).

    Args:
        context: the call's context.
        count: rows to choose from.
        best: (available rows, bool (count,)) -> (the row to try next, its score); called before every try.
        on_pick: told each row that was picked, to update what ``best`` sees.
        positions: pool position of each row (default: the pool in order).
    """
    positions = np.arange(count) if positions is None else positions
    admission = context.admission()
    available = np.ones(count, bool)
    chosen, scores = [], []
    while len(chosen) < context.budget and available.any():
        row, score = best(available)
        available[row] = False
        volume, index = int(context.pool_volume[positions[row]]), int(context.pool_slice[positions[row]])
        if admission.admits(volume, index):
            admission.take(volume, index)
            chosen.append(positions[row])
            scores.append(score)
            on_pick(row)
    return Picks(np.asarray(chosen, dtype=np.int64), np.asarray(scores, dtype=float))


def greedy_k_center(
    context: RankingContext, features: np.ndarray, centers: np.ndarray, positions: np.ndarray | None = None
) -> Picks:
    """Farthest-first traversal (the core-set greedy of Sener & Savarese 2018) under the shared controls.

    Args:
        context: the call's context.
        features: (n, D) features of the selectable candidates.
        centers: (m, D) features already covered (the annotated slices); with none, the first pick is random.
        positions: pool position of each row of ``features`` (default: all of the pool, in order).

    Returns:
        Picks whose score is the distance to the nearest center at the time of the pick.
    """
    nearest = cdist(features, centers).min(1) if len(centers) else np.full(len(features), np.inf)
    first = [] if len(centers) else [int(context.rng.integers(len(features)))]

    def farthest(available: np.ndarray) -> tuple[int, float]:
        row = first.pop() if first else int(np.argmax(np.where(available, nearest, -np.inf)))
        return row, float(nearest[row]) if np.isfinite(nearest[row]) else 0.0

    def cover(row: int) -> None:
        np.minimum(nearest, cdist(features, features[row : row + 1])[:, 0], out=nearest)

    return greedy_picks(context, len(features), farthest, cover, positions)


@STRATEGIES.register("kcenter_greedy")
@uses_model()
def kcenter_greedy(context: RankingContext) -> Picks:
    """Core-set: each pick is the slice farthest (in feature space) from the annotated and already picked slices.

    Score = the distance to the nearest covered slice when picked (0 for a random first pick when nothing is
    annotated yet).
    """
    features = slice_features(context)
    return greedy_k_center(context, features.candidates, features.annotated)


def reduced_pool_features(
    context: RankingContext, dimensions: int, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """PCA-reduced features of the candidates (n, d) and the annotated slices (m, d), reduced together."""
    features = slice_features(context)
    reduced = reduce_features(np.concatenate([features.annotated, features.candidates]), dimensions, normalize)
    return reduced[len(features.annotated) :], reduced[: len(features.annotated)]


def require_annotated(context: RankingContext, strategy: str) -> None:
    if not any(volume.annotated.size for volume in context.volumes):
        raise ValueError(
            f"{strategy} compares candidates with the annotated slices and none is annotated yet; start with a "
            "cold-start strategy (fixed_interval, strided_blocks or random), annotate, then use it."
        )


@STRATEGIES.register("distance_representative")
@uses_model()
def distance_representative(
    context: RankingContext, *, dimensions: int = 10, metric: str = "euclidean", form: str = "paper"
) -> Picks:
    """Slices farthest on average from the annotated set in reduced feature space ("Less Is More").

    ``form="paper"``: s(x) = (1/N) sum_i d(f_i, f_x) over the N annotated slices, with f the max-pooled bottleneck
    reduced by PCA to ``dimensions``, scored once; the highest s are picked. ``form="greedy"``: the features are
    min-max normalised before the PCA and each pick joins the annotated set before the next is scored (a batch
    spreads out instead of piling up in one far region).

    Keyword Args:
        dimensions: PCA components (10 in the paper).
        metric: a ``scipy.spatial.distance.cdist`` metric (euclidean, cosine, ...).
        form: "paper" or "greedy".
    """
    require_annotated(context, "distance_representative")
    if form not in ("paper", "greedy"):
        raise ValueError(f"distance_representative form must be 'paper' or 'greedy', got {form!r}.")
    candidates, annotated = reduced_pool_features(context, dimensions, normalize=form == "greedy")
    distance_sum = cdist(candidates, annotated, metric).sum(1)
    references = [len(annotated)]

    def farthest_on_average(available: np.ndarray) -> tuple[int, float]:
        mean_distance = distance_sum / references[0]
        row = int(np.argmax(np.where(available, mean_distance, -np.inf)))
        return row, float(mean_distance[row])

    def join_references(row: int) -> None:
        if form == "greedy":
            distance_sum[:] += cdist(candidates, candidates[row : row + 1], metric)[:, 0]
            references[0] += 1

    return greedy_picks(context, len(candidates), farthest_on_average, join_references)


@STRATEGIES.register("cluster_representative")
@uses_model()
def cluster_representative(context: RankingContext, *, dimensions: int = 10, bandwidth: float = 5.0) -> Picks:
    """Random slices of the feature clusters least represented among the annotated slices ("Less Is More").

    Features (max-pooled bottleneck, min-max normalised, PCA to ``dimensions``) of annotated and candidate
    slices are clustered by mean shift. A candidate scores 1 - (annotated share of its cluster); after each pick
    the shares are updated. Slices mean shift leaves as outliers score 0 and come last.

    Keyword Args:
        dimensions: PCA components (10 in the paper).
        bandwidth: mean-shift kernel bandwidth (5 in the paper).
    """
    from sklearn.cluster import MeanShift

    candidates, annotated = reduced_pool_features(context, dimensions)
    clusters = MeanShift(bandwidth=bandwidth, cluster_all=False).fit(np.concatenate([annotated, candidates])).labels_
    annotated_clusters, candidate_clusters = clusters[: len(annotated)], clusters[len(annotated) :]
    ids = np.unique(clusters)
    size = {c: int(np.count_nonzero(clusters == c)) for c in ids}
    labeled = {c: int(np.count_nonzero(annotated_clusters == c)) for c in ids}
    tie_breaker = context.rng.random(len(candidates))  # random slice within the neediest cluster

    def neediest(available: np.ndarray) -> tuple[int, float]:
        need = np.array([0.0 if c == -1 else 1.0 - labeled[c] / size[c] for c in candidate_clusters])
        row = int(np.lexsort((-tie_breaker, np.where(available, -need, np.inf)))[0])
        return row, float(need[row])

    def count_labeled(row: int) -> None:
        labeled[candidate_clusters[row]] += 1

    picks = greedy_picks(context, len(candidates), neediest, count_labeled)
    details = {"clusters": int(np.count_nonzero(ids >= 0)), "outliers": int(np.count_nonzero(clusters == -1))}
    return picks._replace(details=details)


@STRATEGIES.register("bal")
@uses_model(default_per_volume=1)
def bal(context: RankingContext, *, measure: str = "bald", samples: int = 10, shortlist_factor: int = 5) -> Picks:
    """Bayesian uncertainty, then diversity (STAR's "hybrid" BAL): the slices of highest MC-dropout BALD, thinned to
    a spread-out set by k-center greedy.

    The ``shortlist_factor * budget`` most uncertain candidates are shortlisted; core-set picks among them (from
    the annotated slices as centers) avoid querying near-duplicates of one uncertain region. Score = the slice's
    uncertainty.

    Keyword Args:
        measure: an MC-dropout measure (bald, variance, std: ``samples`` passes with dropout on) or, without the
            Bayesian part, a measure of one prediction (least_confidence, entropy, shannon, margin: the form this
            strategy had before issue 25).
        samples: MC-dropout passes (>= 2) of the MC-dropout measures.
        shortlist_factor: shortlist size as a multiple of the budget (>= 1).
    """
    if shortlist_factor < 1:
        raise ValueError(f"shortlist_factor must be at least 1, got {shortlist_factor}.")
    if measure in MC_DROPOUT_MEASURES:
        scorer = mc_dropout_scorer(context, samples, measure)
        uncertainty = score_pool(context, scorer, f"MC-dropout {measure} ({samples} samples)")
    else:
        uncertainty = score_pool(context, probability_measure(measure), f"uncertainty ({measure})")
    shortlist = np.sort(np.argsort(-uncertainty, kind="stable")[: shortlist_factor * context.budget])
    features = slice_features(context, shortlist)
    picks = greedy_k_center(context, features.candidates, features.annotated, positions=shortlist)
    return Picks(picks.positions, uncertainty[picks.positions])
