"""The backend's progress-and-cancel protocol on a module panel: a progress bar and a Cancel button.

A long Logic call takes ``progress=GuiProgress(progressBar)``; the widget turns its Apply button into Cancel,
which calls :meth:`GuiProgress.requestCancel`; the call stops at its next step with ``OperationCancelled``.
"""

import slicer


class GuiProgress:
    """Moves ``progressBar`` (a QProgressBar) and keeps the GUI responsive; cancels when asked."""

    def __init__(self, progressBar):
        self.progressBar = progressBar
        self.cancelRequested = False

    def progress(self, done, total, message=""):
        self.progressBar.setMaximum(max(int(total), 1))
        self.progressBar.setValue(int(done))
        self.progressBar.setFormat(f"{message}  %p%" if message else "%p%")
        slicer.app.processEvents()

    def should_cancel(self):
        slicer.app.processEvents()
        return self.cancelRequested

    def requestCancel(self):
        self.cancelRequested = True
