"""Self-supervised slice-to-slice propagation: Sli2Vol (Yeung et al., MIDL 2021), the learned interpolation of the
MIDL 2025 slice-selection study, as published (edge profiles in, trained on slice pairs; its verification module is
not reproduced), as the MIDL 2025 study made it (a ResNet18 encoder, runs of randomly sampled slices, scheduled
sampling) or in this project's variant (intensities in, runs of adjacent slices with scheduled sampling).

A small network learns, from the unlabeled volume alone, features whose local affinities between two adjacent slices
reconstruct one slice from the other. Labels then travel slice by slice through the same affinities, cascaded from
the annotated slices. Training reconstructs sequences of slices and, with a probability that grows during training,
continues a sequence from its own reconstruction instead of the true slice (scheduled sampling), so the features
learn to keep a cascade on track when its input has drifted, as a propagated mask has.

Shapes: slices (B, 1, H, W); features (B, D, H, W), unit length along D; affinities (B, K, H, W) over the
K = (2r + 1)^2 offsets of a window of radius r; values (B, C, H, W). Torch is imported inside the functions.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import atomic_path
from ..progress import report
from .base import PROPAGATORS, MethodInfo, PropagationTask, needs
from .learned import blended_runs, check_weighting, slice_confidence

if TYPE_CHECKING:
    import torch
    from torch import nn

FEATURE_CHANNELS = 16
TEMPERATURE = 0.05  # of the affinity softmax over unit-length features: sharp, near one-to-one matches
LEARNING_RATE = 1e-3
TRAINING_BATCH = 4
REUSED_NETWORKS = 2  # trained networks kept per process, most recent first (see :func:`trained_correspondence`)

_trained: OrderedDict[tuple, nn.Module] = OrderedDict()


ENCODERS = ("unet", "resnet18")
RUN_SLICES = ("adjacent", "random")


def correspondence_network(
    in_channels: int = 1, feature_channels: int = FEATURE_CHANNELS, encoder: str = "unet"
) -> nn.Module:
    """A network from a slice (B, 1, H, W), or its edge profile (B, 2, H, W), to per-pixel features (B, D, H, W):
    a small MONAI U-Net ("unet"), or MONAI's FlexibleUNet on a ResNet18 encoder, randomly initialised ("resnet18",
    the MIDL 2025 study's feature extractor). Its ``size_divisor`` is what its input is padded to."""
    from monai.networks.nets import FlexibleUNet, UNet

    if encoder == "resnet18":
        network = FlexibleUNet(in_channels, feature_channels, backbone="resnet18", pretrained=False, spatial_dims=2)
        network.size_divisor = 32
    else:
        network = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=feature_channels,
            channels=(16, 32, 64),
            strides=(2, 2),
            num_res_units=1,
        )
        network.size_divisor = 4
    network.input_channels = in_channels
    return network


def edge_profile(slices: torch.Tensor) -> torch.Tensor:
    """Sli2Vol's edge profile generator: the Sobel derivatives along rows and columns of slices (B, 1, H, W), each
    slice divided by its largest gradient magnitude, (B, 2, H, W). The network sees edges, not intensities, so it
    cannot reconstruct a slice by copying grey values (the paper's information bottleneck)."""
    import torch
    from monai.transforms import SobelGradients

    gradients = SobelGradients(kernel_size=3)(slices[:, 0])  # (2B, H, W): every slice's rows, then its columns
    gradients = gradients.unflatten(0, (2, len(slices))).transpose(0, 1)  # (B, 2, H, W)
    magnitude = gradients.square().sum(1, keepdim=True).sqrt().amax(dim=(2, 3), keepdim=True)
    return torch.as_tensor(gradients / magnitude.clamp(min=1e-6))


def unit_features(network: nn.Module, slices: torch.Tensor) -> torch.Tensor:
    """Features (B, D, H, W) of slices (B, 1, H, W) (their edge profiles when the network takes two channels),
    padded to the network's stride and cropped back, unit length."""
    import torch.nn.functional as F  # noqa: N812 (the torch convention)

    height, width = slices.shape[-2:]
    divisor = network.size_divisor
    padded = F.pad(slices, (0, (-width) % divisor, 0, (-height) % divisor), mode="replicate")
    if network.input_channels == 2:
        padded = edge_profile(padded)
    return F.normalize(network(padded)[..., :height, :width], dim=1)


