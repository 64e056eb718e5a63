"""The trainer: rounds of (incremental) training with early stopping, progress, cancel and resumable state.

One round trains on the slices labeled so far. Round 0 starts at ``learning_rate``; every later round keeps the
weights and continues at ``fine_tune_learning_rate`` (STAR's incremental fine-tuning). Data order, augmentation
and dropout are seeded per epoch from (seed, round, epoch), so a run resumed from its last checkpoint continues
exactly as it would have without the interruption (bit for bit on CPU).
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from ..models import STAGES
from ..precision import autocast, autocast_dtype, cpu_bfloat16_conv3d_weight_gradients_are_wrong
from ..progress import ProgressReporter, check_cancelled, report
from .config import TrainingConfig
from .data import SliceExamples, UnlabeledSlices, annotated_neighbour_groups
from .loader import SliceDataset
from .losses import (
    cross_augmentation_consistency,
    distance_regression_loss,
    segmentation_loss,
    weighted_mean,
    with_background,
)
from .semi_supervised import ConsistencyDataset, SemiSupervisedExamples, predicted_target
from .volumes import PatchDataset, VolumeExamples

# Consecutive steps with a non-finite loss or gradient after which training stops (a transient one is skipped).
MAX_NON_FINITE_STEPS = 5
MIN_BATCHES_FOR_WORKERS = 10  # shorter epochs are prepared in the training process (see Trainer.workers_for)
# Where training time goes: waiting for batches (reading slices), padding/augmenting/cropping them in the training
# process (with loader workers this happens beside the step, and only the wait counts, as "data"), the optimizer
# step (forward, backward, update), the validation passes and writing checkpoints.
PHASES = ("data", "augmentation", "forward_backward", "validation", "checkpoint")


def advance(scheduler) -> None:
    """Move the learning-rate schedule on by one batch. Every batch counts, also one skipped for a non-finite loss
    and those a resumed stage fast-forwards over, so torch's warning about a step before ``optimizer.step()`` does
    not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        scheduler.step()


def reseed_worker(worker_id: int) -> None:
    """Seed a loader worker's augmentation from its own seed, which torch draws for each worker from the main
    process's generator (seeded every epoch): the workers augment differently, and the same way every run."""
    worker = torch.utils.data.get_worker_info()
    worker.dataset.reseed(worker.seed)


