"""Numeric precision of training and inference: which autocast dtype a device runs in.

``auto`` is bfloat16 on CUDA GPUs that support it (Ampere and newer: fp32's range, so no loss scaling and no overflow
in attention logits), float16 with gradient scaling on older CUDA GPUs, and float32 on CPU and MPS. Whatever the
autocast dtype, attention logits and softmax (:func:`~spatial_al.models.star.cross_attention`) and every loss are
computed in float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
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
