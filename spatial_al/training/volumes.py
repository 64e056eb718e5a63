"""3D training data: whole volumes, densely or sparsely annotated, served as random patches.

A volume example is an image (C, D, H, W) float32 (normalised), a multi-hot target (S, D, H, W) over the S foreground
classes, and the annotated slices (D,) along axis 0: a sparsely annotated volume trains a 3D model with its
unannotated slices masked out of the loss (the 3D arm of the MIDL 2025 study); a dense label map has every slice
annotated.

A sample is a dict of tensors like the 2D loader's: "image" (C, d, h, w), "target" (S, d, h, w), "mask" (1, d, h, w)
(1 on annotated slices, 0 elsewhere and on padding), "weight" (). Patches are centred on a foreground voxel of an
annotated slice with probability ``positive / (positive + negative)`` and elsewhere otherwise (MONAI's
``RandCropByPosNegLabeld``, given a bounded sample of each so a 512 x 512 x 300 CT does not hold index arrays of
every voxel). A volume smaller than the patch along an axis is padded (mask 0) and listed in ``padded``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

PATCH_KEYS = ("image", "target", "mask")
INDEX_SAMPLE = 100_000  # foreground (and background) voxels kept per volume for choosing patch centres


@dataclass
class VolumeExamples:
    """Training volumes: images (C, D, H, W), targets (S, D, H, W), annotated slices (D,) bool, loss weights."""

    images: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    annotated: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def append(
        self, image: np.ndarray, target: np.ndarray, annotated=None, weight: float = 1.0, name: str = ""
    ) -> None:
        """Add a volume; ``annotated`` (slice indices along axis 0, or a (D,) bool mask) defaults to every slice.

        Raises:
            ValueError: image and target grids differ, or no slice is annotated.
        """
        if image.ndim != 4 or target.ndim != 4 or image.shape[1:] != target.shape[1:]:
            raise ValueError(
                f"A training volume needs an image (C, D, H, W) and a target (S, D, H, W) on the same grid; got "
                f"{image.shape} and {target.shape}{f' for {name}' if name else ''}."
            )
        slices = image.shape[1]
        mask = np.ones(slices, bool)
        if annotated is not None:
            annotated = np.asarray(annotated)
            mask = annotated.astype(bool) if annotated.dtype == bool else np.isin(np.arange(slices), annotated)
        if not mask.any():
            raise ValueError(f"Volume {name or len(self.images)} has no annotated slice; annotate one or leave it out.")
        self.images.append(image)
        self.targets.append(target)
        self.annotated.append(mask)
        self.weights.append(float(weight))
        self.names.append(name or f"volume {len(self.images) - 1}")

    def __len__(self) -> int:
        return len(self.images)


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself, or a copy when it is read-only (a memory-mapped cache): torch refuses to wrap those."""
    array = np.asarray(array)
    return array if array.flags.writeable else np.array(array)


class PatchDataset(Dataset):
    """One random patch of ``patch_size`` (d, h, w) per item, drawn from volume ``index`` (see the module docstring).

    Args:
        examples: the volumes.
        patch_size: patch shape; volumes smaller than it are padded.
        positive, negative: odds of a patch centred on foreground against anywhere (nnU-Net: 1 in 3 foreground).
        augment: random flips along each axis and intensity scale and shift.
        seed: draws the voxel samples of patch centres.
    """

    def __init__(
        self,
        examples: VolumeExamples,
        patch_size: tuple[int, int, int],
        positive: float = 1.0,
        negative: float = 1.0,
        augment: bool = False,
        seed: int = 0,
    ):
        from monai.transforms import (
            Compose,
            EnsureTyped,
            RandCropByPosNegLabeld,
            RandFlipd,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        if positive < 0 or negative < 0 or positive + negative == 0:
            raise ValueError(f"positive and negative are non-negative odds, not both 0; got {positive}, {negative}.")
        self.examples = examples
        self.patch_size = tuple(int(n) for n in patch_size)
        rng = np.random.default_rng(seed)
        self.padded: list[str] = []
        self.volumes = [self._prepared(index, rng) for index in range(len(examples))]
        keys = list(PATCH_KEYS)
        transforms = [
            RandCropByPosNegLabeld(
                keys, label_key="mask", spatial_size=self.patch_size, pos=positive, neg=negative, num_samples=1,
                fg_indices_key="foreground", bg_indices_key="background",
            )
        ]  # fmt: skip
        if augment:
            transforms += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
            transforms += [RandScaleIntensityd("image", factors=0.1, prob=0.2)]
            transforms += [RandShiftIntensityd("image", offsets=0.1, prob=0.2)]
        transforms.append(EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False))
        self.transform = Compose(transforms)
        self.transform_seconds = 0.0

    def _prepared(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Volume ``index`` padded to at least the patch size, its loss mask, and samples of the flat indices of
        foreground voxels on annotated slices and of any voxels (the background side of the draw)."""
        image, target = (writable(a) for a in (self.examples.images[index], self.examples.targets[index]))
        annotated = self.examples.annotated[index]
        mask = np.broadcast_to(annotated[:, None, None], image.shape[1:]).astype(np.uint8)[None]
        shortfall = [max(0, p - n) for p, n in zip(self.patch_size, image.shape[1:], strict=True)]
        if any(shortfall):
            self.padded.append(self.examples.names[index])
            widths = [(0, 0)] + [(s // 2, s - s // 2) for s in shortfall]
            image, target, mask = (np.pad(a, widths) for a in (image, target, mask))
        foreground = np.flatnonzero((target.any(0) & (mask[0] > 0)).ravel())
        voxels = int(np.prod(mask.shape[1:]))
        anywhere = rng.choice(voxels, size=min(INDEX_SAMPLE, voxels), replace=False)
        if foreground.size > INDEX_SAMPLE:
            foreground = rng.choice(foreground, size=INDEX_SAMPLE, replace=False)
        return {
            "image": image,
            "target": target,
            "mask": mask,
            "foreground": foreground if foreground.size else anywhere,  # no foreground: patches anywhere
            "background": anywhere,
        }

    def reseed(self, seed: int) -> None:
        """Seed the patch draws and augmentation (the trainer does this every epoch, so a resume repeats them)."""
        self.transform.set_random_state(seed=seed % 2**32)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        started = time.perf_counter()  # the crop reads the patch only; the float32 copies are of the patch
        sample = dict(self.volumes[index])
        patch = self.transform(sample)[0]
        self.transform_seconds += time.perf_counter() - started
        patch = {key: patch[key] for key in PATCH_KEYS}
        patch["weight"] = torch.tensor(self.examples.weights[index], dtype=torch.float32)
        return patch
