"""What the panels of both modules share: the parameter-node plumbing of Slicer's scripted-module template, choice
lists filled from a backend registry, and actions whose button turns into Cancel while their work runs, in a worker
process (:mod:`SpatialALSlicerLib.BackgroundWork`) or, for work of well under a second, at once.

No computation here: panels only wire the GUI to their Logic.
"""

import slicer
import vtk
from slicer.i18n import tr as _

TOOLTIP_ROLE = 3  # Qt.ToolTipRole: the one-line explanation of a strategy or method


class SessionWidgetMixin:
    """Mixed in before ``ScriptedLoadableModuleWidget`` and ``VTKObservationMixin``.

    The panel has ``self.ui`` (with ``segmentationSelector``, ``segmentsTableView``, ``progressBar``) and
    ``self.logic`` (whose parameter node has ``inputVolume`` and ``segmentation``), and implements
    ``updateGUIFromParameterNode()`` (enabling its action buttons with :meth:`actionEnabled`), ``populateChoices()``
    and ``showStatus(text)``; it calls :meth:`startSession` at the end of setup.
    """

    def startSession(self):
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.initializeWork()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.ui.segmentsTableView.setSegmentationNode
        )
        self.initializeParameterNode()

    def initializeWork(self):
        """Nothing runs yet: no in-process progress, no background job, no poll timer."""
        self._progress = None
        self._job = None
        self._jobTimer = None
        self._runningButton = None

    def cleanup(self):
        self.stopWork()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.populateChoices()

    def exit(self):
        """Leaving the panel stops work running in this process (it pumps the GUI's events); a job in a worker
        process goes on, and its result is written when it arrives, so a model can train while the radiologist
        annotates in the Segment Editor. Closing the module (``cleanup``) cancels it."""
        if self._progress is not None:
            self._progress.requestCancel()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.stopWork()  # its result would land in nodes that are going away
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.segmentation:
            self._parameterNode.segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def selectedSegmentIds(self):
        """Segments selected in the table, or None (all segments)."""
        return list(self.ui.segmentsTableView.selectedSegmentIDs()) or None

    def fillChoices(self, comboBox, entries, current):
        """Fill ``comboBox`` once with (name, explanation) entries, installing the dependencies first if needed."""
        if comboBox.count:
            return
        from SpatialALSlicerLib.Dependencies import ensureDependencies

        with slicer.util.tryWithErrorDisplay(_("Failed to install dependencies."), waitCursor=True):
            if not ensureDependencies():
                return
            for name, summary in entries():
                comboBox.addItem(name)
                comboBox.setItemData(comboBox.count - 1, summary, TOOLTIP_ROLE)
            comboBox.setCurrentText(current)

    @staticmethod
    def choiceHelp(comboBox):
        return comboBox.itemData(comboBox.currentIndex, TOOLTIP_ROLE) or ""

    @property
    def isRunning(self):
        return self._progress is not None or self._job is not None

    def actionEnabled(self, button, ready):
        """Whether an action ``button`` is enabled: ``ready`` while nothing runs; while work runs, only the button
        of that work (it reads Cancel)."""
        return button is self._runningButton if self.isRunning else ready

    def runJob(self, button, failureMessage, makeJob, onFinished, inBackground):
        """Run the Logic job that ``makeJob()`` prepares from the scene, then ``onFinished(result)``.

        In the background (``inBackground``; training, prediction, model-based ranking, slow propagation) the job
        runs in a worker process: the progress bar follows it, ``button`` reads Cancel, the other actions are
        disabled, and the result is written into the scene when it arrives. A cancel is reported as "Cancelled",
        not as an error. Otherwise (work of well under a second) it runs here at once, cancellable between steps.
        Pressing ``button`` again while its work runs cancels it.
        """
        if self._job is not None:
            self._job.cancel()
            button.text = _("Cancelling...")
            return
        from SpatialALSlicerLib.Dependencies import dependenciesMet, ensureDependencies

        with slicer.util.tryWithErrorDisplay(_("Failed to install dependencies."), waitCursor=True):
            if not dependenciesMet() and not ensureDependencies(askAgain=True):  # pressed after a "no": ask again
                self.showStatus(_("The Python packages this needs are not installed."))
                return
        if not inBackground:
            self.runCancellable(button, failureMessage, lambda progress: onFinished(makeJob().runHere(progress)))
            return
        with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=True):
            self._job = makeJob().start()
        if self._job is None:
            return
        import qt

        self._jobFailureMessage, self._jobFinished = failureMessage, onFinished
        self._runningButton = button
        button.text = _("Cancel")
        self.updateGUIFromParameterNode()
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(100)
        self._jobTimer.connect("timeout()", self._pollJob)
        self._jobTimer.start()

    def _pollJob(self):
        from SpatialALSlicerLib.BackgroundWork import CANCELLED, FINISHED, RUNNING
        from SpatialALSlicerLib.GuiProgress import showProgress

        job = self._job
        state = job.poll()
        showProgress(self.ui.progressBar, *job.progress)
        if state == RUNNING:
            return
        self._jobTimer.stop()
        self._job = self._runningButton = None
        try:
            if state == FINISHED:
                with slicer.util.tryWithErrorDisplay(self._jobFailureMessage, waitCursor=True):
                    self._jobFinished(job.finish())
            elif state == CANCELLED:
                self.showStatus(_("Cancelled."))
            else:
                slicer.util.errorDisplay(f"{self._jobFailureMessage}\n\n{job.error}")
        finally:  # whatever the result did, the buttons read as they should again
            job.cleanup()
            self.updateGUIFromParameterNode()

    def stopWork(self):
        """End the background job now, if any (the module is reloaded or closed, the scene or the application is
        closing): its process tree is killed, its result dropped and its files removed."""
        if self._job is not None:
            self._jobTimer.stop()
            job, self._job, self._runningButton = self._job, None, None
            job.stop()

    def runCancellable(self, button, failureMessage, work):
        """Run ``work(progress)`` here; meanwhile ``button`` reads Cancel and stops the work at its next step."""
        from spatial_al.progress import OperationCancelled
        from SpatialALSlicerLib.GuiProgress import GuiProgress

        if self._progress is not None:  # pressed again while its work runs (events are pumped): Cancel
            self._progress.requestCancel()
            button.text = _("Cancelling...")
            return

        self._progress = GuiProgress(self.ui.progressBar)
        self._runningButton = button
        button.text = _("Cancel")
        self.updateGUIFromParameterNode()
        try:
            with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=True):
                try:
                    work(self._progress)
                except OperationCancelled:
                    self.showStatus(_("Cancelled."))
        finally:
            self._progress = self._runningButton = None
            self.updateGUIFromParameterNode()
