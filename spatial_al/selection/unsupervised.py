"""Unsupervised representative annotation (``ual``, as in the MIDL 2025 slice-selection study): self-supervised
features of the unlabeled slices; the slices that represent the others best are queried (Zheng et al.'s greedy
representativeness, or the most typical slice of each k-means cluster).

The self-supervised model is a small masked autoencoder trained on the volume's own slices at selection time (no
pretrained weights are downloaded or shipped): MONAI's convolutional ``AutoEncoder``, fed slices with most
patches blanked out and trained to restore them (the loss counts the blanked pixels only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..progress import report
from .base import STRATEGIES, Picks, RankingContext, StrategyInfo, described

if TYPE_CHECKING:
    import torch

FEATURE_SIZE = 64  # slices are resampled to 64 x 64 for the autoencoder


@dataclass(frozen=True)
class MaskedAutoencoderConfig:
    """Training of the masked autoencoder: epochs over the slices, batch size, patch size and masked fraction."""

    epochs: int = 20
    batch_size: int = 16
    patch_size: int = 8
    mask_ratio: float = 0.75
    learning_rate: float = 1e-3


def resampled_slices(context: RankingContext):
    """Every slice of every volume, normalised and resampled to (N, 1, 64, 64), as a float tensor; with the
    (volume, slice) of each row."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    images, sources = [], []
    for index, volume in enumerate(context.volumes):
        slices = torch.tensor(volume.normalized_image[:, np.newaxis])  # a copy: the image may be a read-only map
        images.append(F.interpolate(slices, size=(FEATURE_SIZE, FEATURE_SIZE), mode="area"))
        sources += [(index, s) for s in range(volume.n_slices)]
    return torch.cat(images), sources


