"""Experiment configuration as data: frozen dataclasses read from a protocol's JSON file, a scale and overrides.

A protocol file (``protocols/<name>.json``) holds the paper's setting under ``"config"`` and, under ``"scales"``,
what ``smoke``, ``cpu`` and ``paper`` change (rounds, epochs, image size, cohort size; never the logic).
``--config FILE`` (JSON, or YAML when PyYAML is installed) overrides any value last; mappings merge key by key.
Every key and every value's type is checked before any work, with the closest valid name for a misspelt key.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..typed import ConfigError

SCALES = ("smoke", "cpu", "paper")
PSEUDO_LABEL_RULES = ("none", "star", "ceal", "interpolation", "volume_interpolation")
INITIAL_SCOPES = ("volume", "dataset")
ARM_STRATEGY = "arm"  # initial.strategy: each arm's own strategy picks its round-0 slices
INTENSITY_MODES = ("zscore", "window")
CURVE_AXES = ("percent", "round", "grid", "volumes")
QUERY_UNITS = ("slice", "volume", "sparse_volume")
ROUND_WEIGHTS = ("fine_tune", "initial")
STAR_GROUPS = ("fixed", "annotated")


@dataclass(frozen=True)
class DataConfig:
    """How a cohort is read and preprocessed into the slice cache.

    Attributes:
        labels: class name -> the source label values merged into it (MSD Task01 tumour core: [2, 3]); None keeps
            every label of the source as its own class, in label-value order.
        channel: the channel of a 4D (multi-modal) image (MSD BrainTumour FLAIR = 0, Prostate T2 = 0).
        slice_axis: "axial", "coronal", "sagittal" or an array axis 0-2 as a string.
        image_size: slices are resized (aspect kept, bilinear; labels nearest) so the longer side has this many pixels,
            then padded to a square; with ``pixel_spacing``, the square's side: slices resampled to that spacing are
            cropped or padded about their centre to it.
        pixel_spacing: resample each slice to this in-plane spacing in mm instead of scaling it to ``image_size``
            (the MIDL 2025 study's Table 1: 1 mm on LiTS17 and ATLAS); None scales to ``image_size``.
        slice_thickness: resample along the slice axis to this spacing in mm first (linear; labels nearest), as a
            3D study resamples its volumes (Nath et al.: 2 mm); None keeps the slices as acquired.
        intensity: "zscore" (clip to the 0.5/99.5 percentiles, z-score per volume; MR) or "window" (CT: clip to
            ``window`` and scale to [0, 1]).
        window: [low, high] intensities for ``intensity="window"`` (Hounsfield units for CT).
        split: fractions of subjects for [training, validation, test]; validation may be 0 when nothing early-stops.
        split_by: what ``split`` shares out: "subjects", or "slices" (whole subjects still, chosen so each part's
            share of the slices comes as close to its fraction as whole subjects allow: a paper that gives its split
            in slices, as STAR's).
        split_seed: seed of the subject-wise split (the same for every run of a study, so all share one test set).
        max_subjects: use at most this many subjects (the first ones of the source), None for all.
        subjects: use only these cases of a dataset folder, by name (e.g. the LGG cases of a BraTS release, from its
            grade list: MSD's BrainTumour does not say which are LGG); None for all.
        demo_subjects: subjects of the generated ``demo`` cohort.
    """

    labels: dict[str, list[int]] | None = None
    channel: int | None = None
    slice_axis: str = "axial"
    image_size: int = 128
    slice_thickness: float | None = None
    pixel_spacing: float | None = None
    intensity: str = "zscore"
    window: list[float] | None = None
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    split_by: str = "subjects"
    split_seed: int = 0
    max_subjects: int | None = None
    subjects: list[str] | None = None
    demo_subjects: int = 14

    def __post_init__(self):
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(f"data.intensity must be one of {', '.join(INTENSITY_MODES)}, got {self.intensity!r}.")
        if self.intensity == "window" and (self.window is None or len(self.window) != 2):
            raise ConfigError("data.intensity 'window' needs data.window = [low, high].")
        if self.window is not None and (len(self.window) != 2 or self.window[0] >= self.window[1]):
            raise ConfigError(f"data.window must be [low, high] with low < high, got {self.window}.")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6 or self.split[0] <= 0:
            raise ConfigError(
                f"data.split must be [training, validation, test] fractions summing to 1, got {self.split}."
            )
        if self.split_by not in ("subjects", "slices"):
            raise ConfigError(f"data.split_by must be 'subjects' or 'slices', got {self.split_by!r}.")
        for name in ("slice_thickness", "pixel_spacing"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"data.{name} must be a positive spacing in mm, got {getattr(self, name)}.")
        if self.image_size < 16:
            raise ConfigError(f"data.image_size must be at least 16 pixels, got {self.image_size}.")
        if self.demo_subjects < 3:
            raise ConfigError(f"data.demo_subjects must be at least 3 (one per split), got {self.demo_subjects}.")


@dataclass(frozen=True)
class InitialConfig:
    """The cold-start selection of round 0.

    Attributes:
        strategy: a query strategy that needs no model (``spatial-al strategies``), or "arm": each arm's strategy.
        options: its options; ``fixed_interval`` with an ``interval`` puts that grid on every training volume.
        budget: slices over the whole training pool (None with a per-volume grid, a ``percent`` or a ``density``).
        percent: the budget as a percent of the training pool's slices (SBC-AL: 6.67), when ``budget`` is None.
        density: rho of the MIDL 2025 study: this percent of the slices of each annotated volume (at least one).
        volume_fraction: s of that study: the fraction of the training volumes that are annotated (the first of a
            permutation drawn from the run's seed, so every arm of a seed annotates the same volumes); with
            ``density`` only.
        scope: with ``density``, "volume" (the strategy picks each volume's slices in that volume alone) or
            "dataset" (it picks the same total over the pool of annotated volumes at once).
    """

    strategy: str = "fixed_interval"
    options: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    percent: float | None = None
    density: float | None = None
    volume_fraction: float = 1.0
    scope: str = "volume"

    def __post_init__(self):
        for name in ("percent", "density"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 100:
                raise ConfigError(f"initial.{name} must be a percent in (0, 100], got {value}.")
        if not 0 < self.volume_fraction <= 1:
            raise ConfigError(
                f"initial.volume_fraction (s) must be in (0, 1], a fraction of the training volumes, got "
                f"{self.volume_fraction}."
            )
        if self.scope not in INITIAL_SCOPES:
            raise ConfigError(f"initial.scope must be one of {', '.join(INITIAL_SCOPES)}, got {self.scope!r}.")
        if self.volume_fraction < 1 and self.density is None:
            raise ConfigError("initial.volume_fraction applies with initial.density (rho); set both.")

    @property
    def per_volume_grid(self) -> bool:
        """Whether round 0 is a fixed-interval grid on every volume (no pool-wide budget)."""
        return self.budget is None and self.percent is None and self.density is None

    def annotated_volumes(self, volumes: int) -> int:
        """How many of ``volumes`` training volumes a ``density`` selection annotates (at least one)."""
        return max(1, round(self.volume_fraction * volumes))

    def volume_budget(self, slices: int) -> int:
        """Slices a ``density`` selection annotates in a volume of ``slices`` slices (at least one)."""
        return max(1, round(self.density / 100.0 * slices))

    def pool_budget(self, pool_slices: int) -> int:
        """Slices of a pool-wide cold start for a pool of ``pool_slices`` (at least one)."""
        if self.budget is not None:
            return self.budget
        return max(1, round(self.percent / 100.0 * pool_slices))


@dataclass(frozen=True)
class ArmConfig:
    """One strategy of a study (a row of the paper's table): how slices are queried and pseudo-labeled.

    Attributes:
        strategy: the query strategy's registry name.
        options: its options.
        per_volume: at most this many queried slices per volume and round, raised to ceil(query / volumes) when the
            pool has fewer volumes than the query; None: no limit (the q best of the whole pool, also for strategies
            that limit themselves to one slice per volume in a cohort by default).
        pseudo_labels: "none"; "star" (STAR's aggregation, the q lowest-entropy slices of the pool); "ceal" (the
            model's q most confident slices); "interpolation" (the inside of the queried blocks of ``strided_blocks``,
            propagated from their two end slices, kept for the rest of the run); "volume_interpolation" (before
            round 0's training, every slice between two annotated slices of an annotated volume, filled from the
            annotated ones: the MIDL 2025 study's mask interpolation).
        pseudo_label_count: q of the top-q rules; None: the protocol's query size.
        propagation: the propagation method of the interpolation rules (``spatial-al methods``).
        propagation_options: its options.
        model: changes to the model configuration for this arm only, after the protocol's ``model`` (the papers'
            ablations: ``{"structure_prediction": false}`` is SBC-AL without SFP).
        initial: changes to the protocol's cold start for this arm only (a grid point of the MIDL 2025 study).
        group: the arm of the protocol that a ``grid`` expanded into this one ("" for an arm written out).
        semi_supervised: (volume studies) Nath et al.'s semi-supervised fine-tuning after each round's supervised
            training (:mod:`spatial_al.training.semi_supervised`); its model then ranks the queries.
        unlabeled_consistency: (slice studies) TAAL's semi-supervised training: every segmentation step also
            makes the predictions on a batch of unannotated slices of the pool agree across flips, turns and noise
            (:func:`~spatial_al.training.losses.cross_augmentation_consistency`).
        description: the paper's name of the arm, for tables.
    """

    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    per_volume: int | None = None
    pseudo_labels: str = "none"
    pseudo_label_count: int | None = None
    propagation: str = "sdf"
    propagation_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    initial: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    semi_supervised: bool = False
    unlabeled_consistency: bool = False
    description: str = ""

    def __post_init__(self):
        if self.pseudo_labels not in PSEUDO_LABEL_RULES:
            closest = difflib.get_close_matches(self.pseudo_labels, PSEUDO_LABEL_RULES, n=1, cutoff=0.0)
            raise ConfigError(
                f"Unknown pseudo-label rule {self.pseudo_labels!r}; did you mean {closest[0]!r}? "
                f"Valid: {', '.join(PSEUDO_LABEL_RULES)}."
            )
        if self.pseudo_labels == "interpolation" and self.strategy != "strided_blocks":
            raise ConfigError("pseudo_labels 'interpolation' fills queried blocks: it needs strategy 'strided_blocks'.")


@dataclass(frozen=True)
class ProxyConfig:
    """Nath et al.'s proxy task (volume studies): the proxy label is the largest 3D connected component of the voxels
    whose source intensity lies in ``window``; one proxy model trained on every training volume ranks them for the
    cold start and initialises the first supervised model.

    Attributes:
        window: [low, high] in the source's units (Hounsfield units for CT). The paper's "W:50 L:125" (width 50,
            level 125) is [100, 150]. It must lie inside ``data.window``, the cached intensities' range.
        max_epochs: the proxy model's epochs (of ``training.iterations_per_epoch`` steps).
        measure: the proxy model's uncertainty ("variance" or "entropy") that orders the volumes of a
            ``proxy_rank`` arm (the paper does not say which; variance here).
        selection: the volumes whose proxy labels pick the proxy model's best epoch: "validation" (the split's
            validation subjects), "test" (the paper's: its validation set is its evaluation set; a proxy label is
            computed from intensities alone, so no annotation of theirs is read) or "none" (the last epoch).
    """

    window: list[float] = field(default_factory=lambda: [100.0, 150.0])
    max_epochs: int = 100
    measure: str = "variance"
    selection: str = "validation"

    def __post_init__(self):
        if len(self.window) != 2 or self.window[0] >= self.window[1]:
            raise ConfigError(
                f"proxy.window must be [low, high] with low < high, got {self.window}; swap the bounds if reversed."
            )
        if self.max_epochs < 1:
            raise ConfigError(f"proxy.max_epochs must be at least 1, got {self.max_epochs}.")
        if self.measure not in ("variance", "entropy"):
            raise ConfigError(f"proxy.measure must be variance or entropy, got {self.measure!r}.")
        if self.selection not in ("validation", "test", "none"):
            raise ConfigError(f"proxy.selection must be validation, test or none, got {self.selection!r}.")


@dataclass(frozen=True)
class ReportConfig:
    """What the study's table and figures show.

    Attributes:
        metric: the metric of the table and curves ("dice_2d", "dice_3d", "iou_3d").
        structure: a design grid's report gives ``metric`` of this class alone (the MIDL 2025 study reports LiTS's
            tumour); None: the mean over classes.
        curve_axis: "percent" (test Dice vs percent of labeled training slices), "round", or "volumes" (vs labeled
            training volumes, a volume study; table columns at ``rounds``, headed by their volume counts).
        percents: table columns at these labeled percents (interpolated on each run's curve).
        rounds: table columns at these rounds (``curve_axis="round"``).
        ablation: row title -> arm, for the protocol's ablation table.
        ablation_per_class: the ablation table also gives each class's value at this point of the curve,
            {"percent": P} or {"round": R} (a paper's per-structure ablation); None: the mean over classes only.
        budget_arm: with ``curve_axis="grid"`` (a design grid, :mod:`spatial_al.experiments.grid_report`): the arm
            whose grid points draw the budget figures (metric against labeled percent, by density and by volumes).
        selection_arms: the arms compared by slice selection (metric against density).
        interpolation_pairs: arm -> the same arm with mask interpolation, compared against density.
    """

    metric: str = "dice_3d"
    structure: str | None = None
    curve_axis: str = "percent"
    percents: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    ablation: dict[str, str] = field(default_factory=dict)
    ablation_per_class: dict[str, float] | None = None
    budget_arm: str = ""
    selection_arms: list[str] = field(default_factory=list)
    interpolation_pairs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.curve_axis not in CURVE_AXES:
            raise ConfigError(f"report.curve_axis must be one of {', '.join(CURVE_AXES)}, got {self.curve_axis!r}.")
        if self.ablation_per_class is not None and set(self.ablation_per_class) not in ({"percent"}, {"round"}):
            raise ConfigError(
                'report.ablation_per_class must be {"percent": P} or {"round": R}, '
                f"got {self.ablation_per_class!r}."
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """A protocol at one scale: everything a run needs besides the data folder, strategy and seed.

    Attributes:
        protocol: the protocol's name.
        data: cohort reading and preprocessing.
        preset: the model preset (``spatial-al presets``) of arms that use a plain segmentation model.
        star_preset: the preset of arms that query or pseudo-label through STAR's aggregation (a STAR model).
        structure_preset: the preset of arms that query with SBC-AL's structure and boundary outputs.
        model: changes to the preset's :class:`~spatial_al.models.ModelConfig` (e.g. features).
        encoder_weights: ImageNet weights of a ResNet-50 encoder: a file path, "auto" (the torch hub or Hugging Face
            cache, random initialisation when absent) or None (random initialisation).
        training: values of :class:`~spatial_al.training.TrainingConfig` (learning rates, epochs, loss, ...).
        validation_stride: every n-th slice of each validation subject is a validation slice (early stopping).
        initial: the cold-start selection.
        query_size: q, slices queried per round.
        query_percent: q as a percent of the training pool's slices (SBC-AL: 6.67), instead of ``query_size``.
        rounds: at most this many query rounds (0: train once on the cold start's slices, as a design study).
        grid: a design grid: ``{"density": [...], "volume_fraction": [...]}`` turns every arm into one arm per
            point, named ``"<arm> d<density> s<fraction>"`` (the MIDL 2025 study's rho x s).
        budget_percent: stop once this percent of the training slices is annotated (None: after ``rounds``).
        arms: the strategies of the study, by name.
        default_arms: the arms run when none are named.
        seeds: runs per arm (seeds 0 .. seeds-1).
        supervised_reference: also train once on every training slice (the target of S%, the 100 % column).
        report: table and figure settings.
        batch_size: slices per forward pass when ranking and evaluating, and the test batches that
            ``iou_batch_mean`` (the MIDL 2025 study's average batched IoU) averages over.
        hd95: compute the 95th percentile Hausdorff distance of test volumes (seconds per round on large volumes).
        unit: what a query annotates: "slice" (the slice studies), "volume" (Nath et al.: whole volumes, a 3D model
            on patches of ``training.patch_size``, :mod:`spatial_al.experiments.volume_loop`) or "sparse_volume"
            (the MIDL 2025 study's 3D half: the slices of a design grid, once, and a 3D model trained on patches with
            the unannotated slices masked out of the loss).
        query_volumes: k, the volumes a volume study annotates per round (and in its cold start).
        mc_samples: m, the MC-dropout passes of a volume study's uncertainty.
        noisy_label_threshold: tau of the semi-supervised stage's noisy labels.
        proxy: the proxy task of a volume study's proxy arms.
        round_weights: what each round's training starts from: "fine_tune" (the last round's weights: the slice
            studies) or "initial" (the run's first weights every round: the proxy model for a proxy arm, the seed's
            random initialisation otherwise; Nath et al.'s Algorithm 1, line 7: "M_s = Supervised Training on M_p").
        star_groups: STAR's groups (:func:`~spatial_al.selection.spatial.star_groups`): "fixed" to the round-0
            annotation's grid (the paper's: every j-th slice; later annotations join the group they land in) or
            "annotated" (the runs between the annotated slices of the round).
    """

    protocol: str
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "unet-small"
    star_preset: str = "star-small"
    structure_preset: str = "sbc-small"
    model: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    validation_stride: int = 1
    initial: InitialConfig = field(default_factory=InitialConfig)
    query_size: int = 16
    query_percent: float | None = None
    rounds: int = 10
    grid: dict[str, list[float]] = field(default_factory=dict)
    budget_percent: float | None = None
    arms: dict[str, ArmConfig] = field(default_factory=dict)
    default_arms: list[str] = field(default_factory=list)
    seeds: int = 3
    supervised_reference: bool = True
    report: ReportConfig = field(default_factory=ReportConfig)
    batch_size: int = 16
    hd95: bool = True
    unit: str = "slice"
    query_volumes: int = 5
    mc_samples: int = 10
    noisy_label_threshold: float = 0.9
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    round_weights: str = "fine_tune"
    star_groups: str = "annotated"

    def __post_init__(self):
        if self.unit not in QUERY_UNITS:
            raise ConfigError(f"unit must be one of {', '.join(QUERY_UNITS)}, got {self.unit!r}.")
        if self.round_weights not in ROUND_WEIGHTS:
            raise ConfigError(f"round_weights must be one of {', '.join(ROUND_WEIGHTS)}, got {self.round_weights!r}.")
        if self.star_groups not in STAR_GROUPS:
            raise ConfigError(f"star_groups must be one of {', '.join(STAR_GROUPS)}, got {self.star_groups!r}.")
        if self.mc_samples < 2:
            raise ConfigError(f"mc_samples must be at least 2 (MC dropout compares passes), got {self.mc_samples}.")
        if not 0 < self.noisy_label_threshold <= 1:
            raise ConfigError(
                f"noisy_label_threshold must be a probability in (0, 1], got {self.noisy_label_threshold}."
            )
        for name in ("query_size", "seeds", "validation_stride", "batch_size", "query_volumes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.rounds < 0:
            raise ConfigError(f"rounds must be at least 0 (0: train once), got {self.rounds}.")
        if self.query_percent is not None and not 0 < self.query_percent <= 100:
            raise ConfigError(f"query_percent must be in (0, 100], got {self.query_percent}.")
        if self.budget_percent is not None and not 0 < self.budget_percent <= 100:
            raise ConfigError(f"budget_percent must be in (0, 100], got {self.budget_percent}.")
        unknown = [name for name in self.default_arms if name not in self.arms]
        if unknown:
            raise ConfigError(f"default_arms names {unknown}, which are not arms; arms: {', '.join(self.arms)}.")

    def initial_for(self, arm: ArmConfig) -> InitialConfig:
        """The cold start of ``arm``: the protocol's with the arm's own changes; the strategy "arm" stands for the
        arm's strategy and options (a design study, whose arms differ in how round 0 picks its slices)."""
        from ..typed import build

        values = {**asdict(self.initial), **arm.initial}
        if values["strategy"] == ARM_STRATEGY:
            values.update(strategy=arm.strategy, options={**arm.options, **values["options"]})
        return build(InitialConfig, values, "initial") if values != asdict(self.initial) else self.initial

    def query_count(self, pool_slices: int) -> int:
        """q for a training pool of ``pool_slices`` slices: ``query_percent`` of it (at least one) or ``query_size``."""
        if self.query_percent is None:
            return self.query_size
        return max(1, round(self.query_percent / 100.0 * pool_slices))

    def training_config(self, seed: int):
        """The :class:`~spatial_al.training.TrainingConfig` of a run with ``seed`` (unknown fields fail with the
        closest name)."""
        from ..training import TrainingConfig

        try:
            return TrainingConfig().with_options(**{**self.training, "seed": seed})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"training: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Mappings whose keys are data (class names, table rows, a component's options), replaced as a whole rather than
# merged key by key: a new strategy comes with its own options.
REPLACED_MAPPINGS = ("labels", "ablation", "options", "propagation_options", "interpolation_pairs")


GRID_KEYS = ("density", "volume_fraction")
GRID_PREFIXES = {"density": "d", "volume_fraction": "s"}  # of the expanded arm names: "Fixed d10 s0.5"


def expand_grid(values: dict[str, Any]) -> dict[str, Any]:
    """A protocol's values with its ``grid`` applied: each arm becomes one arm per grid point, whose ``initial`` holds
    the point and whose ``group`` names the arm it came from; ``default_arms`` are expanded alike.

    Raises:
        ConfigError: a grid key other than density and volume_fraction, or an empty list.
    """
    import itertools

    grid = values.get("grid") or {}
    if not grid:
        return values
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown or not all(isinstance(points, list) and points for points in grid.values()):
        raise ConfigError(
            f"grid must map {' and '.join(GRID_KEYS)} to non-empty lists of values, got {json.dumps(grid)}."
        )
    keys = [key for key in GRID_KEYS if key in grid]

    points = [dict(zip(keys, point, strict=True)) for point in itertools.product(*(grid[key] for key in keys))]

    def expanded(name: str) -> list[str]:
        return [name + "".join(f" {GRID_PREFIXES[key]}{value:g}" for key, value in point.items()) for point in points]

    arms = {}
    for name, arm in values.get("arms", {}).items():
        for point, arm_name in zip(points, expanded(name), strict=True):
            arms[arm_name] = {**arm, "initial": {**arm.get("initial", {}), **point}, "group": name}
    defaults = [arm_name for name in values.get("default_arms", []) for arm_name in expanded(name)]
    return {**values, "arms": arms, "default_arms": defaults}


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; configuration sections merge key by key, anything else is replaced (also
    the data mappings of :data:`REPLACED_MAPPINGS`: a new ``labels`` is the whole class list, new ``options`` all of a
    strategy's options)."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in REPLACED_MAPPINGS:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A JSON (or, with PyYAML installed, YAML) mapping from ``path``.

    Raises:
        ConfigError: no such file, unreadable, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No configuration file {str(path)!r}.")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            content = yaml.safe_load(text)
        else:
            content = json.loads(text)
    except ImportError:
        raise ConfigError(f"{str(path)!r} is YAML: pip install pyyaml, or write it as JSON.") from None
    except Exception as error:  # json and yaml raise their own error types
        raise ConfigError(f"{str(path)!r} is not valid {path.suffix.lstrip('.') or 'JSON'}: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{str(path)!r} must hold a mapping of configuration keys.")
    return content
