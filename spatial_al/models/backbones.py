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

RESIDUAL_UNITS = 2  # per block of a residual_unet (MONAI's UNet num_res_units)


class BasicUNetEncoder(nn.Module):
    """Encoder blocks run in order (``conv_0`` and ``down_1..4`` of a MONAI ``BasicUNet``); returns every block's
    output, [x0, x1, x2, x3, x4]."""

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


class ResidualUNetDecoder(nn.Module):
    """The up-sampling path of a MONAI ``UNet`` (residual units) without its top layer: each level's up layer reads
    its encoder level concatenated with the level below (MONAI's ``SkipConnection``: input first); returns
    [x0, up_1(...)] concatenated, the input of the top layer (the head, which up-samples it to the input's
    resolution): (B, 2 x features[0], H / 2, W / 2), half the resolution the other decoders give."""

    def __init__(self, up_layers: list[nn.Module]):
        super().__init__()
        self.up_layers = nn.ModuleList(up_layers)  # deepest first, the top layer excluded

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for layer, skip in zip(self.up_layers, reversed(features[1:-1]), strict=True):
            x = layer(torch.cat([skip, x], dim=1))
        return torch.cat([features[0], x], dim=1)


def residual_unet_levels(unet: nn.Module) -> tuple[list[nn.Module], list[nn.Module], nn.Module]:
    """(down layers and the bottom layer, finest first; up layers below the top, deepest first; the top up layer)
    of a MONAI ``UNet``, whose ``model`` nests Sequential(down, SkipConnection(level below), up) per level."""
    downs, ups, level = [], [], unet.model
    while True:
        down, skip, up = level
        downs.append(down)
        ups.append(up)
        level = skip.submodule
        if not (isinstance(level, nn.Sequential) and len(level) == 3):
            return [*downs, level], ups[:0:-1], ups[0]


class UNetPlusPlusDecoder(nn.Module):
    """The nested dense skip pathways of a MONAI ``BasicUNetPlusPlus`` (``upcat_i_j``), computed as its ``forward``
    does from the encoder levels [x_0_0 .. x_4_0]; returns x_0_4, the input of its last output head."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleDict({name: getattr(unet, f"upcat_{name}") for name in NESTED_NODES})

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        nodes = {(level, 0): x for level, x in enumerate(features)}  # (level, column) -> x_level_column
        for name in NESTED_NODES:
            level, column = map(int, name.split("_"))
            skips = torch.cat([nodes[level, c] for c in range(column)], dim=1)
            nodes[level, column] = self.blocks[name](nodes[level + 1, column - 1], skips)
        return nodes[0, 4]


# BasicUNetPlusPlus's nodes x_i_j (j >= 1) in the order its forward computes them: each needs x_(i+1)_(j-1)
NESTED_NODES = ("0_1", "1_1", "0_2", "2_1", "1_2", "0_3", "3_1", "2_2", "1_3", "0_4")


def attention_unet_levels(unet: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The encoder blocks (finest first, the bottleneck last) and the ``AttentionLayer``s (finest first) of a MONAI
    ``AttentionUnet``, which is built recursively: its head, then nested layers whose ``submodule`` starts with the next
    level's strided ``ConvBlock`` (the bottom layer's ``submodule`` is the bottleneck block itself)."""
    head, layer, _ = unet.model
    blocks, layers = [head], [layer]
    while isinstance(layer.submodule, nn.Sequential):
        blocks.append(layer.submodule[0])
        layer = layer.submodule[1]
        layers.append(layer)
    blocks.append(layer.submodule)
    return blocks, layers


class AttentionUNetDecoder(nn.Module):
    """The ``AttentionLayer``s of a MONAI ``AttentionUnet`` from the bottom up: each up-samples the level below, gates
    its skip with the attention block and merges the two, as ``AttentionLayer.forward`` does."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for layer, skip in zip(reversed(self.layers), reversed(features[:-1]), strict=True):
            from_lower = layer.upconv(x)
            x = layer.merge(torch.cat([layer.attention(g=from_lower, x=skip), from_lower], dim=1))
        return x


def segresnet_encoder(network: nn.Module) -> BasicUNetEncoder:
    """MONAI ``SegResNet.encode`` as blocks run in order: the initial convolution (then its dropout, when set) joined
    to the first down layer, then the other down layers; returns every down layer's output, finest first."""
    dropout = network.dropout if network.dropout_prob is not None else nn.Identity()
    first, *others = network.down_layers
    return BasicUNetEncoder([nn.Sequential(network.convInit, dropout, first), *others])


