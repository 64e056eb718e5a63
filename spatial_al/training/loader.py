"""Torch datasets over :class:`SliceExamples`, with MONAI's 2D augmentation and padding to a common size.

A sample is a dict of tensors: "image" (C, H, W), "target" (S, H, W), "mask" (1, H, W), "weight" (); with
distance targets also "distance" (S, H, W); a STAR group adds its N = 2 labeled slices, "labeled_image"
(N, C, H, W), "labeled_target" (N, S, H, W) and "labeled_mask" (N,) (False for the second slot of a group with
one labeled slice). Padded pixels have mask 0, so they never count in the loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import SliceExamples, distance_targets, padded_size

SPATIAL_KEYS = ("image", "target", "mask")
GROUP_SIZE = 2  # STAR's group: the annotated slices on either side
GROUP_KEYS = tuple(f"{key}_{slot}" for slot in range(GROUP_SIZE) for key in ("labeled_image", "labeled_target"))


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
        distance_scale: their scale (:func:`~spatial_al.training.data.distance_targets`), the model's.
        groups: STAR stage 2 samples, (target example, labeled examples (1 or 2)) (see
            :func:`~spatial_al.training.data.annotated_neighbour_groups`); the dataset then yields one sample per
            group, every slice of it under the same augmentation.
    """

    def __init__(
        self,
        examples: SliceExamples,
        size_divisor: int,
        patch_size: tuple[int, int] | None = None,
        augment: bool = False,
        with_distance: bool = False,
        distance_scale: str = "normalized",
        groups: Sequence[tuple[int, tuple[int, ...]]] | None = None,
    ):
        if len(examples) == 0:
            raise ValueError("No training slices: annotate at least one slice first.")
        self.examples = examples
        self.groups = list(groups) if groups is not None else None
        self.with_distance = with_distance
        self.distance_scale = distance_scale
        size = padded_size(examples.largest_slice_shape(), size_divisor)
        if patch_size is not None:
            patch_size = padded_size(patch_size, size_divisor)
            size = tuple(max(a, b) for a, b in zip(size, patch_size, strict=True))  # type: ignore[assignment]
        keys = SPATIAL_KEYS + (GROUP_KEYS if groups is not None else ())
        self.transform = build_transform(keys, size, patch_size, augment)
        self.transform_seconds = 0.0  # spent in padding, augmentation and cropping (the trainer's phase times)

    def reseed(self, seed: int) -> None:
        """Seed the augmentation (the trainer does this every epoch, so a resumed run repeats it exactly)."""
        self.transform.set_random_state(seed=seed % 2**32)

    def __len__(self) -> int:
        return len(self.groups) if self.groups is not None else len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        unlabeled, labeled = self.groups[index] if self.groups is not None else (index, ())
        sample = {
            "image": np.array(self.examples.images[unlabeled], dtype=np.float32),  # a copy: cached slices are read-only
            "target": self.examples.targets[unlabeled].astype(np.float32),
            "mask": self.examples.masks[unlabeled].astype(np.float32),
        }
        slots = [labeled[min(slot, len(labeled) - 1)] for slot in range(GROUP_SIZE)] if labeled else []
        for slot, example in enumerate(slots):
            sample[f"labeled_image_{slot}"] = np.array(self.examples.images[example], dtype=np.float32)
            sample[f"labeled_target_{slot}"] = self.examples.targets[example].astype(np.float32)
        started = time.perf_counter()
        sample = self.transform(sample)
        self.transform_seconds += time.perf_counter() - started
        if self.with_distance:
            sample["distance"] = torch.from_numpy(distance_targets(sample["target"].numpy() > 0.5, self.distance_scale))
        if slots:
            for key in ("labeled_image", "labeled_target"):
                sample[key] = torch.stack([sample.pop(f"{key}_{slot}") for slot in range(GROUP_SIZE)])
            sample["labeled_mask"] = torch.arange(GROUP_SIZE) < len(labeled)
        sample["weight"] = torch.tensor(self.examples.weights[unlabeled], dtype=torch.float32)
        return sample
