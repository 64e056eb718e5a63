"""The backend's progress-and-cancel protocol on a module panel: a progress bar and a Cancel button.

Work of well under a second runs in the GUI's process with ``progress=GuiProgress(progressBar)``; the widget turns
its button into Cancel, which calls :meth:`GuiProgress.requestCancel`; the call stops at its next step with
``OperationCancelled``. Longer work runs in a worker process (:mod:`SpatialALSlicerLib.BackgroundWork`) whose
progress the panel shows with :func:`showProgress`.
"""

import slicer


def showProgress(progressBar, done, total, message=""):
    """Set a QProgressBar to ``done`` of ``total`` with ``message`` beside the percentage."""
    progressBar.setMaximum(max(int(total), 1))
    progressBar.setValue(int(done))
    progressBar.setFormat(f"{message}  %p%" if message else "%p%")


class GuiProgress:
    """Moves ``progressBar`` (a QProgressBar) and keeps the GUI responsive; cancels when asked."""

    def __init__(self, progressBar):
        self.progressBar = progressBar
        self.cancelRequested = False

    def progress(self, done, total, message=""):
        showProgress(self.progressBar, done, total, message)
        slicer.app.processEvents()

    def should_cancel(self):
        slicer.app.processEvents()
        return self.cancelRequested

    def requestCancel(self):
        self.cancelRequested = True
