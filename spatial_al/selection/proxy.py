"""Proxy-ranked cold start (Nath et al. 2022, "Warm start active learning with proxy labels and selection via
semi-supervised fine-tuning"): before any annotation, a proxy label from an intensity window trains a proxy model
whose MC-dropout uncertainty ranks the slices."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..volume import Geometry, Segment, SliceStack
from .base import STRATEGIES, PoolVolume, RankingContext, StrategyInfo, described
from .uncertainty import mc_dropout_scorer, score_pool


def proxy_label(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The largest 6-connected component of the voxels whose intensity lies in ``window`` (low, high), a bool
    array of the image's shape.

    Raises:
        ValueError: no voxel lies in the window.
    """
    low, high = window
    inside = (image >= low) & (image <= high)
    components, count = ndimage.label(inside)
    if count == 0:
        raise ValueError(
            f"No voxel lies in the intensity window [{low}, {high}] (the image spans [{image.min():.4g}, "
            f"{image.max():.4g}]); pass window=(low, high) in the image's units, e.g. Hounsfield units for CT."
        )
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def train_proxy_model(
    context: RankingContext, volume: PoolVolume, label: np.ndarray, preset: str, training_slices: int, max_epochs: int
):
    """A model of ``preset`` trained on ``label`` (S, H, W) over ``training_slices`` evenly spaced slices."""
    from ..learning import train_on_stack
    from ..training import TrainingConfig

    stack = SliceStack(
        volume.image, label[np.newaxis].astype(np.uint8), (Segment("proxy", 1),), Geometry(volume.image.shape), 0
    )
    slices = np.unique(np.round(np.linspace(0, volume.n_slices - 1, min(training_slices, volume.n_slices))))
    seed = int(context.rng.integers(2**31 - 1))
    outcome = train_on_stack(
        stack,
        slices.astype(int).tolist(),
        preset=preset,
        training=TrainingConfig(seed=seed, max_epochs=max_epochs, iterations_per_epoch=None),
        device=context.torch_device(),
        progress=context.progress,
    )
    return outcome.model


@STRATEGIES.register("proxy_rank")
@described(StrategyInfo(default_per_volume=1, trains=True))
def proxy_rank(
    context: RankingContext,
    *,
    window: tuple[float, float] | list[float] = (-160.0, 240.0),
    preset: str = "unet-small",
    training_slices: int = 32,
    max_epochs: int = 10,
    samples: int = 10,
    measure: str = "bald",
    layers: str = "all",
) -> np.ndarray:
    """Cold start without annotation (Nath et al.): a proxy label (intensity window, largest component) trains a
    proxy model; its MC-dropout uncertainty ranks the slices. Score = mean BALD (or variance) of the proxy model.

    One proxy model is trained per volume, on ``training_slices`` evenly spaced slices, so the ranking takes as long
    as a short training run (seconds on a GPU, a minute or more on a CPU).

    Keyword Args:
        window: (low, high) intensities of the proxy structure; the default is a soft-tissue window in Hounsfield
            units (CT).
        preset: the proxy model's preset (needs dropout).
        training_slices: slices the proxy model is trained on, evenly spaced over the volume.
        max_epochs: proxy training epochs, each a pass over the training slices.
        samples: MC-dropout passes.
        measure: "bald" or "variance".
        layers: the dropout layers the passes sample, "all" or "last" (see the ``mc_dropout`` strategy): "last"
            takes the ten passes' cost off a CPU, where they are most of the ranking's time.
    """
    if len(window) != 2 or window[0] >= window[1]:
        raise ValueError(f"window must be (low, high) with low < high, got {window!r}.")
    scores = []
    for index, volume in enumerate(context.volumes):
        if volume.image is None:
            raise ValueError(f"{volume.name}: proxy_rank needs the image to build a proxy label.")
        label = proxy_label(volume.image, tuple(window))
        model = train_proxy_model(context, volume, label, preset, training_slices, max_epochs)
        scorer = mc_dropout_scorer(context, samples, measure, layers)
        scores.append(score_pool(context, scorer, "proxy MC-dropout", model=model, volume_index=index))
    return np.concatenate(scores)
