"""Training configuration as data (saved in every checkpoint and run record)."""

from __future__ import annotations

import difflib
import json
import math
import typing
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..precision import check_precision

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "poly", "step", "cosine")
STAR_PAIR_FORMS = ("bounding", "closest")


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained; the defaults suit a CPU and small annotated sets.

    Attributes:
        loss: "focal", "dice_ce", "dice_focal", "ce" (softmax head) or "bce" (sigmoid head).
        focal_gamma: focal loss exponent (2 in STAR, 5 in Less Is More).
        class_weights: one weight per output channel, background first, for the "ce" loss (the MIDL 2025 study's
            LiTS: 0.04, 0.25, 1.4 for background, liver, tumour); None: unweighted.
        optimizer: "adam", "adamw" (decoupled weight decay: the MIDL 2025 study's 2D models, SegResNet and UNETR) or
            "sgd" (momentum; Nesterov's as nnU-Net unless ``nesterov`` is False).
        learning_rate: first round (STAR: 1e-4).
        fine_tune_learning_rate: every later round, weights kept (STAR: 1e-5).
        structure_learning_rate_factor: SBC-AL's SFP learns at this multiple of the rate of the backbone and ASR
            (the paper: 1e-4 for SFP against 1e-2 for the backbone, 0.01).
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD (nnU-Net); False for plain momentum (SBC-AL).
        weight_decay: L2 penalty.
        schedule: "constant", "poly" (learning rate times (1 - epoch / max_epochs) ** ``poly_power``, per epoch),
            "step" (times ``step_gamma`` every ``step_every`` optimizer steps: SBC-AL's 0.9 every 500) or "cosine"
            (times (1 + cos(pi t / T)) / 2 at optimizer step t of the round's T = max_epochs x batches per epoch).
        poly_power: the "poly" schedule's exponent (nnU-Net's 0.9; the MIDL 2025 study's 2D models 0.8).
        step_every: optimizer steps between two decays of the "step" schedule.
        step_gamma: the "step" schedule's factor.
        batch_size: slices per batch.
        max_epochs: epochs per round (per stage for STAR).
        iterations_per_epoch: batches per epoch, drawn with replacement: fixed-length epochs as nnU-Net's, so the
            budget of a round is max_epochs x iterations_per_epoch optimizer steps (500 by default) however few
            slices are annotated. None: an epoch is one pass over the slices (the papers' epochs; with a dozen
            annotated slices that is one or two steps).
        patience: stop after this many epochs without a lower validation loss (restoring the best weights).
        checkpoint_every: the checkpoint is written when the validation loss improves, when the round ends, and
            at least every this many epochs (a resume replays the epochs since, exactly).
        validation_fraction: annotated slices held out for early stopping (none when too few).
        patch_size: random crop (H, W) per slice; None: whole slices padded to a common size. A 3D model trains on
            patches (D, H, W) (96 x 96 x 96 in Nath et al.; required).
        foreground_odds: a 3D patch is centred on foreground against anywhere at these odds (Nath et al.'s fg:bg
            1:1 is (1, 1)).
        augment: random rotation, scaling, intensity and noise augmentation.
        loader_workers: processes preparing training batches (reading, augmenting) beside the training step; None:
            up to 4 (half the CPU cores at most) when training on CUDA, where the step is fast enough for
            augmentation to dominate it otherwise, for epochs of at least 10 batches, and 0 (the training process
            itself) on CPU and MPS. Results are reproducible for a given number of workers.
        pseudo_label_weight: loss weight of pseudo-labeled slices in round 0 ...
        pseudo_label_decay: ... multiplied by this every round (pseudo-labels count less as true labels grow).
        loss_weights: SBC-AL's (a, b, c) of a*L_SEG + b*L_SFP + c*L_ASR.
        consistency_weights: Nath et al.'s (alpha, beta) of alpha * supervised + beta * consistency in the
            semi-supervised stage (:mod:`spatial_al.training.semi_supervised`); the paper's (1, .001).
        roi_odds: that stage's region-of-interest patches are centred on the noisy label's foreground against anywhere
            at these odds (the paper's 9:1).
        taal_weight: weight of TAAL's cross-augmentation consistency on unlabeled slices, when a round trains with
            them (:func:`~spatial_al.training.losses.cross_augmentation_consistency`; TAAL's code: 1) ...
        taal_rampup_epochs: ... reached after this many epochs of the round along exp(-5 (1 - epoch / length)^2)
            (Laine and Aila's ramp-up, TAAL's 10).
        taal_augmentations: augmented predictions compared with the plain one (TAAL's 3).
        taal_alpha: alpha of TAAL's modified Jensen-Shannon divergence (0.5).
        taal_noise_std: standard deviation of the Gaussian noise of TAAL's augmentations (0.01).
        star_pairs: STAR's stage-2 samples (:func:`~spatial_al.training.data.annotated_neighbour_groups`):
            "closest", the paper's, predicts each annotated slice from one of its two closest annotated slices at a
            time; "bounding" from both at once, as the aggregation attends over a group's annotated slices when it
            pseudo-labels (the default for a model trained from the panels).
        reinitialize_labeled_encoder: copy f_U into STAR's f_L at the start of every round's stage 2 (STAR's code);
            otherwise only the first time.
        gradient_clip: maximum gradient norm (nnU-Net uses 12).
        precision: "auto" (bfloat16 autocast on CUDA GPUs that support it, float16 with gradient scaling on older
            ones, float32 elsewhere), "bf16", "fp16" or "fp32" (see :mod:`spatial_al.precision`).
        seed: seeds weights, data order, augmentation and dropout.
    """

    loss: str = "dice_ce"
    focal_gamma: float = 2.0
    class_weights: tuple[float, ...] | None = None
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    structure_learning_rate_factor: float = 0.01
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    schedule: str = "constant"
    poly_power: float = 0.9
    step_every: int = 500
    step_gamma: float = 0.9
    batch_size: int = 8
    max_epochs: int = 20
    iterations_per_epoch: int | None = 25
    patience: int = 10
    checkpoint_every: int = 5
    validation_fraction: float = 0.2
    patch_size: tuple[int, ...] | None = None
    foreground_odds: tuple[float, float] = (1.0, 1.0)
    augment: bool = True
    loader_workers: int | None = None
    pseudo_label_weight: float = 0.5
    pseudo_label_decay: float = 0.5
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    consistency_weights: tuple[float, float] = (1.0, 0.001)
    roi_odds: tuple[float, float] = (9.0, 1.0)
    taal_weight: float = 1.0
    taal_rampup_epochs: int = 10
    taal_augmentations: int = 3
    taal_alpha: float = 0.5
    taal_noise_std: float = 0.01
    star_pairs: str = "bounding"
    reinitialize_labeled_encoder: bool = False
    gradient_clip: float = 12.0
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}.")
        check_precision(self.precision)
        if self.star_pairs not in STAR_PAIR_FORMS:
            raise ValueError(f"Unknown star_pairs {self.star_pairs!r}; use one of {', '.join(STAR_PAIR_FORMS)}.")
        for name in (
            "batch_size",
            "max_epochs",
            "patience",
            "checkpoint_every",
            "iterations_per_epoch",
            "step_every",
            "taal_rampup_epochs",
            "taal_augmentations",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ValueError(f"loader_workers must be 0 or more, got {self.loader_workers}.")
        if self.patch_size is not None and (len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1):
            raise ValueError(f"patch_size must be (H, W) or (D, H, W) of positive sizes, got {self.patch_size}.")
        for name in ("foreground_odds", "roi_odds"):
            odds = getattr(self, name)
            if len(odds) != 2 or min(odds) < 0 or sum(odds) == 0:
                raise ValueError(f"{name} must be two non-negative odds, not both 0; got {odds}.")
        if len(self.consistency_weights) != 2 or min(self.consistency_weights) < 0:
            raise ValueError(f"consistency_weights must be (alpha, beta), both >= 0; got {self.consistency_weights}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")

    def taal_weight_at(self, epoch: int) -> float:
        """TAAL's consistency weight at ``epoch`` (from 0) of a round: the sigmoid ramp-up of Laine and Aila (2017)."""
        progress = min(epoch / self.taal_rampup_epochs, 1.0)
        return self.taal_weight * math.exp(-5.0 * (1.0 - progress) ** 2)

    def pseudo_weight(self, round_index: int) -> float:
        return self.pseudo_label_weight * self.pseudo_label_decay**round_index

    def learning_rate_for(self, round_index: int) -> float:
        return self.learning_rate if round_index == 0 else self.fine_tune_learning_rate

    def with_options(self, **options: Any) -> TrainingConfig:
        """A copy with ``options`` changed; an unknown name fails with the closest valid one, a value of the wrong
        type with the type the option needs."""
        from ..typed import convert

        known = [f.name for f in fields(self)]
        types = typing.get_type_hints(TrainingConfig)
        for name in options:
            if name not in known:
                closest = difflib.get_close_matches(name, known, n=1, cutoff=0.0)
                raise ValueError(
                    f"Unknown training option {name!r}. Did you mean {closest[0]!r}? Options: {', '.join(known)}."
                )
            options[name] = convert(options[name], types[name], f"training option {name}")
        tuples = ("patch_size", "loss_weights", "foreground_odds", "consistency_weights", "roi_odds", "class_weights")
        for name in tuples:
            if options.get(name) is not None:
                options[name] = tuple(options[name])
        return replace(self, **options)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingConfig:
        values = json.loads(text)
        if "mixed_precision" in values:  # checkpoints written before precision replaced it
            values["precision"] = "auto" if values.pop("mixed_precision") else "fp32"
        return cls().with_options(**values)
