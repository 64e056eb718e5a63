"""Whole-volume inference with a 3D model: MONAI's sliding-window inference (Gaussian-weighted overlapping
windows), run on the model's device with the result gathered on the CPU, with progress and cancel per window batch;
and MC-dropout statistics of a volume for volume-level ranking (Nath et al.: variance and entropy, mean over voxels).

Shapes: image (C, D, H, W) float32, normalised; probabilities (out_channels, D, H, W) float32 on the CPU; labels
(D, H, W) uint8 (class indices, 0 = background for a softmax head).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..precision import autocast, autocast_dtype
from ..progress import ProgressReporter, check_cancelled, report
from .inference import activation, enable_dropout, most_likely_class, pixel_entropy


def window_count(shape: Sequence[int], window: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window places over ``shape`` (its scan interval, window x (1 - overlap))."""
    count = 1
    for size, roi in zip(shape, window, strict=True):
        interval = max(int(roi * (1 - overlap)), 1)
        count *= 1 if size <= roi else math.ceil((size - roi) / interval) + 1
    return count


def predict_volume(
    model,
    image: np.ndarray,
    window: Sequence[int],
    device: torch.device,
    *,
    overlap: float = 0.25,
    batch_size: int = 2,
    precision: str = "auto",
    progress: ProgressReporter | None = None,
    message: str = "sliding window",
) -> torch.Tensor:
    """Class probabilities (out_channels, D, H, W) of ``image`` (C, D, H, W): windows of ``window`` voxels overlapping
    by ``overlap``, blended with Gaussian weights; a volume smaller than a window is padded and cropped back (MONAI).
    The model runs in its current mode (eval for a prediction; dropout on for MC dropout)."""
    from monai.inferers import sliding_window_inference

    head, dtype = model.config.head, autocast_dtype(precision, device)
    total = window_count(image.shape[1:], window, overlap)
    done = 0

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        check_cancelled(progress)
        with autocast(device, dtype):
            probabilities = activation(model(windows), head)
        done = min(done + len(windows), total)
        report(progress, done, total, message)
        return probabilities

    with torch.no_grad():
        probabilities = sliding_window_inference(
            torch.as_tensor(np.asarray(image, dtype=np.float32))[None],
            roi_size=tuple(window),
            sw_batch_size=batch_size,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=device,
            device=torch.device("cpu"),
        )
    return torch.as_tensor(probabilities)[0].float()


def volume_labels(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """Class indices (D, H, W) uint8 from probabilities (out_channels, D, H, W): the likeliest class (softmax) or
    the highest channel above 0.5 (sigmoid; 0 where none is)."""
    if head == "softmax":
        return most_likely_class(probabilities, 0).numpy().astype(np.uint8)
    best = probabilities.max(0)
    return np.where(best.values.numpy() > 0.5, best.indices.numpy() + 1, 0).astype(np.uint8)


@dataclass
class VolumeUncertainty:
    """MC-dropout statistics of one volume: mean probabilities (out_channels, D, H, W); per voxel, the variance of
    the probabilities over the passes (mean over classes) and the entropy of the mean (D, H, W); their means over
    voxels (Nath et al.'s volume scores)."""

    mean: torch.Tensor
    variance: torch.Tensor
    entropy: torch.Tensor

    @property
    def mean_variance(self) -> float:
        return float(self.variance.mean())

    @property
    def mean_entropy(self) -> float:
        return float(self.entropy.mean())


def volume_uncertainty(
    model,
    image: np.ndarray,
    window: Sequence[int],
    device: torch.device,
    *,
    passes: int = 10,
    seed: int = 0,
    overlap: float = 0.25,
    batch_size: int = 2,
    precision: str = "auto",
    progress: ProgressReporter | None = None,
) -> VolumeUncertainty:
    """``passes`` sliding-window predictions of ``image`` with dropout on (seeded), combined on the fly (Welford's
    running mean and variance: memory for two probability volumes, not ``passes``).

    Raises:
        ValueError: fewer than 2 passes, or a model without dropout.
    """
    if passes < 2:
        raise ValueError(f"MC dropout needs at least 2 passes, got {passes}.")
    model.eval()
    if not enable_dropout(model) or model.config.dropout == 0:
        raise ValueError("This model has no dropout; MC dropout needs one trained with dropout > 0 (unet3d presets).")
    mean = squares = None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for index in range(passes):
                sample = predict_volume(
                    model, image, window, device, overlap=overlap, batch_size=batch_size, precision=precision,
                    progress=progress, message=f"MC dropout pass {index + 1}/{passes}",
                )  # fmt: skip
                if mean is None:
                    mean, squares = sample.clone(), torch.zeros_like(sample)
                    continue
                delta = sample - mean
                mean += delta / (index + 1)
                squares += delta * (sample - mean)
    finally:
        model.eval()
    variance = (squares / (passes - 1)).mean(0)
    return VolumeUncertainty(mean, variance, pixel_entropy(mean[None], model.config.head)[0])
