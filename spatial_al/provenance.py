"""What every run writes beside its results: resolved configuration, seed, versions, platform, timings."""

from __future__ import annotations

import functools
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .files import write_text_atomic

PACKAGES = (
    "spatial-active-learning",
    "numpy",
    "scipy",
    "SimpleITK",
    "itk-morphologicalcontourinterpolation",
    "scikit-image",
    "scikit-learn",
    "slicerio",
    "torch",
    "monai",
    "slicer-core",
)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent), read without importing it."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # vector extensions torch's CPU kernels use


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name and which of :data:`SPEED_FLAGS` it has ("AMD EPYC (avx2)"), from ``cpuinfo``: speed
    figures of two machines of the same name can differ 4x when one lacks AVX-512. None where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    present = ", ".join(flag for flag in SPEED_FLAGS if flag in flags) or "none of " + "/".join(SPEED_FLAGS)
    return f"{fields.get('model name', platform.processor() or '?')} ({present})"


PACKAGE_FOLDER = Path(__file__).resolve().parent


@functools.cache
def code_revision(package: Path = PACKAGE_FOLDER) -> dict[str, Any] | None:
    """The git commit of the source checkout this package runs from, and whether tracked files differ from it
    (``{"commit": ..., "modified": ...}``); None for an installed package (its version is in ``versions``) or where
    git cannot tell. Read once per process."""

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], cwd=package, capture_output=True, text=True, timeout=10)

    try:
        if git("ls-files", "--error-unmatch", "provenance.py").returncode != 0:  # not a checkout of this code
            return None
        commit = git("rev-parse", "HEAD")
        modified = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0 or modified.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "modified": bool(modified.stdout.strip())}


def environment() -> dict[str, Any]:
    """Python, platform, CPU, package versions, the source commit (:func:`code_revision`), and the CPU threads torch
    computes with (None when this process has not imported torch) beside the cores the process may use."""
    from .threads import usable_cores

    torch = sys.modules.get("torch")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_description(),
        "versions": package_versions(),
        "code": code_revision(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "usable_cores": usable_cores(),
    }


class Timer:
    """Wall-clock seconds of named steps: ``with timer("propagate"): ...``; ``timer.seconds`` maps name -> s."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = round(self.seconds.get(step, 0.0) + time.perf_counter() - start, 4)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: str | Path, content: dict[str, Any]) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically (NaN and infinity are refused: use None)."""
    return write_text_atomic(path, json.dumps(content, indent=2, default=_json_default, allow_nan=False) + "\n")


PATIENT_ATTRIBUTE = re.compile(r"^\s*(Patient\w*|0010[0-9A-Fa-f]{4})\s*=")


def without_patient_values(configuration: dict[str, Any]) -> dict[str, Any]:
    """``configuration`` with the value of every ``--qido`` filter on a patient attribute (``PatientName=Doe*``,
    ``00100020=...``) replaced by ``<withheld>``: no record names a patient, even one a search named."""
    filters = configuration.get("qido")
    if not filters:
        return configuration
    kept = [f"{pair.partition('=')[0]}=<withheld>" if PATIENT_ATTRIBUTE.match(pair) else pair for pair in filters]
    return {**configuration, "qido": kept}


def run_record(command: str, configuration: dict[str, Any], results: dict[str, Any], timer: Timer) -> dict[str, Any]:
    """The JSON-ready record of one run (DICOMweb search filters on patient attributes kept by name only)."""
    return {
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "configuration": without_patient_values(configuration),
        "results": results,
        "seconds": timer.seconds,
        "environment": environment(),
    }
