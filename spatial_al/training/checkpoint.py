"""Checkpoints: ``state_dict``s plus the JSON model and training configuration, one ``.pt`` file.

Never a pickled model: files are read with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
Contents: format tag and version, model configuration (JSON), model weights, and for resumable training the
training configuration (JSON), trainer state (JSON), optimizer state and the best weights of the stage so far.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_path
from ..models import ModelConfig, SegmentationModel
from .config import TrainingConfig
from .trainer import Trainer, TrainerState

FORMAT = "spatial-al-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What a checkpoint file holds (see the module docstring); the training parts are None for a bare model."""

    model_config: ModelConfig
    model_state: dict[str, torch.Tensor]
    training_config: TrainingConfig | None = None
    trainer_state: TrainerState | None = None
    optimizer_state: dict | None = None
    best_model_state: dict[str, torch.Tensor] | None = None


def save_checkpoint(path: str | Path, model: SegmentationModel, trainer: Trainer | None = None) -> Path:
    """Write ``model`` (and ``trainer``'s resumable state) to ``path``, replacing it only once fully written."""
    path = Path(path)
    contents: dict = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_json(),
        "model_state": model.state_dict(),
    }
    if trainer is not None:
        contents["training_config"] = trainer.config.to_json()
        contents["trainer_state"] = json.dumps(trainer.state.to_dict())
        if trainer.optimizer is not None:
            contents["optimizer_state"] = trainer.optimizer.state_dict()
        if trainer.best_model_state is not None:
            contents["best_model_state"] = trainer.best_model_state
    with atomic_path(path) as temporary:
        torch.save(contents, temporary)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a SpatialActiveLearning checkpoint (e.g. a pickled model or another tool's).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model checkpoint at {str(path)!r}; train one with spatial-al train.")
    try:
        with warnings.catch_warnings():  # a foreign pickle is refused below; torch's note on its protocol is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            contents = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or pickled files
        raise ValueError(
            f"{str(path)!r} is not a checkpoint this tool can read safely ({type(error).__name__}); "
            "checkpoints are written by spatial-al train."
        ) from None
    if not isinstance(contents, dict) or contents.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a SpatialActiveLearning checkpoint; write one with spatial-al train.")
    if contents.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer version (format {contents['format_version']}).")
    trainer_state = contents.get("trainer_state")
    training_config = contents.get("training_config")
    return Checkpoint(
        model_config=ModelConfig.from_json(contents["model_config"]),
        model_state=contents["model_state"],
        training_config=TrainingConfig.from_json(training_config) if training_config else None,
        trainer_state=TrainerState(**json.loads(trainer_state)) if trainer_state else None,
        optimizer_state=contents.get("optimizer_state"),
        best_model_state=contents.get("best_model_state"),
    )


def check_architecture(checkpoint_config: ModelConfig, expected: ModelConfig, path: str | Path) -> None:
    """Raise ValueError when weights of ``checkpoint_config`` cannot serve as ``expected``."""
    if not checkpoint_config.same_architecture(expected):
        raise ValueError(
            f"{str(path)!r} holds a {checkpoint_config.describe()} model, not the {expected.describe()} asked for. "
            "Resume it without choosing another preset, or train a new model from scratch."
        )


def load_model(
    path: str | Path, device: torch.device, expected: ModelConfig | None = None
) -> tuple[SegmentationModel, Checkpoint]:
    """The model saved at ``path`` on ``device`` in eval mode, and the checkpoint it came from.

    Raises:
        ValueError: not a checkpoint, another architecture than ``expected``, or weights that do not fit the
            architecture the checkpoint's configuration describes.
    """
    checkpoint = read_checkpoint(path)
    if expected is not None:
        check_architecture(checkpoint.model_config, expected, path)
    model = SegmentationModel(checkpoint.model_config)
    load_weights(model, checkpoint.model_state, path)
    return model.to(device).eval(), checkpoint


def load_weights(model: SegmentationModel, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``model.load_state_dict(state)`` with an error that names the problem."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        examples = (missing + unexpected + misshapen)[:3]
        raise ValueError(
            f"The weights in {str(path)!r} do not fit a {model.config.describe()} model: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(misshapen)} misshapen tensors (e.g. {', '.join(examples)}). "
            "The file was changed or written for another architecture."
        )
    model.load_state_dict(state)


def initialize_from(model: SegmentationModel, source: SegmentationModel) -> list[str]:
    """Start ``model`` from ``source``'s weights (Nath et al.: the proxy model initialises the first supervised one):
    every tensor of the same name and shape is copied; the rest, the output layer when the class counts differ, keep
    their fresh initialisation. Returns the names of the tensors not copied.

    Raises:
        ValueError: the two are different architectures (nothing but the output layer may differ).
    """
    if not source.config.same_architecture(model.config):  # classes and head aside
        raise ValueError(
            f"Initialising a {model.config.describe()} model from a {source.config.describe()} one: the "
            "architectures differ; train the proxy with the same preset."
        )
    own, theirs = model.state_dict(), source.state_dict()
    copied = {name: value for name, value in theirs.items() if name in own and own[name].shape == value.shape}
    model.load_state_dict({**own, **copied})
    return sorted(set(own) - set(copied))


def resume_trainer(
    checkpoint: Checkpoint,
    model: SegmentationModel,
    device: torch.device,
    config: TrainingConfig | None = None,
    **trainer_options,
) -> Trainer:
    """A trainer that continues ``checkpoint``'s training (its configuration unless ``config`` is given).

    When the checkpoint's round had finished, the trainer starts the next round (fine-tuning); otherwise it
    continues the interrupted stage (or STAR's stage 2 not yet begun) with its optimizer state and best weights.
    """
    trainer = Trainer(
        model,
        config or checkpoint.training_config or TrainingConfig(),
        device,
        state=checkpoint.trainer_state or TrainerState(finished=True),
        **trainer_options,
    )
    star_stage_pending = model.star is not None and trainer.state.stage == "segmentation"
    if trainer.state.finished and star_stage_pending:  # stopped early just before STAR's stage 2
        trainer.state.start_stage("star_propagation")
    elif trainer.state.finished:
        trainer.next_round()
    else:
        trainer.pending_optimizer_state = checkpoint.optimizer_state
        trainer.best_model_state = checkpoint.best_model_state
    return trainer