def shifted_windows(tensor: torch.Tensor, radius: int) -> list[torch.Tensor]:
    """``tensor`` (B, C, H, W) seen from each offset of a (2r + 1)^2 window, edges replicated: K tensors (B, C, H, W)
    whose pixel (y, x) holds the input's pixel (y + dy, x + dx).

    Written out because no library offers a memory-light local correlation: ``F.unfold`` would hold K copies of
    the features at once (K x D x H x W), this holds one at a time where the caller reduces them.
    """
    import torch.nn.functional as F  # noqa: N812

    height, width = tensor.shape[-2:]
    padded = F.pad(tensor, (radius, radius, radius, radius), mode="replicate")
    size = 2 * radius + 1
    return [padded[..., dy : dy + height, dx : dx + width] for dy in range(size) for dx in range(size)]


def local_affinity(target: torch.Tensor, source: torch.Tensor, radius: int) -> torch.Tensor:
    """Softmax over the window offsets of the similarity between each target pixel's features and the source's
    features around it: (B, K, H, W), summing to 1 over K."""
    import torch

    similarity = torch.stack([(target * shifted).sum(1) for shifted in shifted_windows(source, radius)], dim=1)
    return (similarity / TEMPERATURE).softmax(dim=1)


def transfer(affinity: torch.Tensor, values: torch.Tensor, radius: int) -> torch.Tensor:
    """Carry source ``values`` (B, C, H, W) to the target through ``affinity`` (B, K, H, W): (B, C, H, W)."""
    result = None
    for offset, shifted in enumerate(shifted_windows(values, radius)):
        term = affinity[:, offset : offset + 1] * shifted
        result = term if result is None else result + term
    return result


def training_run(generator: np.random.Generator, n_slices: int, length: int, run_slices: str) -> np.ndarray:
    """The slice indices of one training run, ``length`` + 1 of them, in the order they are reconstructed (either
    direction, at random): consecutive slices from a random start ("adjacent"), or slices drawn at random without
    replacement and sorted ("random": the MIDL 2025 study's K random slices, each reconstructed from its nearest
    drawn neighbour, so the network also learns to bridge gaps)."""
    if run_slices == "random":
        order = np.sort(generator.choice(n_slices, size=length + 1, replace=False))
    else:
        start = generator.integers(0, n_slices - length)
        order = np.arange(start, start + length + 1)
    return order[::-1].copy() if generator.random() < 0.5 else order


def train_correspondence(
    image: np.ndarray,
    steps: int,
    radius: int,
    sequence_length: int,
    scheduled_sampling: float,
    patch_size: int,
    device: torch.device,
    seed: int,
    progress=None,
    edges: bool = False,
    encoder: str = "unet",
    run_slices: str = "adjacent",
) -> nn.Module:
    """Train the correspondence network (``encoder``, :func:`correspondence_network`) on a volume's own slices (on
    their edge profiles with ``edges``; the reconstruction is of the intensities either way).

    Each step takes ``TRAINING_BATCH`` runs of ``sequence_length`` + 1 slices (:func:`training_run`, with a random
    crop of ``patch_size`` pixels), reconstructs every slice of a run from the one before and minimises the L1
    error. The slice a reconstruction starts from is the true one, or, with a probability rising linearly from 0 to
    ``scheduled_sampling`` over the steps, the previous reconstruction (scheduled sampling).

    Args:
        image: (S, H, W) float32 intensities, normalised.
    """
    import torch

    generator = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        network = correspondence_network(2 if edges else 1, encoder=encoder).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    volume = torch.as_tensor(image, dtype=torch.float32)
    n_slices, height, width = volume.shape
    length = min(sequence_length, n_slices - 1)
    crop_rows, crop_columns = min(patch_size, height), min(patch_size, width)
    network.train()
    for step in range(steps):
        own_rate = scheduled_sampling * step / max(steps - 1, 1)
        runs = []
        for _ in range(TRAINING_BATCH):
            order = training_run(generator, n_slices, length, run_slices)
            row = generator.integers(0, height - crop_rows + 1)
            column = generator.integers(0, width - crop_columns + 1)
            runs.append(volume[torch.as_tensor(order), row : row + crop_rows, column : column + crop_columns])
        sequence = torch.stack(runs, dim=1)[:, :, None].to(device)  # (T + 1, B, 1, h, w)
        features = unit_features(network, sequence.flatten(0, 1)).unflatten(0, sequence.shape[:2])
        values, loss = sequence[0], 0.0
        for t in range(1, length + 1):
            reconstruction = transfer(local_affinity(features[t], features[t - 1], radius), values, radius)
            loss = loss + (reconstruction - sequence[t]).abs().mean()
            own = torch.as_tensor(generator.random(TRAINING_BATCH) < own_rate, device=device)[:, None, None, None]
            values = torch.where(own, reconstruction, sequence[t])
        optimizer.zero_grad()
        (loss / length).backward()
        optimizer.step()
        report(progress, step + 1, steps, "learning slice correspondences")
    return network.eval()


