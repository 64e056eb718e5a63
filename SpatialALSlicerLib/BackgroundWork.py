"""Long work in a child process, so that Slicer's GUI stays responsive while a model trains, predicts, ranks or
propagates (as SlicerMONAIAuto3DSeg and SlicerTotalSegmentator run theirs).

A :class:`BackgroundJob` is what a Logic prepares from the scene: the name of a backend job
(:data:`spatial_al.worker.JOBS`), its arguments (arrays read from the nodes) and ``apply``, which writes the result
into the scene. :meth:`BackgroundJob.start` runs the job in a child Python process (PythonSlicer in Slicer, this
interpreter elsewhere); :meth:`BackgroundJob.poll` reads its progress without waiting (a panel calls it from a
timer); :meth:`BackgroundJob.cancel` asks it to stop at its next step; :meth:`BackgroundJob.finish` applies the
result in the calling (main) thread. :meth:`BackgroundJob.runHere` runs the same job in this process instead, for
the Python console and batch scripts. The scene is only read before the job starts and written after it ends.

This file imports nothing of Slicer's application: the Logic's tests run it on slicer-core.
"""

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"
CANCEL_GRACE_SECONDS = 10  # a cancelled job that has not stopped by then (between two steps) is killed


def workerPython():
    """PythonSlicer in Slicer (the application's Python, with the packages installed into it), else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


class BackgroundJob:
    """A backend job to run in a child process, then apply to the scene.

    Args:
        name: a key of :data:`spatial_al.worker.JOBS` ("train", "predict", "rank", "propagate").
        arguments: its keyword arguments (picklable: arrays, the backend's dataclasses, paths).
        apply: result -> what the Logic call returns, writing into the scene (runs in the calling thread).
        description: what the job does, for messages ("Training", ...).
    """

    def __init__(self, name, arguments, apply, description):
        self.name = name
        self.arguments = arguments
        self.apply = apply
        self.description = description
        self.state = None  # RUNNING, FINISHED, FAILED or CANCELLED once started
        self.error = ""
        self.progress = (0, 1, "")
        self._process = None
        self._cancelRequested = False
        self._folder = None
        self._events = queue.Queue()
        self._errorLines = []

    # -- in this process ---------------------------------------------------------------------------------------------

    def runHere(self, progress=None):
        """Run the job in this process and apply its result; returns what ``apply`` returns."""
        from spatial_al.worker import run_job

        return self.apply(run_job(self.name, self.arguments, progress))

    # -- in a child process -------------------------------------------------------------------------------------------

    def start(self):
        """Write the job file and start the worker process; returns self."""
        import spatial_al
        from spatial_al.worker import write_job

        self._folder = tempfile.mkdtemp(prefix="spatial-al-job-")
        write_job(self._folder, self.name, self.arguments)
        environment = dict(os.environ)
        backend = os.path.dirname(os.path.dirname(os.path.abspath(spatial_al.__file__)))
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (backend, environment.get("PYTHONPATH")) if p)
        environment["PYTHONUNBUFFERED"] = "1"
        self._process = subprocess.Popen(
            [workerPython(), "-m", "spatial_al.worker", self._folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.state = RUNNING
        for stream, handler in (
            (self._process.stdout, self._events.put),
            (self._process.stderr, self._errorLines.append),
        ):
            threading.Thread(target=self._readLines, args=(stream, handler), daemon=True).start()
        return self

    @staticmethod
    def _readLines(stream, handler):
        for line in stream:
            handler(line.rstrip("\n"))

    def poll(self):
        """Take in what the worker reported since the last call, without waiting; returns the state.

        ``progress`` is the last (done, total, message); once the process has ended the state is FINISHED, FAILED
        (``error`` says why) or CANCELLED.
        """
        if self.state != RUNNING:
            return self.state
        while True:
            try:
                line = self._events.get_nowait()
            except queue.Empty:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a library printing to stdout; not ours
            if "progress" in event:
                self.progress = tuple(event["progress"])
            elif "failed" in event:
                self.error = event["failed"]
        if self._process.poll() is not None and self._events.empty():
            self._settle()
        return self.state

    def _settle(self):
        status = self._process.returncode
        if self._cancelRequested or status == 130:
            self.state = CANCELLED  # a result that came in as the cancel was asked for is not applied either
        elif status == 0:
            self.state = FINISHED
        else:
            self.state = FAILED
            self.error = self.error or "\n".join(self._errorLines[-5:]) or f"the worker exited with status {status}"

    def wait(self, progress=None, interval=0.05):
        """Poll until the job ends, forwarding progress to ``progress`` (and its cancel requests); returns the state."""
        import time

        while self.poll() == RUNNING:
            if progress is not None:
                progress.progress(*self.progress)
                if progress.should_cancel():
                    self.cancel()
            time.sleep(interval)
        return self.state

    @property
    def running(self):
        return self.state == RUNNING

    def cancel(self):
        """Ask the worker to stop at its next step (SIGTERM); it is killed if it has not after a grace period. The
        state stays RUNNING until the process has ended, then reads CANCELLED."""
        if self._process is None or self._process.poll() is not None:
            return
        self._cancelRequested = True
        self._process.terminate()
        killer = threading.Timer(CANCEL_GRACE_SECONDS, self._killIfAlive)
        killer.daemon = True  # never keeps Slicer from exiting
        killer.start()

    def _killIfAlive(self):
        if self._process.poll() is None:
            self._process.kill()

    def finish(self):
        """The result applied to the scene (call once the state is FINISHED, in the main thread); the job's files
        are removed whatever the state."""
        from spatial_al.worker import read_result

        try:
            if self.state != FINISHED:
                raise RuntimeError(f"{self.description} did not finish ({self.state}): {self.error}")
            return self.apply(read_result(self._folder))
        finally:
            self.cleanup()

    def cleanup(self):
        """Remove the job's folder (inputs and result)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
