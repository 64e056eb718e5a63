"""One backend call in a separate Python process that reports its progress on stdout: how Slicer's modules train,
predict, rank and propagate while the GUI stays responsive (as SlicerMONAIAuto3DSeg and SlicerTotalSegmentator run
their models).

``python -m spatial_al.worker FOLDER`` reads ``FOLDER/job.pkl``, a (job name, keyword arguments) pair, runs the job
of :data:`JOBS` with a :class:`LineProgress`, and writes its result to ``FOLDER/result.pkl`` atomically. Its
stdout carries one JSON object per line: ``{"progress": [done, total, message]}`` while it works, then
``{"finished": true}``, ``{"cancelled": true}`` or ``{"failed": message}``. A file ``FOLDER/cancel`` (any platform,
and whatever launcher started the worker), SIGTERM or SIGINT asks it to stop at the next step of the backend's cancel
protocol: nothing is written then, and checkpoints written before stay whole. It writes its own process ID to
``FOLDER/worker.pid`` first, so that whoever started it through a launcher (Slicer's PythonSlicer) can tell when it
has ended and stop it. The same jobs run in the calling process with :func:`run_job` (the Python console, tests).

Pickle carries arrays and the backend's dataclasses between two processes of the same installation; it is never
used for files a user gives.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .files import atomic_path, write_text_atomic
from .progress import OperationCancelled, ProgressReporter
from .threads import THREADS_VARIABLE, choose_threads, use_threads

JOB_FILE = "job.pkl"
RESULT_FILE = "result.pkl"
CANCEL_FILE = "cancel"
PID_FILE = "worker.pid"


class LineProgress:
    """Progress as JSON lines on a stream; cancels once :meth:`request_cancel` was called (the SIGTERM handler) or
    ``cancel_file`` exists."""

    def __init__(self, stream: TextIO | None = None, cancel_file: Path | None = None):
        self.stream = stream or sys.stdout
        self.cancel_file = cancel_file
        self.cancel_requested = False

    def progress(self, done: int, total: int, message: str = "") -> None:
        print(json.dumps({"progress": [int(done), int(total), str(message)]}), file=self.stream, flush=True)

    def should_cancel(self) -> bool:
        if not self.cancel_requested and self.cancel_file is not None and self.cancel_file.exists():
            self.cancel_requested = True
        return self.cancel_requested

    def request_cancel(self, *signal_arguments) -> None:
        self.cancel_requested = True


def train_job(*, progress: ProgressReporter | None = None, **arguments):
    """:func:`~spatial_al.learning.train_on_stack`; returns its :class:`~spatial_al.learning.TrainingSummary` (the
    model is in the checkpoint)."""
    from .learning import train_on_stack

    return train_on_stack(progress=progress, **arguments).summary()


def predict_job(*, model_path: str, stack, device: str = "auto", progress: ProgressReporter | None = None):
    """The segmentation (:class:`~spatial_al.io.segmentation.Segmentation`) the checkpoint at ``model_path``
    predicts for ``stack.image``, cut along the model's slice axis."""
    from dataclasses import replace

    from .device import resolve_device
    from .learning import predict_segmentation
    from .training import load_model

    torch_device = resolve_device(device)
    model, _ = load_model(model_path, torch_device)
    return predict_segmentation(
        model, replace(stack, slice_axis=model.config.slice_axis), torch_device, progress=progress
    )


