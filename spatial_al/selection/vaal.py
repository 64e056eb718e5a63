"""Variational adversarial active learning (``vaal``; Sinha, Ebrahimi and Darrell, ICCV 2019), a baseline of SBC-AL's
tables.

A variational autoencoder learns a latent space from the annotated and the unannotated slices together, while a
discriminator learns to tell from the latent code whether a slice is annotated, and the autoencoder learns to fool
it. Slices the discriminator is surest are unannotated, unlike anything annotated, are queried first. No
segmentation model is involved (VAAL's sampler is task-agnostic); the networks are trained at selection time on the
pool's own slices, resampled to 64 x 64. The autoencoder is MONAI's ``VarAutoEncoder`` (``encoder="vae"``), or a
variational autoencoder whose encoder is the segmentation U-Net's (``encoder="unet"``: SBC-AL's "VAAL utilized a
U-Net encoder"); VAAL's discriminator is a three-layer perceptron on the latent code.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ..progress import report
from .base import STRATEGIES, RankingContext, StrategyInfo, described
from .unsupervised import resampled_slices


@dataclass(frozen=True)
class VaalConfig:
    """VAAL's training: epochs over the unannotated slices, batch size, Adam learning rate (VAAL's 5e-4), latent size,
    the weight of the KL term (beta) and of the adversarial term in the autoencoder's loss."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 5e-4
    latent_size: int = 32
    beta: float = 1.0
    adversarial_weight: float = 1.0
    encoder: str = "vae"


AUTOENCODERS = ("vae", "unet")


def unet_encoder_autoencoder(size: int, latent_size: int):
    """A variational autoencoder on (B, 1, size, size) slices whose encoder is the ``unet-small`` preset's U-Net
    encoder (MONAI BasicUNet's levels, randomly initialised): its bottleneck (B, 256, size / 16, size / 16) gives the
    mean and log-variance of the code through two linear layers; the decoder maps a code back through four transposed
    convolutions. Returns what MONAI's ``VarAutoEncoder`` returns (reconstruction, mean, log-variance, sample) and has
    its ``encode_forward`` (mean, log-variance)."""
    import torch
    from monai.networks.blocks import Convolution
    from torch import nn

    from ..models.backbones import build_backbone
    from ..models.config import preset_config

    class UNetEncoderVAE(nn.Module):
        def __init__(self):
            super().__init__()
            backbone = build_backbone(preset_config("unet-small", class_names=("slice",)))
            self.encoder, width, self.grid = backbone.encoder, backbone.bottleneck_width, size // 16
            flat = width * self.grid * self.grid
            self.mean, self.log_variance = nn.Linear(flat, latent_size), nn.Linear(flat, latent_size)
            self.expand = nn.Linear(latent_size, flat)
            widths = (width, 128, 64, 32, 16)
            self.decoder = nn.Sequential(
                *(
                    Convolution(2, a, b, strides=2, kernel_size=3, is_transposed=True, act="LEAKYRELU", norm="INSTANCE")
                    for a, b in pairwise(widths)
                ),
                nn.Conv2d(widths[-1], 1, kernel_size=1),
            )

        def encode_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            bottleneck = self.encoder(x)[-1].flatten(1)
            return self.mean(bottleneck), self.log_variance(bottleneck)

        def forward(self, x: torch.Tensor):
            mean, log_variance = self.encode_forward(x)
            sample = mean + torch.randn_like(mean) * (0.5 * log_variance).exp() if self.training else mean
            code = self.expand(sample).unflatten(1, (-1, self.grid, self.grid))
            return self.decoder(code), mean, log_variance, sample

    return UNetEncoderVAE()