class SegResNetDecoder(nn.Module):
    """MONAI ``SegResNet.decode`` without its final convolution (the head): each up-sampling is added to the next
    finer level, then its residual blocks run."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.up_samples = network.up_samples
        self.up_layers = network.up_layers

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up_sample, layer, skip in zip(self.up_samples, self.up_layers, reversed(features[:-1]), strict=True):
            x = layer(up_sample(x) + skip)
        return x


class UNETREncoder(nn.Module):
    """MONAI ``UNETR``'s encoder half: its ViT, the convolutional skip of the input and the skips made from the 3rd,
    6th and 9th transformer layers; returns [enc1 (full), enc2 (1/2), enc3 (1/4), enc4 (1/8), the last layer's
    tokens as a 1/16 grid], as ``UNETR.forward`` computes them."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.vit = network.vit
        self.skips = nn.ModuleList([network.encoder1, network.encoder2, network.encoder3, network.encoder4])
        self.grid_shape = list(network.proj_view_shape)  # (*patch grid, hidden) and the permutation to channels first
        self.grid_axes = tuple(network.proj_axes)

    def token_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, hidden) as a feature map (B, hidden, *patch grid) (``UNETR.proj_feat``)."""
        return tokens.view([tokens.size(0), *self.grid_shape]).permute(self.grid_axes).contiguous()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens, hidden = self.vit(x)
        first, *from_layers = self.skips
        layers = zip(from_layers, (3, 6, 9), strict=True)
        skips = [first(x)] + [skip(self.token_grid(hidden[layer])) for skip, layer in layers]
        return [*skips, self.token_grid(tokens)]


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
    from monai.networks.nets import AttentionUnet, BasicUNet, BasicUNetPlusPlus, FlexibleUNet, UNet

    if config.architecture in ("segresnet", "unetr"):
        return build_single_width_backbone(config)
    widths = tuple(config.features[:5])
    if config.architecture == "unet_plus_plus":
        unet = BasicUNetPlusPlus(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            features=config.features,
            dropout=config.dropout,
        )
        encoder = BasicUNetEncoder([unet.conv_0_0, unet.conv_1_0, unet.conv_2_0, unet.conv_3_0, unet.conv_4_0])
        return EncoderDecoder(encoder, UNetPlusPlusDecoder(unet), unet.final_conv_0_4, widths, config.features[5], 16)
    if config.architecture == "attention_unet":
        unet = AttentionUnet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            channels=widths,
            strides=(2, 2, 2, 2),
            dropout=config.dropout,
        )
        blocks, layers = attention_unet_levels(unet)
        encoder, decoder = BasicUNetEncoder(blocks), AttentionUNetDecoder(layers)
        return EncoderDecoder(encoder, decoder, unet.model[2], widths, widths[0], 16)
    if config.architecture == "residual_unet":
        # Nath et al.'s U-Net "with residual blocks at every level": MONAI's UNet with two residual units per block,
        # dropout in every unit (MC-dropout samples encoder and decoder)
        unet = UNet(
            spatial_dims=config.spatial_dims,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            channels=config.features,
            strides=(2,) * (len(config.features) - 1),
            num_res_units=RESIDUAL_UNITS,
            dropout=config.dropout,
        )
        blocks, up_layers, top = residual_unet_levels(unet)
        decoder = ResidualUNetDecoder(up_layers)
        return EncoderDecoder(BasicUNetEncoder(blocks), decoder, top, widths, 2 * config.features[0], 16)
    if config.architecture == "unet":
        unet = BasicUNet(
            spatial_dims=config.spatial_dims,
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


def build_single_width_backbone(config: ModelConfig) -> EncoderDecoder:
    """A segresnet or unetr of ``config`` (2D or 3D) as encoder, decoder and head."""
    from monai.networks.nets import UNETR, SegResNet

    width = config.features[0]
    if config.architecture == "segresnet":
        network = SegResNet(
            spatial_dims=config.spatial_dims,
            init_filters=width,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            dropout_prob=config.dropout or None,
        )
        widths = tuple(width * 2**level for level in range(len(network.blocks_down)))
        encoder, decoder = segresnet_encoder(network), SegResNetDecoder(network)
        return EncoderDecoder(encoder, decoder, network.conv_final, widths, width, 2 ** (len(widths) - 1))
    hidden, mlp, heads = config.transformer
    network = UNETR(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        img_size=config.input_size,
        feature_size=width,
        hidden_size=hidden,
        mlp_dim=mlp,
        num_heads=heads,
        dropout_rate=config.dropout,
        spatial_dims=config.spatial_dims,
    )
    decoder = BasicUNetDecoder([network.decoder5, network.decoder4, network.decoder3, network.decoder2])
    widths = (width, 2 * width, 4 * width, 8 * width, hidden)
    return EncoderDecoder(UNETREncoder(network), decoder, network.out, widths, width, 16)


def first_convolution(module: nn.Module) -> nn.Conv2d:
    """The first ``Conv2d`` applied to the input of ``module`` (registration order of MONAI's blocks)."""
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            return child
    raise ValueError(f"{type(module).__name__} has no Conv2d.")
