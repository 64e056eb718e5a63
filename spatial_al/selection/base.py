"""The ranking driver shared by every strategy: input checks, the pool of candidate slices, the shared selection
controls (budget, slices per volume, spacing, tie-breaking, seed) and the result.

A strategy sees a :class:`RankingContext` holding one or more volumes (a single scan in Slicer, a cohort in an
experiment). It either *scores* every candidate slice of the pool (an array, higher = annotate sooner) and lets
:func:`select_top` pick, or builds its own set of :class:`Picks` (grids, blocks, diversity) through the same
:class:`Admission` rules. Scoring is kept apart from selection as in MONAI Label.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..compatibility import check_model
from ..progress import ProgressReporter
from ..registry import Registry, info_of, with_info
from ..volume import Segment, check_label_dtype, check_scalar_volume, check_slice_axis, normalize_slice_indices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankingVolume:
    """One volume to rank slices of.

    Attributes:
        image: intensities, 3D (K, J, I), or None when only labels are known.
        label_layers: label maps (L, K, J, I) (or one (K, J, I) map), read on annotated slices only; or None.
        segments: the structures in ``label_layers`` (matched to a model's classes by name); () when unknown.
        annotated: slices already annotated (never picked again).
        pseudo_labeled: slices holding propagated pseudo-labels (``strided_blocks`` re-queries them last).
        name: shown in cohort results.
        normalized: ``image`` is float32 and already normalised as for training (an experiment's slice cache):
            it is used as it is, never copied, so a cohort of memory-mapped volumes stays on disk.
        group_slices: the every-j-th grid the annotation started from, when STAR's groups stay fixed to it (the
            paper's form, :func:`~spatial_al.selection.spatial.star_groups`); () for groups bounded by the
            annotated slices.
    """

    image: np.ndarray | None
    label_layers: np.ndarray | None = None
    segments: tuple[Segment, ...] = ()
    annotated: Iterable[int] = ()
    pseudo_labeled: Iterable[int] = ()
    name: str = ""
    normalized: bool = False
    group_slices: Iterable[int] = ()


@dataclass
class PoolVolume:
    """A volume as strategies see it: slice-first arrays along the ranking axis.

    Attributes:
        image: (S, H, W) intensities or None.
        label_layers: (L, S, H, W) or None.
        segments: structures of ``label_layers``.
        annotated: sorted annotated slice indices.
        pseudo_labeled: sorted pseudo-labeled slice indices (never annotated ones).
        candidates: sorted slice indices that may be picked.
        name: the volume's name.
        normalized: ``image`` is already normalised as for training.
        group_slices: sorted slices of STAR's fixed group grid; empty for groups bounded by the annotated slices.
    """

    image: np.ndarray | None
    label_layers: np.ndarray | None
    segments: tuple[Segment, ...]
    annotated: np.ndarray
    pseudo_labeled: np.ndarray
    candidates: np.ndarray
    name: str
    normalized: bool = False
    group_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_slices(self) -> int:
        return int(self.annotated.size + self.candidates.size)

    @cached_property
    def normalized_image(self) -> np.ndarray:
        """(S, H, W) float32 intensities normalised as for training (clip to percentiles, z-score)."""
        from ..training.data import normalize_intensities

        if self.image is None:
            raise ValueError(f"Volume {self.name!r} has no image; model-based strategies need one.")
        return self.image if self.normalized else normalize_intensities(self.image)

    def model_inputs(self, slices: Sequence[int]) -> np.ndarray:
        """Network inputs (N, 1, H, W) float32 of ``slices``."""
        return self.normalized_image[np.asarray(slices, dtype=np.int64), np.newaxis]

    def class_targets(self, slices: Sequence[int], class_names: Sequence[str]) -> np.ndarray:
        """Multi-hot labels (N, C, H, W) uint8 of ``slices`` for the model's ``class_names``.

        Raises:
            ValueError: no labels, or segments whose names differ from the model's classes.
        """
        from ..training.data import match_classes

        if self.label_layers is None:
            raise ValueError(f"Volume {self.name!r} has no labels; this strategy reads the annotated slices' labels.")
        classes = match_classes(self.segments, class_names)
        layers = self.label_layers[:, np.asarray(slices, dtype=np.int64)]  # (L, N, H, W)
        return np.stack([layers[s.layer] == s.label_value for s in classes], axis=1).astype(np.uint8)

    def label_inputs(self, slices: Sequence[int], config):
        """Labels of ``slices`` as a model takes them (STAR's f_L): a float tensor (N, out_channels, H, W), one-hot
        with the background first for a softmax model, multi-hot for a sigmoid one."""
        import torch

        from ..training.losses import with_background

        targets = torch.as_tensor(self.class_targets(slices, config.class_names), dtype=torch.float32)
        return with_background(targets) if config.head == "softmax" else targets


@dataclass(frozen=True)
class RankingContext:
    """What a strategy may look at.

    Attributes:
        volumes: the pool's volumes.
        budget: how many slices to pick in all.
        rng: the seeded random generator of this call.
        model: a trained ``SegmentationModel`` for model-based strategies, or None.
        device: torch device the model runs on, or the caller's request ("auto", ...) resolved on first use.
        batch_size: slices per forward pass.
        per_volume: at most this many picks per volume (None: no limit).
        min_spacing: picks in one volume are at least this many slices apart (0 or 1: no constraint).
        progress: progress reporter, or None.
        precision: the networks' inference precision (:mod:`spatial_al.precision`).
    """

    volumes: tuple[PoolVolume, ...]
    budget: int
    rng: np.random.Generator
    model: Any = None
    device: Any = None
    batch_size: int = 8
    per_volume: int | None = None
    min_spacing: int = 0
    progress: ProgressReporter | None = None
    precision: str = "auto"

    @cached_property
    def pool_volume(self) -> np.ndarray:
        """Volume index of every candidate slice of the pool, shape (n,)."""
        return np.concatenate([np.full(v.candidates.size, i, np.int64) for i, v in enumerate(self.volumes)])

    @cached_property
    def pool_slice(self) -> np.ndarray:
        """Slice index of every candidate of the pool (volume by volume, slices ascending), shape (n,)."""
        return np.concatenate([v.candidates for v in self.volumes])

    def pool_range(self, volume_index: int) -> slice:
        """Positions of ``volume_index``'s candidates in the pool arrays."""
        start = sum(v.candidates.size for v in self.volumes[:volume_index])
        return slice(start, start + self.volumes[volume_index].candidates.size)

    def volume_budgets(self) -> list[int]:
        """The budget shared as equally as the volumes' candidates allow (the remainder to the first volumes)."""
        shares = [0] * len(self.volumes)
        left = self.budget
        while left > 0:
            open_volumes = [i for i, v in enumerate(self.volumes) if shares[i] < v.candidates.size]
            if not open_volumes:
                break
            for i in open_volumes[:left]:
                shares[i] += 1
            left -= min(left, len(open_volumes))
        return shares

    def torch_device(self):
        """The torch device of this call (resolved from the request when no model was given)."""
        from ..device import resolve_device

        return resolve_device(self.device)

    def predictor(self, model=None):
        """A :class:`~spatial_al.models.inference.SlicePredictor` of ``model`` (default: the call's model)."""
        from ..models.inference import SlicePredictor

        model = self.model if model is None else model
        return SlicePredictor(model, self.torch_device(), self.batch_size, self.precision)

    def admission(self) -> Admission:
        return Admission(self.per_volume, self.min_spacing)


class Admission:
    """The shared selection controls, applied one pick at a time: slices per volume and spacing within a volume."""

    def __init__(self, per_volume: int | None, min_spacing: int):
        self.per_volume = per_volume
        self.min_spacing = min_spacing
        self.picked: dict[int, list[int]] = {}

    def admits(self, volume: int, slice_index: int) -> bool:
        taken = self.picked.get(volume, [])
        if self.per_volume is not None and len(taken) >= self.per_volume:
            return False
        return all(abs(slice_index - other) >= self.min_spacing for other in taken)

    def take(self, volume: int, slice_index: int) -> None:
        self.picked.setdefault(volume, []).append(slice_index)


class Picks(NamedTuple):
    """A set strategy's picks in rank order: ``positions`` into the pool arrays, one score each, and details."""

    positions: np.ndarray
    scores: np.ndarray
    details: dict | None = None


def tie_broken_order(context: RankingContext, scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Pool positions by descending score; ties go to the lower volume index, then the lower slice index.

    With ``groups`` (a group id per candidate), the best of every group comes first (by score), then the second
    best of every group, and so on.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    order = np.lexsort((context.pool_slice, context.pool_volume, -scores))
    if groups is None:
        return order
    rank_in_group = np.zeros(scores.size, np.int64)
    seen: dict[int, int] = {}
    for position in order:
        group = int(groups[position])
        rank_in_group[position] = seen.get(group, 0)
        seen[group] = rank_in_group[position] + 1
    return order[np.argsort(rank_in_group[order], kind="stable")]


def select_top(context: RankingContext, scores: np.ndarray, groups: np.ndarray | None = None) -> Picks:
    """The best-scored candidates under the shared controls.

    Args:
        context: the call's context.
        scores: one score per pool candidate, shape (n,); NaN scores are never picked.
        groups: a group id per candidate, shape (n,) (e.g. STAR's intervals between annotated slices): every
            group gives its best candidate before any gives a second.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.shape != context.pool_slice.shape:
        raise AssertionError(f"a strategy scored {scores.shape} slices for a pool of {context.pool_slice.shape}")
    admission = context.admission()
    chosen = []
    for position in tie_broken_order(context, scores, groups):
        if len(chosen) == context.budget:
            break
        volume, index = int(context.pool_volume[position]), int(context.pool_slice[position])
        if not np.isnan(scores[position]) and admission.admits(volume, index):
            admission.take(volume, index)
            chosen.append(position)
    chosen = np.asarray(chosen, dtype=np.int64)
    return Picks(chosen, scores[chosen])


@dataclass(frozen=True)
class StrategyInfo:
    """How the driver treats a strategy.

    Attributes:
        model: the kind of model it needs (a key of :data:`~spatial_al.compatibility.MODEL_KINDS`), or None.
        default_per_volume: its slices per volume in a cohort when the caller sets none.
        spacing_controls: whether ``per_volume`` and ``min_spacing`` apply (grids and blocks space their picks by
            construction and refuse them).
        model_optional: it works without a model and uses one when given (e.g. blocks ranked by uncertainty).
        trains: it trains a network of its own on the volume (seconds on a GPU, minutes on a CPU).
    """

    model: str | None = None
    default_per_volume: int | None = None
    spacing_controls: bool = True
    model_optional: bool = False
    trains: bool = False

    @property
    def reads_model(self) -> bool:
        """Whether a model given to the ranking is used (callers load one only then)."""
        return self.model is not None or self.model_optional


# A strategy maps a context (and its keyword-only options) to either scores for every pool candidate, shape (n,)
# (higher = annotate sooner; the driver selects), or :class:`Picks`.
Strategy = Callable[..., "np.ndarray | Picks"]

STRATEGIES: Registry[Strategy] = Registry("strategy")


def strategy_info(function: Strategy) -> StrategyInfo:
    return info_of(function, StrategyInfo())


described = with_info  # @described(StrategyInfo(...)) on a strategy


def uses_model(kind: str = "segmentation", default_per_volume: int | None = None) -> Callable[[Strategy], Strategy]:
    """Mark a strategy as needing a trained model of ``kind`` (a key of
    :data:`~spatial_al.compatibility.MODEL_KINDS`)."""
    return described(StrategyInfo(kind, default_per_volume))


def spaced_by_construction(model_optional: bool = False) -> Callable[[Strategy], Strategy]:
    """Mark a strategy whose picks are spaced by construction (no ``per_volume`` / ``min_spacing``)."""
    return described(StrategyInfo(spacing_controls=False, model_optional=model_optional))


class RankedSlice(NamedTuple):
    rank: int  # 1 = annotate first
    slice: int
    score: float
    volume: int = 0


@dataclass
class RankingResult:
    """Slices to annotate next, best first.

    Attributes:
        slices: slice indices along ``axis``, shape (n,), in rank order.
        scores: one score per slice, shape (n,) (higher = annotate sooner; its meaning depends on the strategy).
        strategy: registry name of the strategy.
        axis: slice axis.
        volumes: index of each pick's volume, shape (n,) (all 0 for one volume).
        volume_names: names of the ranked volumes.
        details: what the strategy adds (e.g. the blocks of ``strided_blocks``).
    """

    slices: np.ndarray
    scores: np.ndarray
    strategy: str
    axis: int
    volumes: np.ndarray = None  # type: ignore[assignment]
    volume_names: tuple[str, ...] = ("",)
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.volumes is None:
            self.volumes = np.zeros(self.slices.size, np.int64)

    def __iter__(self) -> Iterator[RankedSlice]:
        rows = zip(self.slices, self.scores, self.volumes, strict=True)
        for rank, (index, score, volume) in enumerate(rows, start=1):
            yield RankedSlice(rank, int(index), float(score), int(volume))

    def __len__(self) -> int:
        return int(self.slices.size)

    def for_volume(self, volume: int) -> np.ndarray:
        """The picked slices of one volume, in rank order."""
        return self.slices[self.volumes == volume]

    def write_csv(self, path: str | Path, with_strategy: bool = False) -> Path:
        """CSV with columns ``rank,slice,score`` (``volume`` first for a cohort; ``strategy`` last when asked)."""
        from ..files import atomic_path

        path = Path(path)
        cohort = len(self.volume_names) > 1
        with atomic_path(path) as temporary, temporary.open("w", newline="") as file:
            writer = csv.writer(file)
            header = ["rank", "slice", "score"] + ["strategy"] * with_strategy
            writer.writerow((["volume"] if cohort else []) + header)
            for row in self:
                writer.writerow(
                    [*([self.volume_names[row.volume]] if cohort else []), row.rank, row.slice, f"{row.score:.6g}"]
                    + [self.strategy] * with_strategy
                )
        return path


def to_pool_volume(volume: RankingVolume, axis: int, index: int) -> PoolVolume:
    name = volume.name or f"volume {index}"
    if volume.image is None and volume.label_layers is None:
        raise ValueError(f"{name}: ranking needs an image or a label map to know the slices.")
    image = None if volume.image is None else np.asarray(volume.image)
    if image is not None:
        check_scalar_volume(image, "image")
    layers = None
    if volume.label_layers is not None:
        layers = np.asarray(volume.label_layers)
        layers = layers[np.newaxis] if layers.ndim == 3 else layers
        check_label_dtype(layers)
        if image is not None and layers.shape[1:] != image.shape:
            raise ValueError(f"{name}: labels shape {layers.shape[1:]} differs from image shape {image.shape}.")
    n_slices = (image.shape if image is not None else layers.shape[1:])[axis]
    annotated = normalize_slice_indices(volume.annotated, n_slices)
    pseudo = np.setdiff1d(normalize_slice_indices(volume.pseudo_labeled, n_slices, "pseudo-labeled slice"), annotated)
    return PoolVolume(
        image=None if image is None else np.moveaxis(image, axis, 0),
        label_layers=None if layers is None else np.moveaxis(layers, axis + 1, 1),
        segments=tuple(volume.segments),
        annotated=annotated,
        pseudo_labeled=pseudo,
        candidates=np.setdiff1d(np.arange(n_slices), annotated),
        name=name,
        normalized=volume.normalized,
        group_slices=normalize_slice_indices(volume.group_slices, n_slices, "group grid slice"),
    )


def rank_cohort(
    volumes: Sequence[RankingVolume],
    strategy: str,
    budget: int,
    *,
    axis: int = 0,
    model: Any = None,
    device: Any = "auto",
    batch_size: int = 8,
    per_volume: int | None = None,
    min_spacing: int = 0,
    seed: int = 0,
    progress: ProgressReporter | None = None,
    precision: str = "auto",
    **options,
) -> RankingResult:
    """Rank the slices to annotate next across one or more volumes.

    Args:
        volumes: the volumes of the pool; all are cut along ``axis``.
        strategy: a name from :data:`STRATEGIES` (``spatial-al strategies``).
        budget: how many slices to pick in all (at least 1, at most the slices not yet annotated).
        axis: slice axis (array axis 0, 1 or 2 of every volume).
        model: a trained ``SegmentationModel`` for model-based strategies (its classes must be the segments'
            names when segments are given).
        device: where the model runs ("auto", "cpu", "cuda", ... or a torch device).
        batch_size: slices per forward pass.
        per_volume: at most this many picks per volume; by default none for one volume, and for a cohort the
            strategy's default (1 for uncertainty strategies, as in "Less Is More").
        min_spacing: picks within a volume are at least this many slices apart.
        seed: seed of every random choice (same inputs and seed, same ranking).
        progress: receives progress reports and can cancel.
        precision: the networks' inference precision, "auto" (bfloat16 on CUDA GPUs that support it, float32
            elsewhere), "bf16", "fp16" or "fp32" (:mod:`spatial_al.precision`); "bf16" also speeds a CPU with native
            bfloat16 (AVX512-BF16 or AMX) up by about 1.6x.
        **options: options of the strategy (see its docstring).

    Returns:
        A :class:`RankingResult`, best slice first, with each pick's volume index.

    Raises:
        ValueError: a budget larger than what is left, every slice annotated, an index out of range, an unknown
            strategy (with the closest name) or option, a missing or mismatched model, a 4D/RGB image.
    """
    from ..precision import check_precision

    function = STRATEGIES.get(strategy)
    STRATEGIES.check_options(strategy, options)
    check_precision(precision)
    axis = check_slice_axis(axis)
    if not volumes:
        raise ValueError("rank needs at least one volume.")
    pool = tuple(to_pool_volume(volume, axis, index) for index, volume in enumerate(volumes))
    left = sum(volume.candidates.size for volume in pool)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a whole number of slices, at least 1; got {budget!r}.")
    if left == 0:
        raise ValueError("Every slice is already annotated: there is nothing left to rank.")
    total = sum(volume.n_slices for volume in pool)
    if budget > left:
        raise ValueError(
            f"budget {budget} is larger than the {left} slices left unannotated (of {total}); ask for at most {left}."
        )
    info = strategy_info(function)
    if per_volume is None and len(pool) > 1:
        per_volume = info.default_per_volume
    if per_volume is not None and per_volume * len(pool) < budget:
        raise ValueError(
            f"budget {budget} cannot be met with at most {per_volume} slice(s) per volume in {len(pool)} volumes; "
            f"raise per_volume to at least {-(-budget // len(pool))} or lower the budget."
        )
    if isinstance(min_spacing, bool) or not isinstance(min_spacing, (int, np.integer)) or min_spacing < 0:
        raise ValueError(f"min_spacing must be a whole number of slices, 0 or more; got {min_spacing!r}.")
    if not info.spacing_controls and (per_volume is not None or min_spacing > 1):
        raise ValueError(
            f"The strategy {strategy!r} spaces its picks by construction; per_volume and min_spacing do not apply. "
            "Drop them, or use a scoring strategy such as random."
        )
    check_model(
        model,
        f"The strategy {strategy!r}",
        info.model,
        axis,
        [(volume.name, volume.segments) for volume in pool],
        model_free="a model-free strategy such as fixed_interval or strided_blocks",
    )
    if model is not None:  # a missing device fails before any work; model-free strategies resolve it if they must
        from ..device import resolve_device

        device = resolve_device(device)
    context = RankingContext(
        volumes=pool,
        budget=int(budget),
        rng=np.random.default_rng(seed),
        model=model,
        device=device,
        batch_size=batch_size,
        per_volume=per_volume,
        min_spacing=int(min_spacing),
        progress=progress,
        precision=precision,
    )
    outcome = function(context, **options)
    picks = outcome if isinstance(outcome, Picks) else select_top(context, outcome)
    if picks.positions.size < budget:
        logger.warning(f"{strategy} picked {picks.positions.size} of the {budget} slices asked for.")
    return RankingResult(
        slices=context.pool_slice[picks.positions],
        scores=np.asarray(picks.scores, dtype=float),
        strategy=strategy,
        axis=axis,
        volumes=context.pool_volume[picks.positions],
        volume_names=tuple(volume.name for volume in pool),
        details=dict(picks.details or {}),
    )


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
    *,
    segments: Sequence[Segment] = (),
    pseudo_labeled: Iterable[int] = (),
    device: Any = "auto",
    batch_size: int = 8,
    per_volume: int | None = None,
    min_spacing: int = 0,
    group_slices: Iterable[int] = (),
    **options,
) -> RankingResult:
    """Rank the slices of one volume to annotate next (see :func:`rank_cohort` for the arguments).

    Args:
        image: intensities, 3D (K, J, I) or any 3D order ``axis`` refers to; may be None when ``labels`` is given.
        strategy: a name from :data:`STRATEGIES` (``spatial-al strategies``).
        budget: how many slices to pick, at least 1 and at most the number of slices not yet annotated.
        labels: a label map on the same grid, or label layers (L, K, J, I), read on annotated slices only.
        annotated: slices already annotated; never picked again.
        axis: the slice axis (array axis 0, 1 or 2).
        model: trained segmentation model, for model-based strategies.
        seed: seed of every random choice.
        progress: receives progress reports and can cancel.
        segments: the structures in ``labels`` (needed by strategies that read labels with a model).
        pseudo_labeled: slices holding propagated pseudo-labels.
        group_slices: the every-j-th grid the annotation started from, to which STAR's groups stay fixed (the
            paper's form; :class:`RankingVolume`).
        **options: ``device``, ``batch_size``, ``per_volume``, ``min_spacing``, ``precision`` and the strategy's
            options.

    Returns:
        A :class:`RankingResult`, best slice first.
    """
    volume = RankingVolume(image, labels, tuple(segments), annotated, pseudo_labeled, group_slices=group_slices)
    return rank_cohort(
        [volume],
        strategy,
        budget,
        axis=axis,
        model=model,
        device=device,
        batch_size=batch_size,
        per_volume=per_volume,
        min_spacing=min_spacing,
        seed=seed,
        progress=progress,
        **options,
    )
