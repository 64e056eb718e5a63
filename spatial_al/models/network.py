"""The one model class of the engine: a 2D segmentation network with optional STAR and SBC-AL modules."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .backbones import build_backbone
from .config import ModelConfig
from .star import StarAggregation, StarOutputs
from .structure import StructureHeads, StructureOutputs

STAGES = ("segmentation", "star_propagation", "semi_supervised")


class SegmentationModel(nn.Module):
    """Segmentation network built from a :class:`ModelConfig`.

    ``forward(x)`` maps slices (B, C, H, W) to logits (B, out_channels, H, W) (the refined output when SBC-AL's
    modules are attached); H and W must be multiples of ``size_divisor``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.num_classes < 1:
            raise ValueError("A model needs at least one class name (the segments it learns).")
        self.config = config
        self.backbone = build_backbone(config)
        self.star = (
            StarAggregation(self.backbone.encoder, config.out_channels, self.backbone.bottleneck_width)
            if config.star
            else None
        )
        self.structure = (
            StructureHeads(
                self.backbone.encoder_widths,
                self.backbone.decoder_width,
                config.num_classes,
                config.out_channels,
                config.distance_blocks,
                config.structure_prediction,
                config.attentional_refinement,
                config.attention_grid,
                config.distance_scale,
                config.refinement_fusion,
            )
            if config.structure_heads
            else None
        )

    @property
    def size_divisor(self) -> int:
        return self.backbone.size_divisor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, out_channels, H, W) from the encoder's feature maps (:meth:`encode`): the decoder and head (and
        the SBC-AL refinement when attached), i.e. everything ``forward`` runs after the encoder."""
        return self.output(features, self.backbone.decoder(features))

    def output(self, features: list[torch.Tensor], decoded: torch.Tensor) -> torch.Tensor:
        """Logits (B, out_channels, H, W) from the decoder's output (B, decoder_width, H, W): the head, and the
        SBC-AL refinement (which also reads the encoder's ``features``) when attached."""
        coarse = self.backbone.head(decoded)
        return coarse if self.structure is None else self.structure(features, decoded, coarse).refined

    @property
    def encoder_has_dropout(self) -> bool:
        """Whether any dropout layer sits in the encoder (MONAI's BasicUNet: yes; FlexibleUNet's ResNets: no)."""
        return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in self.backbone.encoder.modules())

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps of (B, C, H, W) slices, finest first; the last is the bottleneck (B, D, h, w)."""
        return self.backbone.encoder(images)

    def bottleneck_features(self, images: torch.Tensor) -> torch.Tensor:
        """The bottleneck feature map (B, D, H / s, W / s) with s the size divisor (for k-center, similarity)."""
        return self.encode(images)[-1]

    def structure_outputs(self, images: torch.Tensor) -> StructureOutputs:
        """Coarse logits, SFP distance maps and ASR-refined logits (needs ``structure_heads``; shapes in
        :mod:`spatial_al.models.structure`)."""
        if self.structure is None:
            raise ValueError(
                f"This model ({self.config.describe()}) has no SBC-AL modules; train one with --preset sbc-small "
                "or sbc."
            )
        features = self.encode(images)
        decoded = self.backbone.decoder(features)
        return self.structure(features, decoded, self.backbone.head(decoded))

    def propagate(
        self,
        unlabeled_images: torch.Tensor,
        labeled_images: torch.Tensor,
        labeled_labels: torch.Tensor,
        labeled_mask: torch.Tensor | None = None,
    ) -> StarOutputs:
        """STAR pseudo-labels for unlabeled slices from the labeled slices of their group (needs ``star``).

        Args:
            unlabeled_images: (B, C, H, W).
            labeled_images: (B, N, C, H, W).
            labeled_labels: (B, N, out_channels, H, W) one-hot (softmax head) or multi-hot (sigmoid head).
            labeled_mask: (B, N) bool, False for padding.
        """
        if self.star is None:
            raise ValueError(
                f"This model ({self.config.describe()}) has no STAR aggregation; train one with --preset star-small "
                "or star."
            )
        features = self.encode(unlabeled_images)
        bottleneck, attention = self.star.aggregate(features[-1], labeled_images, labeled_labels, labeled_mask)
        decoded = self.backbone.decoder([*features[:-1], bottleneck])
        return StarOutputs(self.backbone.head(decoded), attention)

    def stage_modules(self, stage: str) -> dict[str, nn.Module]:
        """The modules a training stage updates, by parameter group.

        "segmentation" (STAR stage 1, and all plain training) and "semi_supervised" (Nath et al.'s stage 2): the
        backbone, plus SBC-AL's SFP ("structure", with its own learning rate) and ASR ("refinement").
        "star_propagation" (STAR stage 2): f_L, the key/value head, and the shared decoder and head; f_U stays as
        stage 1 left it.
        """
        if stage in ("segmentation", "semi_supervised"):
            groups: dict[str, nn.Module] = {"backbone": self.backbone}
            if self.structure is not None:
                groups.update(self.structure.parameter_groups())
            return groups
        if stage == "star_propagation":
            if self.star is None:
                raise ValueError(f"STAR stage 2 needs a model with STAR aggregation, not {self.config.describe()}.")
            return {"propagation": nn.ModuleList([self.star, self.backbone.decoder, self.backbone.head])}
        raise ValueError(f"Unknown training stage {stage!r}; use one of {', '.join(STAGES)}.")

    def stage_parameters(self, stage: str) -> Iterator[nn.Parameter]:
        for module in self.stage_modules(stage).values():
            yield from module.parameters()
