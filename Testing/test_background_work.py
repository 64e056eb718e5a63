"""Background jobs as Slicer starts them: through PythonSlicer, a launcher that starts Python as its child, so that
the process the panel started is not the worker. Cancel, stop and exit must reach the worker all the same, its own
error message must reach the user, and no job file may stay behind."""

import os
import pickle
import signal
import sys
import time

import numpy as np
import pytest

from SpatialALSlicerLib import BackgroundWork
from SpatialALSlicerLib.BackgroundWork import CANCELLED, FAILED, FINISHED, RUNNING, BackgroundJob, processAlive

LAUNCHER = """#!{python}
# Stands in for Slicer's launcher: sets up the environment, then runs Python as a child and waits for it.
import subprocess, sys
sys.exit(subprocess.call([{python!r}, *sys.argv[1:]]))
"""


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    """A ``PythonSlicer`` on the PATH that starts Python as its child, and job folders in a folder of the test's."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "PythonSlicer"
    script.write_text(LAUNCHER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    jobs = tmp_path / "slicer-temporary"
    jobs.mkdir()
    monkeypatch.setattr(BackgroundWork, "jobsFolder", lambda: str(jobs))
    assert BackgroundWork.workerPython() == str(script)
    return jobs


def endless_training(stack, tmp_path):
    from conftest import TINY_UNET

    from spatial_al.models import preset_config
    from spatial_al.training import TrainingConfig

    arguments = {
        "stack": stack,
        "annotated": [0, 3, 6, 9],
        "preset": preset_config("unet-small", features=TINY_UNET),
        "training": TrainingConfig(max_epochs=10000, iterations_per_epoch=5, augment=False),
        "device": "cpu",
        "checkpoint_path": tmp_path / "model.pt",
    }
    return BackgroundJob("train", arguments, lambda summary: summary, "Training")


def started_worker(job):
    """Start ``job`` and wait until its worker trains; returns (launcher pid, worker pid)."""
    job.start()
    deadline = time.monotonic() + 120
    while job.poll() == RUNNING and "epoch" not in job.progress[2] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state == RUNNING and "epoch" in job.progress[2], job.error
    launcher, worker = job._process.pid, job.workerPid()
    assert worker is not None and worker != launcher and processAlive(worker)  # the worker is the launcher's child
    return launcher, worker


def gone(pid, seconds=10.0):
    deadline = time.monotonic() + seconds
    while processAlive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not processAlive(pid)


def test_cancel_reaches_the_worker_behind_the_launcher(launcher, labeled_stack, tmp_path):
    job = endless_training(labeled_stack, tmp_path)
    launcher_pid, worker_pid = started_worker(job)
    job.cancel()
    assert job.wait() == CANCELLED
    assert gone(worker_pid) and gone(launcher_pid)  # the job read "cancelled" only once the worker had ended
    assert list(launcher.iterdir()) == []  # the job folder (image and masks) is gone


def test_a_worker_orphaned_by_its_launcher_still_counts_as_running_and_is_stopped(launcher, labeled_stack, tmp_path):
    job = endless_training(labeled_stack, tmp_path)
    launcher_pid, worker_pid = started_worker(job)
    os.kill(launcher_pid, signal.SIGKILL)  # the launcher dies; its child lives on with parent pid 1
    assert gone(launcher_pid)
    time.sleep(0.3)
    assert job.poll() == RUNNING and processAlive(worker_pid)
    job.stop()  # scene close, module reload, application exit
    assert job.state == CANCELLED and gone(worker_pid)
    checkpoint = tmp_path / "model.pt"
    written = checkpoint.stat().st_mtime if checkpoint.exists() else None
    time.sleep(1.0)
    assert (checkpoint.stat().st_mtime if checkpoint.exists() else None) == written  # nothing writes any more
    assert list(launcher.iterdir()) == []


def test_jobs_still_running_when_python_exits_are_stopped(launcher, labeled_stack, tmp_path):
    job = endless_training(labeled_stack, tmp_path)
    _, worker_pid = started_worker(job)
    BackgroundWork.stopRunningJobs()  # registered with atexit: Slicer's exit runs it
    assert gone(worker_pid) and job.state == CANCELLED and list(launcher.iterdir()) == []


def test_the_workers_own_error_comes_through_the_launcher_and_no_file_stays(launcher, tmp_path):
    job = BackgroundJob(
        "rank",
        {"image": np.zeros((5, 8, 8), np.float32), "strategy": "entropy", "budget": 2, "model_path": "/nowhere.pt"},
        lambda ranking: ranking,
        "Ranking",
    ).start()
    assert job.wait() == FAILED and "/nowhere.pt" in job.error and "Traceback" not in job.error
    assert list(launcher.iterdir()) == []

    job = BackgroundJob(
        "propagate",
        {"segmentation": labeled_segmentation(), "annotated": [0, 9], "method": "sdf"},
        lambda layers: layers.propagated.tolist(),
        "Propagation",
    ).start()
    assert job.wait() == FINISHED and job.finish() == list(range(1, 9))
    assert list(launcher.iterdir()) == []

    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):  # arguments no worker can receive
        BackgroundJob("rank", {"image": lambda: None}, print, "Ranking").start()
    assert list(launcher.iterdir()) == []


def labeled_segmentation():
    from spatial_al.io.segmentation import Segmentation
    from spatial_al.volume import Geometry, Segment

    labels = np.zeros((10, 16, 16), np.uint8)
    labels[[0, 9], 4:12, 4:12] = 1
    return Segmentation(labels, (Segment("square", 1),), Geometry(labels.shape))


def test_closing_the_module_stops_its_job(launcher, slicer_modules, headless, labeled_stack, tmp_path, monkeypatch):
    from module_panels import annotated_lung, propagation_panel

    volume, segmentation, _ = annotated_lung(slicer_modules, headless.scene, [10, 20])
    panel = propagation_panel(slicer_modules["SpatialPropagation"], volume, segmentation, monkeypatch)
    job = endless_training(labeled_stack, tmp_path)
    monkeypatch.setattr(panel.logic, "propagationJob", lambda *arguments, **keywords: job)
    monkeypatch.setattr(panel.logic, "methodIsInteractive", lambda method: False)
    panel.onPropagateButton()
    assert panel._job is job
    deadline = time.monotonic() + 120
    while job.workerPid() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    worker_pid = job.workerPid()
    panel.cleanup()  # module reload, or the application closing
    assert gone(worker_pid) and not panel.isRunning and list(launcher.iterdir()) == []
