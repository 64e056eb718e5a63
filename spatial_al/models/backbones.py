"""Encoder / decoder / head split of MONAI's 2D segmentation networks.

The papers need more than ``forward``: bottleneck features (k-center, representativeness, STAR similarity), the
decoder run on features that did not come from the encoder (STAR's aggregated bottleneck) and decoder features
before the output head (SBC-AL's modules). MONAI's ``BasicUNet`` and ``FlexibleUNet`` compute these inside one
``forward``; here their own blocks are regrouped, unchanged, into three modules:

- ``encoder(x)`` -> list of feature maps, finest first, the bottleneck last;
- ``decoder(features)`` -> decoder features at input resolution, shape (B, decoder_width, H, W);
- ``head(decoded)`` -> logits, shape (B, out_channels, H, W).

Inputs are (B, C, H, W) with H and W multiples of ``size_divisor`` (the inference helpers pad to it).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class BasicUNetEncoder(nn.Module):
    """``conv_0`` and ``down_1..4`` of a MONAI ``BasicUNet``; returns [x0, x1, x2, x3, x4]."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class BasicUNetDecoder(nn.Module):
    """``upcat_4..1`` of a MONAI ``BasicUNet``: the bottleneck up-sampled with each finer encoder level as skip."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(x, skip)
        return x


class FlexibleUNetDecoder(nn.Module):
    """MONAI ``FlexibleUNet``'s decoder with its skip-connection count bound."""

    def __init__(self, decoder: nn.Module, skip_connect: int):
        super().__init__()
        self.blocks = decoder
        self.skip_connect = skip_connect

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.blocks(features, self.skip_connect)


class EncoderDecoder(nn.Module):
    """A segmentation network as encoder, decoder and head (see the module docstring for shapes)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        head: nn.Module,
        encoder_widths: tuple[int, ...],
        decoder_width: int,
        size_divisor: int,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.encoder_widths = encoder_widths
        self.decoder_width = decoder_width
        self.size_divisor = size_divisor

    @property
    def bottleneck_width(self) -> int:
        return self.encoder_widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


def build_backbone(config: ModelConfig) -> EncoderDecoder:
    """The encoder-decoder of ``config`` (random initialisation; no weights are downloaded)."""
    from monai.networks.nets import BasicUNet, FlexibleUNet

    if config.architecture == "unet":
        unet = BasicUNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            features=config.features,
            dropout=config.dropout,
        )
        encoder = BasicUNetEncoder([unet.conv_0, unet.down_1, unet.down_2, unet.down_3, unet.down_4])
        decoder = BasicUNetDecoder([unet.upcat_4, unet.upcat_3, unet.upcat_2, unet.upcat_1])
        return EncoderDecoder(encoder, decoder, unet.final_conv, tuple(config.features[:5]), config.features[5], 16)
    unet = FlexibleUNet(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        backbone=config.backbone,
        pretrained=False,
        decoder_channels=config.decoder_channels,
        spatial_dims=2,
        dropout=config.dropout,
    )
    widths = tuple(unet.encoder.num_channels_per_output()[unet.encoder.backbone_names.index(config.backbone)])
    decoder = FlexibleUNetDecoder(unet.decoder, unet.skip_connect)
    return EncoderDecoder(unet.encoder, decoder, unet.segmentation_head, widths, config.decoder_channels[-1], 32)


def first_convolution(module: nn.Module) -> nn.Conv2d:
    """The first ``Conv2d`` applied to the input of ``module`` (registration order of MONAI's blocks)."""
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            return child
    raise ValueError(f"{type(module).__name__} has no Conv2d.")
