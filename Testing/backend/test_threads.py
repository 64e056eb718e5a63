"""The CPU thread count: the cores this process may use (affinity, cgroup quota), less those left to a GUI."""

import contextlib
import os

import pytest

from spatial_al import threads
from spatial_al.benchmarks import training


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("proc_cgroup", "files", "expected"),
    [
        (
            "0::/user.slice/job\n",
            {"user.slice/job/cpu.max": "150000 100000\n", "user.slice/cpu.max": "max 100000"},
            1.5,
        ),
        ("0::/a/b\n", {"a/cpu.max": "100000 100000", "a/b/cpu.max": "300000 100000"}, 1.0),  # the parent's is lower
        ("0::/\n", {"cpu.max": "max 100000"}, None),
        (
            "4:cpu,cpuacct:/\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            2.5,
        ),
        ("4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ("4:cpu:/\n0::/\n", {"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),  # hybrid
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2(tmp_path, proc_cgroup, files, expected):
    write(tmp_path / "proc" / "cgroup", proc_cgroup)
    for name, text in files.items():
        write(tmp_path / "cgroup" / name, text)
    assert threads.cgroup_cpu_limit(tmp_path / "proc" / "cgroup", tmp_path / "cgroup") == expected


def test_the_thread_count_follows_affinity_and_quota_and_leaves_cores_free(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.usable_cores() == 4 and threads.choose_threads(leave_free=1) == 3
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.5)
    assert threads.usable_cores() == 1 and threads.choose_threads(leave_free=1) == 1  # never below one
    assert threads.choose_threads("6", leave_free=1) == 6  # asked for: as asked
    with pytest.raises(ValueError, match="at least 1, got '0'"):
        threads.choose_threads("0")


def test_use_threads_sets_torch_and_what_it_reads_when_it_loads(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "9")
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice is kept


def test_the_competing_load_keeps_a_core_busy_and_ends_with_the_block():
    import psutil

    with training.competing_load(1):
        spinners = psutil.Process().children()
        assert len(spinners) == 1
        spinners[0].cpu_percent(None)
        busy = spinners[0].cpu_percent(0.5)
    assert busy > 50 and not spinners[0].is_running()


def test_under_load_rows_pair_each_idle_run_with_its_slowdown(monkeypatch):
    runs = iter(
        [[{"preset": "unet-small", "steps_per_second": 1.0}], [{"preset": "unet-small", "steps_per_second": 0.4}]]
    )
    monkeypatch.setattr(training, "measure_training", lambda *arguments: next(runs))
    monkeypatch.setattr(training, "competing_load", lambda cores: contextlib.nullcontext())
    idle, loaded = training.measure_training_under_load(["unet-small"])
    assert idle["load"] == "idle" and "slowdown" not in idle
    assert loaded["load"] == "1 core busy" and loaded["slowdown"] == 2.5


def test_the_run_record_names_the_cpu_and_its_vector_extensions(tmp_path):
    from spatial_al.provenance import cpu_description, environment

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16\n")
    assert cpu_description(cpuinfo) == "AMD EPYC (avx2, avx512f, avx512_bf16)"
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu sse2\n")
    assert cpu_description(cpuinfo) == "Old CPU (none of avx2/avx512f/avx512_bf16/amx_bf16)"
    assert cpu_description(tmp_path / "absent") is None
    assert set(environment()) >= {"cpu", "torch_threads", "usable_cores"}
