"""SBC-AL's structure and boundary modules on a U-Net's decoder features.

- Structure-aware Feature Prediction (SFP): cascaded distance blocks, each regressing the distance-transform map
  of every class (normalised to [0, 1] inside each structure) from the decoder features and the previous block's
  maps; trained with MSE.
- Attentional Segmentation Refinement (ASR): a spatial attention map computed from the last SFP features
  re-weights the decoder features, which are refined together with the coarse logits into the final logits.

Shapes: decoder features (B, F, H, W); coarse / refined logits (B, out_channels, H, W); distance maps
(B, num_classes, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StructureOutputs:
    """Coarse logits (the U-Net head), the distance maps of every SFP block (last = final), refined logits."""

    coarse: torch.Tensor
    distance_maps: list[torch.Tensor]
    refined: torch.Tensor

    @property
    def distance(self) -> torch.Tensor:
        return self.distance_maps[-1]


def convolution_block(in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.blocks import Convolution

    return Convolution(2, in_channels, out_channels, kernel_size=3, act="LEAKYRELU", norm="INSTANCE")


class StructureHeads(nn.Module):
    """SFP (``distance_blocks`` cascaded blocks) and ASR, on ``decoder_width``-channel decoder features."""

    def __init__(self, decoder_width: int, num_classes: int, out_channels: int, distance_blocks: int = 3):
        super().__init__()
        if distance_blocks < 1:
            raise ValueError(f"distance_blocks must be at least 1, got {distance_blocks}.")
        self.blocks = nn.ModuleList(
            convolution_block(decoder_width + (num_classes if index else 0), decoder_width)
            for index in range(distance_blocks)
        )
        self.regressors = nn.ModuleList(nn.Conv2d(decoder_width, num_classes, 1) for _ in range(distance_blocks))
        self.attention = nn.Conv2d(decoder_width, 1, kernel_size=1)
        self.refine = nn.Sequential(
            convolution_block(decoder_width + out_channels, decoder_width), nn.Conv2d(decoder_width, out_channels, 1)
        )

    def forward(self, decoded: torch.Tensor, coarse: torch.Tensor) -> StructureOutputs:
        distance_maps = []
        features = decoded
        for index, (block, regressor) in enumerate(zip(self.blocks, self.regressors, strict=True)):
            block_input = decoded if index == 0 else torch.cat([decoded, distance_maps[-1]], dim=1)
            features = block(block_input)
            distance_maps.append(torch.sigmoid(regressor(features)))
        attention = torch.sigmoid(self.attention(features))  # (B, 1, H, W)
        refined = self.refine(torch.cat([decoded * (1 + attention), coarse], dim=1))
        return StructureOutputs(coarse, distance_maps, refined)