def trained_correspondence(
    image: np.ndarray, device: torch.device, seed: int, progress=None, store: str | Path | None = None, **training
) -> nn.Module:
    """The correspondence network of :func:`train_correspondence`, reused when the same process already trained one
    on the same image (by content) with the same options, seed and device: propagating again after more slices are
    annotated, or a preview followed by the real run, does not retrain. The last :data:`REUSED_NETWORKS` are kept.

    With a ``store`` folder, a network trained once is also saved there (atomically, named by that key) and loaded
    by any later process: the runs of a study that interpolate the same volumes with the same seed train each
    network once between them.

    The network never sees the labels, so reusing it gives the same result as training it again (same seed).
    """
    import torch

    key = (
        hashlib.blake2b(np.ascontiguousarray(image).data).hexdigest(),
        image.shape,
        str(device),
        seed,
        tuple(sorted(training.items())),
    )
    if key in _trained:
        _trained.move_to_end(key)
        report(progress, 1, 1, "reusing the slice correspondences learned on this volume")
        return _trained[key]
    saved = Path(store) / f"{hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()}.pt" if store else None
    if saved is not None and saved.is_file():
        network = correspondence_network(2 if training["edges"] else 1, encoder=training["encoder"]).to(device)
        network.load_state_dict(torch.load(saved, map_location=device, weights_only=True))
        network.eval()
        report(progress, 1, 1, "loading the slice correspondences learned on this volume")
    else:
        network = train_correspondence(image, device=device, seed=seed, progress=progress, **training)
        if saved is not None:
            with atomic_path(saved) as temporary:
                torch.save(network.state_dict(), temporary)
    _trained[key] = network
    while len(_trained) > REUSED_NETWORKS:
        _trained.popitem(last=False)
    return network


def forget_trained_networks() -> None:
    """Drop the networks kept by :func:`trained_correspondence` (a closed scene's volumes will not come back)."""
    _trained.clear()


