"""Segmentation losses with an ignore mask and per-sample weights, built on MONAI's losses.

Shapes: logits (B, out_channels, H, W); targets multi-hot (B, S, H, W) over the S foreground classes (for a
softmax head the background channel is added here); mask (B, 1, H, W), 1 where a pixel is supervised; weights
(B,), e.g. lower for pseudo-labeled slices. MONAI's losses reduce over the batch or not at all, and none of
them take an ignore mask, so the reduction (masked mean per sample, then weighted mean over samples) is done here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)

from ..models.inference import activation, most_likely_class, pixel_entropy
from ..registry import Registry

LOSSES: Registry[Callable] = Registry("loss")


def with_background(target: torch.Tensor) -> torch.Tensor:
    """(B, S, H, W) multi-hot of exclusive classes -> (B, S + 1, H, W) one-hot with background first."""
    background = 1.0 - target.sum(dim=1, keepdim=True).clamp(max=1.0)
    return torch.cat([background, target], dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, H, W) ``values`` over the pixels where (B, 1, H, W) ``mask`` is 1, per sample -> (B,)."""
    mask = mask[:, 0].to(values.dtype)
    return (values * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)


@LOSSES.register("focal")
def focal_loss(logits, target, mask, *, head: str, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (gamma 2 in STAR, 5 in Less Is More), per sample."""
    from monai.losses import FocalLoss

    softmax = head == "softmax"
    dense = with_background(target) if softmax else target
    per_pixel = FocalLoss(gamma=gamma, use_softmax=softmax, reduction="none")(logits.float(), dense)
    return masked_mean(per_pixel.sum(1) if softmax else per_pixel.mean(1), mask)


@LOSSES.register("ce")
def cross_entropy_loss(logits, target, mask, *, head: str, class_weights=None) -> torch.Tensor:
    """Cross-entropy over the classes (softmax head), per sample; with ``class_weights`` (one per output channel,
    background first) each pixel weighs its true class's weight and a sample's loss is the weighted mean over its
    supervised pixels, as torch's weighted ``CrossEntropyLoss`` averages."""
    classes = most_likely_class(with_background(target))
    if class_weights is None:
        return masked_mean(F.cross_entropy(logits.float(), classes, reduction="none"), mask)
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    per_pixel = F.cross_entropy(logits.float(), classes, weight=weights, reduction="none")  # w_y * loss
    return masked_mean(per_pixel, mask) / masked_mean(weights[classes], mask).clamp(min=1e-12)


@LOSSES.register("bce")
def binary_cross_entropy_loss(logits, target, mask, *, head: str) -> torch.Tensor:
    """Binary cross-entropy per class channel (sigmoid head), per sample."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return masked_mean(per_pixel.mean(1), mask)


def dice_loss(logits, target, mask, *, head: str) -> torch.Tensor:
    """Soft Dice over the foreground classes on the supervised pixels, per sample (MONAI DiceLoss)."""
    from monai.losses import DiceLoss

    softmax = head == "softmax"
    probabilities = logits.float().softmax(1) if softmax else torch.sigmoid(logits.float())
    dense = with_background(target) if softmax else target.float()
    weight = mask.to(probabilities.dtype)
    per_class = DiceLoss(include_background=not softmax, reduction="none")(probabilities * weight, dense * weight)
    return per_class.flatten(1).mean(1)


@LOSSES.register("dice_ce")
def dice_cross_entropy_loss(logits, target, mask, *, head: str) -> torch.Tensor:
    """Soft Dice + cross-entropy (binary cross-entropy for a sigmoid head), per sample (nnU-Net's loss)."""
    entropy = cross_entropy_loss if head == "softmax" else binary_cross_entropy_loss
    return dice_loss(logits, target, mask, head=head) + entropy(logits, target, mask, head=head)


@LOSSES.register("dice_focal")
def dice_focal_loss(logits, target, mask, *, head: str, gamma: float = 2.0) -> torch.Tensor:
    """Soft Dice + focal loss, per sample (the MIDL 2025 study's UNETR on ATLAS)."""
    return dice_loss(logits, target, mask, head=head) + focal_loss(logits, target, mask, head=head, gamma=gamma)


def distance_regression_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SBC-AL's SFP loss: MSE between predicted and true distance maps (B, S, H, W), per sample."""
    return masked_mean(((predicted.float() - target.float()) ** 2).mean(1), mask)


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample losses (B,) weighted by (B,) sample weights."""
    weights = weights.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp(min=1e-8)


REQUIRED_HEAD = {"ce": "softmax", "bce": "sigmoid"}


def segmentation_loss(
    name: str, head: str, focal_gamma: float, class_weights: tuple[float, ...] | None = None
) -> Callable:
    """The per-sample loss ``name`` for ``head``: ``loss(logits, target, mask) -> (B,)``.

    Raises:
        ValueError: ``name`` does not fit ``head`` (ce needs softmax, bce sigmoid), or ``class_weights`` with
            another loss than ce; checked before any training.
    """
    function = LOSSES.get(name)
    if REQUIRED_HEAD.get(name, head) != head:
        alternative = "bce" if name == "ce" else "ce"
        raise ValueError(
            f"The {name} loss needs a {REQUIRED_HEAD[name]} head, this model has {head}: use {alternative}."
        )
    if class_weights is not None and name != "ce":
        raise ValueError(f"class_weights weigh the ce loss, and the loss is {name}: set loss to ce or drop them.")
    options = {"gamma": focal_gamma} if name in ("focal", "dice_focal") else {}
    if class_weights is not None:
        options["class_weights"] = tuple(class_weights)

    def loss(logits, target, mask):
        return function(logits, target, mask, head=head, **options)

    return loss


def cross_augmentation_consistency(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    head: str,
    *,
    augmentations: int,
    alpha: float,
    noise_std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """TAAL's unsupervised loss (Gaillochet et al. 2022), a scalar: the modified Jensen-Shannon divergence
    alpha * H(mean p) - (1 - alpha) * mean H(p) per pixel (alpha = 0.5: half the plain one) between the prediction on
    ``images`` (N, C, H, W) and ``augmentations`` predictions on copies randomly flipped (rows), turned by a multiple
    of 90 degrees and noised, each mapped back to the plain frame; averaged over pixels and images.

    Only the plain prediction takes gradients, the augmented ones are targets (TAAL's code, melinphd/TAAL); the
    random choices come from ``generator`` (CPU) so a resumed epoch repeats them. ``forward`` maps images to logits.
    """
    predictions = [activation(forward(images), head)]
    with torch.no_grad():
        for _ in range(augmentations):
            flip = bool(torch.randint(2, (1,), generator=generator))
            turns = int(torch.randint(4, (1,), generator=generator))
            augmented = (images.flip(-2) if flip else images).rot90(turns, (-2, -1))
            augmented = augmented + torch.randn(augmented.shape, generator=generator).to(augmented.device) * noise_std
            back = forward(augmented).rot90(-turns, (-2, -1))
            predictions.append(activation(back.flip(-2) if flip else back, head))
    stacked = torch.stack(predictions, dim=1)  # (N, K + 1, C, H, W)
    each = pixel_entropy(stacked.flatten(0, 1), head).unflatten(0, stacked.shape[:2])  # (N, K + 1, H, W)
    return (alpha * pixel_entropy(stacked.mean(1), head) - (1.0 - alpha) * each.mean(1)).mean()