def with_model(arguments: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``arguments`` with ``model_path`` (when given) replaced by the ``model`` it holds, loaded on
    ``device``."""
    arguments = dict(arguments)
    model_path = arguments.pop("model_path", None)
    if model_path:
        from .device import resolve_device
        from .training import load_model

        arguments["device"] = resolve_device(arguments.get("device", "auto"))
        arguments["model"], _ = load_model(model_path, arguments["device"])
    return arguments


def rank_job(*, progress: ProgressReporter | None = None, **arguments):
    """:func:`spatial_al.rank` (``model_path`` loads the model); returns the
    :class:`~spatial_al.selection.RankingResult`."""
    from .selection import rank

    return rank(progress=progress, **with_model(arguments))


def propagate_job(*, progress: ProgressReporter | None = None, **arguments):
    """:func:`~spatial_al.session.propagate_layers` (``model_path`` loads the model); returns the
    :class:`~spatial_al.session.LayerPropagation`."""
    from .session import propagate_layers

    return propagate_layers(progress=progress, **with_model(arguments))


def train_and_rank_job(
    *, training: dict[str, Any], ranking: dict[str, Any], progress: ProgressReporter | None = None
) -> tuple[Any, Any]:
    """Training (the arguments of :func:`train_job`), then the ranking of the pool (those of :func:`rank_job`, without
    a model) with the model just trained, in one process: the queried slices arrive with the model, with no second
    process to start and no checkpoint to load. Returns (:class:`~spatial_al.learning.TrainingSummary`,
    :class:`~spatial_al.selection.RankingResult`)."""
    from .learning import train_on_stack
    from .selection import rank

    outcome = train_on_stack(progress=progress, **training)
    ranked = rank(progress=progress, **ranking | {"model": outcome.model, "device": outcome.trainer.device})
    return outcome.summary(), ranked


def rank_volumes_job(*, progress: ProgressReporter | None = None, **arguments):
    """:func:`spatial_al.rank_volumes` (``model_path`` loads the model); returns the
    :class:`~spatial_al.selection.volumes.VolumeRanking`."""
    from .selection.volumes import rank_volumes

    return rank_volumes(progress=progress, **with_model(arguments))


JOBS: dict[str, Callable[..., Any]] = {
    "train": train_job,
    "predict": predict_job,
    "rank": rank_job,
    "train_and_rank": train_and_rank_job,
    "rank_volumes": rank_volumes_job,
    "propagate": propagate_job,
}


def run_job(name: str, arguments: dict[str, Any], progress: ProgressReporter | None = None) -> Any:
    """The job ``name`` of :data:`JOBS` with ``arguments``, in this process."""
    if name not in JOBS:
        raise ValueError(f"Unknown job {name!r}; the jobs are {', '.join(JOBS)}.")
    return JOBS[name](progress=progress, **arguments)


def write_job(folder: str | Path, name: str, arguments: dict[str, Any]) -> Path:
    """Write the job file a worker process reads from ``folder``; returns its path."""
    path = Path(folder) / JOB_FILE
    with atomic_path(path) as temporary:
        temporary.write_bytes(pickle.dumps((name, arguments), protocol=pickle.HIGHEST_PROTOCOL))
    return path


def read_result(folder: str | Path) -> Any:
    """The result a worker process wrote to ``folder``."""
    return pickle.loads((Path(folder) / RESULT_FILE).read_bytes())


def main(argv: list[str] | None = None) -> int:
    """Run the job in the folder given as the only argument; exit status 0 finished, 130 cancelled, 1 failed."""
    (folder,) = argv if argv is not None else sys.argv[1:]
    folder = Path(folder)
    write_text_atomic(folder / PID_FILE, str(os.getpid()))
    use_threads(choose_threads(os.environ.get(THREADS_VARIABLE), leave_free=1))  # one core stays with the GUI
    progress = LineProgress(cancel_file=folder / CANCEL_FILE)
    signal.signal(signal.SIGTERM, progress.request_cancel)
    signal.signal(signal.SIGINT, progress.request_cancel)

    def say(**event) -> None:
        print(json.dumps(event), flush=True)

    try:
        name, arguments = pickle.loads((Path(folder) / JOB_FILE).read_bytes())
        result = run_job(name, arguments, progress)
        with atomic_path(Path(folder) / RESULT_FILE) as temporary:
            temporary.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    except OperationCancelled:
        say(cancelled=True)
        return 130
    except Exception as error:  # reported to the parent as the message it shows; the trace goes to stderr
        traceback.print_exc()
        say(failed=str(error) or type(error).__name__)
        return 1
    say(finished=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
