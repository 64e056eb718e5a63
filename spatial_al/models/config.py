"""Model configuration as data: a frozen dataclass saved as JSON inside every checkpoint, and named presets."""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..registry import Registry

DISTANCE_SCALES = ("normalized", "pixels")  # what SBC-AL's SFP regresses
REFINEMENT_FUSIONS = ("attention", "addition", "concatenation")  # SBC-AL's ASR and its Table 3 ablations
VOLUME_ARCHITECTURES = ("unet", "residual_unet", "segresnet", "unetr")  # those built with spatial_dims=3
ARCHITECTURES = ("unet", "unet_plus_plus", "attention_unet", "resnet_unet", "residual_unet", "segresnet", "unetr")
SINGLE_WIDTH_ARCHITECTURES = ("segresnet", "unetr")  # features = (their first level's width,)
SEGRESNET_GROUPS = 8  # MONAI SegResNet's group norm: its widths are multiples of this
HEADS = ("softmax", "sigmoid")
# FlexibleUNet's ResNet encoders (monai.networks.nets.resnet), listed here so a configuration is checked without MONAI
RESNET_BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network (its weights live in the checkpoint's ``state_dict``).

    Attributes:
        architecture: "unet" (MONAI ``BasicUNet`` split into encoder and decoder), "unet_plus_plus" (MONAI
            ``BasicUNetPlusPlus``, nested skips, no deep supervision), "attention_unet" (MONAI ``AttentionUnet``,
            attention-gated skips; ``features[:5]`` are its channels) or "resnet_unet" (MONAI ``FlexibleUNet`` with a
            ResNet encoder, random initialisation) or "residual_unet" (MONAI ``UNet``, two residual units per block,
            ``features`` its 5 level widths: Nath et al.'s network), "segresnet" (MONAI ``SegResNet``: residual blocks
            (1, 2, 2, 4) down, (1, 1, 1) up, group norm; ``features`` = (its initial filters,), doubled per level) or
            "unetr" (MONAI ``UNETR``: a ViT encoder of 12 layers on 16-voxel patches, ``transformer`` its sizes,
            ``features`` = (its feature size,), ``input_size`` the fixed input it is built for).
        class_names: one name per foreground class (the segments the model was trained on), in output order.
        class_colors: RGB in [0, 1] per class, for writing predictions as a segmentation.
        head: "softmax" (mutually exclusive classes; output channel 0 is background) or "sigmoid" (one
            independent channel per class, for overlapping segments).
        in_channels: image channels per slice.
        features: ``BasicUNet`` widths (6 values: 5 encoder levels, 4 down-samplings, then the last decoder level);
            a residual_unet's 5 level widths.
        backbone: ``FlexibleUNet`` encoder name (resnet10 ... resnet200).
        decoder_channels: ``FlexibleUNet`` decoder widths (5 values).
        dropout: dropout probability in every convolution block (> 0 enables MC-dropout sampling).
        star: attach STAR's labeled-slice encoder and key/value head (spatial aggregation).
        structure_heads: attach SBC-AL's modules (:mod:`spatial_al.models.structure`).
        distance_blocks: cascaded DisBlocks of SFP, one per encoder level from the bottleneck up (4 in the paper).
        structure_prediction: SBC-AL's structure-aware feature prediction (False: the paper's "without SFP").
        attentional_refinement: SBC-AL's attentional segmentation refinement (False: "without ASR").
        refinement_fusion: how the refinement combines SFP's features with the backbone's: "attention" (ASR),
            "addition" or "concatenation" (the paper's Table 3 ablations ASR (A) and ASR (C)).
        attention_grid: ASR attends over at most this many x this many pooled positions.
        distance_scale: what SFP regresses: "pixels" (the distance to the structure's boundary inside it, in pixels:
            the paper's D_i) or "normalized" (that distance divided by its maximum, in [0, 1]).
        slice_axis: array axis (KJI) the model was trained on; prediction cuts new volumes the same way.
        spatial_dims: 2 (slices) or 3 (volumes: a unet, residual_unet, segresnet or unetr, trained on patches and
            run by sliding window; :mod:`spatial_al.models.volume_inference`).
        input_size: a unetr's input, (H, W) or (D, H, W) (its ViT embeds a fixed grid of 16-voxel patches; the
            experiments set it to the training patch or slice size); () for the other architectures.
        transformer: a unetr's ViT: (hidden size, MLP width, attention heads); MONAI's defaults are ViT-B's.
    """

    architecture: str = "unet"
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[float, float, float], ...] = ()
    head: str = "softmax"
    in_channels: int = 1
    features: tuple[int, ...] = (32, 64, 128, 256, 512, 32)
    backbone: str = "resnet50"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    dropout: float = 0.0
    star: bool = False
    structure_heads: bool = False
    distance_blocks: int = 4
    structure_prediction: bool = True
    attentional_refinement: bool = True
    refinement_fusion: str = "attention"
    attention_grid: int = 32
    distance_scale: str = "normalized"
    slice_axis: int = 0
    spatial_dims: int = 2
    input_size: tuple[int, ...] = ()
    transformer: tuple[int, int, int] = (768, 3072, 12)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            closest = difflib.get_close_matches(self.architecture, ARCHITECTURES, n=1, cutoff=0.0)[0]
            raise ValueError(
                f"Unknown architecture {self.architecture!r}; did you mean {closest!r}? Use one of "
                f"{', '.join(ARCHITECTURES)}."
            )
        if self.architecture == "resnet_unet" and self.backbone not in RESNET_BACKBONES:
            closest = difflib.get_close_matches(self.backbone, RESNET_BACKBONES, n=1, cutoff=0.0)[0]
            raise ValueError(
                f"MONAI's FlexibleUNet has no encoder {self.backbone!r}; did you mean {closest!r}? Use one of "
                f"{', '.join(RESNET_BACKBONES)}."
            )
        if self.head not in HEADS:
            raise ValueError(f"Unknown head {self.head!r}; use softmax (exclusive classes) or sigmoid (overlapping).")
        if self.architecture in ("unet", "unet_plus_plus", "attention_unet") and len(self.features) != 6:
            raise ValueError(f"A {self.architecture} needs 6 feature widths (BasicUNet's), got {self.features}.")
        if self.architecture == "residual_unet" and len(self.features) != 5:
            raise ValueError(f"A residual_unet needs 5 level widths (4 down-samplings), got {self.features}.")
        if self.architecture in SINGLE_WIDTH_ARCHITECTURES:
            self._check_single_width()
        if self.architecture in ("residual_unet", *SINGLE_WIDTH_ARCHITECTURES) and (self.star or self.structure_heads):
            raise ValueError(
                f"STAR and SBC-AL's modules are built on a unet, unet_plus_plus, attention_unet or resnet_unet, not a "
                f"{self.architecture} (a residual_unet's decoder does not have the input's resolution); use one of "
                "those or their presets."
            )
        if self.class_colors and len(self.class_colors) != len(self.class_names):
            raise ValueError("class_colors needs one colour per class name.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.structure_heads and not (self.structure_prediction or self.attentional_refinement):
            raise ValueError(
                "structure_heads needs structure_prediction (SFP), attentional_refinement (ASR) or both; with "
                "neither, use a plain preset (unet-small, unet)."
            )
        if self.refinement_fusion not in REFINEMENT_FUSIONS:
            raise ValueError(
                f"refinement_fusion must be one of {', '.join(REFINEMENT_FUSIONS)}, got {self.refinement_fusion!r}."
            )
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}.")
        if self.spatial_dims == 3 and (
            self.architecture not in VOLUME_ARCHITECTURES or self.star or self.structure_heads
        ):
            raise ValueError(
                "A 3D model is a plain unet (MONAI BasicUNet), residual_unet (MONAI UNet), segresnet or unetr: STAR, "
                "SBC-AL's modules and the other architectures are 2D; use a 2D preset for them, or a 3D one (unet3d, "
                "resunet3d, segresnet3d, unetr3d, ...)."
            )
        if self.distance_scale not in DISTANCE_SCALES:
            raise ValueError(
                f"distance_scale must be one of {', '.join(DISTANCE_SCALES)}, got {self.distance_scale!r}."
            )
        if self.attention_grid < 1:
            raise ValueError(f"attention_grid must be at least 1, got {self.attention_grid}.")

    def _check_single_width(self) -> None:
        """A segresnet or unetr: one width; a segresnet's a multiple of its norm groups; a unetr's input and ViT."""
        if len(self.features) != 1:
            raise ValueError(f"A {self.architecture} takes one width (features = (n,)), got {self.features}.")
        if self.architecture == "segresnet" and self.features[0] % SEGRESNET_GROUPS:
            raise ValueError(
                f"A segresnet's width must be a multiple of {SEGRESNET_GROUPS} (its group norm), got "
                f"{self.features[0]}."
            )
        if self.architecture != "unetr":
            return
        hidden, _, heads = self.transformer
        if len(self.input_size) != self.spatial_dims or any(n % 16 for n in self.input_size):
            raise ValueError(
                f"A unetr is built for one input size of {self.spatial_dims} multiples of 16 (its ViT's patches), got "
                f"input_size {self.input_size}; set it to the training patch (3D) or slice size (2D)."
            )
        if hidden % heads:
            raise ValueError(f"A unetr's hidden size must divide into its heads; got transformer {self.transformer}.")

    @property
    def num_classes(self) -> int:
        """Foreground classes."""
        return len(self.class_names)

    @property
    def out_channels(self) -> int:
        """Network output channels: background + classes for softmax, one per class for sigmoid."""
        return self.num_classes + (1 if self.head == "softmax" else 0)

    def describe(self) -> str:
        """One line naming the architecture, for error messages."""
        body = (
            f"{self.backbone}-unet"
            if self.architecture == "resnet_unet"
            else f"{self.architecture}{list(self.features)}"
        )
        body = f"3D {body}" if self.spatial_dims == 3 else body
        extras = [name for name, on in (("star", self.star), ("structure heads", self.structure_heads)) if on]
        return body + (f" with {' and '.join(extras)}" if extras else "")

    def same_architecture(self, other: ModelConfig) -> bool:
        """True when weights of one fit the other (classes and slice axis aside)."""
        ignored = {"class_names", "class_colors", "slice_axis", "head"}
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name not in ignored)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        values: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Model configuration has unknown fields {unknown}; was it written by a newer version?")
        for name in ("class_names", "features", "decoder_channels", "input_size", "transformer"):
            if name in values:
                values[name] = tuple(values[name])
        if "class_colors" in values:
            values["class_colors"] = tuple(tuple(color) for color in values["class_colors"])
        return cls(**values)


PRESETS: Registry[ModelConfig] = Registry("preset")


def _preset(name: str, summary: str, config: ModelConfig) -> None:
    PRESETS.register(name, summary)(config)


SMALL_UNET = (16, 32, 64, 128, 256, 16)
PAPER_UNET = (32, 64, 128, 256, 512, 32)

_preset(
    "unet-small",
    "2D U-Net, 16 initial features, 4 down-samplings: the CPU default",
    ModelConfig(features=SMALL_UNET, dropout=0.1),
)
_preset(
    "unet",
    "2D U-Net, 32 initial features, 4 down-samplings (Less Is More)",
    ModelConfig(features=PAPER_UNET, dropout=0.1),
)
_preset(
    "resnet50-unet",
    "U-Net with a ResNet-50 encoder (STAR's backbone, used in the ablations)",
    ModelConfig(architecture="resnet_unet", backbone="resnet50", dropout=0.1),
)
_preset(
    "star-small",
    "unet-small with STAR's spatial aggregation (labeled-slice encoder, key/value)",
    ModelConfig(features=SMALL_UNET, dropout=0.1, star=True),
)
_preset(
    "star",
    "ResNet-50 U-Net with STAR's spatial aggregation network (STAR paper setting)",
    ModelConfig(architecture="resnet_unet", backbone="resnet50", dropout=0.1, star=True),
)
_preset(
    "sbc-small",
    "unet-small with SBC-AL's structure-aware prediction and attentional refinement",
    ModelConfig(features=SMALL_UNET, dropout=0.1, structure_heads=True),
)
_preset(
    "sbc",
    "2D U-Net (32 features) with SBC-AL's structure and boundary modules (SBC-AL paper)",
    ModelConfig(features=PAPER_UNET, dropout=0.1, structure_heads=True),
)

_preset(
    "unet3d-small",
    "3D U-Net (MONAI BasicUNet), 8 initial features, dropout 0.2 in every level: the CPU 3D model",
    ModelConfig(features=(8, 16, 32, 64, 128, 8), dropout=0.2, spatial_dims=3),
)
_preset(
    "unet3d",
    "3D U-Net (MONAI BasicUNet), 32 initial features, dropout 0.2 in every level (Nath et al.'s setting)",
    ModelConfig(features=(32, 32, 64, 128, 256, 32), dropout=0.2, spatial_dims=3),
)

_preset(
    "resunet3d-small",
    "3D U-Net with residual units (MONAI UNet), 8 initial features, dropout 0.2 in every unit: the CPU 3D model",
    ModelConfig(architecture="residual_unet", features=(8, 16, 32, 64, 128), dropout=0.2, spatial_dims=3),
)
_preset(
    "resunet3d",
    "3D U-Net with residual units at every level (MONAI UNet), 16 initial features, dropout 0.2 (Nath et al.)",
    ModelConfig(architecture="residual_unet", features=(16, 32, 64, 128, 256), dropout=0.2, spatial_dims=3),
)

_preset(
    "segresnet3d-small",
    "3D SegResNet (MONAI), 8 initial filters, dropout 0.2 after its first convolution: the CPU SegResNet",
    ModelConfig(architecture="segresnet", features=(8,), dropout=0.2, spatial_dims=3),
)
_preset(
    "segresnet3d",
    "3D SegResNet (MONAI), 16 initial filters, as Myronenko 2019 (the MIDL 2025 study's DBC model)",
    ModelConfig(architecture="segresnet", features=(16,), dropout=0.2, spatial_dims=3),
)
_preset(
    "unetr3d-small",
    "3D UNETR (MONAI), feature size 8, a 12-layer ViT of width 96 (4 heads), 32^3 input: the CPU UNETR (a study sets "
    "the input to its patch)",
    ModelConfig(
        architecture="unetr",
        features=(8,),
        dropout=0.1,
        spatial_dims=3,
        input_size=(32, 32, 32),
        transformer=(96, 384, 4),
    ),
)
_preset(
    "unetr3d",
    "3D UNETR (MONAI), feature size 16, ViT-B (768 wide, 12 heads), 96^3 input, as Hatamizadeh 2022 (the MIDL 2025 "
    "study's ATLAS model; a study sets the input to its patch)",
    ModelConfig(architecture="unetr", features=(16,), dropout=0.1, spatial_dims=3, input_size=(96, 96, 96)),
)

DEFAULT_PRESET = "unet-small"


def preset_config(name: str, **changes: Any) -> ModelConfig:
    """The preset ``name`` with ``changes`` applied (e.g. class_names, head, slice_axis)."""
    return replace(PRESETS.get(name), **changes)
