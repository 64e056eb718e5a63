"""Training as ``spatial-al train`` runs it with the defaults: where the time goes and what the model learns.

The ``slicerio`` chest CT (34 axial slices of 128 x 128, seven segments) with every ``interval``-th slice annotated
is trained on with the default :class:`~spatial_al.training.TrainingConfig` (or ``max_epochs`` /
``iterations_per_epoch`` given), a checkpoint written as the CLI writes it; the model then predicts the other
slices. One row per preset: optimizer steps, steps per second, seconds per phase (see
:data:`~spatial_al.training.trainer.PHASES`; "other" is building the model and examples and the final checkpoint)
and the Dice of each segment on the slices not annotated.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..metrics import dice
from ..models import PRESETS
from ..progress import ProgressReporter
from . import each_entry


def measure_preset_training(
    preset: str,
    device: torch.device,
    interval: int = 2,
    training_options: dict | None = None,
    progress: ProgressReporter | None = None,
) -> dict:
    """One preset trained on every ``interval``-th slice of the chest CT and evaluated on the others."""
    from ..data import chest_ct_files
    from ..io import load_stack
    from ..learning import predict_segmentation, train_on_stack
    from ..training import TrainingConfig
    from ..training.trainer import PHASES

    stack = load_stack(*chest_ct_files())
    annotated = np.arange(0, stack.n_slices, interval)
    evaluated = np.setdiff1d(np.arange(stack.n_slices), annotated)
    training = TrainingConfig().with_options(**(training_options or {}))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        outcome = train_on_stack(
            stack,
            annotated,
            preset=preset,
            training=training,
            device=device,
            progress=progress,
            checkpoint_path=Path(folder) / "model.pt",
        )
        seconds = time.perf_counter() - started
    predicted = predict_segmentation(outcome.model, stack, device=device)
    found = {segment.name: segment for segment in predicted.segments}
    phases = {phase: round(outcome.trainer.phase_seconds[phase], 3) for phase in PHASES}
    steps = outcome.trainer.steps_taken

    def on_evaluated_slices(mask: np.ndarray) -> np.ndarray:
        return np.take(mask, evaluated, axis=stack.slice_axis)

    return {
        "preset": preset,
        "annotated_slices": int(annotated.size),
        "epochs": len(outcome.history),
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_second": round(steps / outcome.trainer.phase_seconds["forward_backward"], 2),
        "phase_seconds": {**phases, "other": round(seconds - sum(phases.values()), 3)},
        "dice": {
            segment.name: round(
                dice(
                    on_evaluated_slices(
                        predicted.label_layers[found[segment.name].layer] == found[segment.name].label_value
                    ),
                    on_evaluated_slices(stack.segment_mask(segment)),
                ),
                4,
            )
            for segment in stack.segments
        },
    }


def measure_training(
    presets: Sequence[str] | None = None,
    device: torch.device | None = None,
    interval: int = 2,
    training_options: dict | None = None,
    progress: ProgressReporter | None = None,
) -> list[dict]:
    """:func:`measure_preset_training` for each preset (default: ``unet-small``, what ``spatial-al train`` uses)."""
    from ..models import DEFAULT_PRESET

    device = device or torch.device("cpu")
    return [
        measure_preset_training(name, device, interval, training_options)
        for name in each_entry(PRESETS, presets or [DEFAULT_PRESET], progress)
    ]


@contextmanager
def competing_load(busy_cores: int = 1) -> Iterator[None]:
    """While the block runs, ``busy_cores`` other processes each keep one CPU core busy (as Slicer rendering, or a
    second study, would)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(busy_cores)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def measure_training_under_load(
    presets: Sequence[str] | None = None,
    device: torch.device | None = None,
    interval: int = 2,
    training_options: dict | None = None,
    progress: ProgressReporter | None = None,
    busy_cores: int = 1,
) -> list[dict]:
    """:func:`measure_training` on an idle machine, then again while ``busy_cores`` other processes keep cores busy;
    each loaded row has ``slowdown``, its seconds per step over the idle run's."""
    idle = measure_training(presets, device, interval, training_options, progress)
    with competing_load(busy_cores):
        loaded = measure_training(presets, device, interval, training_options, progress)
    for row in idle:
        row["load"] = "idle"
    for row, reference in zip(loaded, idle, strict=True):
        row["load"] = f"{busy_cores} core{'s' if busy_cores > 1 else ''} busy"
        row["slowdown"] = round(reference["steps_per_second"] / row["steps_per_second"], 2)
    return [row for pair in zip(idle, loaded, strict=True) for row in pair]


def format_table(rows: Sequence[dict]) -> str:
    """Steps, steps/s and seconds per phase per preset (and load, when measured under load), then the Dice of each
    segment."""
    phases = list(rows[0]["phase_seconds"]) if rows else []
    header = f"{'preset':15s} {'load':>12s} {'steps':>6s} {'steps/s':>8s} {'slowdown':>9s} {'seconds':>8s} "
    lines = [header + " ".join(f"{p:>16s}" for p in phases)]
    for r in rows:
        cells = " ".join(f"{r['phase_seconds'][p]:16.2f}" for p in phases)
        slowdown = f"{r['slowdown']:8.2f}x" if "slowdown" in r else f"{'':9s}"
        lines.append(
            f"{r['preset']:15s} {r.get('load', 'idle'):>12s} {r['steps']:6d} {r['steps_per_second']:8.2f} {slowdown} "
            f"{r['seconds']:8.1f} {cells}"
        )
    for r in rows:
        scores = ", ".join(f"{name} {value:.3f}" for name, value in r["dice"].items())
        lines.append(f"{r['preset']} Dice on the {r['annotated_slices']}-slice-annotated CT's other slices: {scores}")
    return "\n".join(lines)
