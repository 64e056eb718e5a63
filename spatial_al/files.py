"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a half-written one.

Everything is written to a temporary file in the destination's folder (same file system, so the final
``os.replace`` is atomic) and renamed over the destination once complete; a failure removes the temporary file.
A folder many processes could write (a study's) is taken by one writer at a time with :func:`exclusive_folder`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = ".spatial-al.lock"


class FolderInUseError(ValueError):
    """Another process writes the folder; the message names it and what to do."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` when the block ends normally.

    The temporary name keeps ``path``'s suffixes (writers that choose a format by suffix still work) and starts with
    a dot, so folder listings ignore it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or a platform without signal 0
        return True
    return True


@contextmanager
def exclusive_folder(folder: str | Path, what: str = "study") -> Iterator[Path]:
    """Within the block, this process is the only writer of ``folder`` (created if needed): a lock file there names
    it (process ID, host, start, command). A second writer is refused with :class:`FolderInUseError` naming the
    first; a lock left by a process of this host that no longer runs (killed) is taken over. The lock goes when the
    block ends, however it ends.

    The lock file is written whole under a temporary name, then linked to its own name, which fails if it exists:
    taking it is atomic, and it is never seen half-written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    handle, temporary = tempfile.mkstemp(prefix=f"{LOCK_FILE}.", dir=folder)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(holder))
        while True:  # a stale lock is removed, then taking it is tried again
            try:
                os.link(temporary, lock)
                break
            except FileExistsError:
                try:
                    other = json.loads(lock.read_text())
                except (OSError, ValueError):
                    other = {}
                if other.get("host") == holder["host"] and not _process_runs(int(other.get("pid", 0))):
                    lock.unlink(missing_ok=True)  # its writer was killed: the lock is stale
                    continue
                raise FolderInUseError(
                    f"{str(folder)!r} is being written by another {what} (process {other.get('pid', '?')} on "
                    f"{other.get('host', '?')}, started {other.get('started', '?')}: {other.get('command', '?')}). "
                    f"Wait for it to end, or give another --output; if that process no longer runs (a machine that "
                    f"crashed), delete {str(lock)!r}."
                ) from None
    finally:
        os.unlink(temporary)
    try:
        yield folder
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == holder["pid"]:
                lock.unlink()
        except (OSError, ValueError):
            pass
