"""SBC-AL's structure and boundary modules (Section 2 of the paper) on a 2D encoder-decoder.

- Structure-aware Feature Prediction (SFP): ``distance_blocks`` cascaded DisBlocks fed by the encoder path. The
  first takes the bottleneck (high-level features); each block up-samples its input to the next finer encoder level
  and fuses that level (low-level features) with two convolutions. A 1x1 convolution ends the cascade in one
  structure-aware distance map per class (distance to the structure's boundary inside it, 0 outside), regressed with
  MSE: in pixels as the paper's D_i (``distance_scale="pixels"``, a softplus keeps it non-negative) or divided by its
  maximum (``"normalized"``, a sigmoid keeps it in [0, 1]).
- Attentional Segmentation Refinement (ASR): two parallel convolution + batch-norm layers turn the SFP features into a
  query and a key; the softmax over positions of their product is a spatial attention map that re-weights the
  backbone's decoder features (every position becomes an attention-weighted sum of all positions, DANet's position
  attention). The re-weighted features are added to the decoder features with a learned scale (0 at start, so the
  refinement starts as a plain classifier) and a 1x1 convolution gives the refined segmentation. The paper does not
  give the attention's resolution: here it runs on at most ``attention_grid`` x ``attention_grid`` average-pooled
  positions and the re-weighted features are up-sampled back, so memory does not grow with the slice size.

The ablations of the paper's Table 3 are configurations: without SFP, ASR's query and key come from the decoder
features themselves and there is no distance map; without ASR, the refined segmentation is the coarse one; ASR (A)
adds the SFP features (a 1x1 convolution + batch norm to the decoder's width) to the decoder features, ASR (C)
concatenates them, before the same 1x1 classifier (``fusion`` "addition" and "concatenation": the paper says only
that the two are combined "via addition and concatenation").

Shapes: encoder features finest first, the bottleneck last; decoder features (B, F, H, W); coarse / refined logits
(B, out_channels, H, W); distance maps (B, num_classes, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional


@dataclass
class StructureOutputs:
    """Coarse logits (the U-Net head), SFP distance maps (None without SFP), refined logits (the coarse
    ones without ASR)."""

    coarse: torch.Tensor
    distance: torch.Tensor | None
    refined: torch.Tensor


def convolution_block(in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.blocks import Convolution

    return Convolution(2, in_channels, out_channels, kernel_size=3, act="LEAKYRELU", norm="INSTANCE")


class DisBlock(nn.Module):
    """One SFP step: ``coarser`` (B, C_in, h, w) up-sampled (bilinear) to ``skip``'s size, concatenated with the
    encoder level ``skip`` (B, C_skip, H, W) and fused by two 3x3 convolutions into (B, C_out, H, W)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.fuse = nn.Sequential(
            convolution_block(in_channels + skip_channels, out_channels), convolution_block(out_channels, out_channels)
        )

    def forward(self, coarser: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = functional.interpolate(coarser, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([upsampled, skip], dim=1))


class PositionAttention(nn.Module):
    """ASR's attention: query and key from ``guide`` (B, G, H, W) by two parallel 1x1 convolution + batch-norm layers,
    attention = softmax over key positions of query . key on a pooled grid of at most ``grid`` x ``grid`` positions,
    applied to ``values`` (B, V, H, W); returns the re-weighted values up-sampled to (B, V, H, W). ``scale`` is the
    learned weight with which the caller adds them to the values."""

    def __init__(self, guide_channels: int, grid: int):
        super().__init__()
        key_channels = max(guide_channels // 8, 4)
        self.query = nn.Sequential(nn.Conv2d(guide_channels, key_channels, 1), nn.BatchNorm2d(key_channels))
        self.key = nn.Sequential(nn.Conv2d(guide_channels, key_channels, 1), nn.BatchNorm2d(key_channels))
        self.scale = nn.Parameter(torch.zeros(1))  # of the re-weighted features added to the values (0 at start)
        self.grid = grid

    def attention(self, guide: torch.Tensor) -> torch.Tensor:
        """(B, N, N) with N the pooled positions: row n holds the weights of every position for position n."""
        pooled = functional.adaptive_avg_pool2d(guide, self.pooled_size(guide))
        query = self.query(pooled).flatten(2)  # (B, K, N)
        key = self.key(pooled).flatten(2)
        return torch.softmax(query.transpose(1, 2) @ key, dim=-1)

    def pooled_size(self, tensor: torch.Tensor) -> tuple[int, int]:
        height, width = tensor.shape[-2:]
        return min(height, self.grid), min(width, self.grid)

    def forward(self, guide: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        attention = self.attention(guide)
        size = self.pooled_size(guide)
        pooled = functional.adaptive_avg_pool2d(values, size).flatten(2)  # (B, V, N)
        reweighted = (pooled @ attention.transpose(1, 2)).unflatten(2, size)
        return functional.interpolate(reweighted, size=values.shape[-2:], mode="bilinear", align_corners=False)


class StructureHeads(nn.Module):
    """SFP and ASR on an encoder with levels of ``encoder_widths`` (finest first) and ``decoder_width``-channel
    decoder features (see the module docstring)."""

    def __init__(
        self,
        encoder_widths: tuple[int, ...],
        decoder_width: int,
        num_classes: int,
        out_channels: int,
        distance_blocks: int = 4,
        prediction: bool = True,
        refinement: bool = True,
        attention_grid: int = 32,
        distance_scale: str = "normalized",
        fusion: str = "attention",
    ):
        super().__init__()
        self.distance_activation = torch.sigmoid if distance_scale == "normalized" else functional.softplus
        if not prediction and not refinement:
            raise ValueError("SBC-AL's modules need SFP, ASR or both; a model with neither is a plain U-Net.")
        skip_levels = len(encoder_widths) - 1
        if not 1 <= distance_blocks <= skip_levels:
            raise ValueError(
                f"distance_blocks must be between 1 and {skip_levels} (one per encoder level above the bottleneck), "
                f"got {distance_blocks}."
            )
        self.blocks = None
        guide_width = decoder_width
        if prediction:
            skips = encoder_widths[-2::-1][:distance_blocks]  # coarse to fine
            inputs = (encoder_widths[-1], *skips[:-1])
            self.blocks = nn.ModuleList(DisBlock(i, s, s) for i, s in zip(inputs, skips, strict=True))
            self.regressor = nn.Conv2d(skips[-1], num_classes, kernel_size=1)
            guide_width = skips[-1]
        self.fusion = fusion if refinement else None
        self.attention = PositionAttention(guide_width, attention_grid) if self.fusion == "attention" else None
        self.projection = None
        if self.fusion == "addition":
            self.projection = nn.Sequential(nn.Conv2d(guide_width, decoder_width, 1), nn.BatchNorm2d(decoder_width))
        if refinement:
            concatenated = guide_width if fusion == "concatenation" else 0
            self.classifier = nn.Conv2d(decoder_width + concatenated, out_channels, kernel_size=1)

    def parameter_groups(self) -> dict[str, nn.Module]:
        """SFP ("structure", which the paper trains at 1e-4 against the backbone's 1e-2) and ASR ("refinement",
        trained with the backbone: its classifier gives the segmentation), those present."""
        groups = {}
        if self.blocks is not None:
            groups["structure"] = nn.ModuleList([self.blocks, self.regressor])
        if self.fusion is not None:
            fusing = [module for module in (self.attention, self.projection) if module is not None]
            groups["refinement"] = nn.ModuleList([*fusing, self.classifier])
        return groups

    def structure_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The last DisBlock's output (B, C, h, w) from the encoder features (finest first, bottleneck last)."""
        x = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1], strict=False):
            x = block(x, skip)
        return x

    def forward(self, features: list[torch.Tensor], decoded: torch.Tensor, coarse: torch.Tensor) -> StructureOutputs:
        distance, guide = None, decoded
        if self.blocks is not None:
            guide = self.structure_features(features)
            distance = self.distance_activation(self.regressor(guide))
            if distance.shape[-2:] != coarse.shape[-2:]:  # encoders whose finest level is below input resolution
                distance = functional.interpolate(
                    distance, size=coarse.shape[-2:], mode="bilinear", align_corners=False
                )
                guide = functional.interpolate(guide, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
        if self.fusion is None:
            return StructureOutputs(coarse, distance, coarse)
        if self.fusion == "attention":
            refined_features = decoded + self.attention.scale * self.attention(guide, decoded)
        elif self.fusion == "addition":
            refined_features = decoded + self.projection(guide)
        else:
            refined_features = torch.cat([decoded, guide], dim=1)
        return StructureOutputs(coarse, distance, self.classifier(refined_features))
