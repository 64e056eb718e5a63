"""What the panels of both modules share: the parameter-node plumbing of Slicer's scripted-module template, choice
lists filled from a backend registry, and an action button that turns into Cancel while its work runs.

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
    ``updateGUIFromParameterNode()`` and ``populateChoices()``; it calls :meth:`startSession` at the end of setup.
    """

    def startSession(self):
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._progress = None
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.ui.segmentsTableView.setSegmentationNode
        )
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.populateChoices()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
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
        return self._progress is not None

    def runCancellable(self, button, failureMessage, work):
        """Run ``work(progress)``; meanwhile ``button`` reads Cancel and stops the work at its next step."""
        if self._progress is not None:
            self._progress.requestCancel()
            return
        from SpatialALSlicerLib.GuiProgress import GuiProgress

        self._progress = GuiProgress(self.ui.progressBar)
        button.text = _("Cancel")
        try:
            with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=True):
                work(self._progress)
        finally:
            self._progress = None
            self.updateGUIFromParameterNode()
