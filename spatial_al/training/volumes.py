"""3D training data: whole volumes, densely or sparsely annotated, served as random patches.

A volume example is an image (C, D, H, W) float32 (normalised), a multi-hot target (S, D, H, W) over the S foreground
classes, and the annotated slices (D,) along axis 0: a sparsely annotated volume trains a 3D model with its
unannotated slices masked out of the loss (the 3D arm of the MIDL 2025 study); a dense label map has every slice
annotated. A sparse target can be a :class:`SliceStack`, which holds its annotated slices only.

A sample is a dict of tensors like the 2D loader's: "image" (C, d, h, w), "target" (S, d, h, w), "mask" (1, d, h, w)
(1 on annotated slices, 0 elsewhere and on padding), "weight" (). Patches are centred on a foreground voxel of an
annotated slice with probability ``positive / (positive + negative)`` and elsewhere otherwise (MONAI's
``RandCropByPosNegLabeld`` draws the centre, given a bounded sample of each so a 512 x 512 x 300 CT does not hold
index arrays of every voxel). A volume smaller than the patch along an axis is padded (mask 0) and listed in
``padded``.

Volumes are read a patch at a time and never copied whole: memory-mapped cohort caches stay on disk, so a study
holds a few patches, not every training volume, in memory (LiTS's 131 CTs would take tens of GB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

PATCH_KEYS = ("image", "target", "mask")
INDEX_SAMPLE = 100_000  # foreground (and background) voxels kept per volume for choosing patch centres


class SliceStack:
    """A target (S, D, H, W) held slice by slice: ``slices`` maps slice indices along D to (S, H, W) arrays (views of
    a memory-mapped cache or pseudo-labels), every other slice is zero. A sparsely annotated volume's target without
    the memory of the whole volume."""

    def __init__(self, shape: tuple[int, int, int, int], slices: dict[int, np.ndarray], dtype=np.uint8):
        self.shape, self.dtype, self.slices = tuple(int(n) for n in shape), np.dtype(dtype), dict(slices)
        for index, mask in self.slices.items():
            if not 0 <= index < self.shape[1] or np.shape(mask) != (self.shape[0], *self.shape[2:]):
                raise ValueError(
                    f"Slice {index} of a target {self.shape} needs an index in 0-{self.shape[1] - 1} and the shape "
                    f"{(self.shape[0], *self.shape[2:])}; got {index} and {np.shape(mask)}."
                )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The dense target (for inspection: it takes the whole volume's memory)."""
        dense = self[(slice(None),) * 4]
        return dense if dtype is None else dense.astype(dtype)

    def __getitem__(self, window: tuple[slice, slice, slice, slice]) -> np.ndarray:
        """The array of ``window`` (four slices with step 1, as the patch reader asks), zero where no slice is held."""
        ranges = [range(*axis.indices(n)) for axis, n in zip(window, self.shape, strict=True)]
        out = np.zeros(tuple(len(r) for r in ranges), self.dtype)
        channels, _, rows, columns = window
        for index, mask in self.slices.items():
            if index in ranges[1]:
                out[:, index - ranges[1].start] = np.asarray(mask)[channels, rows, columns]
        return out


Target = np.ndarray | SliceStack


@dataclass
class VolumeExamples:
    """Training volumes: images (C, D, H, W), targets (S, D, H, W), annotated slices (D,) bool, loss weights."""

    images: list[np.ndarray] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    annotated: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def append(self, image: np.ndarray, target: Target, annotated=None, weight: float = 1.0, name: str = "") -> None:
        """Add a volume, kept as given (a memory-mapped array stays on disk); ``annotated`` (slice indices along
        axis 0, or a (D,) bool mask) defaults to every slice.

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
        # the crop transform draws the centres only (see __getitem__); it stays first so that seeding the Compose
        # gives every transform the seed it had when MONAI cropped, and a study's patches stay what they were
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
        """Volume ``index``'s padding (before each spatial axis, so that it is at least the patch size) and samples of
        the flat indices, in the padded volume, of foreground voxels on annotated slices and of any voxels (the
        background side of the draw). The target is read one annotated slice at a time."""
        image, target = self.examples.images[index], self.examples.targets[index]
        shortfall = [max(0, p - n) for p, n in zip(self.patch_size, image.shape[1:], strict=True)]
        if any(shortfall):
            self.padded.append(self.examples.names[index])
        before = np.array([s // 2 for s in shortfall])
        shape = tuple(int(n) + s for n, s in zip(image.shape[1:], shortfall, strict=True))
        on_slices = [np.zeros(0, np.int64)]
        for d in np.flatnonzero(self.examples.annotated[index]):
            rows, columns = np.nonzero(np.asarray(target[:, d : d + 1, :, :]).any(0)[0])
            on_slices.append(np.ravel_multi_index((d + before[0], rows + before[1], columns + before[2]), shape))
        foreground = np.concatenate(on_slices)
        voxels = int(np.prod(shape))
        anywhere = rng.choice(voxels, size=min(INDEX_SAMPLE, voxels), replace=False)
        if foreground.size > INDEX_SAMPLE:
            foreground = rng.choice(foreground, size=INDEX_SAMPLE, replace=False)
        return {
            "shape": shape,
            "before": before,
            "foreground": foreground if foreground.size else anywhere,  # no foreground: patches anywhere
            "background": anywhere,
        }

    def reseed(self, seed: int) -> None:
        """Seed the patch draws and augmentation (the trainer does this every epoch, so a resume repeats them)."""
        self.transform.set_random_state(seed=seed % 2**32)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from monai.transforms.utils import generate_pos_neg_label_crop_centers

        started = time.perf_counter()
        volume = self.volumes[index]
        crop, augmentations = self.transform.transforms[0], self.transform.transforms[1:]
        # MONAI draws the centre with the crop transform's seeded state; the patch is read here, from the volume as
        # it is stored, because MONAI's crop first turns the whole volume into a contiguous tensor (a copy)
        (centre,) = generate_pos_neg_label_crop_centers(
            self.patch_size, 1, crop.cropper.pos_ratio, volume["shape"], volume["foreground"], volume["background"],
            crop.cropper.R,
        )  # fmt: skip
        corner = np.asarray(centre, int) - np.array(self.patch_size) // 2 - volume["before"]
        patch = {key: self._window(index, key, corner) for key in PATCH_KEYS}
        for transform in augmentations:
            patch = transform(patch)
        self.transform_seconds += time.perf_counter() - started
        patch["weight"] = torch.tensor(self.examples.weights[index], dtype=torch.float32)
        return patch

    def _window(self, index: int, key: str, corner: np.ndarray) -> np.ndarray:
        """The patch of ``key`` ("image", "target" or "mask") of volume ``index`` whose first voxel is ``corner``
        (D, H, W, in the volume's own voxels): what lies inside the volume, zero outside it (the padding)."""
        image = self.examples.images[index]
        inside = [
            slice(max(0, a), min(n, a + p)) for a, p, n in zip(corner, self.patch_size, image.shape[1:], strict=True)
        ]
        placed = tuple(slice(s.start - a, s.stop - a) for s, a in zip(inside, corner, strict=True))
        if key == "mask":
            annotated = self.examples.annotated[index][inside[0]].astype(np.uint8)
            values = np.broadcast_to(annotated[None, :, None, None], (1, *(s.stop - s.start for s in inside)))
        else:
            values = (image if key == "image" else self.examples.targets[index])[(slice(None), *inside)]
        out = np.zeros((values.shape[0], *self.patch_size), values.dtype)
        out[(slice(None), *placed)] = values
        return out
