"""Volume preprocessing for 3D models, undone on the way out: resampling to a target spacing (Nath et al.: 1.5 x
1.5 x 2 mm) and intensity normalisation (a CT window scaled to [0, 1], or a z-score), with MONAI's transforms.

Arrays are in array order (D, H, W) with ``spacing`` in mm in the same order (KJI arrays: slice thickness first);
images may carry channels first (C, D, H, W). Resampling maps the volume's extent onto the new grid (MONAI
``Resize``, trilinear for intensities and probabilities, nearest for labels), so resizing the result back to the
original shape lands every voxel where it came from: predictions are returned on the input grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class VolumePreprocessing:
    """How volumes reach a 3D model and its predictions come back.

    Attributes:
        target_spacing: voxel size (mm) to resample to, in array order; None keeps the grid.
        window: (low, high) intensities of a CT window, clipped and scaled to [0, 1]; None: z-score over the volume.
    """

    target_spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = None

    def __post_init__(self):
        if self.window is not None and not self.window[0] < self.window[1]:
            raise ValueError(
                f"The CT window must be (low, high) with low < high, got {tuple(self.window)}; swap the bounds (a "
                "window of width W at level L is (L - W/2, L + W/2))."
            )
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise ValueError(f"target_spacing must be three positive sizes in mm, got {self.target_spacing}.")

    def grid_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
        """The (D, H, W) shape of a volume of ``shape`` and ``spacing`` after resampling (its extent kept)."""
        if self.target_spacing is None:
            return tuple(int(n) for n in shape)  # type: ignore[return-value]
        return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, self.target_spacing, strict=True))  # type: ignore[return-value]

    def image(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Normalised and resampled intensities (C, d, h, w) float32 of ``image`` (D, H, W) or (C, D, H, W)."""
        from monai.transforms import NormalizeIntensity, ScaleIntensityRange

        image = np.asarray(image, dtype=np.float32)
        image = image[None] if image.ndim == 3 else image
        if self.window is None:
            normalized = NormalizeIntensity(channel_wise=True)(image)
        else:
            low, high = self.window
            normalized = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(image)
        return resized(normalized, self.grid_shape(image.shape[1:], spacing), "trilinear")

    def labels(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """A label map (D, H, W) on the resampled grid (nearest neighbour), same dtype."""
        shape = self.grid_shape(labels.shape, spacing)
        return resized(labels[None].astype(np.float32), shape, "nearest")[0].astype(labels.dtype)

    def restore(self, probabilities: torch.Tensor | np.ndarray, shape: Sequence[int]) -> torch.Tensor:
        """Probabilities (out_channels, d, h, w) of a resampled volume back on its input grid of ``shape``
        (trilinear, renormalised to sum to 1 over a softmax head's channels by the caller if it needs to)."""
        values = probabilities.numpy() if torch.is_tensor(probabilities) else np.asarray(probabilities)
        if tuple(values.shape[1:]) == tuple(shape):
            return torch.as_tensor(values)
        return torch.as_tensor(resized(values.astype(np.float32), tuple(shape), "trilinear"))


def resized(volume: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    """``volume`` (C, D, H, W) resized to (C, *shape) with MONAI's ``Resize`` (extents aligned), float32 numpy."""
    from monai.transforms import Resize

    if tuple(volume.shape[1:]) == tuple(shape):
        return np.asarray(volume, dtype=np.float32)
    interpolated = Resize(spatial_size=shape, mode=mode, anti_aliasing=False)(volume)
    return np.asarray(torch.as_tensor(interpolated), dtype=np.float32)
