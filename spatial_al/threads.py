"""How many CPU threads torch computes with: the cores this process may use, not the machine's.

``torch.get_num_threads()`` defaults to the machine's physical cores. A process pinned to fewer cores (``taskset``,
a batch scheduler) or given a CPU quota (a container's cgroup) then runs more threads than it has cores, and torch's
threads, which wait for each other at every operation, lose their time on the cores they do not have.
:func:`choose_threads` counts what this process may use and leaves cores to a GUI when asked (Slicer's and the web
app's workers leave one); an explicit count (``--threads``) always wins. :func:`wait_passively` keeps threads that
share a core with another program from holding the others back (README, "Threads under load").
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

THREADS_VARIABLE = "SPATIAL_AL_THREADS"  # an explicit thread count for workers started by the Slicer modules


def _cgroup_v2_limit(cgroup_root: Path, own_path: str) -> float | None:
    """The smallest CPU quota (in cores) of the cgroup v2 ``own_path`` and its ancestors, None when unlimited."""
    limits = []
    folder = cgroup_root / own_path.lstrip("/")
    while True:
        try:
            quota, period = (folder / "cpu.max").read_text().split()
        except (OSError, ValueError):
            quota = "max"
        if quota != "max":
            limits.append(int(quota) / int(period))
        if folder == cgroup_root or cgroup_root not in folder.parents:
            break
        folder = folder.parent
    return min(limits) if limits else None


def _cgroup_v1_limit(cgroup_root: Path) -> float | None:
    """The CPU quota (in cores) of a cgroup v1 ``cpu`` controller mounted at its root, None when unlimited."""
    for controller in ("cpu", "cpu,cpuacct"):
        try:
            quota = int((cgroup_root / controller / "cpu.cfs_quota_us").read_text())
            period = int((cgroup_root / controller / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cgroup_cpu_limit(proc_self_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")):
    """The CPU quota of this process's cgroup in cores (1.5 = one and a half), None when there is none (or no
    cgroups: not Linux)."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    unified = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    limits = [_cgroup_v1_limit(cgroup_root)]  # hybrid systems list a unified path beside v1 controllers
    if unified is not None:
        limits.append(_cgroup_v2_limit(cgroup_root, unified))
    return min((limit for limit in limits if limit is not None), default=None)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (all cores where there is none), capped by its cgroup's
    CPU quota, rounded down (a quota of 1.5 cores runs 1 thread at full speed rather than 2 throttled ones)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call in os
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def choose_threads(requested: int | str | None = None, leave_free: int = 0) -> int:
    """The torch thread count: ``requested`` when given (at least 1), else the usable cores less ``leave_free`` (the
    cores kept for a GUI), at least 1.

    Raises:
        ValueError: ``requested`` is not a whole number of at least 1.
    """
    if requested is not None and requested != "":
        try:
            count = int(requested)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"The thread count must be a whole number of at least 1, got {requested!r}.")
        return count
    return max(1, usable_cores() - leave_free)


def wait_passively() -> None:
    """Make the OpenMP threads torch computes with sleep while they wait for each other, instead of spinning on a
    core another process needs (``OMP_WAIT_POLICY=PASSIVE``, read when torch loads; a value set by the user is kept).
    Measured on 2 CPU cores with one kept busy by another process, training took 1.56x its idle time with 2 threads
    instead of 2.51x, as fast as one thread, and no longer on an idle machine (README, "Threads under load")."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def use_threads(count: int) -> int:
    """Make torch compute with ``count`` CPU threads in this process, now if it is loaded, else when it loads (from
    ``OMP_NUM_THREADS``, which OpenBLAS also reads), without loading it, its threads waiting passively
    (:func:`wait_passively`); returns ``count``."""
    wait_passively()
    os.environ["OMP_NUM_THREADS"] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
