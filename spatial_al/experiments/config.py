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
PSEUDO_LABEL_RULES = ("none", "star", "ceal", "interpolation")
INTENSITY_MODES = ("zscore", "window")
CURVE_AXES = ("percent", "round")


@dataclass(frozen=True)
class DataConfig:
    """How a cohort is read and preprocessed into the slice cache.

    Attributes:
        labels: class name -> the source label values merged into it (MSD Task01 tumour core: [2, 3]); None keeps
            every label of the source as its own class, in label-value order.
        channel: the channel of a 4D (multi-modal) image (MSD BrainTumour FLAIR = 0, Prostate T2 = 0).
        slice_axis: "axial", "coronal", "sagittal" or an array axis 0-2 as a string.
        image_size: slices are resized (aspect kept, bilinear; labels nearest) so the longer side has this many pixels,
            then padded to a square.
        intensity: "zscore" (clip to the 0.5/99.5 percentiles, z-score per volume; MR) or "window" (CT: clip to
            ``window`` and scale to [0, 1]).
        window: [low, high] intensities for ``intensity="window"`` (Hounsfield units for CT).
        split: fractions of subjects for [training, validation, test]; validation may be 0 when nothing early-stops.
        split_seed: seed of the subject-wise split (the same for every run of a study, so all share one test set).
        max_subjects: use at most this many subjects (the first ones of the source), None for all.
        demo_subjects: subjects of the generated ``demo`` cohort.
    """

    labels: dict[str, list[int]] | None = None
    channel: int | None = None
    slice_axis: str = "axial"
    image_size: int = 128
    intensity: str = "zscore"
    window: list[float] | None = None
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    split_seed: int = 0
    max_subjects: int | None = None
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
        if self.image_size < 16:
            raise ConfigError(f"data.image_size must be at least 16 pixels, got {self.image_size}.")
        if self.demo_subjects < 3:
            raise ConfigError(f"data.demo_subjects must be at least 3 (one per split), got {self.demo_subjects}.")


@dataclass(frozen=True)
class InitialConfig:
    """The cold-start selection of round 0.

    Attributes:
        strategy: a query strategy that needs no model (``spatial-al strategies``).
        options: its options; ``fixed_interval`` with an ``interval`` puts that grid on every training volume.
        budget: slices over the whole training pool (None with a per-volume grid or a ``percent``).
        percent: the budget as a percent of the training pool's slices (SBC-AL: 6.67), when ``budget`` is None.
    """

    strategy: str = "fixed_interval"
    options: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    percent: float | None = None

    def __post_init__(self):
        if self.percent is not None and not 0 < self.percent <= 100:
            raise ConfigError(f"initial.percent must be in (0, 100], got {self.percent}.")

    @property
    def per_volume_grid(self) -> bool:
        """Whether round 0 is a grid on every volume (no pool-wide budget)."""
        return self.budget is None and self.percent is None

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
            propagated from their two end slices, kept for the rest of the run).
        pseudo_label_count: q of the top-q rules; None: the protocol's query size.
        propagation: the propagation method of "interpolation" (``spatial-al methods``).
        propagation_options: its options.
        model: changes to the model configuration for this arm only, after the protocol's ``model`` (the papers'
            ablations: ``{"structure_prediction": false}`` is SBC-AL without SFP).
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
class ReportConfig:
    """What the study's table and figures show.

    Attributes:
        metric: the metric of the table and curves ("dice_2d", "dice_3d", "iou_3d").
        curve_axis: "percent" (test Dice vs percent of labeled training slices) or "round".
        percents: table columns at these labeled percents (interpolated on each run's curve).
        rounds: table columns at these rounds (``curve_axis="round"``).
        ablation: row title -> arm, for the protocol's ablation table.
    """

    metric: str = "dice_3d"
    curve_axis: str = "percent"
    percents: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    ablation: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.curve_axis not in CURVE_AXES:
            raise ConfigError(f"report.curve_axis must be one of {', '.join(CURVE_AXES)}, got {self.curve_axis!r}.")


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
        rounds: at most this many query rounds.
        budget_percent: stop once this percent of the training slices is annotated (None: after ``rounds``).
        arms: the strategies of the study, by name.
        default_arms: the arms run when none are named.
        seeds: runs per arm (seeds 0 .. seeds-1).
        supervised_reference: also train once on every training slice (the target of S%, the 100 % column).
        report: table and figure settings.
        batch_size: slices per forward pass when ranking and evaluating.
        hd95: compute the 95th percentile Hausdorff distance of test volumes (seconds per round on large volumes).
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
    budget_percent: float | None = None
    arms: dict[str, ArmConfig] = field(default_factory=dict)
    default_arms: list[str] = field(default_factory=list)
    seeds: int = 3
    supervised_reference: bool = True
    report: ReportConfig = field(default_factory=ReportConfig)
    batch_size: int = 16
    hd95: bool = True

    def __post_init__(self):
        for name in ("query_size", "rounds", "seeds", "validation_stride", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.query_percent is not None and not 0 < self.query_percent <= 100:
            raise ConfigError(f"query_percent must be in (0, 100], got {self.query_percent}.")
        if self.budget_percent is not None and not 0 < self.budget_percent <= 100:
            raise ConfigError(f"budget_percent must be in (0, 100], got {self.budget_percent}.")
        unknown = [name for name in self.default_arms if name not in self.arms]
        if unknown:
            raise ConfigError(f"default_arms names {unknown}, which are not arms; arms: {', '.join(self.arms)}.")

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
REPLACED_MAPPINGS = ("labels", "ablation", "options", "propagation_options")


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
