"""Pick the torch device once (``auto``: CUDA, then Apple MPS, then CPU) and pass it down; never hard-code one."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device called ``name`` ("auto", "cpu", "cuda", "cuda:1", "mps"), checked to exist on this machine.

    Raises:
        ValueError: the device is not available here (the message says which are).
    """
    import torch

    if isinstance(name, torch.device):
        return name
    mps_available = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps_available}
    if not available.get(device.type, False):
        present = ", ".join(kind for kind, present in available.items() if present)
        raise ValueError(f"Device {name!r} is not available on this machine (available: {present}); use --device auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"Device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA devices.")
    return device
