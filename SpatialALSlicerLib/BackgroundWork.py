"""Long work in a child process, so that Slicer's GUI stays responsive while a model trains, predicts, ranks or
propagates (as SlicerMONAIAuto3DSeg and SlicerTotalSegmentator run theirs).

A :class:`BackgroundJob` is what a Logic prepares from the scene: the name of a backend job
(:data:`spatial_al.worker.JOBS`), its arguments (arrays read from the nodes) and ``apply``, which writes the result
into the scene. :meth:`BackgroundJob.start` runs the job in a child Python process (PythonSlicer in Slicer, this
interpreter elsewhere); :meth:`BackgroundJob.poll` reads its progress without waiting (a panel calls it from a
timer); :meth:`BackgroundJob.cancel` asks it to stop at its next step; :meth:`BackgroundJob.stop` ends it at once;
:meth:`BackgroundJob.finish` applies the result in the calling (main) thread. :meth:`BackgroundJob.runHere` runs the
same job in this process instead, for the Python console and batch scripts. The scene is only read before the job
starts and written after it ends.

In Slicer, PythonSlicer is a launcher that starts Python as its child: the worker is not the process started here.
So the worker writes its own process ID into the job folder, a cancel is a file there (read at the worker's next
step, on every platform), the job counts as running until the worker itself has ended, and stopping kills the whole
process tree (psutil, as SlicerMONAIAuto3DSeg does; on POSIX also the process group the job was started in). The
job folder (image and masks, pickled) lies under Slicer's temporary folder and is removed on every way out; jobs still
running when Python exits are stopped.

This file imports nothing of Slicer's application: the Logic's tests run it on slicer-core.
"""

import atexit
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref

RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"
CANCEL_GRACE_SECONDS = 10  # a cancelled job that has not stopped by then (between two steps) is killed
READER_JOIN_SECONDS = 5  # how long the end of a job waits for the last lines of its output
_runningJobs = weakref.WeakSet()  # stopped when Python exits (Slicer's exit included)


