"""Losses, data, the trainer (rounds, STAR's two stages, early stopping) and checkpoints."""

from .checkpoint import (
    Checkpoint,
    initialize_from,
    load_model,
    read_checkpoint,
    resume_trainer,
    save_checkpoint,
)
from .config import TrainingConfig
from .trainer import Trainer, TrainerState
from .volumes import VolumeExamples

__all__ = [
    "Checkpoint",
    "Trainer",
    "TrainerState",
    "TrainingConfig",
    "VolumeExamples",
    "initialize_from",
    "load_model",
    "read_checkpoint",
    "resume_trainer",
    "save_checkpoint",
]
