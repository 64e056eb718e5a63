"""Torch datasets over :class:`SliceExamples`, with MONAI's 2D augmentation and padding to a common size.

A sample is a dict of tensors: "image" (C, H, W), "target" (S, H, W), "mask" (1, H, W), "weight" (); with
distance targets also "distance" (S, H, W); a STAR pair adds "labeled_image" (1, C, H, W) and "labeled_target"
(1, S, H, W). Padded pixels have mask 0, so they never count in the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import SliceExamples, distance_targets

SPATIAL_KEYS = ("image", "target", "mask")
PAIR_KEYS = ("labeled_image", "labeled_target")


def padded_size(shape: Sequence[int], divisor: int) -> tuple[int, int]:
    """``shape`` (H, W) rounded up to multiples of ``divisor``."""
    return tuple(int(math.ceil(n / divisor) * divisor) for n in shape)  # type: ignore[return-value]


def build_transform(keys: Sequence[str], size: tuple[int, int], patch_size: tuple[int, int] | None, augment: bool):
    """MONAI dictionary transforms: optional augmentation, then pad to ``size`` and crop to ``patch_size``.

    Augmentation (when ``augment``): small rotations and scaling, intensity scale/shift, Gaussian noise; no
    flips, which would swap left and right anatomy.
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAffined,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        SpatialPadd,
    )

    keys = list(keys)
    image_keys = [key for key in keys if key.endswith("image")]
    transforms = [SpatialPadd(keys, spatial_size=size, mode="constant")]
    if augment:
        modes = ["bilinear" if key in image_keys else "nearest" for key in keys]
        transforms += [
            RandAffined(keys, prob=0.3, rotate_range=(math.pi / 12,), scale_range=(0.1, 0.1), mode=modes),
            RandScaleIntensityd(image_keys, factors=0.1, prob=0.15),
            RandShiftIntensityd(image_keys, offsets=0.1, prob=0.15),
            RandGaussianNoised(image_keys, std=0.1, prob=0.15),
        ]
    if patch_size is not None:
        transforms.append(RandSpatialCropd(keys, roi_size=patch_size, random_size=False))
    transforms.append(EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(transforms)


class SliceDataset(Dataset):
    """Examples as padded, optionally augmented tensors.

    Args:
        examples: the slices.
        size_divisor: slices are padded to the largest slice size rounded up to this (the network's divisor).
        patch_size: random crop (H, W) after padding (None: whole slices).
        augment: apply the random augmentation.
        with_distance: add SBC-AL's "distance" targets, computed after augmentation.
        pairs: STAR (labeled, unlabeled) example index pairs; the dataset then yields one sample per pair.
    """

    def __init__(
        self,
        examples: SliceExamples,
        size_divisor: int,
        patch_size: tuple[int, int] | None = None,
        augment: bool = False,
        with_distance: bool = False,
        pairs: Sequence[tuple[int, int]] | None = None,
    ):
        if len(examples) == 0:
            raise ValueError("No training slices: annotate at least one slice first.")
        self.examples = examples
        self.pairs = list(pairs) if pairs is not None else None
        self.with_distance = with_distance
        size = padded_size(examples.largest_slice_shape(), size_divisor)
        if patch_size is not None:
            patch_size = padded_size(patch_size, size_divisor)
            size = tuple(max(a, b) for a, b in zip(size, patch_size, strict=True))  # type: ignore[assignment]
        keys = SPATIAL_KEYS + (PAIR_KEYS if pairs is not None else ())
        self.transform = build_transform(keys, size, patch_size, augment)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation (the trainer does this every epoch, so a resumed run repeats it exactly)."""
        self.transform.set_random_state(seed=seed % 2**32)

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        labeled, unlabeled = self.pairs[index] if self.pairs is not None else (None, index)
        sample = {
            "image": self.examples.images[unlabeled],
            "target": self.examples.targets[unlabeled].astype(np.float32),
            "mask": self.examples.masks[unlabeled].astype(np.float32),
        }
        if labeled is not None:
            sample["labeled_image"] = self.examples.images[labeled]
            sample["labeled_target"] = self.examples.targets[labeled].astype(np.float32)
        sample = self.transform(sample)
        if self.with_distance:
            sample["distance"] = torch.from_numpy(distance_targets(sample["target"].numpy() > 0.5))
        for key in PAIR_KEYS:
            if key in sample:
                sample[key] = sample[key][None]  # one labeled slice per group: (1, ...)
        sample["weight"] = torch.tensor(self.examples.weights[unlabeled], dtype=torch.float32)
        return sample
