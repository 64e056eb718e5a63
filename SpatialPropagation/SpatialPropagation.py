import logging
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

# Loaded from the source tree ("Additional module paths"), the shared packages sit one folder up.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_SOURCE_ROOT, "spatial_al")) and _SOURCE_ROOT not in sys.path:
    sys.path.append(_SOURCE_ROOT)

from SpatialALSlicerLib import batchHelp  # noqa: E402  (after the path is set)
from SpatialALSlicerLib.Dependencies import dependenciesMet, requiresDependencies  # noqa: E402
from SpatialALSlicerLib.ModuleWidget import SessionWidgetMixin  # noqa: E402
from SpatialALSlicerLib.SceneObservers import observeWeakly, removeObservations  # noqa: E402

SLICE_PLANES = ["axial", "coronal", "sagittal"]

#
# SpatialPropagation
#


class SpatialPropagation(ScriptedLoadableModule):
    """Fills the slices that are not annotated with pseudo-labels propagated from the annotated ones."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Spatial Propagation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SpatialActiveLearning developers (SpatialActiveLearning open-source project)"]
        self.parent.helpText = _(
            "Propagates the annotated slices of a segmentation to the slices that are not annotated, by interpolation "
            "(sdf, contour), learned slice-to-slice correspondence (sli2vol), the better of the two for this scan as "
            "judged on your own annotated slices (auto) or a trained model (star, model). "
            "Preview shows the result beside the segmentation first. Annotated slices and anything you drew elsewhere "
            "are never changed; which slices are annotated and which are propagated (with a confidence) is recorded "
            "in the segments and saved with the segmentation, and Undo restores the segments as they were."
        )
        self.parent.helpText += "<br><br>" + batchHelp(_)
        self.parent.acknowledgementText = _(
            "Signed-distance interpolation as in 'Less Is More'; morphological contour interpolation is ITK's "
            "filter behind Slicer's 'Fill between slices' (Zukic et al., 2016); spatial aggregation from STAR "
            "(Ma et al., MICCAI 2025); slice-to-slice propagation in the style of Sli2Vol (Yeung et al., MIDL 2021)."
        )


#
# SpatialPropagationParameterNode
#


@parameterNodeWrapper
class SpatialPropagationParameterNode:
    """The module's state, saved with the scene.

    inputVolume: the scan. segmentation: the segments to fill. sliceAxis: plane of the slices.
    method: propagation method. annotatedSlices: e.g. "0,10,20" ("" = the slices recorded in the segments).
    modelPath: checkpoint read by methods that use a model. mostConfident: keep the N most confident propagated
    slices (0 = all). autoUpdate: recompute the preview after each edit of a segment.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    sliceAxis: Annotated[str, Choice(SLICE_PLANES)] = "axial"
    method: str = "sdf"
    annotatedSlices: str = ""
    modelPath: str = ""
    mostConfident: Annotated[int, WithinRange(0, 10000)] = 0  # the .ui spin box's range; never negative
    autoUpdate: bool = False


#
# SpatialPropagationWidget
#