def workerPython():
    """PythonSlicer in Slicer (the application's Python, with the packages installed into it), else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


def jobsFolder():
    """Where job folders go: Slicer's temporary folder (Application Settings), else the system's."""
    try:
        import slicer

        return slicer.app.temporaryPath
    except (ImportError, AttributeError):  # not in the Slicer application (slicer-core, the tests)
        return tempfile.gettempdir()


def processAlive(pid):
    """Whether process ``pid`` runs (a zombie, ended but not reaped yet, does not count)."""
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def killProcessTree(rootPid, otherPids=()):
    """Kill ``rootPid``, every descendant of it and ``otherPids`` (a worker whose launcher ended is no longer
    anyone's descendant); on POSIX also the process group ``rootPid`` leads."""
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rootPid, signal.SIGKILL)
    try:
        import psutil
    except ImportError:  # then only the processes named (POSIX: and their group)
        for pid in (rootPid, *otherPids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        return
    processes = []
    for pid in (rootPid, *otherPids):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            processes += [process, *process.children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


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
        self._workerPid = None
        self._outcome = None  # the worker's last word: "finished", "cancelled" or "failed"
        self._events = queue.Queue()
        self._errorLines = []
        self._readers = []
        self._killer = None

    # -- in this process ---------------------------------------------------------------------------------------------

    def runHere(self, progress=None):
        """Run the job in this process and apply its result; returns what ``apply`` returns."""
        from spatial_al.worker import run_job

        return self.apply(run_job(self.name, self.arguments, progress))

    # -- in a child process -------------------------------------------------------------------------------------------

    def start(self):
        """Write the job file into a folder of its own and start the worker process; returns self. Nothing is left
        behind when this fails."""
        import spatial_al
        from spatial_al.worker import write_job

        self._folder = tempfile.mkdtemp(prefix="spatial-al-job-", dir=jobsFolder())
        try:
            write_job(self._folder, self.name, self.arguments)
            environment = dict(os.environ)
            backend = os.path.dirname(os.path.dirname(os.path.abspath(spatial_al.__file__)))
            environment["PYTHONPATH"] = os.pathsep.join(p for p in (backend, environment.get("PYTHONPATH")) if p)
            environment["PYTHONUNBUFFERED"] = "1"
            self._process = subprocess.Popen(
                [workerPython(), "-m", "spatial_al.worker", self._folder],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
                **self._detachedFromThisConsole(),
            )
        except BaseException:
            self.cleanup()
            raise
        self.state = RUNNING
        _runningJobs.add(self)
        outputs = ((self._process.stdout, self._events.put), (self._process.stderr, self._errorLines.append))
        for stream, handler in outputs:
            reader = threading.Thread(target=self._readLines, args=(stream, handler), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    @staticmethod
    def _detachedFromThisConsole():
        """Popen options: on Windows no console window (as ``slicer.util.launchConsoleProcess`` hides it) and a
        process group of its own; on POSIX a session of its own, so that stopping reaches everything it started."""
        if os.name != "nt":
            return {"start_new_session": True}
        hidden = subprocess.STARTUPINFO()
        hidden.dwFlags = subprocess.STARTF_USESHOWWINDOW
        hidden.wShowWindow = 0  # SW_HIDE
        return {"startupinfo": hidden, "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}

    @staticmethod
    def _readLines(stream, handler):
        for line in stream:
            handler(line.rstrip("\n"))

    def poll(self):
        """Take in what the worker reported since the last call, without waiting; returns the state.

        ``progress`` is the last (done, total, message); once the worker has ended (and its launcher) the state is
        FINISHED, FAILED (``error`` says why) or CANCELLED, and the job folder is gone unless FINISHED (then
        :meth:`finish` reads the result and removes it).
        """
        if self.state != RUNNING:
            return self.state
        self._takeEvents()
        if self._process.poll() is None or self._workerRuns():
            return self.state
        for reader in self._readers:  # the worker's last lines (its error message) come in before the state settles
            reader.join(READER_JOIN_SECONDS)
        self._takeEvents()
        self._settle()
        return self.state

    def _takeEvents(self):
        while True:
            try:
                line = self._events.get_nowait()
            except queue.Empty:
                return
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a library printing to stdout; not ours
            if not isinstance(event, dict):
                continue
            if "progress" in event:
                self.progress = tuple(event["progress"])
            elif "failed" in event:
                self._outcome, self.error = FAILED, event["failed"]
            elif "finished" in event:
                self._outcome = FINISHED
            elif "cancelled" in event:
                self._outcome = CANCELLED

    def workerPid(self):
        """The worker's own process ID, once it has written it (None before)."""
        if self._workerPid is None and self._folder is not None:
            from spatial_al.worker import PID_FILE

            try:
                with open(os.path.join(self._folder, PID_FILE)) as file:
                    self._workerPid = int(file.read())
            except (OSError, ValueError):
                return None
        return self._workerPid

    def _workerRuns(self):
        pid = self.workerPid()
        return pid is not None and pid != self._process.pid and processAlive(pid)

    def _settle(self):
        _runningJobs.discard(self)
        if self._killer is not None:
            self._killer.cancel()
        status = self._process.returncode
        if self._cancelRequested or self._outcome == CANCELLED or status == 130:
            self.state = CANCELLED  # a result that came in as the cancel was asked for is not applied either
        elif self._outcome == FINISHED or (self._outcome is None and status == 0):
            self.state = FINISHED
        else:
            self.state = FAILED
            self.error = self.error or "\n".join(self._errorLines[-5:]) or f"the worker exited with status {status}"
        if self.state != FINISHED:
            self.cleanup()

    def wait(self, progress=None, interval=0.05):
        """Poll until the job ends, forwarding progress to ``progress`` (and its cancel requests); returns the state."""
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

    def cancel(self, graceSeconds=CANCEL_GRACE_SECONDS):
        """Ask the worker to stop at its next step (the cancel file, and SIGTERM on POSIX); the process tree is killed
        if it has not stopped after ``graceSeconds``. The state stays RUNNING until the worker has ended, then reads
        CANCELLED."""
        if self.state != RUNNING or self._cancelRequested:
            return
        from spatial_al.worker import CANCEL_FILE

        self._cancelRequested = True
        with open(os.path.join(self._folder, CANCEL_FILE), "w"):
            pass
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGTERM)  # the launcher and the worker behind it
        self._killer = threading.Timer(graceSeconds, self._kill)
        self._killer.daemon = True  # never keeps Slicer from exiting
        self._killer.start()

    def _kill(self):
        pid = self.workerPid()
        killProcessTree(self._process.pid, [pid] if pid is not None else [])

    def stop(self, timeout=5.0):
        """End the job now (the scene is closing, the module is reloaded, the application exits): the process tree is
        killed, the result dropped and the job folder removed; returns once the worker has ended (or ``timeout``)."""
        if self.state != RUNNING:
            self.cleanup()
            return
        self._cancelRequested = True
        self._kill()
        deadline = time.monotonic() + timeout
        while self.poll() == RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        self.cleanup()

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


@atexit.register
def stopRunningJobs():
    """Stop every job still running (Python is exiting: Slicer closes, or a script ends)."""
    for job in list(_runningJobs):
        job.stop(timeout=2.0)
