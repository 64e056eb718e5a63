"""ImageNet ResNet-50 weights in torchvision or timm format, from a file the test writes (nothing is downloaded)."""

import pytest
import torch

from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.pretrained import cached_resnet50_weights, load_imagenet_encoder


@pytest.fixture(scope="module")
def resnet_model():
    return SegmentationModel(
        preset_config("resnet50-unet", class_names=("organ",), decoder_channels=(32, 16, 16, 8, 8))
    )


def imagenet_like_state(model, seed=0):
    """A torchvision-format ResNet-50 state dict: the encoder's tensor names, an RGB first convolution, a 1000-class
    fc head; random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(t.shape, generator=generator) for name, t in model.backbone.encoder.state_dict().items()}
    state["conv1.weight"] = torch.randn((64, 3, 7, 7), generator=generator)
    state["fc.weight"], state["fc.bias"] = torch.randn((1000, 2048)), torch.randn(1000)
    return state


@pytest.mark.parametrize("wrapping", ["torchvision", "training checkpoint"])
def test_imagenet_weights_load_into_the_encoder_with_the_rgb_convolution_summed(resnet_model, tmp_path, wrapping):
    state = imagenet_like_state(resnet_model)
    saved = state if wrapping == "torchvision" else {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save(saved, path)
    record = load_imagenet_encoder(resnet_model, path)
    loaded = resnet_model.backbone.encoder.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(loaded["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    assert record["first_convolution"] == "summed over RGB" and record["source"] == str(path)
    assert cached_resnet50_weights(tmp_path / "hub") is None
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / path.name).write_bytes(path.read_bytes())
    assert cached_resnet50_weights(tmp_path / "hub") == tmp_path / "hub" / "checkpoints" / path.name


def test_other_files_and_models_are_refused_naming_the_problem(resnet_model, tmp_path):
    state = imagenet_like_state(resnet_model)
    del state["layer3.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="1 tensors missing"):
        load_imagenet_encoder(resnet_model, tmp_path / "partial.pth")
    with pytest.raises(FileNotFoundError, match="No ResNet-50 weights"):
        load_imagenet_encoder(resnet_model, tmp_path / "absent.pth")
    unet = SegmentationModel(preset_config("unet-small", class_names=("organ",)))
    with pytest.raises(ValueError, match="fit a ResNet-50 encoder"):
        load_imagenet_encoder(unet, tmp_path / "partial.pth")