def random_patch_mask(count: int, config: MaskedAutoencoderConfig, generator: torch.Generator) -> torch.Tensor:
    """(count, 1, 64, 64) float mask, 1 on the blanked patches (``mask_ratio`` of them, drawn per slice)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    grid = FEATURE_SIZE // config.patch_size
    patches = (torch.rand(count, 1, grid, grid, generator=generator) < config.mask_ratio).float()
    return F.interpolate(patches, scale_factor=config.patch_size, mode="nearest")


def masked_autoencoder_features(context: RankingContext, config: MaskedAutoencoderConfig) -> np.ndarray:
    """Train a masked autoencoder on all slices of the pool; their encoder features max-pooled over space, (N, D)
    in the order of :func:`resampled_slices`."""
    import torch
    from monai.networks.nets import AutoEncoder

    seed = int(context.rng.integers(2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    device = context.torch_device()
    slices, _ = resampled_slices(context)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = AutoEncoder(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64), strides=(2, 2, 2))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps = config.epochs * -(-len(slices) // config.batch_size)
    step = 0
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(slices), generator=generator)
        for start in range(0, len(slices), config.batch_size):
            batch = slices[order[start : start + config.batch_size]]
            mask = random_patch_mask(len(batch), config, generator)
            batch, mask = batch.to(device), mask.to(device)
            restored = model(batch * (1 - mask))
            loss = (((restored - batch) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            report(context.progress, step, steps, "masked autoencoder")
    model.eval()
    with torch.no_grad():
        features = [model.encode(slices[s : s + 64].to(device)).amax((2, 3)).cpu() for s in range(0, len(slices), 64)]
    return torch.cat(features).numpy().astype(np.float64)


UAL_SELECTIONS = ("representative", "kmeans")


@STRATEGIES.register("ual")
@described(StrategyInfo(trains=True))
def ual(
    context: RankingContext,
    *,
    epochs: int = 20,
    mask_ratio: float = 0.75,
    patch_size: int = 8,
    selection: str = "representative",
) -> Picks:
    """Unsupervised representative annotation on self-supervised (masked-autoencoder) features of the candidates;
    needs no model and no annotation.

    ``selection="representative"`` (Zheng et al.'s representative annotation, as the MIDL 2025 study applies it):
    greedily the candidate that most raises the representativeness sum_x max_{s in S} sim(x, s) of the picks S over
    every candidate x (cosine similarity, clipped at 0); score = that gain. ``selection="kmeans"``: the candidates
    in ``budget`` k-means clusters, the one closest to each centroid, biggest clusters first; score = the cluster's
    share of the candidates.

    Keyword Args:
        epochs: masked-autoencoder training epochs over the slices.
        mask_ratio: fraction of 8x8 patches blanked per slice.
        patch_size: blanked patch size in pixels (of the 64 x 64 resampled slice; a divisor of 64).
        selection: "representative" or "kmeans".
    """
    if FEATURE_SIZE % patch_size or not 0 < mask_ratio < 1:
        raise ValueError(
            f"patch_size must divide {FEATURE_SIZE} and mask_ratio lie in (0, 1); got {patch_size}, {mask_ratio}."
        )
    if selection not in UAL_SELECTIONS:
        raise ValueError(f"Unknown ual selection {selection!r}; use one of {', '.join(UAL_SELECTIONS)}.")
    config = MaskedAutoencoderConfig(epochs=epochs, mask_ratio=mask_ratio, patch_size=patch_size)
    features = masked_autoencoder_features(context, config)
    offsets = np.cumsum([0] + [v.n_slices for v in context.volumes])
    rows = np.concatenate([offsets[i] + v.candidates for i, v in enumerate(context.volumes)])  # pool order
    candidates = features[rows]
    admission = context.admission()

    def admit(position: int) -> bool:
        volume, index = int(context.pool_volume[position]), int(context.pool_slice[position])
        if not admission.admits(volume, index):
            return False
        admission.take(volume, index)
        return True

    if selection == "representative":
        chosen, scores = greedy_representatives(candidates, context.budget, admit)
        return Picks(np.asarray(chosen, dtype=np.int64), np.asarray(scores, dtype=float))
    from sklearn.cluster import KMeans

    clusters = min(context.budget, len(np.unique(candidates, axis=0)))
    seed = int(context.rng.integers(2**31 - 1))
    kmeans = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(candidates)
    distance = np.linalg.norm(candidates - kmeans.cluster_centers_[kmeans.labels_], axis=1)
    sizes = np.bincount(kmeans.labels_, minlength=clusters)
    chosen, scores = [], []
    for cluster in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(kmeans.labels_ == cluster)
        for position in members[np.argsort(distance[members], kind="stable")]:
            if admit(int(position)):
                chosen.append(position)
                scores.append(sizes[cluster] / len(candidates))
                break
    return Picks(np.asarray(chosen, dtype=np.int64), np.asarray(scores, dtype=float), {"clusters": int(clusters)})


def greedy_representatives(features: np.ndarray, count: int, admit) -> tuple[list[int], list[float]]:
    """Up to ``count`` rows of ``features`` (N, D) chosen greedily for representativeness (Zheng et al.): each step
    takes the row j with the largest gain sum_x max(sim(j, x) - covered(x), 0), covered(x) the best similarity of x
    to a row already taken (cosine similarity clipped at 0: a facility-location objective, so greedy is within
    1 - 1/e of the best set). ``admit(j)`` may refuse a row (a per-volume limit); refused rows are skipped.
    Returns the chosen rows and their gains. Memory: one (N, N) similarity matrix."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = np.clip(unit @ unit.T, 0.0, 1.0)
    covered = np.zeros(len(features))
    open_rows = np.ones(len(features), dtype=bool)
    chosen, gains = [], []
    while len(chosen) < count and open_rows.any():
        gain = np.maximum(similarity - covered[np.newaxis, :], 0.0).sum(axis=1)
        gain[~open_rows] = -np.inf
        row = int(np.argmax(gain))
        open_rows[row] = False
        if admit(row):
            chosen.append(row)
            gains.append(float(gain[row]))
            covered = np.maximum(covered, similarity[row])
    return chosen, gains
