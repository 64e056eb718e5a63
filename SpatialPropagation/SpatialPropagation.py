import logging
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

# Loaded from the source tree ("Additional module paths"), the shared packages sit one folder up.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_SOURCE_ROOT, "spatial_al")) and _SOURCE_ROOT not in sys.path:
    sys.path.append(_SOURCE_ROOT)

from SpatialALSlicerLib.ModuleWidget import SessionWidgetMixin  # noqa: E402  (after the path is set)

SLICE_PLANES = ["axial", "coronal", "sagittal"]

#
# SpatialPropagation
#


class SpatialPropagation(ScriptedLoadableModule):
    """Fills the slices between annotated slices with pseudo-labels propagated from them."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Spatial Propagation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SpatialActiveLearning developers"]
        self.parent.helpText = _(
            "Propagates the annotated slices of a segmentation to the slices between them. Annotated slices and "
            "anything you drew elsewhere are never changed; which slices are annotated and which are propagated "
            "(with a confidence) is recorded in the segments and saved with the segmentation."
        )
        self.parent.acknowledgementText = _(
            "Signed-distance interpolation as in 'Less Is More'; morphological contour interpolation is ITK's "
            "filter behind Slicer's 'Fill between slices' (Zukic et al., 2016)."
        )


#
# SpatialPropagationParameterNode
#


@parameterNodeWrapper
class SpatialPropagationParameterNode:
    """The module's state, saved with the scene.

    inputVolume: the scan. segmentation: the segments to fill. sliceAxis: plane of the slices.
    method: propagation method. annotatedSlices: e.g. "0,10,20" ("" = the slices recorded in the segments).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    sliceAxis: Annotated[str, Choice(SLICE_PLANES)] = "axial"
    method: str = "sdf"
    annotatedSlices: str = ""


#
# SpatialPropagationWidget
#


