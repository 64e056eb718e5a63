"""Training and inference throughput (slices per second) of every model preset on this machine.

Training steps are forward, backward and an Adam step on random slices with random labels (the speed of a step
does not depend on what it learns); inference is a forward pass without gradients. Both run after one warm-up
batch. STAR presets time STAR's propagation stage for training (its heaviest), SBC presets their joint loss.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from ..models import PRESETS, SegmentationModel
from ..precision import autocast
from ..progress import ProgressReporter
from . import each_entry

CLASS_NAMES = ("class 1", "class 2", "class 3")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_preset(
    preset: str, device: torch.device, slice_size: int = 256, batch_size: int = 4, batches: int = 3, seed: int = 0
) -> dict:
    """Throughput of one preset: parameters (millions), training and inference slices per second."""
    from ..training import Trainer, TrainingConfig

    torch.manual_seed(seed)
    config = replace(PRESETS.get(preset), class_names=CLASS_NAMES)
    model = SegmentationModel(config).to(device)
    trainer = Trainer(model, TrainingConfig(batch_size=batch_size, augment=False), device)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 1, slice_size, slice_size, generator=generator)
    labels = torch.randint(0, len(CLASS_NAMES) + 1, (batch_size, slice_size, slice_size), generator=generator)
    target = torch.nn.functional.one_hot(labels, len(CLASS_NAMES) + 1).permute(0, 3, 1, 2)[:, 1:].float()
    batch = {
        "image": images,
        "target": target,
        "mask": torch.ones(batch_size, 1, slice_size, slice_size),
        "weight": torch.ones(batch_size),
    }
    stage = "segmentation"
    if config.star:
        stage = "star_propagation"
        batch.update(labeled_image=images[:, None], labeled_target=target[:, None])
    if config.structure_heads:
        batch["distance"] = torch.rand_like(target, generator=generator)

    def timed(step) -> float:
        step()  # warm-up
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(batches):
            step()
        _synchronize(device)
        return batches * batch_size / (time.perf_counter() - started)

    with trainer.stage_training(stage) as optimizer:
        model.train()
        training = timed(lambda: trainer.train_step(batch, stage, optimizer))
    model.eval()
    on_device = images.to(device)
    with torch.no_grad(), autocast(device, trainer.amp_dtype):
        inference = timed(lambda: model(on_device))
    return {
        "preset": preset,
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "train_slices_per_second": round(training, 2),
        "inference_slices_per_second": round(inference, 2),
    }


def measure_throughput(
    presets: Sequence[str] | None = None,
    device: torch.device | None = None,
    slice_size: int = 256,
    batch_size: int = 4,
    batches: int = 3,
    progress: ProgressReporter | None = None,
) -> list[dict]:
    """:func:`measure_preset` for each preset (default: all), in registry order."""
    device = device or torch.device("cpu")
    return [
        measure_preset(name, device, slice_size, batch_size, batches) for name in each_entry(PRESETS, presets, progress)
    ]


def format_table(rows: Sequence[dict]) -> str:
    lines = [f"{'preset':15s} {'params (M)':>10s} {'train slices/s':>15s} {'inference slices/s':>19s}"]
    lines += [
        f"{r['preset']:15s} {r['parameters_millions']:10.2f} {r['train_slices_per_second']:15.2f} "
        f"{r['inference_slices_per_second']:19.2f}"
        for r in rows
    ]
    return "\n".join(lines)
