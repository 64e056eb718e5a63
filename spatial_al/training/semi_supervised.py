"""Nath et al.'s semi-supervised fine-tuning (stage 2 of each active-learning iteration), 3D.

After the supervised stage, the most certain unlabeled volumes get noisy labels: the model's prediction where its
probability reaches a threshold tau (.9). Stage 2 then trains on two kinds of patches at every step:

- a labeled patch (foreground:background as the supervised stage), with the supervised loss (DiceCE);
- a region-of-interest patch of a noisy-labeled volume, centred on the noisy label's foreground at odds 9:1, seen
  twice: as it is and augmented (Gaussian noise, intensity scale and shift, contrast: intensity changes only, so the
  two views stay voxel-aligned). The consistency loss is the same DiceCE between the prediction on the augmented
  view and the labels predicted on the plain view (gradient stopped there, as FixMatch's pseudo-targets).

The step's loss is ``alpha * supervised + beta * consistency`` (alpha 1, beta .001 in the paper).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..models.inference import most_likely_class
from .volumes import PatchDataset, VolumeExamples

CONSISTENCY_KEYS = ("view", "augmented_view")


@dataclass
class SemiSupervisedExamples:
    """Stage 2's data: the labeled volumes and the noisy-labeled ones (their targets the noisy labels)."""

    labeled: VolumeExamples
    noisy: VolumeExamples


def noisy_label(probabilities: np.ndarray | torch.Tensor, head: str, threshold: float) -> np.ndarray:
    """Multi-hot noisy labels (S, D, H, W) uint8 from probabilities (out_channels, D, H, W): class c where its
    probability is at least ``threshold`` (a softmax head's background channel 0 is left out), nothing elsewhere.

    Raises:
        ValueError: a threshold outside (0, 1].
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"The noisy-label threshold tau is a probability in (0, 1], got {threshold}.")
    probabilities = torch.as_tensor(probabilities)
    foreground = probabilities[1:] if head == "softmax" else probabilities
    return (foreground >= threshold).numpy().astype(np.uint8)


def consistency_views() -> object:
    """The augmentation that makes the second view of a region-of-interest patch (intensity only, see the module
    docstring), a MONAI transform of a (C, D, H, W) image."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandGaussianNoise,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    return Compose(
        [
            RandGaussianNoise(prob=1.0, std=0.05),
            RandScaleIntensity(factors=0.1, prob=1.0),
            RandShiftIntensity(offsets=0.1, prob=1.0),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
        ]
    )


class ConsistencyDataset(Dataset):
    """Item ``index``: a random patch of labeled volume ``index`` ("image", "target", "mask", "weight" as
    :class:`PatchDataset`) and a region-of-interest patch of a random noisy-labeled volume, plain ("view") and
    augmented ("augmented_view"), each (1, d, h, w).

    Args:
        examples: the labeled and noisy-labeled volumes.
        patch_size: (d, h, w) of both kinds of patches.
        positive, negative: odds of a labeled patch centred on foreground.
        roi_odds: odds of a region-of-interest patch centred on the noisy label's foreground against anywhere.
        augment: augment the labeled patches (flips, intensity) as the supervised stage does.
        seed: draws the voxel samples of patch centres.
    """

    def __init__(
        self,
        examples: SemiSupervisedExamples,
        patch_size: tuple[int, int, int],
        positive: float = 1.0,
        negative: float = 1.0,
        roi_odds: tuple[float, float] = (9.0, 1.0),
        augment: bool = False,
        seed: int = 0,
    ):
        if not len(examples.noisy):
            raise ValueError("Semi-supervised fine-tuning needs at least one noisy-labeled volume.")
        self.labeled = PatchDataset(examples.labeled, patch_size, positive, negative, augment=augment, seed=seed)
        self.noisy = PatchDataset(examples.noisy, patch_size, *roi_odds, augment=False, seed=seed + 1)
        self.padded = self.labeled.padded + self.noisy.padded
        self.second_view = consistency_views()
        self.rng = np.random.default_rng(seed)
        self.view_seconds = 0.0

    @property
    def transform_seconds(self) -> float:
        return self.labeled.transform_seconds + self.noisy.transform_seconds + self.view_seconds

    def reseed(self, seed: int) -> None:
        """Seed the patch draws, the choice of noisy-labeled volume and the second view's augmentation."""
        self.labeled.reseed(seed)
        self.noisy.reseed(seed + 1)
        self.second_view.set_random_state(seed=(seed + 2) % 2**32)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.labeled[index]
        view = self.noisy[int(self.rng.integers(len(self.noisy)))]["image"]
        started = time.perf_counter()
        augmented = torch.as_tensor(self.second_view(view.clone()), dtype=torch.float32)
        self.view_seconds += time.perf_counter() - started
        return {**sample, "view": view, "augmented_view": augmented}


def predicted_target(logits: torch.Tensor, head: str) -> torch.Tensor:
    """The labels predicted by ``logits`` (B, out_channels, ...) as multi-hot targets (B, S, ...) float: the likeliest
    class (softmax; background gives none) or every channel above 0.5 (sigmoid)."""
    if head == "softmax":
        labels = most_likely_class(logits)
        return torch.stack([labels == c for c in range(1, logits.shape[1])], 1).float()
    return (logits > 0).float()