def pool_positions(context: RankingContext, sources: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of :func:`resampled_slices` holding annotated slices, and those holding the pool's candidates in pool
    order."""
    row = {source: index for index, source in enumerate(sources)}
    annotated = [row[(v, int(s))] for v, volume in enumerate(context.volumes) for s in volume.annotated]
    candidates = [row[(int(v), int(s))] for v, s in zip(context.pool_volume, context.pool_slice, strict=True)]
    return np.asarray(annotated, dtype=np.int64), np.asarray(candidates, dtype=np.int64)


def train_vaal(context: RankingContext, config: VaalConfig):
    """Train the autoencoder and the discriminator adversarially; returns (the discriminator's probability that each
    pool candidate is annotated, (n,) in pool order)."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from monai.networks.nets import VarAutoEncoder
    from torch import nn

    slices, sources = resampled_slices(context)
    annotated, candidates = pool_positions(context, sources)
    if annotated.size == 0:
        raise ValueError(
            "vaal learns what tells annotated slices from the others, and none is annotated; annotate a first set "
            "(e.g. random or fixed_interval) first."
        )
    seed = int(context.rng.integers(2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    device = context.torch_device()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if config.encoder == "unet":
            autoencoder = unet_encoder_autoencoder(slices.shape[-1], config.latent_size).to(device)
        else:
            autoencoder = VarAutoEncoder(
                spatial_dims=2,
                in_shape=tuple(slices.shape[1:]),
                out_channels=1,
                latent_size=config.latent_size,
                channels=(16, 32, 64),
                strides=(2, 2, 2),
                use_sigmoid=False,  # intensities are z-scored, not in [0, 1]
            ).to(device)
        discriminator = nn.Sequential(
            nn.Linear(config.latent_size, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1)
        ).to(device)
        autoencoder_optimizer = torch.optim.Adam(autoencoder.parameters(), lr=config.learning_rate)
        discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.learning_rate)
        batches = -(-candidates.size // config.batch_size)
        steps, step = config.epochs * batches, 0
        autoencoder.train()
        for _ in range(config.epochs):
            order = candidates[torch.randperm(candidates.size, generator=generator).numpy()]
            for start in range(0, order.size, config.batch_size):
                unlabeled = slices[order[start : start + config.batch_size]].to(device)
                drawn = torch.randint(annotated.size, (len(unlabeled),), generator=generator).numpy()
                labeled = slices[annotated[drawn]].to(device)
                both = torch.cat([labeled, unlabeled])
                reconstruction, mean, log_variance, _sample = autoencoder(both)
                kl = -0.5 * torch.mean(1 + log_variance - mean.square() - log_variance.exp())
                is_labeled = torch.ones(
                    len(both), device=device
                )  # the autoencoder wants every code taken for annotated
                fooled = F.binary_cross_entropy_with_logits(
                    discriminator(mean).squeeze(1), is_labeled
                )  # as VAAL, on mu
                loss = F.mse_loss(reconstruction, both) + config.beta * kl + config.adversarial_weight * fooled
                autoencoder_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                autoencoder_optimizer.step()
                truth = torch.cat([torch.ones(len(labeled)), torch.zeros(len(unlabeled))]).to(device)
                judged = discriminator(mean.detach()).squeeze(1)
                discriminator_loss = F.binary_cross_entropy_with_logits(judged, truth)
                discriminator_optimizer.zero_grad(set_to_none=True)
                discriminator_loss.backward()
                discriminator_optimizer.step()
                step += 1
                report(context.progress, step, steps, "VAAL: autoencoder and discriminator")
        autoencoder.eval()
        with torch.no_grad():
            probabilities = [
                torch.sigmoid(discriminator(autoencoder.encode_forward(slices[rows].to(device))[0])).squeeze(1).cpu()
                for rows in np.array_split(candidates, max(1, -(-candidates.size // 64)))
            ]
    return torch.cat(probabilities).numpy().astype(np.float64)


@STRATEGIES.register("vaal")
@described(StrategyInfo(trains=True))
def vaal(
    context: RankingContext,
    *,
    epochs: int = 30,
    batch_size: int = 16,
    learning_rate: float = 5e-4,
    latent_size: int = 32,
    beta: float = 1.0,
    adversarial_weight: float = 1.0,
    encoder: str = "vae",
) -> np.ndarray:
    """Variational adversarial active learning (Sinha et al. 2019): score = 1 - the discriminator's probability that
    the slice is annotated, so the slices least like the annotated ones in the learned latent space come first.

    Keyword Args:
        epochs: passes over the unannotated slices (each batch pairs them with as many annotated ones).
        batch_size: unannotated slices per step.
        learning_rate: Adam's, for both networks (VAAL's 5e-4).
        latent_size: dimension of the latent code.
        beta: weight of the KL term.
        adversarial_weight: weight of fooling the discriminator in the autoencoder's loss.
        encoder: "vae" (MONAI's VarAutoEncoder, VAAL's own) or "unet" (the U-Net's encoder, as SBC-AL ran VAAL).
    """
    if encoder not in AUTOENCODERS:
        raise ValueError(f"vaal's encoder must be one of {', '.join(AUTOENCODERS)}, got {encoder!r}.")
    config = VaalConfig(epochs, batch_size, learning_rate, latent_size, beta, adversarial_weight, encoder)
    if min(epochs, batch_size, latent_size) < 1 or learning_rate <= 0:
        raise ValueError(f"vaal needs epochs, batch_size and latent_size >= 1 and learning_rate > 0; got {config}.")
    return 1.0 - train_vaal(context, config)
