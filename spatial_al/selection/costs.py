"""What a ranking will cost, said before it runs: the seconds each strategy took in ``spatial-al benchmark ranking``
on a reference machine of each device kind, scaled to the volume at hand.

The figures ship with the package (``ranking_costs.json``, made from the benchmark records in
``docs/results/benchmarks`` by :func:`costs_from_benchmark`). A ranking's time grows with the voxels it reads, so an
estimate is the measured seconds times (slices x pixels per slice) over the benchmark's; a device kind without
figures (``mps``) gets no estimate rather than a wrong one.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

COSTS_FILE = "ranking_costs.json"
INSTANT_SECONDS = 1.0  # below this a ranking is "under a second"
# strategies whose default changed after the committed benchmark records: no estimate until they are measured again
STALE_FIGURES = frozenset({"bal"})  # now MC-dropout BALD then k-center (issue 25), measured as least confidence


@cache
def shipped_costs() -> dict[str, dict[str, Any]]:
    """Device kind ("cpu", "cuda") -> {"machine", "benchmark", "slices", "size", "seconds": {strategy: s}}."""
    return json.loads(resources.files(__package__).joinpath(COSTS_FILE).read_text())


def costs_from_benchmark(record: dict[str, Any], machine: str, benchmark: str) -> dict[str, Any]:
    """The entry of :data:`COSTS_FILE` for one ``spatial-al benchmark ranking`` record (its JSON, loaded), without
    the :data:`STALE_FIGURES`."""
    configuration = record["configuration"]
    return {
        "machine": machine,
        "benchmark": benchmark,
        "slices": configuration["slices"],
        "size": configuration["size"],
        "seconds": {
            row["strategy"]: round(row["seconds"], 2)
            for row in record["results"]["rows"]
            if row["strategy"] not in STALE_FIGURES
        },
    }


def estimated_seconds(strategy: str, n_slices: int, slice_shape: tuple[int, int], device_kind: str) -> float | None:
    """Seconds ``strategy`` should take to rank ``n_slices`` slices of ``slice_shape`` (rows, columns) on a device
    of ``device_kind`` like the reference machine; None without figures for that device kind or strategy."""
    entry = shipped_costs().get(device_kind)
    if entry is None or strategy not in entry["seconds"]:
        return None
    voxels = n_slices * slice_shape[0] * slice_shape[1]
    return entry["seconds"][strategy] * voxels / (entry["slices"] * entry["size"] ** 2)


def cost_note(strategy: str, n_slices: int, slice_shape: tuple[int, int], device_kind: str) -> str:
    """One line saying what ranking will cost, e.g. "mc_dropout: about 18 min on cpu (2 CPU cores, float32: 315 s for
    300 slices of 256 x 256, scaled to 120 slices of 512 x 512)"."""
    seconds = estimated_seconds(strategy, n_slices, slice_shape, device_kind)
    if seconds is None:
        return f"{strategy}: no timing figures for {device_kind} yet (spatial-al benchmark ranking measures them)."
    entry = shipped_costs()[device_kind]
    measured = entry["seconds"][strategy]
    reference = f"{entry['machine']}: {measured:g} s for {entry['slices']} slices of {entry['size']} x {entry['size']}"
    here = f"{n_slices} slices of {slice_shape[0]} x {slice_shape[1]}"
    return f"{strategy}: {duration_text(seconds)} on {device_kind} ({reference}, scaled to {here})."


def duration_text(seconds: float) -> str:
    """ "under a second", "about 12 s", "about 5 min"."""
    if seconds < INSTANT_SECONDS:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.0f} min"