class SpatialPropagationWidget(SessionWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires the .ui to the Logic; every computation is in the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._observedSegmentation = None
        self._previewTimer = None

    def setup(self) -> None:
        import qt  # the application's Qt; absent where only the Logic runs (slicer-core)

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpatialPropagation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpatialPropagationLogic()
        self._previewTimer = qt.QTimer()
        self._previewTimer.setSingleShot(True)
        self._previewTimer.setInterval(500)  # one update after a burst of edits, as Fill between slices waits
        self._previewTimer.connect("timeout()", self.onPreviewButton)

        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagateButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.methodComboBox.connect("currentTextChanged(QString)", self.onMethodChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.startSession()

    def populateChoices(self) -> None:
        self.fillChoices(self.ui.methodComboBox, self.logic.methods, self._parameterNode.method)

    def onMethodChanged(self, name) -> None:
        if self._parameterNode and name:
            self._parameterNode.method = name
            self.ui.methodHelpLabel.text = self.choiceHelp(self.ui.methodComboBox)

    def onModelPathChanged(self, path) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        node = self._parameterNode
        ready = bool(node and node.inputVolume and node.segmentation)
        needsModel = bool(node) and self.methodTraits(node.method)[0]
        if ready and needsModel and not node.modelPath:
            ready, reason = False, _("Choose the model file: this method propagates with a trained model")
        else:
            reason = _("Select a volume and a segmentation")
        if node and self.ui.modelPathLineEdit.currentPath != node.modelPath:
            self.ui.modelPathLineEdit.currentPath = node.modelPath
        self.ui.modelPathLineEdit.enabled = needsModel
        if not self.isRunning:
            self.ui.propagateButton.text = _("Propagate")
            self.ui.previewButton.text = _("Preview")
            for button, tip in (
                (self.ui.propagateButton, _("Fill the slices that are not annotated")),
                (self.ui.previewButton, _("Show the propagation without changing the segmentation")),
            ):
                button.toolTip = tip if ready else reason
        for button in (self.ui.propagateButton, self.ui.previewButton):
            button.enabled = self.actionEnabled(button, ready)
        previewed = bool(node and node.segmentation and self.logic.hasPreview(node.segmentation))
        self.ui.applyButton.enabled = self.actionEnabled(self.ui.applyButton, previewed)
        canUndo = bool(node and node.segmentation and self.logic.canUndo(node.segmentation))
        self.ui.undoButton.enabled = self.actionEnabled(self.ui.undoButton, canUndo)
        self.ui.undoButton.toolTip = _(
            "Restore the segments as they were before the last propagation. The copy it restores is a hidden "
            "segmentation, '<name> (before propagation)', kept in the scene and saved with it until the next "
            "propagation or Undo."
        )
        if node and node.method and self.ui.methodComboBox.currentText != node.method:
            self.ui.methodComboBox.setCurrentText(node.method)  # a reloaded scene's choice
        self.observeEdits(node.segmentation if node else None)

    def methodTraits(self, method):
        """(whether it propagates with a model, whether it is fast enough to follow each edit) of ``method``; (False,
        False) until the backend is installed (the panel loads before it is) or for a name the backend does not
        know (the Logic names the ones it knows when asked to run it)."""
        if not (method and dependenciesMet()):
            return False, False
        try:
            return self.logic.methodUsesModel(method), self.logic.methodIsInteractive(method)
        except ValueError:
            return False, False

    def showStatus(self, text) -> None:
        self.ui.resultLabel.text = text

    def observeEdits(self, segmentationNode) -> None:
        """Watch ``segmentationNode`` for changes (None: watch nothing): they drop its preview, or refresh it."""
        if segmentationNode is self._observedSegmentation:
            return
        if self._observedSegmentation is not None:
            for event in SEGMENTATION_CHANGES:
                self.removeObserver(
                    self._observedSegmentation.GetSegmentation(),
                    getattr(slicer.vtkSegmentation, event),
                    self.onSegmentEdited,
                )
        self._observedSegmentation = segmentationNode
        if segmentationNode is not None:
            for event in SEGMENTATION_CHANGES:
                self.addObserver(
                    segmentationNode.GetSegmentation(), getattr(slicer.vtkSegmentation, event), self.onSegmentEdited
                )

    def onSegmentEdited(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if not (node and node.segmentation and self.logic.previewWasDropped(node.segmentation)) or self.isRunning:
            return
        self.updateGUIFromParameterNode()
        if not node.autoUpdate:
            self.showStatus(_("The segmentation changed, so the preview was dropped; press Preview again."))
        elif not self.methodTraits(node.method)[1]:
            message = _(
                "The preview follows each edit for fast methods (sdf); press Preview to update the {method} one."
            )  # a stroke must never block the editor for a slow method
            self.showStatus(message.format(method=node.method))
        else:
            self._previewTimer.start()

    def propagationArguments(self) -> dict:
        """The Logic's arguments from the panel's state."""
        from spatial_al.volume import parse_slice_list

        node = self._parameterNode
        return {
            "segmentIds": self.selectedSegmentIds(),
            "annotatedSlices": parse_slice_list(node.annotatedSlices) if node.annotatedSlices.strip() else None,
            "method": node.method,
            "sliceAxis": node.sliceAxis,
            "modelPath": node.modelPath,
            "mostConfident": node.mostConfident or None,
        }

    def runPropagation(self, button, failureMessage, prefix, preview) -> None:
        """Propagate (or preview) with the panel's choices: slow methods in a worker process, fast ones at once."""
        node = self._parameterNode
        if not self.isRunning and not self.binaryLabelmapSourceAgreed(node.segmentation):
            return

        def propagationJob():
            return self.logic.propagationJob(
                node.inputVolume, node.segmentation, preview=preview, **self.propagationArguments()
            )

        def showOutcome(outcome):
            self.showStatus(prefix + outcome.summary())

        inBackground = not self.logic.methodIsInteractive(node.method)
        self.runJob(button, failureMessage, propagationJob, showOutcome, inBackground)

    def binaryLabelmapSourceAgreed(self, segmentationNode) -> bool:
        """True when the segmentation is stored as binary labelmaps, or the user agrees to convert it now (as the
        Segment Editor asks before the first edit of closed surfaces); the module's writes would not be saved
        otherwise."""
        if segmentationNode is None or self.logic.sourceIsBinaryLabelmap(segmentationNode):
            return True
        source = segmentationNode.GetSegmentation().GetSourceRepresentationName()
        question = _(
            "Propagation writes binary labelmaps, but {name} is stored as {source}. Changing the source "
            "representation requires conversion, and some details may be lost.\n\nChange the source representation "
            "to binary labelmap?"
        ).format(name=segmentationNode.GetName(), source=source.lower())
        if not slicer.util.confirmYesNoDisplay(question, windowTitle=_("Change source representation?")):
            self.showStatus(_("Nothing was propagated: the segmentation is stored as {source}.").format(source=source))
            return False
        try:
            with slicer.util.tryWithErrorDisplay(_("Conversion failed."), waitCursor=True):
                self.logic.convertToBinaryLabelmap(segmentationNode)
        except Exception:  # shown to the user by tryWithErrorDisplay
            return False
        return True

    def onPreviewButton(self) -> None:
        self.runPropagation(self.ui.previewButton, _("Preview failed."), _("Preview: "), preview=True)

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Apply failed."), waitCursor=True):
            node = self._parameterNode
            self.showStatus(self.logic.applyPreview(node.inputVolume, node.segmentation).summary())
        self.updateGUIFromParameterNode()

    def onPropagateButton(self) -> None:
        self.runPropagation(self.ui.propagateButton, _("Propagation failed."), "", preview=False)

    def exit(self) -> None:
        self._previewTimer.stop()  # no preview update while the panel is not shown
        super().exit()

    def onUndoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            self.logic.undo(self._parameterNode.segmentation, self._parameterNode.inputVolume)
            self.showStatus(_("The segments are back as they were before the last propagation."))
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
        keptEdited: segment ID -> slices left untouched because a person drew there, or drew, erased or marked
            annotated there while the propagation ran.
        method: propagation method.
    """

    annotated: Any
    propagated: Any
    confidence: Any
    keptEdited: dict
    method: str

    def summary(self):
        import numpy as np

        text = _("{propagated} slices propagated from {annotated} annotated slices ({method}).").format(
            propagated=len(self.propagated), annotated=len(self.annotated), method=self.method
        )
        if len(self.propagated):
            confidence = np.asarray(self.confidence)[np.asarray(self.propagated)]
            lowest = np.argsort(confidence, kind="stable")[:3]
            slices = ", ".join(f"{int(self.propagated[i])} ({confidence[i]:.2f})" for i in lowest)
            text += " " + _("Least confident, to review first: {slices}.").format(slices=slices)
        if self.keptEdited:
            kept = sorted({index for slices in self.keptEdited.values() for index in slices})
            text += " " + _(
                "Slices {slices} hold your own work (drawn, edited, or changed while the propagation ran) and were "
                "left as they are."
            ).format(slices=kept)
        return text


@dataclass
class Preview:
    """A propagation shown beside a segmentation, not written yet (see :meth:`SpatialPropagationLogic.propagationJob`).

    Attributes:
        segmentIds: the segments propagated.
        layers: the backend's ``LayerPropagation``.
        axis: slice axis (KJI array axis).
        method: propagation method.
        asRead: segment ID -> per-slice checksums of the segment as the propagation read it.
        observations: (object, observer tag) of the observers that drop the preview when the segmentation changes.
    """

    segmentIds: list
    layers: Any
    axis: int
    method: str
    asRead: dict
    observations: list


# Changes of a segmentation that make its preview stale: a stroke (the labelmap), a tag (a slice marked annotated),
# a segment added or removed. Fill between slices watches the same.
SEGMENTATION_CHANGES = ("SegmentModified", "SourceRepresentationModified", "SegmentAdded", "SegmentRemoved")


class SpatialPropagationLogic(ScriptedLoadableModuleLogic):
    """Every computation of the module, usable from the Python console and in batch mode.

    Slice indices run along an array axis of the volume's voxel array in KJI order (``arrayFromVolume`` order).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # segmentation node -> its Preview. Keyed by the node, not its ID: IDs start again after a scene is closed,
        # and a preview must never reach another scene.
        self._previews = {}
        self._droppedPreviews = set()  # segmentation nodes whose preview a change made stale
        self._sceneObservation = observeWeakly(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._forgetScene)

    def __del__(self):
        removeObservations([self._sceneObservation])

    def _forgetScene(self, caller=None, event=None):
        for segmentationNode in list(self._previews):
            self._dropPreview(segmentationNode)
        self._droppedPreviews.clear()
        sli2vol = sys.modules.get("spatial_al.propagation.sli2vol")
        if sli2vol is not None:  # the networks it learned on the closed scene's volumes
            sli2vol.forget_trained_networks()

    def getParameterNode(self):
        return SpatialPropagationParameterNode(super().getParameterNode())

    @staticmethod
    def methods():
        """(name, one-line explanation) of every propagation method."""
        from spatial_al.propagation import PROPAGATORS

        return [(entry.name, entry.summary) for entry in PROPAGATORS.entries()]

    @staticmethod
    def methodIsInteractive(method):
        """Whether ``method`` is fast enough for a preview after each edit (auto-update); see ``MethodInfo``."""
        from spatial_al.propagation.base import PROPAGATORS, method_info

        return method_info(PROPAGATORS.get(method)).interactive

    @staticmethod
    def methodUsesModel(method):
        """Whether ``method`` propagates with a trained model (the panel then asks for the model file)."""
        from spatial_al.propagation.base import PROPAGATORS, method_info

        return method_info(PROPAGATORS.get(method)).model is not None

    @staticmethod
    def sourceIsBinaryLabelmap(segmentationNode):
        """Whether the segmentation is stored as binary labelmaps, which the module writes (a closed-surface source
        needs :meth:`convertToBinaryLabelmap` first)."""
        from SpatialALSlicerLib import MRMLAdapter

        return segmentationNode.GetSegmentation().GetSourceRepresentationName() == MRMLAdapter.BINARY_LABELMAP

    @staticmethod
    def convertToBinaryLabelmap(segmentationNode):
        """Make binary labelmap the segmentation's source representation, as the Segment Editor does before editing
        closed surfaces (details finer than the voxels may be lost). Raises MRMLInputError when Slicer cannot."""
        from SpatialALSlicerLib import MRMLAdapter

        if not MRMLAdapter.convertToBinaryLabelmap(segmentationNode):
            raise MRMLAdapter.MRMLInputError(
                f"Slicer could not make binary labelmaps of {segmentationNode.GetName()!r}; see the Segmentations "
                "module (Representations) for details."
            )

    @requiresDependencies
    def propagate(self, *arguments, progress=None, **keywords):
        """Fill the slices that are not annotated of the segments, in place, keeping every voxel a person drew, in
        this process; the arguments are those of :meth:`propagationJob`. ``progress`` receives progress and may
        cancel.

        Returns:
            A :class:`PropagationOutcome` (with a preview, no slice is kept edited: nothing was written).

        Raises:
            ValueError: no annotated slice, unknown method or segment, a method needing a model given none,
                unusable volume, a segmentation stored as closed surfaces.
        """
        return self.propagationJob(*arguments, **keywords).runHere(progress)

    @requiresDependencies
    def propagationJob(
        self,
        volumeNode,
        segmentationNode,
        segmentIds=None,
        annotatedSlices=None,
        method="sdf",
        sliceAxis="axial",
        modelPath="",
        device="auto",
        mostConfident=None,
        minConfidence=None,
        preview=False,
        **options,
    ):
        """The propagation of :meth:`propagate` as a :class:`~SpatialALSlicerLib.BackgroundWork.BackgroundJob`: the
        segments are read now and written (or previewed) when the job's result is applied.

        What a person does while the job runs is kept: when the result is written, the slices the segments record
        as annotated then, and every slice whose content changed since the segments were read, are left as they are
        (and reported in the outcome).

        With ``preview`` the segmentation is left untouched and the result is shown in a separate "<name> (preview)"
        segmentation instead (segments "<name> (propagated)", half opacity), as the Segment Editor's Fill between
        slices previews; :meth:`applyPreview` then writes it and :meth:`clearPreview` drops it. Any change of the
        segmentation (a stroke, a slice marked annotated, a segment added or removed) drops the preview.

        Args:
            volumeNode: the scan; slices are on its voxel grid.
            segmentationNode: the segmentation to fill; stored as binary labelmaps (see
                :meth:`convertToBinaryLabelmap`).
            segmentIds: segments to fill (None: all); with a model they must be the model's classes.
            annotatedSlices: slices used as sources (None: those recorded in the segments).
            method: propagation method (see :meth:`methods`).
            sliceAxis: 0, 1, 2 (KJI array axis) or "axial" / "coronal" / "sagittal".
            modelPath: checkpoint of a trained model, read only by methods that use one (star, model).
            device: where torch work runs ("auto", "cpu", "cuda", ...).
            mostConfident: keep pseudo-labels on this many most confident slices only (None: all).
            minConfidence: keep pseudo-labels only on slices at least this confident (None: all).
            preview: show the result beside the segmentation instead of writing it.
            **options: options of the method.
        """
        from spatial_al.propagation import PROPAGATORS
        from spatial_al.session import slice_checksums_by_segment
        from SpatialALSlicerLib import MRMLAdapter
        from SpatialALSlicerLib.BackgroundWork import BackgroundJob

        segmentIds = MRMLAdapter.segmentIdsOrAll(segmentationNode, segmentIds)
        MRMLAdapter.requireBinaryLabelmapSource(segmentationNode)
        axis = MRMLAdapter.sliceAxisIndex(volumeNode, sliceAxis)
        if annotatedSlices is None:
            annotatedSlices = MRMLAdapter.recordedAnnotatedSlices(segmentationNode, segmentIds, axis)
        if len(annotatedSlices) == 0:
            raise MRMLAdapter.MRMLInputError(
                "No annotated slice: annotate slices and mark them annotated (Active Slice Selector), or list them "
                "in 'Annotated slices'."
            )
        PROPAGATORS.check_options(method, options)  # an unknown method or option fails now, not in the worker
        segmentation = MRMLAdapter.segmentationFromNode(segmentationNode, volumeNode, segmentIds)
        asRead = slice_checksums_by_segment(segmentation, axis)
        arguments = {
            "segmentation": segmentation,
            "annotated": list(annotatedSlices),
            "method": method,
            "image": MRMLAdapter.arrayFromVolumeNode(volumeNode),
            "axis": axis,
            "device": str(device),
            "most_confident": mostConfident,
            "min_confidence": minConfidence,
            **options,
        }
        if self.methodUsesModel(method):
            if not modelPath:
                raise MRMLAdapter.MRMLInputError(
                    f"The method {method!r} propagates with a trained model: choose the model file (trained with "
                    "'Update model' in Active Slice Selector), or pick a model-free method such as sdf or sli2vol."
                )
            arguments["model_path"] = modelPath

        def writeOrPreview(layers):
            if not preview:
                self.clearPreview(segmentationNode)
                return self._write(volumeNode, segmentationNode, Preview(segmentIds, layers, axis, method, asRead, []))
            self._showPreview(volumeNode, segmentationNode, Preview(segmentIds, layers, axis, method, asRead, []))
            return PropagationOutcome(layers.annotated, layers.propagated, layers.confidence, {}, method)

        return BackgroundJob("propagate", arguments, writeOrPreview, "Propagation")

    def _showPreview(self, volumeNode, segmentationNode, preview):
        from SpatialALSlicerLib import MRMLAdapter

        self.clearPreview(segmentationNode)
        layers = preview.layers
        MRMLAdapter.showPreview(segmentationNode, volumeNode, layers.pseudo_masks, layers.propagated, preview.axis)
        segmentation = segmentationNode.GetSegmentation()
        preview.observations = [
            observeWeakly(segmentation, getattr(slicer.vtkSegmentation, event), self._onSegmentationChanged, 10.0)
            for event in SEGMENTATION_CHANGES
        ]
        self._previews[segmentationNode] = preview
        self._droppedPreviews.discard(segmentationNode)

    def _onSegmentationChanged(self, segmentation, event):
        for segmentationNode in list(self._previews):
            if segmentationNode.GetSegmentation() is segmentation:
                self._dropPreview(segmentationNode)
                self._droppedPreviews.add(segmentationNode)

    def _dropPreview(self, segmentationNode):
        from SpatialALSlicerLib import MRMLAdapter

        preview = self._previews.pop(segmentationNode, None)
        if preview is not None:
            removeObservations(preview.observations)
        if segmentationNode.GetScene() is not None:
            MRMLAdapter.removePreview(segmentationNode)
        return preview

    def hasPreview(self, segmentationNode):
        """Whether :meth:`applyPreview` has a preview of this segmentation to write."""
        return segmentationNode in self._previews and segmentationNode.GetScene() is not None

    def previewWasDropped(self, segmentationNode):
        """Whether the segmentation's last preview was dropped because the segmentation changed after it was made."""
        return segmentationNode in self._droppedPreviews

    def applyPreview(self, volumeNode, segmentationNode):
        """Write the last preview of the segmentation into it (keeping what a person drew since) and remove the
        preview node; returns a :class:`PropagationOutcome`. Raises MRMLInputError when nothing is previewed (or the
        preview was dropped because the segmentation changed)."""
        from SpatialALSlicerLib import MRMLAdapter

        if not self.hasPreview(segmentationNode):
            if self.previewWasDropped(segmentationNode):
                raise MRMLAdapter.MRMLInputError(
                    f"{segmentationNode.GetName()!r} changed after the preview was made (an edit, or a slice marked "
                    "annotated), so the preview was dropped: press Preview again."
                )
            raise MRMLAdapter.MRMLInputError(
                f"Nothing to apply: {segmentationNode.GetName()!r} has no preview; press Preview (or Propagate) first."
            )
        MRMLAdapter.requireBinaryLabelmapSource(segmentationNode)
        return self._write(volumeNode, segmentationNode, self._dropPreview(segmentationNode))

    def clearPreview(self, segmentationNode):
        """Drop the preview of the segmentation (its node too), if any."""
        self._dropPreview(segmentationNode)
        self._droppedPreviews.discard(segmentationNode)

    @staticmethod
    def segmentEditorFor(segmentationNode):
        """The Segment Editor widget when it edits ``segmentationNode`` (its history is the one Ctrl+Z undoes), else
        None (no GUI, or the editor works on another segmentation)."""
        try:
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        except AttributeError:
            return None
        return editor if editor.segmentationNode() is segmentationNode else None

    def saveEditorState(self, segmentationNode):
        """Record the segmentation as it is now in the Segment Editor's undo history (when it edits it), so that
        Ctrl+Z there takes back exactly the change the module makes next: one history for both."""
        editor = self.segmentEditorFor(segmentationNode)
        if editor is not None:
            editor.saveStateForUndo()

    def _write(self, volumeNode, segmentationNode, propagation):
        """Merge a propagation (a :class:`Preview`) into the segments, keeping what a person drew, erased or marked
        annotated since it read them; returns a :class:`PropagationOutcome`.

        Everything that can be checked is checked before any undo state is saved (the Segment Editor's and the
        module's own copy, which survives a scene save); a write that fails half-way puts the segments back."""
        import numpy as np

        from SpatialALSlicerLib import MRMLAdapter

        MRMLAdapter.requireBinaryLabelmapSource(segmentationNode)
        MRMLAdapter.segmentIdsOrAll(segmentationNode, propagation.segmentIds)  # none was deleted meanwhile
        layers = propagation.layers
        MRMLAdapter.requireVolumeGrid(volumeNode, segmentationNode, next(iter(layers.pseudo_masks.values())).shape)
        self.saveEditorState(segmentationNode)
        with MRMLAdapter.undoableChange(segmentationNode, propagation.segmentIds):
            keptEdited, written = MRMLAdapter.writePseudoLabels(
                segmentationNode,
                volumeNode,
                layers.pseudo_masks,
                layers.annotated,
                layers.propagated,
                layers.confidence,
                propagation.axis,
                propagation.method,
                propagation.asRead,
            )
        MRMLAdapter.syncQueriedSliceStatuses(volumeNode, segmentationNode, propagation.segmentIds)
        outcome = PropagationOutcome(
            layers.annotated, np.asarray(written, dtype=np.int64), layers.confidence, keptEdited, propagation.method
        )
        logging.info(outcome.summary())
        return outcome

    @staticmethod
    def canUndo(segmentationNode):
        """Whether :meth:`undo` has a propagation to take back."""
        from SpatialALSlicerLib import MRMLAdapter

        return segmentationNode.GetNodeReference(MRMLAdapter.UNDO_REFERENCE_ROLE) is not None

    def undo(self, segmentationNode, volumeNode=None):
        """Restore the segments exactly as they were before the last propagation (edits made since are dropped;
        labelmap layers shared again as Slicer shares them); returns the restored segment IDs. With ``volumeNode``,
        its queried-slices tables show the statuses again as they were. The state undone is recorded in the Segment
        Editor's history first, so Ctrl+Z there brings it back. Raises MRMLInputError when there is nothing to undo.

        The copy Undo restores is a hidden segmentation node "<name> (before propagation)", saved with the scene
        (so Undo works after reopening it) until the next propagation replaces it or Undo uses it."""
        from SpatialALSlicerLib import MRMLAdapter

        MRMLAdapter.undoSnapshot(segmentationNode)  # nothing to undo: an error that says so, before any change
        self.saveEditorState(segmentationNode)
        segmentIds = MRMLAdapter.restoreUndoSnapshot(segmentationNode)
        if volumeNode is not None:
            MRMLAdapter.syncQueriedSliceStatuses(volumeNode, segmentationNode, segmentIds)
        return segmentIds

    revert = undo  # the same action under the name the Logic API also offers

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
        self.test_AsksForMissingDependencies()
        self.test_PropagateKeepsAnnotation()

    def test_AsksForMissingDependencies(self):
        from SpatialALSlicerLib.Dependencies import checkMissingDependenciesAreNamed

        checkMissingDependenciesAreNamed(self, lambda: SpatialPropagationLogic().propagate(None, None))

    def test_PropagateKeepsAnnotation(self):
        from SpatialALSlicerLib.Dependencies import unmetRequirements

        if unmetRequirements():
            return self.delayDisplay("Propagation test skipped: the Python dependencies are not installed")
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
