"""Networks: MONAI's blocks regrouped unchanged, output shapes, STAR's aggregation, SBC-AL's modules."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.star import cross_attention

CLASSES = ("liver", "spleen")


def tiny_model(preset="unet-small", seed=0, **changes):
    torch.manual_seed(seed)
    changes.setdefault("class_names", CLASSES)
    if preset_config(preset).architecture == "unet":
        changes.setdefault("features", TINY_UNET)
    else:
        changes.setdefault("backbone", "resnet10")
        changes.setdefault("decoder_channels", (32, 16, 16, 8, 8))
    return SegmentationModel(preset_config(preset, **changes))


def regrouped_and_original(config, build_original):
    """Our model of ``config`` and MONAI's network from ``build_original()``, built from the same seed (so with the
    same initial weights), both in eval mode."""
    torch.manual_seed(0)
    model = SegmentationModel(config).eval()
    torch.manual_seed(0)
    return model, build_original().eval()


def test_split_unet_computes_what_monai_basic_unet_computes():
    from monai.networks.nets import BasicUNet

    torch.manual_seed(3)
    reference = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=TINY_UNET, dropout=0.1).eval()
    model = tiny_model(seed=3, dropout=0.1).eval()
    x = torch.randn(2, 1, 32, 48)
    assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_split_resnet_unet_computes_what_monai_flexible_unet_computes():
    from monai.networks.nets import FlexibleUNet

    torch.manual_seed(3)
    reference = FlexibleUNet(1, 3, "resnet10", decoder_channels=(32, 16, 16, 8, 8), spatial_dims=2).eval()
    model = tiny_model("resnet50-unet", seed=3, dropout=0.0).eval()
    x = torch.randn(2, 1, 64, 64)
    assert torch.allclose(model(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("preset", ["unet-small", "resnet50-unet", "star-small", "sbc-small"])
@pytest.mark.parametrize(("head", "channels"), [("softmax", 3), ("sigmoid", 2)])
def test_output_and_bottleneck_shapes(preset, head, channels):
    model = tiny_model(preset, head=head).eval()
    x = torch.randn(2, 1, 64, 96)
    assert model(x).shape == (2, channels, 64, 96)
    divisor = model.size_divisor
    width = model.backbone.bottleneck_width
    assert model.bottleneck_features(x).shape == (2, width, 64 // divisor, 96 // divisor)


def test_cross_attention_matches_an_explicit_softmax_over_all_labeled_positions():
    torch.manual_seed(0)
    query, keys, values = torch.randn(1, 4, 2, 3), torch.randn(1, 2, 4, 2, 3), torch.randn(1, 2, 5, 2, 3)
    readout, attention = cross_attention(query, keys, values)
    position = (1, 2)  # one query position, computed by hand
    q = query[0, :, position[0], position[1]]
    scores = torch.stack([q @ keys[0, n, :, i, j] for n in range(2) for i in range(2) for j in range(3)]) / 2.0
    weights = scores.softmax(0)
    expected = sum(w * values[0, n, :, i, j] for w, (n, i, j) in zip(weights, _positions(2, 2, 3), strict=True))
    assert torch.allclose(readout[0, :, position[0], position[1]], expected, atol=1e-6)
    assert torch.allclose(attention[0, position[0] * 3 + position[1]].flatten(), weights, atol=1e-6)


def _positions(n, h, w):
    return [(a, b, c) for a in range(n) for b in range(h) for c in range(w)]


def test_star_attention_sums_to_one_over_labeled_positions_and_skips_padding():
    model = tiny_model("star-small").eval()
    unlabeled = torch.randn(2, 1, 32, 32)
    labeled = torch.randn(2, 2, 1, 32, 32)
    labels = torch.rand(2, 2, 3, 32, 32)
    mask = torch.tensor([[True, False], [True, True]])
    outputs = model.propagate(unlabeled, labeled, labels, mask)
    assert outputs.logits.shape == (2, 3, 32, 32)
    assert outputs.attention.shape == (2, 4, 2, 2, 2)  # 2x2 bottleneck positions, 2 labeled slices of 2x2
    assert torch.allclose(outputs.attention.sum(dim=(2, 3, 4)), torch.ones(2, 4), atol=1e-6)
    assert outputs.attention[0, :, 1].abs().max() == 0  # the padding slice gets no attention
    assert outputs.attention[1, :, 1].sum() > 0


def test_labeled_encoder_starts_as_the_unlabeled_encoder_with_label_weights_zero():
    model = tiny_model("star-small").eval()
    image = torch.randn(3, 1, 32, 32)
    label = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        for parameter in model.backbone.encoder.parameters():
            parameter.add_(0.01)  # as if stage 1 had trained f_U
        model.star.initialize_labeled_encoder(model.backbone.encoder)
        unlabeled_features = model.encode(image)
        labeled_features = model.star.labeled_encoder(torch.cat([image, label], 1))
    for mine, theirs in zip(unlabeled_features, labeled_features, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert not bool(model.star.labeled_encoder_trained)


def test_structure_heads_give_coarse_refined_and_bounded_distance_maps():
    model = tiny_model("sbc-small").eval()
    with torch.no_grad():
        outputs = model.structure_outputs(torch.randn(2, 1, 32, 32))
        assert torch.equal(model(torch.zeros(1, 1, 32, 32)), model.structure_outputs(torch.zeros(1, 1, 32, 32)).refined)
    assert outputs.coarse.shape == outputs.refined.shape == (2, 3, 32, 32)
    assert outputs.distance.shape == (2, 2, 32, 32)
    assert float(outputs.distance.min()) >= 0 and float(outputs.distance.max()) <= 1


@pytest.mark.parametrize("architecture", ["unet_plus_plus", "attention_unet"])
def test_unet_plus_plus_and_attention_unet_regroup_monais_networks_without_changing_them(architecture):
    from monai.networks.nets import AttentionUnet, BasicUNetPlusPlus

    from spatial_al.models.backbones import build_backbone

    config = preset_config("unet-small", class_names=CLASSES, features=TINY_UNET, architecture=architecture)
    torch.manual_seed(0)
    regrouped = build_backbone(config).eval()
    torch.manual_seed(0)  # the same construction, so the same initial weights
    if architecture == "unet_plus_plus":
        original = BasicUNetPlusPlus(2, 1, 3, features=TINY_UNET, dropout=config.dropout).eval()
    else:
        original = AttentionUnet(2, 1, 3, channels=TINY_UNET[:5], strides=(2, 2, 2, 2), dropout=config.dropout).eval()
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = original(images)
        features = regrouped.encoder(images)
        logits = regrouped(images)
    expected = expected[0] if architecture == "unet_plus_plus" else expected
    assert torch.allclose(logits, expected, atol=1e-6)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]
    assert [f.shape[1] for f in features] == list(regrouped.encoder_widths)
    with torch.no_grad():  # SBC-AL's modules sit on either backbone
        outputs = tiny_model("sbc-small", architecture=architecture).eval().structure_outputs(images)
    assert outputs.refined.shape == (2, 3, 32, 32) and outputs.distance.shape == (2, 2, 32, 32)


@pytest.mark.parametrize(("spatial_dims", "shape"), [(3, (1, 1, 16, 32, 48)), (2, (2, 1, 32, 48))])
def test_residual_unet_regroups_monais_unet_with_residual_units_without_changing_it(spatial_dims, shape):
    from monai.networks.nets import UNet

    config = preset_config("resunet3d-small", class_names=CLASSES, spatial_dims=spatial_dims)
    model, original = regrouped_and_original(
        config,
        lambda: UNet(spatial_dims, 1, 3, channels=config.features, strides=(2,) * 4, num_res_units=2, dropout=0.2),
    )
    images = torch.randn(shape)
    with torch.no_grad():
        features = model.encode(images)
        assert torch.allclose(model(images), original(images), atol=1e-6)
    assert [f.shape[1] for f in features] == list(config.features)
    assert [f.shape[-1] for f in features] == [24, 12, 6, 3, 3]  # the bottom unit keeps its input's size
    dropout = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropout) > 10 and model.encoder_has_dropout  # every residual unit samples under MC dropout
    with pytest.raises(ValueError, match="5 level widths"):
        preset_config("resunet3d-small", features=TINY_UNET)
    with pytest.raises(ValueError, match="does not have"):
        preset_config("resunet3d-small", spatial_dims=2, star=True)


def test_architecture_and_encoder_names_monai_lacks_are_refused_with_the_closest_one():
    with pytest.raises(ValueError, match="did you mean 'attention_unet'"):
        preset_config("unet-small", architecture="attention-unet")
    with pytest.raises(ValueError, match="FlexibleUNet has no encoder 'resnet51'; did you mean 'resnet50'"):
        preset_config("resnet50-unet", backbone="resnet51")


def test_sfp_cascades_four_disblocks_from_the_bottleneck_to_the_finest_encoder_level():
    model = tiny_model("sbc-small").eval()
    assert len(model.structure.blocks) == 4
    images = torch.randn(2, 1, 32, 32)
    sizes = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape)) for block in model.structure.blocks
    ]
    with torch.no_grad():
        features = model.encode(images)
        model.structure_outputs(images)
    for hook in hooks:
        hook.remove()
    # block k fuses encoder level 3 - k: 4 x 4 (after the 2 x 2 bottleneck) up to the full 32 x 32
    assert [tuple(size) for size in sizes] == [tuple(level.shape) for level in features[-2::-1]]

    # one DisBlock against a direct computation: with its convolutions taken out, it is the coarser map up-sampled x2
    # (bilinear, half-pixel centres) beside the skip
    block = model.structure.blocks[0]
    coarser, skip = features[-1], features[-2]
    fuse = block.fuse
    block.fuse = torch.nn.Identity()
    try:
        fused = block(coarser, skip)
    finally:
        block.fuse = fuse
    upsampled = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)(coarser)
    assert torch.allclose(fused, torch.cat([upsampled, skip], 1))


def test_asr_attention_equals_a_direct_softmax_weighted_sum_over_positions():
    torch.manual_seed(1)
    model = tiny_model("sbc-small", attention_grid=4).eval()
    attention = model.structure.attention
    guide, values = torch.randn(1, 8, 8, 8), torch.randn(1, 5, 8, 8)
    with torch.no_grad():
        result = attention(guide, values)
        pooled_guide = torch.nn.functional.avg_pool2d(guide, 2)  # 8 x 8 -> the 4 x 4 grid
        query = attention.query(pooled_guide)[0].flatten(1).T.numpy()  # (16 positions, K)
        key = attention.key(pooled_guide)[0].flatten(1).T.numpy()
    pooled_values = torch.nn.functional.avg_pool2d(values, 2)[0].flatten(1).T.numpy()  # (16, 5)
    expected = np.zeros_like(pooled_values)
    for n in range(16):
        logits = np.array([query[n] @ key[m] for m in range(16)], dtype=np.float64)
        weights = np.exp(logits - logits.max())
        expected[n] = (weights / weights.sum()) @ pooled_values
    expected_map = torch.from_numpy(expected.T.reshape(1, 5, 4, 4)).float()
    upsampled = torch.nn.functional.interpolate(expected_map, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(result, upsampled, atol=1e-5)


def test_the_papers_ablations_drop_sfp_or_asr():
    images = torch.randn(1, 1, 32, 32)
    without_sfp = tiny_model("sbc-small", structure_prediction=False).eval()
    without_asr = tiny_model("sbc-small", attentional_refinement=False).eval()
    with torch.no_grad():
        no_sfp, no_asr = without_sfp.structure_outputs(images), without_asr.structure_outputs(images)
    assert no_sfp.distance is None and without_sfp.structure.blocks is None
    assert no_sfp.refined.shape == no_sfp.coarse.shape and not torch.equal(no_sfp.refined, no_sfp.coarse)
    assert no_asr.refined is no_asr.coarse and no_asr.distance.shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="plain preset"):
        tiny_model("sbc-small", structure_prediction=False, attentional_refinement=False)
    with pytest.raises(ValueError, match="between 1 and 4"):
        tiny_model("sbc-small", distance_blocks=5)


@pytest.mark.parametrize("fusion", ["addition", "concatenation"])
def test_table_3s_asr_a_and_c_combine_the_sfp_features_with_the_decoders_before_the_classifier(fusion):
    torch.manual_seed(2)
    model = tiny_model("sbc-small", refinement_fusion=fusion).eval()
    images = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        outputs = model.structure_outputs(images)
        features = model.encode(images)
        decoded = model.backbone.decoder(features)
        guide = model.structure.structure_features(features)  # SFP's last DisBlock
        heads = model.structure
        if fusion == "addition":
            combined = decoded + heads.projection[1](heads.projection[0](guide))
        else:
            combined = torch.cat([decoded, guide], dim=1)
        expected = torch.nn.functional.conv2d(combined, heads.classifier.weight, heads.classifier.bias)
    assert heads.attention is None and outputs.distance.shape == (1, 2, 32, 32)
    assert torch.allclose(outputs.refined, expected, atol=1e-5)
    assert not torch.allclose(outputs.refined, outputs.coarse)  # the BCS of the query compares the two
    trained = {id(p) for p in heads.parameter_groups()["refinement"].parameters()}
    assert {id(p) for p in heads.classifier.parameters()} <= trained
    with pytest.raises(ValueError, match="attention, addition, concatenation"):
        tiny_model("sbc-small", refinement_fusion="sum")


def test_models_without_the_modules_say_which_preset_has_them():
    model = tiny_model()
    with pytest.raises(ValueError, match="star-small"):
        model.propagate(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 1, 32, 32), torch.zeros(1, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="sbc-small"):
        model.structure_outputs(torch.zeros(1, 1, 32, 32))


def test_config_round_trips_through_json_and_rejects_bad_values():
    config = preset_config("star", class_names=CLASSES, class_colors=((1.0, 0, 0), (0, 1.0, 0)), slice_axis=2)
    assert type(config).from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="softmax"):
        preset_config("unet", head="softmax2")
    with pytest.raises(ValueError, match="6 feature widths"):
        preset_config("unet", features=(8, 16))
    assert math.isclose(preset_config("unet").features[0], 32)


@pytest.mark.parametrize(("spatial_dims", "shape"), [(3, (1, 1, 16, 32, 24)), (2, (2, 1, 32, 48))])
def test_segresnet_regroups_monais_segresnet_without_changing_it(spatial_dims, shape):
    from monai.networks.nets import SegResNet

    config = preset_config("segresnet3d-small", class_names=CLASSES, spatial_dims=spatial_dims)
    model, original = regrouped_and_original(
        config, lambda: SegResNet(spatial_dims, init_filters=8, in_channels=1, out_channels=3, dropout_prob=0.2)
    )
    images = torch.randn(shape)
    with torch.no_grad():
        features = model.encode(images)
        assert torch.allclose(model(images), original(images), atol=1e-6)
    assert [f.shape[1] for f in features] == [8, 16, 32, 64] == list(model.backbone.encoder_widths)
    assert [f.shape[-1] for f in features] == [shape[-1] // 2**level for level in range(4)]
    assert model.size_divisor == 8 and model.encoder_has_dropout  # its one dropout, after the first convolution
    with pytest.raises(ValueError, match="multiple of 8"):
        preset_config("segresnet3d-small", features=(12,))
    with pytest.raises(ValueError, match="one width"):
        preset_config("segresnet3d-small", features=(8, 16))


@pytest.mark.parametrize(("spatial_dims", "size"), [(3, (16, 32, 48)), (2, (32, 48))])
def test_unetr_regroups_monais_unetr_without_changing_it(spatial_dims, size):
    from monai.networks.nets import UNETR

    config = preset_config(
        "unetr3d-small", class_names=CLASSES, spatial_dims=spatial_dims, input_size=size, transformer=(32, 64, 4)
    )
    model, original = regrouped_and_original(
        config,
        lambda: UNETR(1, 3, size, feature_size=8, hidden_size=32, mlp_dim=64, num_heads=4, dropout_rate=0.1,
                      spatial_dims=spatial_dims),
    )  # fmt: skip
    images = torch.randn(2, 1, *size)
    with torch.no_grad():
        features = model.encode(images)
        assert torch.allclose(model(images), original(images), atol=1e-5)
    assert [f.shape[1] for f in features] == [8, 16, 32, 64, 32] == list(model.backbone.encoder_widths)
    assert [f.shape[-1] for f in features] == [size[-1] // 2**level for level in range(5)]
    # the same weights under both names: state_dicts hold the same tensors
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.parameters())
    with pytest.raises(ValueError, match="multiples of 16"):
        preset_config("unetr3d-small", input_size=(24, 32, 32))
    with pytest.raises(ValueError, match="unet, unet_plus_plus"):
        preset_config("unetr3d-small", spatial_dims=2, input_size=(32, 32), star=True)