class SpatialPropagationWidget(SessionWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires the .ui to the Logic; every computation is in the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpatialPropagation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpatialPropagationLogic()

        self.ui.propagateButton.connect("clicked(bool)", self.onPropagateButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.methodComboBox.connect("currentTextChanged(QString)", self.onMethodChanged)
        self.startSession()

    def populateChoices(self) -> None:
        self.fillChoices(self.ui.methodComboBox, self.logic.methods, self._parameterNode.method)

    def onMethodChanged(self, name) -> None:
        if self._parameterNode and name:
            self._parameterNode.method = name
            self.ui.methodHelpLabel.text = self.choiceHelp(self.ui.methodComboBox)

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        node = self._parameterNode
        ready = bool(node and node.inputVolume and node.segmentation)
        if not self.isRunning:
            self.ui.propagateButton.text = _("Propagate")
            self.ui.propagateButton.enabled = ready
            self.ui.propagateButton.toolTip = (
                _("Fill the slices between annotated slices") if ready else _("Select a volume and a segmentation")
            )
        self.ui.undoButton.enabled = (
            bool(node and node.segmentation and self.logic.canUndo(node.segmentation)) and not self.isRunning
        )

    def onPropagateButton(self) -> None:
        from spatial_al.volume import parse_slice_list

        node = self._parameterNode

        def propagate(progress):
            outcome = self.logic.propagate(
                node.inputVolume,
                node.segmentation,
                self.selectedSegmentIds(),
                annotatedSlices=parse_slice_list(node.annotatedSlices) if node.annotatedSlices.strip() else None,
                method=node.method,
                sliceAxis=node.sliceAxis,
                progress=progress,
            )
            self.ui.resultLabel.text = outcome.summary()

        self.runCancellable(self.ui.propagateButton, _("Propagation failed."), propagate)

    def onUndoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            self.logic.undo(self._parameterNode.segmentation)
            self.ui.resultLabel.text = _("The segments are back as they were before the last propagation.")
        self.updateGUIFromParameterNode()


#
# SpatialPropagationLogic
#


@dataclass
class PropagationOutcome:
    """What :meth:`SpatialPropagationLogic.propagate` did.

    Attributes:
        annotated: annotated slice indices used as sources.
        propagated: slice indices that received pseudo-labels.
        confidence: per-slice confidence (numpy array, NaN where nothing was propagated).
        keptEdited: segment ID -> slices left untouched because a person drew there.
        method: propagation method.
    """

    annotated: Any
    propagated: Any
    confidence: Any
    keptEdited: dict
    method: str

    def summary(self):
        text = _("{propagated} slices propagated from {annotated} annotated slices ({method}).").format(
            propagated=len(self.propagated), annotated=len(self.annotated), method=self.method
        )
        if self.keptEdited:
            kept = sorted({index for slices in self.keptEdited.values() for index in slices})
            text += " " + _("Slices {slices} hold your own drawing and were left as they are.").format(slices=kept)
        return text


class SpatialPropagationLogic(ScriptedLoadableModuleLogic):
    """Every computation of the module, usable from the Python console and in batch mode.

    Slice indices run along an array axis of the volume's voxel array in KJI order (``arrayFromVolume`` order).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SpatialPropagationParameterNode(super().getParameterNode())

    @staticmethod
    def methods():
        """(name, one-line explanation) of every propagation method."""
        from spatial_al.propagation import PROPAGATORS

        return [(entry.name, entry.summary) for entry in PROPAGATORS.entries()]

    def propagate(
        self,
        volumeNode,
        segmentationNode,
        segmentIds=None,
        annotatedSlices=None,
        method="sdf",
        sliceAxis="axial",
        progress=None,
        **options,
    ):
        """Fill the slices between annotated slices of the segments, in place, keeping every voxel a person drew.

        Args:
            volumeNode: the scan; slices are on its voxel grid.
            segmentationNode: the segmentation to fill.
            segmentIds: segments to fill (None: all).
            annotatedSlices: slices used as sources (None: those recorded in the segments).
            method: propagation method (see :meth:`methods`).
            sliceAxis: 0, 1, 2 (KJI array axis) or "axial" / "coronal" / "sagittal".
            progress: progress reporter (``progress(done, total, message)``, ``should_cancel()``).
            **options: options of the method.

        Returns:
            A :class:`PropagationOutcome`.

        Raises:
            ValueError: no annotated slice, unknown method or segment, unusable volume.
        """
        from spatial_al.session import propagate_layers
        from SpatialALSlicerLib import MRMLAdapter

        axis = MRMLAdapter.sliceAxisIndex(volumeNode, sliceAxis)
        segmentIds = MRMLAdapter.segmentIdsOrAll(segmentationNode, segmentIds)
        if annotatedSlices is None:
            annotatedSlices = MRMLAdapter.recordedAnnotatedSlices(segmentationNode, segmentIds, axis)
        if len(annotatedSlices) == 0:
            raise MRMLAdapter.MRMLInputError(
                "No annotated slice: annotate slices and mark them annotated (Active Slice Selector), or list them "
                "in 'Annotated slices'."
            )
        segmentation = MRMLAdapter.segmentationFromNode(segmentationNode, volumeNode, segmentIds)
        image = MRMLAdapter.arrayFromVolumeNode(volumeNode)
        layers = propagate_layers(segmentation, annotatedSlices, method, image, axis, progress, **options)
        MRMLAdapter.saveUndoSnapshot(segmentationNode, segmentIds)
        keptEdited = MRMLAdapter.writePseudoLabels(
            segmentationNode,
            volumeNode,
            layers.pseudo_masks,
            layers.annotated,
            layers.propagated,
            layers.confidence,
            axis,
            method,
        )
        outcome = PropagationOutcome(layers.annotated, layers.propagated, layers.confidence, keptEdited, method)
        logging.info(outcome.summary())
        return outcome

    @staticmethod
    def canUndo(segmentationNode):
        """Whether :meth:`undo` has a propagation to take back."""
        from SpatialALSlicerLib import MRMLAdapter

        return segmentationNode.GetNodeReference(MRMLAdapter.UNDO_REFERENCE_ROLE) is not None

    def undo(self, segmentationNode):
        """Restore the segments exactly as they were before the last propagation (edits made since are dropped);
        returns the restored segment IDs. Raises MRMLInputError when there is nothing to undo."""
        from SpatialALSlicerLib import MRMLAdapter

        return MRMLAdapter.restoreUndoSnapshot(segmentationNode)

    def accept(self, volumeNode, segmentationNode, segmentIds, slices, sliceAxis="axial", tableNode=None):
        """Turn propagated slices into annotated ones (their labels, as they are now, become annotation): the record
        moves them from propagated to annotated, so later propagation uses them as sources and never changes them.
        Returns all annotated slices."""
        from SpatialALSlicerLib import MRMLAdapter

        return MRMLAdapter.markSlicesAnnotated(volumeNode, segmentationNode, segmentIds, slices, sliceAxis, tableNode)


#
# SpatialPropagationTest
#


class SpatialPropagationTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (ctest / Reload and Test) and under pytest with the slicer-core stand-in."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PropagateKeepsAnnotation()

    def test_PropagateKeepsAnnotation(self):
        import numpy as np

        from spatial_al.volume import Geometry
        from SpatialALSlicerLib import MRMLAdapter

        self.delayDisplay("Propagating a growing disc between two annotated slices")
        geometry = Geometry((11, 32, 32), spacing=(1.0, 1.0, 2.0))
        rows, columns = np.mgrid[:32, :32]
        truth = np.stack([(rows - 16) ** 2 + (columns - 16) ** 2 <= (4 + k) ** 2 for k in range(11)])
        volumeNode = MRMLAdapter.addVolumeNode(slicer.mrmlScene, truth.astype(np.int16) * 100, geometry, "disc")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("disc")
        annotation = np.zeros_like(truth)
        annotation[[0, 10]] = truth[[0, 10]]
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, annotation)

        outcome = SpatialPropagationLogic().propagate(volumeNode, segmentationNode, None, [0, 10], "sdf", 0)
        result = MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode)
        self.assertEqual(outcome.propagated.tolist(), list(range(1, 10)))
        np.testing.assert_array_equal(result[[0, 10]], truth[[0, 10]])
        radii = np.sqrt(result.sum(axis=(1, 2)) / np.pi)
        np.testing.assert_allclose(radii, 4 + np.arange(11), atol=0.6)
        self.assertEqual(MRMLAdapter.sliceRecord(segmentationNode, segmentId).propagated, tuple(range(1, 10)))
        self.delayDisplay("Test passed")
