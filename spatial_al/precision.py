"""Numeric precision of training and inference: which autocast dtype a device runs in.

``auto`` is bfloat16 on CUDA GPUs that support it (Ampere and newer: fp32's range, so no loss scaling and no overflow
in attention logits), float16 with gradient scaling on older CUDA GPUs, and float32 on CPU and MPS. Whatever the
autocast dtype, attention logits and softmax (:func:`~spatial_al.models.star.cross_attention`) and every loss are
computed in float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None runs in float32 (no autocast)."""
    import torch

    check_precision(precision)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` on ``device`` in ``dtype``, or a no-op context for float32."""
    import torch

    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@cache
def cpu_bfloat16_conv3d_weight_gradients_are_wrong() -> bool:
    """Whether this torch computes wrong bfloat16 weight gradients for 3D convolutions on the CPU, measured once
    against float32.

    torch 2.13's oneDNN does, when a batch of two or more passes through a feature map two slices deep with 16 or
    more channels (the bottleneck of a 3D U-Net on 32-slice patches): errors as large as the gradient, or 1e36.
    The probe is that case, (2, 16, 2, 8, 8), and fails on a relative error above 5 % (bfloat16 rounding gives 0.4 %).
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 2, 8, 8, generator=generator)
    upstream = torch.randn(2, 16, 2, 8, 8, generator=generator)
    weight = torch.randn(16, 16, 3, 3, 3, generator=generator)
    reference = torch.nn.grad.conv3d_weight(features, weight.shape, upstream, padding=1)
    for _ in range(3):  # the wrong results vary from call to call
        weight_bf16 = weight.bfloat16().requires_grad_()
        torch.nn.functional.conv3d(features.bfloat16(), weight_bf16, padding=1).backward(upstream.bfloat16())
        error = (weight_bf16.grad.float() - reference).abs().max() / reference.abs().max()
        if not error <= 0.05:  # NaN too
            return True
    return False
