"""STAR's spatial aggregation (STAR paper, section 2.1): pseudo-labels for an unlabeled slice from the labeled
slices of its group, by cross-attention between their bottleneck features.

Shapes: images (B, C, H, W); labels one-hot or multi-hot (B, N, K, H, W) with K label channels; bottleneck
features (B, D, h, w); keys D/8 and values D/2 channels. The readout is concatenated with the slice's own
value, giving D channels again, so the segmentation decoder (shared, with the unlabeled slice's encoder skips as
refinement) turns it into a full-resolution pseudo-label.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import first_convolution


@dataclass
class StarOutputs:
    """What :meth:`SegmentationModel.propagate` returns.

    Attributes:
        logits: pseudo-label logits of the unlabeled slices, (B, out_channels, H, W).
        attention: attention of each bottleneck position of the unlabeled slice over every position of the
            labeled slices, (B, h*w, N, h, w); sums to 1 over (N, h, w) (the paper's Fig. 3a).
    """

    logits: torch.Tensor
    attention: torch.Tensor


def widen_first_convolution(encoder: nn.Module, extra_channels: int) -> nn.Conv2d:
    """Give ``encoder``'s first convolution ``extra_channels`` more input channels, with zero weights.

    A convolution over [image, label] is the sum of one over the image and one over the label: this is STAR's
    "image and label through parallel convolutions, summed", and with zero label weights the widened encoder
    computes exactly what the original does, so it can start from the unlabeled-slice encoder's weights.
    """
    old = first_convolution(encoder)
    new = nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        old.bias is not None,
        old.padding_mode,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    for module in encoder.modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return new
    raise ValueError(f"The first convolution of {type(encoder).__name__} is not a child module; cannot widen it.")


class StarAggregation(nn.Module):
    """Labeled-slice encoder f_L and the key/value head; f_U is the segmentation model's encoder.

    Args:
        unlabeled_encoder: f_U, copied (separate weights) into f_L with ``label_channels`` extra input channels.
        label_channels: channels of the label input (the model's output channels).
        bottleneck_width: D, the channels of the encoders' last feature map (divisible by 8).
    """

    def __init__(self, unlabeled_encoder: nn.Module, label_channels: int, bottleneck_width: int):
        super().__init__()
        if bottleneck_width % 8:
            raise ValueError(f"STAR needs a bottleneck width divisible by 8, got {bottleneck_width}.")
        self.image_channels = first_convolution(unlabeled_encoder).in_channels
        self.labeled_encoder = copy.deepcopy(unlabeled_encoder)
        widen_first_convolution(self.labeled_encoder, label_channels)
        self.key = nn.Conv2d(bottleneck_width, bottleneck_width // 8, kernel_size=3, padding=1)
        self.value = nn.Conv2d(bottleneck_width, bottleneck_width // 2, kernel_size=3, padding=1)
        # False until f_L is trained: the first STAR stage 2 copies the trained f_U into it first.
        self.register_buffer("labeled_encoder_trained", torch.tensor(False))

    def initialize_labeled_encoder(self, unlabeled_encoder: nn.Module) -> None:
        """Copy f_U's weights into f_L (label weights zero), as STAR initialises f_L from f_U."""
        source = unlabeled_encoder.state_dict()
        with torch.no_grad():
            for name, tensor in self.labeled_encoder.state_dict().items():
                if tensor.shape == source[name].shape:
                    tensor.copy_(source[name])
                else:  # the widened first convolution
                    tensor.zero_()
                    tensor[:, : self.image_channels] = source[name]
        self.labeled_encoder_trained.fill_(False)

    def aggregate(
        self,
        unlabeled_bottleneck: torch.Tensor,
        labeled_images: torch.Tensor,
        labeled_labels: torch.Tensor,
        labeled_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregated bottleneck of each unlabeled slice, and the attention that made it.

        Args:
            unlabeled_bottleneck: f_U's last feature map, (B, D, h, w).
            labeled_images: (B, N, C, H, W), the N labeled slices of each sample's group.
            labeled_labels: (B, N, K, H, W), their labels as one-hot / multi-hot maps.
            labeled_mask: (B, N) bool, False for padding slices of groups with fewer than N labeled slices.

        Returns:
            bottleneck (B, D, h, w) = [attention readout of the labeled values, own value]; attention
            (B, h*w, N, h, w).
        """
        batch, n_labeled = labeled_images.shape[:2]
        inputs = torch.cat([labeled_images, labeled_labels.to(labeled_images.dtype)], dim=2).flatten(0, 1)
        labeled_bottleneck = self.labeled_encoder(inputs)[-1]  # (B*N, D, h, w)
        query_key = self.key(unlabeled_bottleneck)
        own_value = self.value(unlabeled_bottleneck)
        memory_key = self.key(labeled_bottleneck).unflatten(0, (batch, n_labeled))
        memory_value = self.value(labeled_bottleneck).unflatten(0, (batch, n_labeled))
        readout, attention = cross_attention(query_key, memory_key, memory_value, labeled_mask)
        return torch.cat([readout, own_value], dim=1), attention


def cross_attention(
    query_key: torch.Tensor,
    memory_key: torch.Tensor,
    memory_value: torch.Tensor,
    memory_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query position over all positions of all memory slices (one softmax over all of them).

    Args:
        query_key: (B, Dk, h, w).
        memory_key: (B, N, Dk, h, w).
        memory_value: (B, N, Dv, h, w).
        memory_mask: (B, N) bool; masked slices get zero attention.

    Returns:
        readout (B, Dv, h, w) and attention (B, h*w, N, h, w), computed in float32 even under autocast (low-precision
        logits over many positions overflow or flatten the softmax).
    """
    batch, n_memory, key_depth, height, width = memory_key.shape
    with torch.autocast(query_key.device.type, enabled=False):
        query = query_key.flatten(2).transpose(1, 2).float()  # (B, hw, Dk)
        keys = memory_key.permute(0, 2, 1, 3, 4).flatten(2).float()  # (B, Dk, N*hw)
        similarity = query @ keys / math.sqrt(key_depth)  # (B, hw, N*hw)
        if memory_mask is not None:
            if not bool(memory_mask.any(dim=1).all()):
                raise ValueError("Every unlabeled slice needs at least one labeled slice in its group.")
            hidden = ~memory_mask.bool().repeat_interleave(height * width, dim=1)  # (B, N*hw)
            similarity = similarity.masked_fill(hidden[:, None, :], float("-inf"))
        attention = similarity.softmax(dim=-1)
        values = memory_value.permute(0, 1, 3, 4, 2).reshape(batch, n_memory * height * width, -1).float()
        readout = (attention @ values).transpose(1, 2).reshape(batch, -1, height, width)
    return readout.to(memory_value.dtype), attention.reshape(batch, height * width, n_memory, height, width)
