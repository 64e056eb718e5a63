"""Which scans to annotate first: volume-level ranking (Nath et al. 2022's question), with a 2D or a 3D model.

A radiologist's team with a folder of unlabeled scans ranks the volumes, not the slices: each volume gets one score,
the mean over its voxels of a model's MC-dropout variance or of the entropy of its mean prediction (m passes), or a
random priority. The proxy strategies need no model: a proxy label (an intensity window, the largest 3D connected
component; :func:`~spatial_al.selection.proxy.proxy_label`) of every volume trains one proxy model on all of them,
whose MC-dropout uncertainty then ranks them (Nath et al.'s proxy ranking): a 3D U-Net on random patches as theirs
when a patch size is given, otherwise the 2D engine's, trained on evenly spaced slices of every volume (cheaper on a
CPU).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import ProgressReporter, report

VOLUME_STRATEGIES = ("random", "variance", "entropy", "proxy_variance", "proxy_entropy")


@dataclass
class VolumeRanking:
    """Volumes ranked to annotate first.

    Attributes:
        names: the volumes' names, in input order.
        scores: one score per volume, in input order (higher = annotate sooner).
        order: volume indices, best first.
        strategy: the strategy's name.
    """

    names: list[str]
    scores: np.ndarray
    order: np.ndarray
    strategy: str

    def top(self, k: int) -> list[str]:
        """The names of the ``k`` volumes to annotate first."""
        return [self.names[index] for index in self.order[:k]]

    def write_csv(self, path: str | Path) -> Path:
        """CSV ``rank,volume,score`` of every volume, best first (written atomically)."""
        from ..files import atomic_path

        with atomic_path(path) as temporary, temporary.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["rank", "volume", "score"])
            for rank, index in enumerate(self.order, start=1):
                writer.writerow([rank, self.names[index], f"{self.scores[index]:.6g}"])
        return Path(path)


def volume_uncertainty(
    image: np.ndarray,
    model,
    axis: int = 0,
    samples: int = 10,
    seed: int = 0,
    device: Any = "auto",
    batch_size: int = 8,
    progress: ProgressReporter | None = None,
    patch_size: tuple[int, int, int] = (96, 96, 96),
) -> dict[str, float]:
    """Mean over the voxels of ``image`` (3D, slices along ``axis``) of the MC-dropout variance (over the passes and
    the output channels) and of the entropy of the mean prediction, ``samples`` passes with dropout on: slice by
    slice for a 2D model, by sliding windows of ``patch_size`` for a 3D one."""
    from ..device import resolve_device
    from ..models.inference import SlicePredictor, pixel_entropy
    from ..training.data import normalize_intensities

    slices = np.moveaxis(normalize_intensities(image), axis, 0)
    if model.config.spatial_dims == 3:
        from ..models.volume_inference import volume_uncertainty as sliding_uncertainty

        statistics = sliding_uncertainty(
            model, slices[np.newaxis], patch_size, resolve_device(device), passes=samples, seed=seed,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
        return {"variance": statistics.mean_variance, "entropy": statistics.mean_entropy}
    predictor = SlicePredictor(model, resolve_device(device), batch_size)
    chunk = max(1, 32 * 256 * 256 // int(np.prod(slices.shape[1:])))  # 32 slices of 256 x 256 a step
    variance = entropy = 0.0
    for start in range(0, len(slices), chunk):
        statistics = predictor.mc_dropout(slices[start : start + chunk, np.newaxis], samples, seed + start)
        variance += float(statistics.variance.mean(1).sum())
        entropy += float(pixel_entropy(statistics.mean, predictor.head).sum())
        report(progress, min(start + chunk, len(slices)), len(slices), "MC-dropout over the volume")
    voxels = slices.size
    return {"variance": variance / voxels, "entropy": entropy / voxels}


def train_proxy_model(
    images: Sequence[np.ndarray],
    window: tuple[float, float],
    axis: int,
    training_slices: int,
    max_epochs: int,
    seed: int,
    device: Any,
    progress: ProgressReporter | None,
    patch_size: tuple[int, int, int] | None = None,
):
    """One proxy model (one class "proxy") trained on the proxy labels of every volume: a 3D ``unet3d-small`` on
    random patches of ``patch_size`` (Nath et al.'s, foreground:background 1:1), or without a patch size a 2D
    ``unet-small`` on ``training_slices`` evenly spaced slices of each."""
    import torch

    from ..device import resolve_device
    from ..models import SegmentationModel, preset_config
    from ..training import Trainer, TrainingConfig
    from ..training.data import normalize_intensities, slice_examples
    from ..volume import Segment
    from .proxy import proxy_label

    if patch_size is not None:
        config = TrainingConfig(
            seed=seed, max_epochs=max_epochs, patch_size=tuple(patch_size), batch_size=2, validation_fraction=0.0,
            augment=False,
        )  # fmt: skip
        return train_volume_proxy(
            [np.moveaxis(normalize_intensities(image), axis, 0) for image in images],
            [np.moveaxis(proxy_label(image, window), axis, 0) for image in images],
            preset_config("unet3d-small", class_names=("proxy",), slice_axis=axis),
            config,
            resolve_device(device),
            progress,
        )
    segment = Segment("proxy", 1)
    examples = None
    for index, image in enumerate(images):
        label = proxy_label(image, window).astype(np.uint8)[np.newaxis]
        count = image.shape[axis]
        slices = np.unique(np.round(np.linspace(0, count - 1, min(training_slices, count)))).astype(int)
        volume_examples = slice_examples(
            normalize_intensities(image), label, (segment,), ("proxy",), slices, axis, volume_index=index
        )
        if examples is None:
            examples = volume_examples
        else:
            examples.extend(volume_examples)
    torch.manual_seed(seed)
    model = SegmentationModel(preset_config("unet-small", class_names=("proxy",), slice_axis=axis))
    config = TrainingConfig(seed=seed, max_epochs=max_epochs, iterations_per_epoch=None, validation_fraction=0.0)
    trainer = Trainer(model, config, resolve_device(device), progress=progress)
    trainer.train_round(examples)
    return trainer.model


def train_volume_proxy(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    architecture,
    training,
    device,
    progress: ProgressReporter | None = None,
    validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
):
    """A 3D proxy model (``architecture``, a :class:`~spatial_al.models.ModelConfig` of one class) trained on random
    patches of ``images`` (each (D, H, W), intensities as the model will see them) against their proxy ``labels``
    (bool, same shapes), with ``training`` (its patch size, steps, seed); with ``validation`` (images, proxy labels),
    the weights of the epoch of lowest validation loss are kept (Nath et al.: "the validation set for selecting the
    best model")."""
    import torch

    from ..models import SegmentationModel
    from ..training import Trainer, VolumeExamples

    def examples(volume_images, volume_labels, prefix):
        volumes = VolumeExamples()
        for index, (image, label) in enumerate(zip(volume_images, volume_labels, strict=True)):
            volumes.append(image[np.newaxis], label.astype(np.uint8)[np.newaxis], name=f"{prefix}{index}")
        return volumes

    torch.manual_seed(training.seed)
    model = SegmentationModel(architecture)
    trainer = Trainer(model, training, device, progress=progress)
    trainer.train_round(examples(images, labels, ""), examples(*validation, "validation ") if validation else None)
    return trainer.model


def rank_volumes(
    volumes: Sequence[np.ndarray],
    strategy: str,
    k: int,
    model=None,
    *,
    names: Sequence[str] | None = None,
    axis: int = 0,
    samples: int = 10,
    seed: int = 0,
    device: Any = "auto",
    batch_size: int = 8,
    window: tuple[float, float] = (-160.0, 240.0),
    training_slices: int = 32,
    max_epochs: int = 10,
    patch_size: tuple[int, int, int] | None = None,
    progress: ProgressReporter | None = None,
) -> VolumeRanking:
    """Rank whole volumes to annotate first.

    Args:
        volumes: 3D intensity arrays (any sizes), slices along ``axis``.
        strategy: "random" (a seeded random priority), "variance" / "entropy" (the mean over voxels of ``model``'s
            MC-dropout variance / of the entropy of its mean prediction, ``samples`` passes), "proxy_variance" /
            "proxy_entropy" (the same with a proxy model trained on the volumes' proxy labels; no model needed).
        k: how many volumes the ranking is for (at least 1, at most the number of volumes); every volume is scored.
        model: a trained segmentation model with dropout, for "variance" and "entropy".
        names: the volumes' names (default "volume 1", ...).
        window: the proxy label's intensity window (low, high); the default is CT soft tissue in HU.
        training_slices: the proxy model's slices per volume, evenly spaced. max_epochs: its epochs.
        patch_size: (D, H, W) patches of a 3D model: the proxy model is then 3D (Nath et al.'s), trained on random
            patches; a 3D ``model`` is run by sliding windows of this size (default 96 x 96 x 96).

    Raises:
        ValueError: an unknown strategy (with the valid ones), ``k`` out of range, no model for "variance" or
            "entropy", no voxel in the proxy window.
    """
    names = list(names) if names is not None else [f"volume {index + 1}" for index in range(len(volumes))]
    if strategy not in VOLUME_STRATEGIES:
        raise ValueError(f"Unknown volume strategy {strategy!r}; choose one of {', '.join(VOLUME_STRATEGIES)}.")
    if not 1 <= k <= len(volumes):
        raise ValueError(f"k must be between 1 and the number of volumes ({len(volumes)}), got {k}.")
    if len(names) != len(volumes):
        raise ValueError(f"{len(volumes)} volumes but {len(names)} names.")
    rng = np.random.default_rng(seed)
    if strategy == "random":
        scores = rng.random(len(volumes))
    else:
        measure = strategy.removeprefix("proxy_")
        if strategy.startswith("proxy_"):
            model = train_proxy_model(
                volumes, window, axis, training_slices, max_epochs, seed, device, progress, patch_size
            )
        elif model is None:
            raise ValueError(f"{strategy!r} ranks by a model's uncertainty: pass model=, or use proxy_{strategy}.")
        windows = tuple(patch_size or (96, 96, 96))
        scores = np.empty(len(volumes))
        for index, volume in enumerate(volumes):
            statistics = volume_uncertainty(volume, model, axis, samples, seed, device, batch_size, None, windows)
            scores[index] = statistics[measure]
            report(progress, index + 1, len(volumes), f"{measure} of {names[index]}")
    order = np.lexsort((np.arange(len(volumes)), -scores))  # highest first, ties to the earlier volume
    return VolumeRanking(names, scores, order, strategy)
