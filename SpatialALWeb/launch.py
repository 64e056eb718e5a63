"""``spatial-al web`` as a child process, for the browser tests and the speed benchmark: started in a process group of
its own, its URL read from what it prints, stopped by its pid."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

START_SECONDS = 120


class ServerProcess:
    """``spatial-al web --output OUTPUT --host HOST`` running; ``url`` is the page's address with its secret.

    Raises:
        RuntimeError: the server printed no URL within ``START_SECONDS`` (its last lines are in the message).
    """

    def __init__(self, output: Path, host: str = "127.0.0.1", data: Path | None = None):
        self.output = Path(output)
        command = [sys.executable, "-m", "spatial_al.cli", "web", "--output", str(output), "--host", host]
        self.startedAt = time.perf_counter()
        self.process = subprocess.Popen(
            [*command, *([str(data)] if data is not None else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.url = self._readUrl()

    def _readUrl(self) -> str:
        deadline, lines = time.monotonic() + START_SECONDS, []
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and self.process.poll() is None:
                if not selector.select(timeout=1):
                    continue
                line = self.process.stdout.readline()
                lines.append(line)
                found = re.search(r"(http://\S+\?secret=\S+)", line)
                if found:
                    return found.group(1)
        self.stop()
        raise RuntimeError("spatial-al web printed no URL:\n" + "".join(lines[-30:]))

    def stop(self) -> None:
        """End the server's process group (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process.stdout.close()
