"""ImageNet weights for the ResNet-50 encoder, from a file the user has (nothing is downloaded).

STAR initialises its ResNet-50 encoder from ImageNet. torchvision (``resnet50-0676ba61.pth``, ...) and timm
(``pytorch_model.bin`` / ``model.safetensors`` of ``timm/resnet50.*``) publish state dicts with the same tensor names as
MONAI's ``ResNetEncoder`` (conv1, bn1, layer1..layer4), so one loader reads both. The RGB first convolution becomes a
single-channel one by summing over its input channels (what timm's ``adapt_input_conv`` does for one channel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# File names torchvision's hub cache uses for its ImageNet ResNet-50 weights (V2, V1, legacy).
TORCHVISION_RESNET50 = ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth", "resnet50-19c8e357.pth")
WRAPPER_KEYS = ("state_dict", "model", "module")
KEY_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


def cached_resnet50_weights(hub_dir: str | Path | None = None) -> Path | None:
    """An ImageNet ResNet-50 state dict already on this machine: torchvision's files in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``), then timm's in the Hugging Face cache; None when there is none."""
    hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir())
    for name in TORCHVISION_RESNET50:
        if (hub / "checkpoints" / name).is_file():
            return hub / "checkpoints" / name
    huggingface = Path.home() / ".cache" / "huggingface" / "hub"
    for pattern in (
        "models--timm--resnet50*/snapshots/*/model.safetensors",
        "models--timm--resnet50*/snapshots/*/pytorch_model.bin",
    ):
        found = sorted(huggingface.glob(pattern))
        if found:
            return found[-1]
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` / ``.bin`` (read with ``weights_only=True``) or ``.safetensors`` file, unwrapped from a
    training checkpoint's "state_dict" / "model" entry and stripped of "module." / "model." prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ResNet-50 weights at {str(path)!r}; give the path of a torchvision or timm file.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{str(path)!r} is a .safetensors file: pip install safetensors to read it.") from None
        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for foreign or pickled files
            raise ValueError(
                f"{str(path)!r} is not a state dict torch can read safely ({type(error).__name__})."
            ) from None
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in WRAPPER_KEYS:
        state = next(iter(state.values()))
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds no state dict.")
    tensors = {}
    for name, tensor in state.items():
        for prefix in KEY_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        tensors[name] = tensor
    return tensors


def adapt_first_convolution(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB first convolution (out, 3, k, k) for ``in_channels`` inputs: summed for one channel, tiled and scaled
    by 3 / in_channels otherwise (the response to a grey image is kept)."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_imagenet_encoder(model, path: str | Path) -> dict[str, Any]:
    """Load ImageNet ResNet-50 weights into ``model``'s encoder (f_U; STAR's f_L starts as a copy of it).

    Args:
        model: a :class:`~spatial_al.models.SegmentationModel` with a ResNet-50 encoder.
        path: a torchvision- or timm-format ResNet-50 state dict.

    Returns:
        What was loaded, for the run record: path, tensors loaded, whether the first convolution was adapted.

    Raises:
        ValueError: the model has no ResNet-50 encoder, or the file is not a ResNet-50 state dict (names the
            missing or misshapen tensors).
    """
    config = model.config
    if config.architecture != "resnet_unet" or config.backbone != "resnet50":
        raise ValueError(
            f"ImageNet ResNet-50 weights fit a ResNet-50 encoder, not this {config.describe()} model; use the "
            "resnet50-unet or star preset, or drop the encoder weights."
        )
    source = read_state_dict(path)
    encoder = model.backbone.encoder
    own = encoder.state_dict()
    loaded, misshapen = {}, []
    for name, tensor in own.items():
        if name not in source:
            continue
        value = source[name]
        if name == "conv1.weight":
            value = adapt_first_convolution(value, tensor.shape[1])
        if value.shape != tensor.shape:
            misshapen.append(f"{name} {tuple(value.shape)} vs {tuple(tensor.shape)}")
            continue
        loaded[name] = value.to(tensor.dtype)
    missing = [name for name in own if name not in loaded and not name.endswith("num_batches_tracked")]
    if missing or misshapen:
        problems = (misshapen + missing)[:3]
        raise ValueError(
            f"{str(path)!r} is not an ImageNet ResNet-50 state dict for this encoder: {len(missing)} tensors missing "
            f"and {len(misshapen)} misshapen (e.g. {', '.join(problems)})."
        )
    encoder.load_state_dict(loaded, strict=False)
    return {
        "source": str(path),
        "tensors": len(loaded),
        "first_convolution": "summed over RGB"
        if source["conv1.weight"].shape[1] != own["conv1.weight"].shape[1]
        else "as is",
    }
