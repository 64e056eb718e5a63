"""Learn from a slice stack and predict one: what ``spatial-al train`` / ``predict`` and the Slicer modules'
"Update model" call.

Volumes are (K, J, I) arrays; a 2D model sees the slices cut along the stack's slice axis, a 3D model the whole
volume (patches in training, sliding windows in prediction) with its slices along that axis first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .io.segmentation import Segmentation, default_color
from .progress import ProgressReporter
from .volume import Segment, SliceStack, normalize_slice_indices


@dataclass
class TrainingOutcome:
    """A trained model, its trainer (state and history) and what it was trained on."""

    model: object  # SegmentationModel
    trainer: object  # Trainer
    annotated_slices: list[int]
    pseudo_labeled_slices: list[int]
    validation_slices: list[int]

    @property
    def history(self) -> list[dict]:
        return self.trainer.state.history

    def summary(self) -> TrainingSummary:
        """What was trained, without the model and trainer (which the checkpoint holds)."""
        return TrainingSummary(
            round_index=self.trainer.state.round_index,
            history=list(self.history),
            annotated_slices=list(self.annotated_slices),
            pseudo_labeled_slices=list(self.pseudo_labeled_slices),
            validation_slices=list(self.validation_slices),
            steps=self.trainer.steps_taken,
            phase_seconds=dict(self.trainer.phase_seconds),
        )


@dataclass
class TrainingSummary:
    """What a training run did: its round, one history record per epoch, the slices it used, optimizer steps and
    seconds per phase (what a training process reports back; the model is in its checkpoint)."""

    round_index: int
    history: list[dict]
    annotated_slices: list[int]
    pseudo_labeled_slices: list[int]
    validation_slices: list[int]
    steps: int
    phase_seconds: dict[str, float]


def select_segments(segments: Sequence[Segment], names: Sequence[str] | None) -> tuple[Segment, ...]:
    """The segments called ``names`` (all when None), in that order.

    Raises:
        ValueError: a name is not a segment of the segmentation, or there is no segment at all.
    """
    if names is None:
        chosen = tuple(segments)
    else:
        by_name = {segment.name: segment for segment in segments}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ValueError(
                f"No segment named {', '.join(map(repr, missing))} in the segmentation; it has: "
                f"{', '.join(by_name) or 'no segments'}."
            )
        chosen = tuple(by_name[name] for name in names)
    if not chosen:
        raise ValueError("The segmentation has no segments to learn; add at least one segment.")
    return chosen


def train_on_stack(
    stack: SliceStack,
    annotated: Sequence[int],
    *,
    segment_names: Sequence[str] | None = None,
    pseudo_labels: Segmentation | None = None,
    pseudo_slices: Sequence[int] | None = None,
    preset=None,
    resume: str | Path | None = None,
    training=None,
    device: str = "auto",
    progress: ProgressReporter | None = None,
    checkpoint_path: str | Path | None = None,
    initial_weights: str | Path | None = None,
) -> TrainingOutcome:
    """Train (or fine-tune) a segmentation model on the annotated slices of ``stack``.

    Args:
        stack: image and segmentation; ``stack.slice_axis`` is the axis slices are cut along.
        annotated: annotated slice indices (only these slices of the segmentation are read as labels).
        segment_names: segments to learn (default: all); when resuming they must be the model's classes.
        pseudo_labels: a segmentation on the same grid whose ``pseudo_slices`` are trained on with the lower
            pseudo-label weight of the round (annotated slices are never taken from it).
        pseudo_slices: slices of ``pseudo_labels`` to use (default: every slice that is not annotated).
        preset: model preset name, or a :class:`~spatial_al.models.ModelConfig`, for a new model (default
            ``unet-small``; class names, head and slice axis are filled in from the data); with ``resume`` it
            must describe the checkpoint's architecture.
        resume: a checkpoint to continue: an interrupted round resumes, a finished one starts the next round
            (fine-tuning at the lower learning rate, pseudo-labels weighted lower).
        training: a :class:`~spatial_al.training.TrainingConfig` (default: the checkpoint's, or the defaults).
        device: "auto", "cpu", "cuda", "mps", ...
        progress: per-batch progress; cancelling stops before the next batch.
        checkpoint_path: written when the validation loss improves, every ``checkpoint_every`` epochs (resumable)
            and at the end.
        initial_weights: a checkpoint whose weights start a new model where they fit (Nath et al.: a proxy
            model's; the output layer stays fresh when the classes differ). Not with ``resume``.

    Raises:
        ValueError: no annotated slice, label-free stack, NaN intensities, segments that do not match the model,
            a checkpoint of another architecture or slice axis.
    """
    import torch
    from monai.utils import set_determinism

    from .device import resolve_device
    from .models import DEFAULT_PRESET, ModelConfig, SegmentationModel, preset_config
    from .training import (
        Trainer,
        TrainingConfig,
        initialize_from,
        load_model,
        read_checkpoint,
        resume_trainer,
        save_checkpoint,
    )
    from .training.checkpoint import check_architecture, load_weights
    from .training.data import normalize_intensities, slice_examples, split_validation, volume_examples

    if stack.image is None:
        raise ValueError("Training needs an image; this stack has labels only.")
    annotated_slices = normalize_slice_indices(annotated, stack.n_slices).tolist()
    if not annotated_slices:
        raise ValueError("No annotated slice: annotate at least one slice (and pass it with --annotated) first.")
    segments = select_segments(stack.segments, segment_names)
    architecture = preset if isinstance(preset, ModelConfig) else preset_config(preset or DEFAULT_PRESET)
    torch_device = resolve_device(device)
    on_checkpoint = (
        (lambda trainer: save_checkpoint(checkpoint_path, trainer.model, trainer)) if checkpoint_path else None
    )

    if resume is not None and initial_weights is not None:
        raise ValueError("A resumed model keeps its own weights; give --resume or --init, not both.")
    if resume is not None:
        checkpoint = read_checkpoint(resume)
        model_config = checkpoint.model_config
        if preset is not None:
            check_architecture(model_config, architecture, resume)
        if model_config.slice_axis != stack.slice_axis:
            raise ValueError(
                f"The model in {str(resume)!r} was trained on slices along array axis {model_config.slice_axis}, "
                f"this run cuts along axis {stack.slice_axis}; pass --axis {model_config.slice_axis}."
            )
        set_determinism(seed=(training or checkpoint.training_config or TrainingConfig()).seed)
        model = SegmentationModel(model_config)
        load_weights(model, checkpoint.model_state, resume)
        trainer = resume_trainer(
            checkpoint, model, torch_device, training, progress=progress, on_checkpoint=on_checkpoint
        )
    else:
        training = training or TrainingConfig()
        set_determinism(seed=training.seed)  # the same seed gives the same initial weights
        head = "sigmoid" if len({segment.layer for segment in segments}) > 1 else "softmax"
        model_config = replace(
            architecture,
            class_names=tuple(segment.name for segment in segments),
            class_colors=tuple(segment.color or default_color(i) for i, segment in enumerate(segments)),
            head=head,
            slice_axis=stack.slice_axis,
        )
        model = SegmentationModel(model_config)
        if initial_weights is not None:
            source, _ = load_model(initial_weights, torch.device("cpu"))
            initialize_from(model, source)
        trainer = Trainer(model, training, torch_device, progress=progress, on_checkpoint=on_checkpoint)

    config = trainer.config
    image = normalize_intensities(stack.image)
    if model_config.spatial_dims == 3:
        if pseudo_labels is not None:
            raise ValueError(
                "A 3D model learns from the annotated slices of the volume (the others are masked out of its loss); "
                "pseudo-labels train 2D models. Leave them out, or use a 2D preset."
            )
        volume = volume_examples(
            image, stack.label_layers, segments, model_config.class_names, annotated_slices, stack.slice_axis
        )
        if config.patch_size is None:  # the whole volume up to 96 voxels a side (the Slicer panel sets none)
            trainer.config = replace(config, patch_size=default_window(volume.images[0].shape[1:], model.size_divisor))
        trainer.train_round(volume)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, trainer.model, trainer)
        return TrainingOutcome(trainer.model, trainer, annotated_slices, [], [])
    examples = slice_examples(
        image, stack.label_layers, segments, model_config.class_names, annotated_slices, stack.slice_axis
    )
    used_pseudo: list[int] = []
    if pseudo_labels is not None:
        stack.geometry.require_same_grid(pseudo_labels.geometry, "pseudo-labels")
        candidates = range(stack.n_slices) if pseudo_slices is None else pseudo_slices
        used_pseudo = sorted(set(normalize_slice_indices(candidates, stack.n_slices).tolist()) - set(annotated_slices))
        pseudo_segments = [s for s in pseudo_labels.segments if s.name in model_config.class_names]
        absent = [name for name in model_config.class_names if name not in {s.name for s in pseudo_segments}]
        if absent:
            raise ValueError(
                f"The pseudo-labels have no segment named {', '.join(map(repr, absent))}; their segments are "
                f"{', '.join(s.name for s in pseudo_labels.segments) or 'none'}. Pseudo-label segments must have the "
                "names of the segments being learned."
            )
        examples.extend(
            slice_examples(
                image,
                pseudo_labels.label_layers,
                pseudo_segments,
                model_config.class_names,
                used_pseudo,
                stack.slice_axis,
                weight=config.pseudo_weight(trainer.state.round_index),
                annotated=False,
            )
        )
    training_examples, validation_examples = split_validation(examples, config.validation_fraction, config.seed)
    trainer.train_round(training_examples, validation_examples)
    if checkpoint_path is not None:
        save_checkpoint(checkpoint_path, trainer.model, trainer)
    validation = sorted(index for _, index in validation_examples.sources) if validation_examples else []
    return TrainingOutcome(trainer.model, trainer, annotated_slices, used_pseudo, validation)


def default_window(shape: Sequence[int], divisor: int) -> tuple[int, ...]:
    """A 3D model's patch or window for a volume of ``shape`` (D, H, W): each side the volume's, rounded down to a
    multiple of ``divisor`` (at least one), at most 96 (Nath et al.'s patch)."""
    return tuple(min(96, max(divisor, int(size) // divisor * divisor)) for size in shape)


def volume_prediction(model, volume: np.ndarray, device, batch_size: int, progress) -> np.ndarray:
    """A 3D model's prediction of ``volume`` (D, H, W) by sliding windows of :func:`default_window`: class indices
    (D, H, W) for a softmax head, masks (D, S, H, W) for a sigmoid one, as :meth:`SlicePredictor.labels` gives
    them."""
    from .models.volume_inference import predict_volume, volume_labels

    window = default_window(volume.shape, model.size_divisor)
    model.eval()
    probabilities = predict_volume(
        model, volume[np.newaxis], window, device, batch_size=max(1, batch_size // 4), progress=progress
    )
    if model.config.head == "softmax":
        return volume_labels(probabilities, "softmax")
    return (probabilities > 0.5).numpy().transpose(1, 0, 2, 3)


def predict_segmentation(
    model,
    stack: SliceStack,
    device: str = "auto",
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
) -> Segmentation:
    """The model's segmentation of ``stack.image``, cut along the model's slice axis, on the stack's grid.

    Segments carry the names and colours the model was trained on; a softmax model gives one label layer with
    values 1..S, a sigmoid model a layer per group of non-overlapping segments.
    """
    from .device import resolve_device
    from .models.inference import SlicePredictor
    from .session import assemble_layers
    from .training.data import normalize_intensities

    config = model.config
    if stack.image is None:
        raise ValueError("Prediction needs an image; this stack has labels only.")
    axis = config.slice_axis
    slices = np.moveaxis(normalize_intensities(stack.image), axis, 0)[:, np.newaxis]  # (N, 1, H, W)
    if config.spatial_dims == 3:
        predicted = volume_prediction(model, slices[:, 0], resolve_device(device), batch_size, progress)
    else:
        predicted = SlicePredictor(model, resolve_device(device), batch_size).labels(slices, progress).numpy()
    segments = tuple(
        Segment(name=name, label_value=index + 1, color=config.class_colors[index] if config.class_colors else None)
        for index, name in enumerate(config.class_names)
    )
    if config.head == "softmax":
        labels = np.moveaxis(predicted, 0, axis)[np.newaxis]
        return Segmentation(labels.astype(np.uint8 if len(segments) < 255 else np.uint16), segments, stack.geometry)
    masks = [np.moveaxis(predicted[:, index], 0, axis).astype(bool) for index in range(len(segments))]
    layers, placed = assemble_layers(segments, masks)
    return Segmentation(layers, placed, stack.geometry)
