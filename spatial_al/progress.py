"""One progress-and-cancel protocol for every long call of the backend.

A long function takes ``progress: ProgressReporter | None`` and calls ``progress.progress(done, total, message)``
as it works and ``progress.should_cancel()`` between steps; :func:`report` and :func:`check_cancelled` do both in
one call and accept ``None``. The CLI passes a :class:`TqdmProgress`, Slicer's widgets an object that moves a
progress bar and reads a Cancel button, tests a :class:`RecordingProgress`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class OperationCancelled(RuntimeError):
    """Raised inside a long call when its progress reporter asked to cancel; no result was written."""


@runtime_checkable
class ProgressReporter(Protocol):
    """What a long call reports to, and asks whether to stop."""

    def progress(self, done: int, total: int, message: str = "") -> None:
        """``done`` of ``total`` steps are finished; ``message`` says what is being done."""

    def should_cancel(self) -> bool:
        """True when the caller wants the call to stop at the next step."""


def check_cancelled(progress: ProgressReporter | None) -> None:
    """Raise :class:`OperationCancelled` if ``progress`` asks to cancel."""
    if progress is not None and progress.should_cancel():
        raise OperationCancelled("Cancelled by the user; nothing was written.")


def report(progress: ProgressReporter | None, done: int, total: int, message: str = "") -> None:
    """Report a step to ``progress`` (if any), then stop if it asks to cancel."""
    if progress is not None:
        progress.progress(done, total, message)
    check_cancelled(progress)


class TqdmProgress:
    """Progress bar on the terminal (used by the CLI); never cancels by itself."""

    def __init__(self, description: str = "", disable: bool = False):
        self._description = description
        self._disable = disable
        self._bar = None

    def progress(self, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: it can outlive ITK's teardown at exit and crash it
        if self._bar is None or self._bar.total != total:
            self.close()
            self._bar = tqdm(total=total, desc=self._description, disable=self._disable, leave=False)
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def should_cancel(self) -> bool:
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclass
class RecordingProgress:
    """Keeps every report; cancels once ``cancel_after`` reports were made (None: never)."""

    cancel_after: int | None = None
    reports: list[tuple[int, int, str]] = field(default_factory=list)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.reports.append((done, total, message))

    def should_cancel(self) -> bool:
        return self.cancel_after is not None and len(self.reports) >= self.cancel_after