def labeled_box(values: torch.Tensor, backgrounds: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """Rows and columns (grown by ``margin``) where ``values`` (1, C, H, W) is not pure background; the background
    channel of each layer group is at ``backgrounds``. None when every pixel is background."""
    from .interpolation import bounding_box

    labeled = (values[0, backgrounds] < 1.0 - 1e-4).any(0).numpy()
    return bounding_box(labeled, margin=margin)


def one_hot_layers(task: PropagationTask) -> tuple[np.ndarray, list[np.ndarray]]:
    """The annotated slices as probabilities (A, C, H, W) float32, one group of channels per label layer (its
    background, then each label value it holds on an annotated slice), and each layer's label values, background
    included."""
    groups, values = [], []
    for layer in task.label_layers:
        present = np.union1d([0], np.unique(layer[task.annotated]))
        groups.append(layer[task.annotated][:, None] == present[None, :, None, None])
        values.append(present)
    return np.concatenate(groups, axis=1).astype(np.float32), values


@PROPAGATORS.register("sli2vol")
@needs(MethodInfo(image=True))
def sli2vol_propagation(
    task: PropagationTask,
    *,
    steps: int = 100,
    radius: int = 3,
    sequence_length: int = 3,
    scheduled_sampling: float = 0.5,
    patch_size: int = 64,
    extrapolate: bool = False,
    weighting: str = "distance",
    edge_profile: bool = False,
    encoder: str = "unet",
    run_slices: str = "adjacent",
    network_store: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Self-supervised slice-to-slice propagation (Sli2Vol), cascaded from the nearest annotated slices.

    Learns slice correspondences on this volume (no annotation, no model file; learned once per volume and process,
    see :func:`trained_correspondence`), then carries each annotated slice's
    labels slice by slice up to the next annotated slice on either side; where two cascades meet they are averaged
    (weighted by the distance to each, or equally). Every label layer travels at once; a pixel takes its layer's
    likeliest value. Confidence is 1 - normalised mean entropy of the carried probabilities (least confident layer).

    Keyword Args:
        steps: training steps on the volume's slices (each a batch of 4 runs).
        radius: largest in-plane displacement between adjacent slices, in pixels (the affinity window's radius).
        sequence_length: slices reconstructed in a row during training.
        scheduled_sampling: final probability of continuing a training run from its own reconstruction, in [0, 1].
        patch_size: training crop, in pixels.
        extrapolate: also cascade beyond the first and the last annotated slice.
        weighting: "distance" or "uniform" blending of the two cascades of a gap.
        edge_profile: the network sees each slice's edge profile (Sobel derivatives), not its intensities.
        encoder: the feature network: "unet" (a small MONAI U-Net) or "resnet18" (FlexibleUNet on a ResNet18
            encoder, randomly initialised).
        run_slices: a training run's slices: "adjacent" or "random" (sorted random slices, bridging gaps).
        network_store: a folder that keeps the learned networks for other processes (see
            :func:`trained_correspondence`); a study passes its cohort cache. It changes no result.

    Sli2Vol as published (Yeung et al. 2021), but for its verification module: ``edge_profile=True,
    sequence_length=1, scheduled_sampling=0`` (edge profiles in, trained on pairs of adjacent slices). The MIDL
    2025 study's M.I. (its Appendix F): ``encoder="resnet18", run_slices="random"`` with scheduled sampling (it
    gives neither K nor the sampling rate: ``sequence_length=3``, i.e. K = 4, and 0.5 are ours). The defaults are
    this project's variant: intensities in, runs of 3 adjacent slices with scheduled sampling.
    """
    import torch

    from ..device import resolve_device
    from ..models.inference import most_likely_class
    from ..training.data import normalize_intensities

    if steps < 1 or radius < 1 or sequence_length < 1 or patch_size < 8:
        raise ValueError(
            f"sli2vol needs steps >= 1, radius >= 1, sequence_length >= 1 and patch_size >= 8; got steps={steps}, "
            f"radius={radius}, sequence_length={sequence_length}, patch_size={patch_size}."
        )
    check_weighting(weighting)
    for name, value, valid in (("encoder", encoder, ENCODERS), ("run_slices", run_slices, RUN_SLICES)):
        if value not in valid:
            raise ValueError(f"sli2vol's {name} must be one of {', '.join(valid)}, got {value!r}.")
    if not 0 <= scheduled_sampling <= 1:
        raise ValueError(f"scheduled_sampling is a probability in [0, 1], got {scheduled_sampling}.")
    if task.n_slices < 2:
        raise ValueError("sli2vol learns from pairs of adjacent slices; the volume has a single slice.")
    device = resolve_device(task.device)
    image = normalize_intensities(task.image)
    network = trained_correspondence(
        image,
        device,
        task.seed,
        task.progress,
        network_store,
        steps=steps,
        radius=radius,
        sequence_length=sequence_length,
        scheduled_sampling=scheduled_sampling,
        patch_size=patch_size,
        edges=edge_profile,
        encoder=encoder,
        run_slices=run_slices,
    )
    annotated_probabilities, layer_values = one_hot_layers(task)
    backgrounds = np.cumsum([0] + [values.size for values in layer_values[:-1]])
    row = {int(slice_index): index for index, slice_index in enumerate(task.annotated)}
    cached: dict[int, torch.Tensor] = {}

    def features_of(slices: list[int]) -> dict[int, torch.Tensor]:
        """Features (1, D, H, W) of each slice; kept while the next call (the same run's other anchor) needs them."""
        missing = [index for index in slices if index not in cached]
        for start in range(0, len(missing), task.batch_size):
            batch = missing[start : start + task.batch_size]
            features = unit_features(network, torch.as_tensor(image[batch][:, None]).to(device)).cpu()
            cached.update({index: features[i : i + 1] for i, index in enumerate(batch)})
        for index in set(cached) - set(slices):
            del cached[index]
        return cached

    def propagate_from(anchor: int, slices: np.ndarray) -> torch.Tensor:
        order = (slices if anchor < slices[0] else slices[::-1]).tolist()  # outward from the anchor
        features = features_of([anchor, *order])
        values = torch.as_tensor(annotated_probabilities[row[anchor]][None])
        carried = []
        for source, target in zip([anchor, *order[:-1]], order, strict=True):
            box = labeled_box(values, backgrounds, margin=2 * radius)
            if box is not None:  # labels move at most ``radius`` pixels a slice: the rest stays background
                window = (slice(None), slice(None), *box)
                target_features, source_features = features[target][window], features[source][window]
                affinity = local_affinity(target_features.to(device), source_features.to(device), radius)
                values = values.clone()
                values[window] = transfer(affinity, values[window].to(device), radius).cpu()
            carried.append(values)
        stacked = torch.cat(carried)
        return stacked if anchor < slices[0] else stacked.flip(0)

    filled = np.zeros_like(task.label_layers)
    confidence = np.full(task.n_slices, np.nan, dtype=np.float32)
    with torch.no_grad():
        for slices, probabilities in blended_runs(task, propagate_from, extrapolate, weighting):
            start, layer_confidences = 0, []
            for layer_index, values in enumerate(layer_values):
                group = probabilities[:, start : start + values.size]
                filled[layer_index, slices] = values[most_likely_class(group).numpy()]
                sure = np.ones(slices.size)  # a layer with nothing annotated carries only background
                layer_confidences.append(slice_confidence(group, "softmax") if values.size > 1 else sure)
                start += values.size
            confidence[slices] = np.min(layer_confidences, axis=0)
    return filled, confidence
