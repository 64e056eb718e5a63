"""Ranking latency of every query strategy on one synthetic volume (default 300 slices of 256 x 256).

The volume is a smooth random image with a structure (an ellipsoid) in it; every 10th slice is annotated (STAR's
initialisation), so the spatial strategies have groups to work on. Model-based strategies use a randomly
initialised model of a small preset (the latency of a forward pass does not depend on the weights): star-small
for ``star_similarity``, sbc-small for ``sbc_consistency``, ``model_preset`` for the others.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..models import PRESETS, SegmentationModel
from ..progress import ProgressReporter
from ..selection import STRATEGIES, rank, strategy_info
from ..volume import Segment
from . import checked_names, each_entry

ANNOTATED_INTERVAL = 10
PRESET_FOR_MODEL_KIND = {"star": "star-small", "structure": "sbc-small"}


def synthetic_volume(n_slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image (n_slices, size, size) float32 and an ellipsoid label map (uint8) brighter in it."""
    rng = np.random.default_rng(seed)
    image = gaussian_filter(rng.normal(size=(n_slices, size, size)).astype(np.float32), sigma=(1, 4, 4))
    k, j, i = np.ogrid[:n_slices, :size, :size]
    inside = ((k - n_slices / 2) / (0.35 * n_slices)) ** 2 + ((j - size / 2) / (0.25 * size)) ** 2 + (
        (i - size / 2) / (0.3 * size)
    ) ** 2 <= 1
    image[inside] += 1.0
    return image, inside.astype(np.uint8)


def model_for(strategy: str, model_preset: str, seed: int) -> tuple[str | None, SegmentationModel | None]:
    """(preset name, randomly initialised model) a strategy ranks with, or (None, None) for model-free ones."""
    kind = strategy_info(STRATEGIES.get(strategy)).model
    if kind is None:
        return None, None
    preset = PRESET_FOR_MODEL_KIND.get(kind, model_preset)
    torch.manual_seed(seed)
    return preset, SegmentationModel(replace(PRESETS.get(preset), class_names=("structure",))).eval()


def measure_ranking(
    strategies: Sequence[str] | None = None,
    device: torch.device | None = None,
    n_slices: int = 300,
    size: int = 256,
    budget: int = 10,
    model_preset: str = "unet-small",
    batch_size: int = 8,
    seed: int = 0,
    progress: ProgressReporter | None = None,
    precision: str = "auto",
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict]:
    """Seconds each strategy takes to rank ``budget`` slices of the synthetic volume (model loading excluded), its
    networks run in ``precision``; ``options`` maps a strategy's name to its keyword options."""
    names = checked_names(STRATEGIES, strategies)
    options = dict(options or {})
    if unmeasured := sorted(set(options) - set(names)):
        raise ValueError(
            f"Options were given for {', '.join(unmeasured)}, which is not measured: add it to the strategies."
        )
    image, labels = synthetic_volume(n_slices, size, seed)
    annotated = np.arange(ANNOTATED_INTERVAL // 2, n_slices, ANNOTATED_INTERVAL)
    rows = []
    for name in each_entry(STRATEGIES, names, progress):
        preset, model = model_for(name, model_preset, seed)
        started = time.perf_counter()
        ranking = rank(
            image,
            name,
            budget,
            labels=labels,
            segments=(Segment("structure", 1),),
            annotated=annotated,
            model=model,
            device=device or torch.device("cpu"),
            batch_size=batch_size,
            seed=seed,
            precision=precision,
            **options.get(name, {}),
        )
        seconds = time.perf_counter() - started
        candidates = n_slices - annotated.size
        rows.append(
            {
                "strategy": name,
                "options": dict(options.get(name, {})),
                "model": preset,
                "seconds": round(seconds, 3),
                "candidate_slices_per_second": round(candidates / seconds, 2),
                "picked": ranking.slices.tolist(),
            }
        )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    def described(row: dict) -> str:
        given = ", ".join(f"{key}={value}" for key, value in row.get("options", {}).items())
        return f"{row['strategy']} ({given})" if given else row["strategy"]

    lines = [f"{'strategy':32s} {'model':11s} {'seconds':>9s} {'candidates/s':>13s}"]
    lines += [
        f"{described(r):32s} {r['model'] or '-':11s} {r['seconds']:9.2f} {r['candidate_slices_per_second']:13.1f}"
        for r in rows
    ]
    return "\n".join(lines)