@dataclass
class TrainerState:
    """Where training stands; saved in checkpoints so ``--resume`` continues it.

    Attributes:
        round_index: annotation round (0: first training; later: fine-tuning).
        stage: "segmentation", "star_propagation" (STAR's stage 2) or "semi_supervised" (Nath et al.'s stage 2).
        epoch: epochs finished in this round and stage.
        best_validation_loss: lowest validation loss of this round and stage (inf without validation).
        epochs_without_improvement: for early stopping.
        finished: this round's training ended (max epochs or early stop); a resume then starts the next round.
        history: one record per finished epoch (round, stage, epoch, losses, learning rate, seconds).
    """

    round_index: int = 0
    stage: str = "segmentation"
    epoch: int = 0
    best_validation_loss: float = math.inf
    epochs_without_improvement: int = 0
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def start_stage(self, stage: str) -> None:
        self.stage = stage
        self.epoch = 0
        self.best_validation_loss = math.inf
        self.epochs_without_improvement = 0
        self.finished = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    """Trains a :class:`~spatial_al.models.SegmentationModel` in place.

    Args:
        model: the network (moved to ``device``).
        config: how to train.
        device: where to train (see :func:`spatial_al.device.resolve_device`).
        progress: receives one report per batch and may cancel; cancel stops before the next batch.
        state: a resumed :class:`TrainerState` (new: round 0).
        on_checkpoint: called with the trainer when a checkpoint is due, after an epoch whose validation loss
            improved, the last epoch of a stage, and every ``checkpoint_every`` epochs (e.g. to write it).
    """

    def __init__(
        self,
        model,
        config: TrainingConfig,
        device: torch.device,
        progress: ProgressReporter | None = None,
        state: TrainerState | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
    ):
        self.model = model.to(device)
        self.config = config
        self.device = device
        self.progress = progress
        self.state = state or TrainerState()
        self.on_checkpoint = on_checkpoint
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending_optimizer_state: dict | None = None
        self.best_model_state: dict[str, torch.Tensor] | None = None
        self.amp_dtype = autocast_dtype(config.precision, device)
        if (
            self.amp_dtype == torch.bfloat16
            and device.type == "cpu"
            and model.config.spatial_dims == 3
            and cpu_bfloat16_conv3d_weight_gradients_are_wrong()
        ):
            raise ValueError(
                f"torch {torch.__version__} computes wrong bfloat16 weight gradients for 3D convolutions on this CPU "
                "(checked against float32 on a feature map two slices deep), so a 3D model cannot train in bfloat16 "
                "here. Train it in float32 (--option precision=fp32, the CPU's default) or on a GPU."
            )
        # float16 needs loss scaling (and skips steps whose gradients overflow); bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.non_finite_steps = 0  # consecutive steps skipped for a non-finite loss or gradient
        # seconds spent in each phase since this trainer was made: see :data:`PHASES`
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)
        self.steps_taken = 0  # optimizer steps run by this trainer (skipped non-finite ones included)
        head = model.config.head
        if config.class_weights is not None and len(config.class_weights) != model.config.out_channels:
            raise ValueError(
                f"class_weights needs one weight per output channel, background first ({model.config.out_channels} "
                f"for {', '.join(model.config.class_names)}), got {len(config.class_weights)}."
            )
        # checks the loss fits the head now
        self.loss = segmentation_loss(config.loss, head, config.focal_gamma, config.class_weights)
        self.refinement_loss = segmentation_loss("dice_ce", head, config.focal_gamma)  # SBC-AL's L_ASR

    # -- rounds and stages ---------------------------------------------------------------------------------------

    def next_round(self) -> None:
        """Start the next annotation round: weights kept, fine-tuning learning rate, fresh optimizer."""
        self.state.round_index += 1
        self.state.start_stage("segmentation")
        self.optimizer = None
        self.pending_optimizer_state = None
        self.best_model_state = None

    def train_round(
        self,
        training: SliceExamples,
        validation: SliceExamples | None = None,
        unlabeled: UnlabeledSlices | None = None,
    ) -> TrainerState:
        """One round: the segmentation stage, then STAR's propagation stage when the model has STAR modules.

        With ``unlabeled`` slices, every step of the segmentation stage adds TAAL's cross-augmentation consistency
        on a batch of them (``taal_*`` options of the configuration).

        STAR stage 2 predicts each annotated slice from the annotated slices around it in its volume (its group,
        eq. 2: ({x', y'}, x'') -> y'') and trains f_L, the key/value head and the decoder. f_L starts as a copy of
        f_U when stage 2 starts for the first time, or at every round with ``reinitialize_labeled_encoder``. A
        resumed state continues from its stage and epoch.
        """
        if self.state.stage == "segmentation":
            self.fit(training, validation, stage="segmentation", unlabeled=unlabeled)
            if self.model.star is None:
                return self.state
            self.state.start_stage("star_propagation")
            self.optimizer = None
            self.best_model_state = None
        if not self.state.finished:
            star = self.model.star
            starting = self.state.epoch == 0
            if starting and (self.config.reinitialize_labeled_encoder or not bool(star.labeled_encoder_trained)):
                star.initialize_labeled_encoder(self.model.backbone.encoder)
            self.fit(training, validation, stage="star_propagation")
            star.labeled_encoder_trained.fill_(True)
        return self.state

    def train_semi_supervised(
        self, examples: SemiSupervisedExamples, validation: VolumeExamples | None = None
    ) -> TrainerState:
        """Nath et al.'s stage 2 of the round (:mod:`spatial_al.training.semi_supervised`), after the segmentation
        stage: labeled patches and two views of noisy-labeled region-of-interest patches; a resumed state continues
        it."""
        if self.state.stage != "semi_supervised":
            self.state.start_stage("semi_supervised")
            self.optimizer = None
            self.best_model_state = None
        if not self.state.finished:
            self.fit(examples, validation, stage="semi_supervised")
        return self.state

    # -- one stage -----------------------------------------------------------------------------------------------

    def fit(
        self,
        training: SliceExamples,
        validation: SliceExamples | None = None,
        stage: str = "segmentation",
        unlabeled: UnlabeledSlices | None = None,
    ):
        """Train one stage of the current round until ``max_epochs`` or early stopping; returns the state. With
        ``unlabeled`` slices (none empty), each step adds TAAL's consistency on a batch of them; the validation loss
        stays the supervised one.

        Raises:
            ValueError: no training slice (or no annotated pair for STAR's stage 2).
            OperationCancelled: the progress reporter asked to stop; the weights are those of the last batch and
                the last ``on_checkpoint`` checkpoint is the one to resume from.
        """
        self.state.stage = stage
        loader = self.data_loader(training, stage, shuffle=True)
        validation_loader = self.data_loader(validation, stage, shuffle=False) if validation else None
        total = self.config.max_epochs * len(loader)
        with self.stage_training(stage) as optimizer:
            scheduler = self._scheduler(optimizer, len(loader))
            while self.state.epoch < self.config.max_epochs and not self.state.finished:
                started = time.perf_counter()
                learning_rate = optimizer.param_groups[0]["lr"]  # at the epoch's first step
                seed = self._seed_epoch(loader)
                consistency = self._consistency_term(unlabeled, seed) if unlabeled else None
                self.model.train()
                if stage == "star_propagation":
                    self.model.backbone.encoder.eval()  # f_U is frozen: keep its normalisation statistics too
                losses = []
                with self._phase_timing(loader):
                    for batch_index, batch in enumerate(self._timed_batches(loader)):
                        check_cancelled(self.progress)
                        with self._timed("forward_backward"):
                            losses.append(self.train_step(batch, stage, optimizer, consistency))
                        advance(scheduler)
                        self.steps_taken += 1
                        done = self.state.epoch * len(loader) + batch_index + 1
                        message = f"{stage} epoch {self.state.epoch + 1}, loss {losses[-1]:.4f}"
                        report(self.progress, done, total, message)
                with self._timed("validation"):
                    validation_loss = self.evaluate(validation_loader, stage) if validation_loader else None
                self._end_epoch(stage, losses, validation_loss, learning_rate, time.perf_counter() - started)
        if self.best_model_state is not None:
            self.model.load_state_dict(self.best_model_state)
        self.state.finished = True
        return self.state

    def evaluate(self, loader: DataLoader, stage: str) -> float:
        """Mean weighted loss over ``loader`` without gradients or augmentation."""
        self.model.eval()
        loader.dataset.reseed(self.config.seed)  # the same validation patches every epoch (3D); a no-op for slices
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                loss = self._loss(self._to_device(batch), stage)
                total += float(loss) * len(batch["image"])
                count += len(batch["image"])
        return total / max(count, 1)

    # -- internals -----------------------------------------------------------------------------------------------

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[phase] += time.perf_counter() - started

    def _timed_batches(self, loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
        """``loader``'s batches, the time spent producing each counted as "data" (augmentation moved apart)."""
        batches = iter(loader)
        while True:
            with self._timed("data"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    @contextmanager
    def _phase_timing(self, loader: DataLoader) -> Iterator[None]:
        """Moves the time ``loader``'s dataset spent transforming samples from "data" to "augmentation"."""
        before = loader.dataset.transform_seconds
        try:
            yield
        finally:
            transformed = loader.dataset.transform_seconds - before
            self.phase_seconds["data"] -= transformed
            self.phase_seconds["augmentation"] += transformed

    def data_loader(self, examples: SliceExamples | VolumeExamples, stage: str, shuffle: bool) -> DataLoader | None:
        """Batches of ``examples`` for ``stage``: shuffled, cropped and augmented when ``shuffle`` (training); 3D
        patches of volumes for a 3D model. None for validation of STAR's stage 2 when no two held-out slices of one
        volume can be grouped."""
        if isinstance(examples, VolumeExamples | SemiSupervisedExamples):
            dataset = self.patch_dataset(examples, augment=self.config.augment and shuffle)
            return self.batches(dataset, shuffle)
        groups = None
        if stage == "star_propagation":  # groups of annotated slices only, never pseudo-labels
            annotated = examples.annotated_indices
            groups = [
                (annotated[target], tuple(annotated[n] for n in neighbours))
                for target, neighbours in annotated_neighbour_groups(
                    [examples.sources[i] for i in annotated], self.config.star_pairs
                )
            ]
            if not groups and not shuffle:
                return None  # too few held-out slices to group: stage 2 runs without early stopping
            if not groups:
                raise ValueError("STAR's propagation stage needs two annotated slices in one volume; annotate another.")
        dataset = SliceDataset(
            examples,
            self.model.size_divisor,
            self.config.patch_size if shuffle else None,
            augment=self.config.augment and shuffle,
            with_distance=self.model.config.structure_heads
            and self.model.config.structure_prediction
            and stage == "segmentation",
            distance_scale=self.model.config.distance_scale,
            groups=groups,
        )
        return self.batches(dataset, shuffle)

    def patch_dataset(
        self, examples: VolumeExamples | SemiSupervisedExamples, augment: bool
    ) -> PatchDataset | ConsistencyDataset:
        """Random 3D patches of ``examples`` for a 3D model (see :mod:`spatial_al.training.volumes`), with the
        semi-supervised stage's region-of-interest views for :class:`SemiSupervisedExamples`.

        Raises:
            ValueError: the model is 2D, or no 3D patch size is configured.
        """
        if self.model.config.spatial_dims != 3:
            raise ValueError(f"Volumes train a 3D model; this model is {self.model.config.describe()}.")
        patch, divisor = self.config.patch_size, self.model.size_divisor
        if patch is None or len(patch) != 3 or any(n % divisor for n in patch) or max(patch) <= divisor:
            raise ValueError(
                f"A 3D model trains on patches: set patch_size to (D, H, W), each a multiple of {divisor} and one "
                f"at least {2 * divisor} (its bottleneck needs more than one voxel; e.g. 96, 96, 96); got {patch}."
            )
        positive, negative = self.config.foreground_odds
        if isinstance(examples, SemiSupervisedExamples):
            dataset = ConsistencyDataset(
                examples, patch, positive, negative, self.config.roi_odds, augment=augment, seed=self.config.seed
            )
        else:
            dataset = PatchDataset(examples, patch, positive, negative, augment=augment, seed=self.config.seed)
        if dataset.padded:
            warnings.warn(
                f"{', '.join(dataset.padded)} {'is' if len(dataset.padded) == 1 else 'are'} smaller than the patch "
                f"{tuple(patch)} along an axis and padded to it (the padding is masked out of the loss); a smaller "
                "patch_size avoids it.",
                stacklevel=2,
            )
        return dataset

    def batches(self, dataset, shuffle: bool) -> DataLoader:
        """The loader of ``dataset``: ``iterations_per_epoch`` batches drawn with replacement when shuffling."""
        sampler, workers = None, 0
        if shuffle:
            samples = (self.config.iterations_per_epoch or 0) * self.config.batch_size or None
            sampler = RandomSampler(
                dataset, replacement=samples is not None, num_samples=samples, generator=torch.Generator()
            )
            workers = self.workers_for(math.ceil(len(sampler) / self.config.batch_size))
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            worker_init_fn=reseed_worker if workers else None,
            pin_memory=self.device.type == "cuda",
        )

    @property
    def loader_workers(self) -> int:
        """Processes preparing training batches (see ``TrainingConfig.loader_workers``)."""
        if self.config.loader_workers is not None:
            return self.config.loader_workers
        return min(4, (os.cpu_count() or 1) // 2) if self.device.type == "cuda" else 0

    def workers_for(self, batches: int) -> int:
        """Loader workers for an epoch of ``batches``: by default none for short epochs, whose few batches do not
        repay starting the worker processes each epoch (a proxy model's epochs of four batches, say)."""
        if self.config.loader_workers is None and batches < MIN_BATCHES_FOR_WORKERS:
            return 0
        return self.loader_workers

    def _seed_epoch(self, loader: DataLoader) -> int:
        """Seed the epoch's dropout, order and augmentation from (seed, round, stage, epoch); returns that seed."""
        stage_index = STAGES.index(self.state.stage)
        entropy = [self.config.seed, self.state.round_index, stage_index, self.state.epoch]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        torch.manual_seed(seed)  # dropout
        loader.sampler.generator.manual_seed(seed)
        loader.dataset.reseed(seed)
        return seed

    def _consistency_term(self, unlabeled: UnlabeledSlices, seed: int) -> Callable[[], torch.Tensor]:
        """The epoch's TAAL term: each call draws a batch of ``unlabeled`` slices and returns the weighted
        cross-augmentation consistency on it (draws and augmentations seeded from the epoch's ``seed``)."""
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        config = self.config
        weight = config.taal_weight_at(self.state.epoch)

        def forward(images: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp_dtype):
                return self.model(images).float()

        def term() -> torch.Tensor:
            images = unlabeled.draw(rng, config.batch_size, self.model.size_divisor)
            consistency = cross_augmentation_consistency(
                forward,
                torch.from_numpy(images).to(self.device),
                self.model.config.head,
                augmentations=config.taal_augmentations,
                alpha=config.taal_alpha,
                noise_std=config.taal_noise_std,
                generator=generator,
            )
            return weight * consistency

        return term

    def _optimizer(self, stage: str) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        rate = self.config.learning_rate_for(self.state.round_index)
        groups = []
        for name, module in self.model.stage_modules(stage).items():
            factor = self.config.structure_learning_rate_factor if name == "structure" else 1.0
            groups.append({"params": list(module.parameters()), "lr": rate * factor, "name": name})
        if self.config.optimizer in ("adam", "adamw"):
            adam = torch.optim.Adam if self.config.optimizer == "adam" else torch.optim.AdamW
            optimizer = adam(groups, weight_decay=self.config.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                groups,
                momentum=self.config.momentum,
                nesterov=self.config.nesterov,
                weight_decay=self.config.weight_decay,
            )
        if self.pending_optimizer_state is not None:
            optimizer.load_state_dict(self.pending_optimizer_state)
            self.pending_optimizer_state = None
        self.optimizer = optimizer
        return optimizer

    def _scheduler(self, optimizer: torch.optim.Optimizer, batches_per_epoch: int):
        """The learning-rate schedule, stepped after every batch and fast-forwarded to where a resumed stage stands:
        "constant"; "poly", times (1 - epoch / max_epochs) ** ``poly_power`` by epoch; "step", times ``step_gamma``
        every ``step_every`` optimizer steps of the stage (SBC-AL's 0.9 every 500); "cosine", times
        (1 + cos(pi step / steps)) / 2 over the stage's max_epochs x ``batches_per_epoch`` steps."""
        config = self.config
        steps = config.max_epochs * batches_per_epoch

        def factor(step: int) -> float:
            if config.schedule == "poly":
                epoch = min(step // batches_per_epoch, config.max_epochs)
                return (1.0 - epoch / config.max_epochs) ** config.poly_power
            if config.schedule == "step":
                return config.step_gamma ** (step // config.step_every)
            if config.schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        for _ in range(self.state.epoch * batches_per_epoch):
            advance(scheduler)
        return scheduler

    @contextmanager
    def stage_training(self, stage: str) -> Iterator[torch.optim.Optimizer]:
        """Within the block only ``stage``'s modules take gradients; yields the stage's optimizer."""
        optimizer = self._optimizer(stage)
        trained = {id(p) for p in self.model.stage_parameters(stage)}
        frozen = [p for p in self.model.parameters() if id(p) not in trained and p.requires_grad]
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            yield optimizer
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """The weighted loss of ``batch``: the network runs in the autocast dtype, every loss in float32."""
        loss = self.loss
        target, mask, weights = batch["target"], batch["mask"], batch["weight"]
        if stage == "star_propagation":
            labels = batch["labeled_target"]
            if self.model.config.head == "softmax":
                labels = with_background(labels.flatten(0, 1)).unflatten(0, labels.shape[:2])
            with autocast(self.device, self.amp_dtype):
                logits = self.model.propagate(batch["image"], batch["labeled_image"], labels, batch["labeled_mask"])
            return weighted_mean(loss(logits.logits.float(), target, mask), weights)
        if stage == "semi_supervised" and "view" in batch:  # validation batches have labeled patches only
            alpha, beta = self.config.consistency_weights
            return alpha * self._plain_loss(batch) + beta * self._consistency_loss(batch)
        if self.model.structure is None:
            return self._plain_loss(batch)
        with autocast(self.device, self.amp_dtype):
            outputs = self.model.structure_outputs(batch["image"])
        a, b, c = self.config.loss_weights
        per_sample = a * loss(outputs.coarse.float(), target, mask)
        if outputs.distance is not None:
            per_sample = per_sample + b * distance_regression_loss(outputs.distance.float(), batch["distance"], mask)
        if outputs.refined is not outputs.coarse:
            per_sample = per_sample + c * self.refinement_loss(outputs.refined.float(), target, mask)
        return weighted_mean(per_sample, weights)

    def _plain_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted segmentation loss of the batch's labeled images."""
        with autocast(self.device, self.amp_dtype):
            logits = self.model(batch["image"])
        return weighted_mean(self.loss(logits.float(), batch["target"], batch["mask"]), batch["weight"])

    def _consistency_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of the prediction on the augmented view against the labels predicted on the plain view (no
        gradient through the latter), averaged over the batch."""
        view, augmented = batch["view"], batch["augmented_view"]
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            target = predicted_target(self.model(view).float(), self.model.config.head)
        with autocast(self.device, self.amp_dtype):
            logits = self.model(augmented)
        everywhere = torch.ones_like(view[:, :1])
        return self.loss(logits.float(), target, everywhere).mean()

    def train_step(
        self,
        batch: dict[str, torch.Tensor],
        stage: str,
        optimizer: torch.optim.Optimizer,
        extra_loss: Callable[[], torch.Tensor] | None = None,
    ) -> float:
        """One optimisation step on ``batch`` (see :mod:`spatial_al.training.loader` for its keys), plus
        ``extra_loss()`` when given (TAAL's consistency); the loss (NaN for a skipped step).

        A step whose loss or gradients are not finite is skipped, as a gradient scaler skips an overflowing step;
        :data:`MAX_NON_FINITE_STEPS` of them in a row stop training with an error that says what to change.
        """
        loss = self._loss(self._to_device(batch), stage)
        if extra_loss is not None:
            loss = loss + extra_loss()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return self._skip_step(optimizer, float(loss.detach()))
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        gradient_norm = torch.nn.utils.clip_grad_norm_(
            [p for group in optimizer.param_groups for p in group["params"]], self.config.gradient_clip
        )
        if not torch.isfinite(gradient_norm) and not self.scaler.is_enabled():
            optimizer.zero_grad(set_to_none=True)
            return self._skip_step(optimizer, float(loss.detach()))
        self.scaler.step(optimizer)  # a float16 scaler skips the step itself when gradients overflowed
        self.scaler.update()
        self.non_finite_steps = 0
        return float(loss.detach())

    def _skip_step(self, optimizer: torch.optim.Optimizer, loss: float) -> float:
        self.non_finite_steps += 1
        if self.non_finite_steps >= MAX_NON_FINITE_STEPS:
            precision = "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")
            raise FloatingPointError(
                f"The training loss or its gradients were not finite for {self.non_finite_steps} steps in a row "
                f"(last loss {loss}, {precision}, learning rate {optimizer.param_groups[0]['lr']:g}). Lower the "
                "learning rate, or train in float32 (--option precision=fp32)."
            )
        return math.nan

    def _end_epoch(self, stage, losses, validation_loss, learning_rate, seconds) -> None:
        state = self.state
        finite = [loss for loss in losses if math.isfinite(loss)]  # skipped steps left out
        state.epoch += 1
        state.history.append(
            {
                "round": state.round_index,
                "stage": stage,
                "epoch": state.epoch,
                "train_loss": sum(finite) / len(finite) if finite else None,
                "validation_loss": validation_loss,
                "learning_rate": learning_rate,
                "seconds": round(seconds, 3),
            }
        )
        improved = validation_loss is not None and validation_loss < state.best_validation_loss
        if improved:
            state.best_validation_loss = validation_loss
            state.epochs_without_improvement = 0
            self.best_model_state = copy.deepcopy(self.model.state_dict())
        elif validation_loss is not None:
            state.epochs_without_improvement += 1
            state.finished = state.epochs_without_improvement >= self.config.patience
        last = state.finished or state.epoch >= self.config.max_epochs
        due = improved or last or state.epoch % self.config.checkpoint_every == 0
        if due and self.on_checkpoint is not None:
            with self._timed("checkpoint"):
                self.on_checkpoint(self)
