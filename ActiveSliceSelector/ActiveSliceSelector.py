import json
import logging
import os
import sys
from typing import Annotated

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
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
from SpatialALSlicerLib.Dependencies import requiresDependencies  # noqa: E402
from SpatialALSlicerLib.ModuleWidget import SessionWidgetMixin  # noqa: E402

SLICE_PLANES = ["axial", "coronal", "sagittal"]
BUDGET_UNITS = ["slices", "percent"]
# spatial_al.selection.volumes.VOLUME_STRATEGIES, written out so the module loads before the backend is installed;
# the parameter node's Choice fills the scan-strategy combo box, as it does the slice-plane one
VOLUME_STRATEGIES = ["proxy_entropy", "proxy_variance", "entropy", "variance", "random"]

#
# ActiveSliceSelector
#


class ActiveSliceSelector(ScriptedLoadableModule):
    """Tells which 2D slices of a 3D scan to annotate next (active-learning query strategies)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Active Slice Selector")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SpatialActiveLearning developers (SpatialActiveLearning open-source project)"]
        self.parent.helpText = _(
            "Ranks the slices of a volume that are most worth annotating next, lists them, shows them as planes and "
            "jumps the slice views through them. Mark a slice annotated when you finished it; then fill the rest "
            "with the Spatial Propagation module."
        )
        self.parent.helpText += "<br><br>" + batchHelp(_)
        self.parent.acknowledgementText = _(
            "Built on the ideas of STAR spatial aggregation, 'Less Is More' strided sampling, SBC-AL, proxy-ranked "
            "semi-supervised active learning and the MIDL 2025 slice-selection study."
        )


#
# ActiveSliceSelectorParameterNode
#


@parameterNodeWrapper
class ActiveSliceSelectorParameterNode:
    """The module's state, saved with the scene (so a session resumes when the scene is reopened).

    inputVolume: the scan. segmentation: the segments being annotated. sliceAxis: plane of the slices.
    strategy: query strategy name. budget/budgetUnit: how many slices to ask for. minSpacing: queried slices at least
    this many slices apart (strategies that space their picks themselves ignore it). seed: random seed.
    queriedSlices: table of the ranking (rank, slice, score, strategy, status).
    modelPath: checkpoint that "Update model" trains or fine-tunes and "Predict" uses.
    volumeStrategy/volumeCount: how "Rank scans" ranks the scene's scans, and how many to annotate first.
    volumeRanking: table of that ranking (rank, volume, score, strategy).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    sliceAxis: Annotated[str, Choice(SLICE_PLANES)] = "axial"
    strategy: str = "fixed_interval"
    budget: Annotated[int, WithinRange(1, 100000)] = 10
    budgetUnit: Annotated[str, Choice(BUDGET_UNITS)] = "slices"
    minSpacing: Annotated[int, WithinRange(0, 1000)] = 0
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    queriedSlices: vtkMRMLTableNode
    modelPath: str = ""
    volumeStrategy: Annotated[str, Choice(VOLUME_STRATEGIES)] = "proxy_entropy"
    volumeCount: Annotated[int, WithinRange(1, 10000)] = 1
    volumeRanking: vtkMRMLTableNode


#
# ActiveSliceSelectorWidget
#


class ActiveSliceSelectorWidget(SessionWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires the .ui to the Logic; every computation is in the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._currentSlice = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ActiveSliceSelector.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ActiveSliceSelectorLogic()

        self.ui.rankButton.connect("clicked(bool)", self.onRankButton)
        self.ui.nextButton.connect("clicked(bool)", lambda: self.onStepQueriedSlice(+1))
        self.ui.previousButton.connect("clicked(bool)", lambda: self.onStepQueriedSlice(-1))
        self.ui.markAnnotatedButton.connect("clicked(bool)", self.onMarkAnnotated)
        self.ui.strategyComboBox.connect("currentTextChanged(QString)", self.onStrategyChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.updateModelButton.connect("clicked(bool)", self.onUpdateModel)
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.rankVolumesButton.connect("clicked(bool)", self.onRankVolumes)
        self.addStepShortcuts()
        self.startSession()

    def addStepShortcuts(self) -> None:
        """Ctrl+] / Ctrl+[ step through the queried slices from anywhere in Slicer (the Segment Editor too, where the
        annotating happens), while a ranking exists: on the main window, since shortcuts of a hidden panel's buttons
        do nothing. Removed by :meth:`cleanup`."""
        import qt  # the application's Qt; absent where only the Logic runs (slicer-core)

        mainWindow = slicer.util.mainWindow()
        self._shortcuts = []
        for keys, direction in (("Ctrl+]", +1), ("Ctrl+[", -1)):
            shortcut = qt.QShortcut(mainWindow)
            # PythonQt has no str -> QKeySequence conversion: a plain string here would abort setup()
            shortcut.setKey(qt.QKeySequence(keys))
            shortcut.connect("activated()", lambda direction=direction: self.onStepShortcut(direction))
            self._shortcuts.append(shortcut)

    def cleanup(self) -> None:
        for shortcut in getattr(self, "_shortcuts", []):
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []
        super().cleanup()

    def onStepShortcut(self, direction) -> None:
        """A step shortcut pressed anywhere: step through the module's session, shown or not (nothing without a
        ranking)."""
        node = self._parameterNode or self.logic.getParameterNode()
        if node.queriedSlices and node.inputVolume:
            self.onStepQueriedSlice(direction, node)

    def populateChoices(self) -> None:
        self.fillChoices(self.ui.strategyComboBox, self.logic.strategies, self._parameterNode.strategy)

    def onStrategyChanged(self, name) -> None:
        if self._parameterNode and name:
            self._parameterNode.strategy = name
            self.showStrategyHelp()

    def showStrategyHelp(self) -> None:
        """The chosen strategy's description, and what ranking the chosen volume with it should take here."""
        node = self._parameterNode
        cost = self.logic.rankingCost(node.inputVolume, node.sliceAxis, node.strategy) if node else ""
        self.ui.strategyHelpLabel.text = "\n".join(filter(None, [self.choiceHelp(self.ui.strategyComboBox), cost]))

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        node = self._parameterNode
        ready = bool(node and node.inputVolume and node.segmentation)
        hasModelPath = bool(node and node.modelPath)
        if not self.isRunning:
            self.ui.rankButton.text = _("Rank slices")
            self.ui.rankButton.toolTip = (
                _("Rank the slices to annotate next") if ready else _("Select a volume and a segmentation")
            )
            self.ui.updateModelButton.text = _("Update model")
            self.ui.predictButton.text = _("Predict")
            self.ui.rankVolumesButton.text = _("Rank scans")
        self.ui.rankVolumesButton.enabled = self.actionEnabled(self.ui.rankVolumesButton, bool(node))
        if node and self.ui.volumeRankingTableView.mrmlTableNode() is not node.volumeRanking:
            self.ui.volumeRankingTableView.setMRMLTableNode(node.volumeRanking)
        self.ui.rankButton.enabled = self.actionEnabled(self.ui.rankButton, ready)
        self.ui.updateModelButton.enabled = self.actionEnabled(self.ui.updateModelButton, ready and hasModelPath)
        self.ui.predictButton.enabled = self.actionEnabled(
            self.ui.predictButton, bool(node and node.inputVolume and hasModelPath)
        )
        hasRanking = bool(node and node.queriedSlices)
        shown = node.queriedSlices if hasRanking else None
        if self.ui.queriedSlicesTableView.mrmlTableNode() is not shown:  # resetting it would lose the selection
            self.ui.queriedSlicesTableView.setMRMLTableNode(shown)
        for button in (self.ui.nextButton, self.ui.previousButton, self.ui.markAnnotatedButton):
            button.enabled = self.actionEnabled(button, hasRanking)
        if node and self.ui.modelPathLineEdit.currentPath != node.modelPath:
            self.ui.modelPathLineEdit.currentPath = node.modelPath
        if node and node.strategy and self.ui.strategyComboBox.currentText != node.strategy:
            self.ui.strategyComboBox.setCurrentText(node.strategy)  # a reloaded scene's choice
        self.showStrategyHelp()  # the volume or its slice axis may have changed

    def showStatus(self, text) -> None:
        self.ui.statusLabel.text = text

    def onModelPathChanged(self, path) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path

    def onRankButton(self) -> None:
        node = self._parameterNode

        def rankingJob():
            return self.logic.rankingJob(
                node.inputVolume,
                node.segmentation,
                self.selectedSegmentIds(),
                node.strategy,
                self.logic.budgetInSlices(node.inputVolume, node.sliceAxis, node.budget, node.budgetUnit),
                sliceAxis=node.sliceAxis,
                seed=node.seed,
                tableNode=node.queriedSlices,
                modelPath=node.modelPath,
                **self.logic.spacingOptions(node.strategy, node.minSpacing),
            )

        def showRanking(result):
            self.showRanking(node, *result)

        inBackground = self.logic.rankingTakesLong(node.strategy, node.modelPath)
        self.runJob(self.ui.rankButton, _("Ranking failed."), rankingJob, showRanking, inBackground)

    def showRanking(self, node, ranking, tableNode, before="") -> None:
        """Show a new ranking: its table in the panel, the status (after ``before``), the view on its first slice."""
        node.queriedSlices = tableNode  # the module's parameter node, shown or not
        self._currentSlice = None
        self.showStatus(before + _("{count} slices to annotate, best first.").format(count=len(ranking)))
        self.onStepQueriedSlice(+1, node)

    def onRankVolumes(self) -> None:
        node = self._parameterNode

        def volumeRankingJob():
            return self.logic.volumeRankingJob(
                self.logic.scansInScene(slicer.mrmlScene),
                node.volumeStrategy,
                node.volumeCount,
                sliceAxis=node.sliceAxis,
                modelPath=node.modelPath,
                seed=node.seed,
                tableNode=node.volumeRanking,
            )

        def showRanking(result):
            ranking, tableNode = result
            node.volumeRanking = tableNode
            self.showStatus(_("Annotate first: {names}.").format(names=", ".join(ranking.top(node.volumeCount))))

        inBackground = node.volumeStrategy != "random"
        self.runJob(self.ui.rankVolumesButton, _("Scan ranking failed."), volumeRankingJob, showRanking, inBackground)

    def onUpdateModel(self) -> None:
        node = self._parameterNode

        def trainingJob():  # the panel's strategy ranks with the new model before the worker exits
            return self.logic.updateModelAndRankJob(
                node.inputVolume,
                node.segmentation,
                self.selectedSegmentIds(),
                node.modelPath,
                node.strategy,
                self.logic.budgetInSlices(node.inputVolume, node.sliceAxis, node.budget, node.budgetUnit),
                sliceAxis=node.sliceAxis,
                seed=node.seed,
                tableNode=node.queriedSlices,
                **self.logic.spacingOptions(node.strategy, node.minSpacing),
            )

        def showSummary(result):
            summary, ranking, tableNode = result
            updated = _("Model updated (round {round}, {steps} steps, loss {loss:.3f}). ").format(
                round=summary.round_index, steps=summary.steps, loss=summary.history[-1]["train_loss"]
            )
            self.showRanking(node, ranking, tableNode, before=updated)

        self.runJob(self.ui.updateModelButton, _("Updating the model failed."), trainingJob, showSummary, True)

    def onPredict(self) -> None:
        node = self._parameterNode

        def predictionJob():
            return self.logic.predictionJob(node.inputVolume, node.modelPath)

        def showPrediction(predicted):
            self.showStatus(_("Prediction written to {name}.").format(name=predicted.GetName()))

        self.runJob(self.ui.predictButton, _("Prediction failed."), predictionJob, showPrediction, True)

    def onStepQueriedSlice(self, direction, node=None) -> None:
        """Jump to the next (or previous) queried slice still to annotate, after asking whether the slice left was
        annotated when it was drawn on. ``node``: the module's parameter node, when the panel is not shown."""
        node = node or self._parameterNode
        if node is None or not node.queriedSlices:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not go to the next queried slice."), waitCursor=True):
            current = self._currentSlice
            if current is not None and current in self.logic.editedQueriedSlices(node.queriedSlices):
                question = _("Slice {index} was edited. Mark it annotated?").format(index=current)
                if slicer.util.confirmYesNoDisplay(question):
                    self._markCurrentSliceAnnotated(node)
            index = self.logic.nextQueriedSlice(node.queriedSlices, current, direction)
            if index is None:
                self.showStatus(_("Every queried slice is annotated."))
                return
            self._currentSlice = index
            self.logic.jumpToSlice(node.inputVolume, node.sliceAxis, index)
            self.showStatus(_("Slice {index}: annotate it, then press 'Mark annotated'.").format(index=index))

    def onMarkAnnotated(self) -> None:
        if self._currentSlice is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not mark the slice annotated."), waitCursor=True):
            self._markCurrentSliceAnnotated(self._parameterNode)
        self.onStepQueriedSlice(+1)

    def _markCurrentSliceAnnotated(self, node) -> None:
        """Mark the current slice annotated in the segments and along the axis its ranking was made on."""
        self.logic.markQueriedSliceAnnotated(node.queriedSlices, self._currentSlice)


#
# ActiveSliceSelectorLogic
#


class ActiveSliceSelectorLogic(ScriptedLoadableModuleLogic):
    """Every computation of the module, usable from the Python console and in batch mode.

    Slice indices run along an array axis of the volume's voxel array in KJI order (``arrayFromVolume`` order):
    axis 0 is K. Planes ("axial", "coronal", "sagittal") are resolved to the closest array axis.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ActiveSliceSelectorParameterNode(super().getParameterNode())

    @staticmethod
    def strategies():
        """(name, one-line explanation) of every query strategy."""
        from spatial_al.selection import STRATEGIES

        return [(entry.name, entry.summary) for entry in STRATEGIES.entries()]

    @staticmethod
    def spacingOptions(strategy, minSpacing):
        """``{"min_spacing": minSpacing}`` for strategies that take it; {} for grids and blocks (which space their
        picks themselves) or when no spacing is asked for."""
        from spatial_al.selection import STRATEGIES, strategy_info

        applies = minSpacing > 1 and strategy in STRATEGIES and strategy_info(STRATEGIES.get(strategy)).spacing_controls
        return {"min_spacing": int(minSpacing)} if applies else {}

    def budgetInSlices(self, volumeNode, sliceAxis, budget, budgetUnit="slices"):
        """``budget`` slices, or ``budget`` percent of the volume's slices (at least 1)."""
        if budgetUnit == "slices":
            return int(budget)
        from SpatialALSlicerLib import MRMLAdapter

        nSlices = MRMLAdapter.volumeGeometry(volumeNode).shape[MRMLAdapter.sliceAxisIndex(volumeNode, sliceAxis)]
        return max(1, round(nSlices * budget / 100))

    @requiresDependencies
    def rankSlices(self, *arguments, progress=None, **keywords):
        """Rank the slices to annotate next, write them into a table node and show them as planes, in this process;
        the arguments are those of :meth:`rankingJob`. ``progress`` receives progress and may cancel.

        Returns:
            (``spatial_al.selection.RankingResult``, the table node).
        """
        return self.rankingJob(*arguments, **keywords).runHere(progress)

    @requiresDependencies
    def rankingJob(
        self,
        volumeNode,
        segmentationNode,
        segmentIds,
        strategy,
        budget,
        sliceAxis="axial",
        annotatedSlices=None,
        seed=0,
        tableNode=None,
        showPlanes=True,
        modelPath="",
        device="auto",
        **options,
    ):
        """The ranking of :meth:`rankSlices` as a :class:`~SpatialALSlicerLib.BackgroundWork.BackgroundJob`: the
        scene is read now, the table and planes are written when the job's result is applied.

        Args:
            volumeNode: the scan (scalar volume).
            segmentationNode: the segmentation being annotated (its records say which slices are annotated).
            segmentIds: segments worked on (None: all).
            strategy: strategy name (see :meth:`strategies`).
            budget: number of slices to pick.
            sliceAxis: 0, 1, 2 (KJI array axis) or "axial" / "coronal" / "sagittal".
            annotatedSlices: slices already annotated (None: those recorded in the segments).
            seed: random seed.
            tableNode: table to fill (None: a new one).
            showPlanes: add a plane markup per queried slice (replacing those of the previous ranking).
            modelPath: checkpoint of a trained model ("" for none), read only by strategies that use a model;
                its classes must be the names of the chosen segments.
            device: where the model runs ("auto", "cpu", "cuda", ...).
            **options: ``min_spacing``, ``batch_size`` and the options of the strategy.
        """
        import spatial_al
        from SpatialALSlicerLib import MRMLAdapter
        from SpatialALSlicerLib.BackgroundWork import BackgroundJob

        axis = MRMLAdapter.sliceAxisIndex(volumeNode, sliceAxis)
        segmentIds = MRMLAdapter.segmentIdsOrAll(segmentationNode, segmentIds)
        if annotatedSlices is None:
            annotatedSlices = MRMLAdapter.recordedAnnotatedSlices(segmentationNode, segmentIds, axis)
        arguments = {
            "image": MRMLAdapter.arrayFromVolumeNode(volumeNode),
            "strategy": strategy,
            "budget": budget,
            "annotated": annotatedSlices,
            "pseudo_labeled": MRMLAdapter.recordedPropagatedSlices(segmentationNode, segmentIds, axis),
            "axis": axis,
            "device": str(device),
            "seed": seed,
            **options,
        }
        if self.rankingUsesModel(strategy, modelPath):
            segmentation = MRMLAdapter.segmentationFromNode(segmentationNode, volumeNode, segmentIds)
            arguments.update(model_path=modelPath, labels=segmentation.label_layers, segments=segmentation.segments)

        def writeRanking(ranking):
            table = tableNode or volumeNode.GetScene().AddNewNodeByClass(
                "vtkMRMLTableNode", f"Queried slices ({volumeNode.GetName()})"
            )
            # Re-read at apply: a slice marked annotated while the job ran (a model update takes minutes) says so.
            nowAnnotated = set(MRMLAdapter.recordedAnnotatedSlices(segmentationNode, segmentIds, axis))
            statuses = [
                MRMLAdapter.STATUS_ANNOTATED if int(index) in nowAnnotated else MRMLAdapter.STATUS_TO_ANNOTATE
                for index in ranking.slices
            ]
            MRMLAdapter.writeQueriedSlicesTable(table, ranking, statuses, volumeNode)
            MRMLAdapter.recordRankedOn(table, volumeNode, segmentationNode, segmentIds, axis)
            self._replacePlanes(table, volumeNode, axis, ranking.slices if showPlanes else [])
            logging.info(f"Ranked {len(ranking)} slices with {strategy}: {ranking.slices.tolist()}")
            return ranking, table

        spatial_al.STRATEGIES.get(strategy)  # an unknown name fails now, with the closest valid one
        return BackgroundJob("rank", arguments, writeRanking, "Ranking")

    @requiresDependencies
    def rankVolumes(self, *arguments, progress=None, **keywords):
        """Which of the volumes to annotate (open) first, in this process; the arguments are those of
        :meth:`volumeRankingJob`. Returns (``spatial_al.VolumeRanking``, the table node)."""
        return self.volumeRankingJob(*arguments, **keywords).runHere(progress)

    @requiresDependencies
    def volumeRankingJob(
        self,
        volumeNodes,
        strategy,
        k,
        sliceAxis="axial",
        modelPath="",
        device="auto",
        seed=0,
        tableNode=None,
        **options,
    ):
        """The ranking of whole volumes (the scene's scans, or those loaded from a folder) as a background job: which
        scan to annotate first (:func:`spatial_al.rank_volumes`). Its result fills a table node (rank, volume,
        score, strategy; the rows reference their volume nodes).

        Args:
            volumeNodes: the scalar volumes to rank (at least one).
            strategy: "random", "variance" or "entropy" (with ``modelPath``), "proxy_variance" or "proxy_entropy".
            k: how many to annotate first.
            sliceAxis: slice axis or plane; it must be the same array axis in every volume.
            modelPath: checkpoint read by "variance" and "entropy".
            device, seed: where the networks run; the seed of every random choice.
            tableNode: table to fill (None: a new "Volumes to annotate first" table).
            **options: ``samples``, ``window``, ``training_slices``, ``max_epochs`` of :func:`spatial_al.rank_volumes`.
        """
        from SpatialALSlicerLib import MRMLAdapter
        from SpatialALSlicerLib.BackgroundWork import BackgroundJob

        if not volumeNodes:
            raise MRMLAdapter.MRMLInputError("No volume to rank: load the scans (or a folder of them) first.")
        if not 1 <= k <= len(volumeNodes):
            raise MRMLAdapter.MRMLInputError(
                f"{k} scans to annotate first, but {len(volumeNodes)} are loaded; choose at most {len(volumeNodes)} "
                "or load more scans."
            )
        axes = {MRMLAdapter.sliceAxisIndex(node, sliceAxis) for node in volumeNodes}
        if len(axes) > 1:
            raise MRMLAdapter.MRMLInputError(
                f"The volumes' {sliceAxis} planes lie along different array axes {sorted(axes)}; choose an array axis."
            )
        arguments = {
            "volumes": [MRMLAdapter.arrayFromVolumeNode(node) for node in volumeNodes],
            "strategy": strategy,
            "k": k,
            "names": [node.GetName() for node in volumeNodes],
            "axis": axes.pop(),
            "seed": seed,
            "device": str(device),
            **options,
        }
        if modelPath and strategy in ("variance", "entropy"):
            arguments["model_path"] = modelPath

        def writeTable(ranking):
            scene = volumeNodes[0].GetScene()
            table = tableNode or scene.AddNewNodeByClass("vtkMRMLTableNode", "Volumes to annotate first")
            MRMLAdapter.writeVolumeRankingTable(table, ranking, volumeNodes)
            return ranking, table

        return BackgroundJob("rank_volumes", arguments, writeTable, "Volume ranking")

    @staticmethod
    def scansInScene(scene):
        """The scene's scalar volumes that are scans (label map volumes left out), in the order they were added."""
        nodes = [
            scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
        ]
        return [node for node in nodes if not node.IsA("vtkMRMLLabelMapVolumeNode")]

    @staticmethod
    def rankingCost(volumeNode, sliceAxis, strategy, device="auto"):
        """What ranking ``volumeNode``'s slices along ``sliceAxis`` with ``strategy`` should take on ``device``, in
        words, from the package's benchmark figures (see :mod:`spatial_al.selection.costs`); "" without a volume
        or before the dependencies are installed."""
        try:
            from spatial_al.device import resolve_device
            from spatial_al.selection.costs import cost_note
        except ImportError:
            return ""
        from SpatialALSlicerLib import MRMLAdapter

        if volumeNode is None or volumeNode.GetImageData() is None or not strategy:
            return ""
        shape = MRMLAdapter.volumeGeometry(volumeNode).shape
        axis = MRMLAdapter.sliceAxisIndex(volumeNode, sliceAxis)
        sliceShape = tuple(n for index, n in enumerate(shape) if index != axis)
        return cost_note(strategy, shape[axis], sliceShape, resolve_device(device).type)

    @staticmethod
    def rankingUsesModel(strategy, modelPath):
        """Whether ranking with ``strategy`` loads the model at ``modelPath`` (it reads one and one is given)."""
        from spatial_al.selection import STRATEGIES, strategy_info

        return bool(modelPath) and strategy_info(STRATEGIES.get(strategy)).reads_model

    @staticmethod
    def rankingTakesLong(strategy, modelPath):
        """Whether a ranking runs a network (a model, or one the strategy trains itself): the panel then runs it in
        a background process; model-free ranking takes well under a second and runs at once."""
        from spatial_al.selection import STRATEGIES, strategy_info

        return strategy_info(STRATEGIES.get(strategy)).trains or ActiveSliceSelectorLogic.rankingUsesModel(
            strategy, modelPath
        )

    @staticmethod
    def _replacePlanes(tableNode, volumeNode, axis, slices):
        from SpatialALSlicerLib import MRMLAdapter

        scene = tableNode.GetScene()
        role = MRMLAdapter.PLANE_REFERENCE_ROLE
        previous = [tableNode.GetNthNodeReference(role, i) for i in range(tableNode.GetNumberOfNodeReferences(role))]
        tableNode.RemoveNodeReferenceIDs(role)
        for plane in previous:
            if plane is not None:
                scene.RemoveNode(plane)
        for plane in MRMLAdapter.addSlicePlanes(volumeNode, axis, slices):
            tableNode.AddNodeReferenceID(MRMLAdapter.PLANE_REFERENCE_ROLE, plane.GetID())

    def markAnnotated(self, volumeNode, segmentationNode, segmentIds, slices, sliceAxis="axial", tableNode=None):
        """Record ``slices`` as annotated in the segments (and in the queried-slices table); returns all annotated.

        An annotated slice may be empty: the structure is absent there, and propagation keeps it empty.
        """
        from SpatialALSlicerLib import MRMLAdapter

        return MRMLAdapter.markSlicesAnnotated(volumeNode, segmentationNode, segmentIds, slices, sliceAxis, tableNode)

    @requiresDependencies
    def updateModel(self, *arguments, progress=None, **keywords):
        """Train a model on the annotated slices, or fine-tune the one at ``modelPath`` (next round), in this process;
        the arguments are those of :meth:`updateModelJob`. Returns the :class:`spatial_al.learning.TrainingSummary`."""
        return self.updateModelJob(*arguments, **keywords).runHere(progress)

    @requiresDependencies
    def updateModelJob(self, volumeNode, segmentationNode, segmentIds, modelPath, sliceAxis="axial", **options):
        """:meth:`updateModel` as a background job (see :func:`SpatialALSlicerLib.ModelLogic.updateModelJob`)."""
        from SpatialALSlicerLib import ModelLogic

        return ModelLogic.updateModelJob(
            volumeNode, segmentationNode, segmentIds, modelPath, sliceAxis=sliceAxis, **options
        )

    @requiresDependencies
    def updateModelAndRank(self, *arguments, progress=None, **keywords):
        """:meth:`updateModel`, then :meth:`rankSlices` with the model just trained, in this process; the arguments
        are those of :meth:`updateModelAndRankJob`. Returns (``TrainingSummary``, ``RankingResult``, table node)."""
        return self.updateModelAndRankJob(*arguments, **keywords).runHere(progress)

    @requiresDependencies
    def updateModelAndRankJob(
        self,
        volumeNode,
        segmentationNode,
        segmentIds,
        modelPath,
        strategy,
        budget,
        sliceAxis="axial",
        trainingOptions=None,
        **rankingKeywords,
    ):
        """Training as :meth:`updateModelJob` (with ``trainingOptions``), then the ranking of :meth:`rankingJob` (with
        ``strategy``, ``budget`` and ``rankingKeywords``) by the model just trained, as one background job: the
        queried slices arrive with the model. Its result is (``TrainingSummary``, ``RankingResult``, table node)."""
        from SpatialALSlicerLib import ModelLogic
        from SpatialALSlicerLib.BackgroundWork import BackgroundJob

        training = ModelLogic.updateModelJob(
            volumeNode, segmentationNode, segmentIds, modelPath, sliceAxis=sliceAxis, **(trainingOptions or {})
        )
        ranking = self.rankingJob(
            volumeNode,
            segmentationNode,
            segmentIds,
            strategy,
            budget,
            sliceAxis,
            modelPath=modelPath,
            **rankingKeywords,
        )
        rankingArguments = {key: value for key, value in ranking.arguments.items() if key != "model_path"}

        def apply(result):
            summary, ranked = result
            return (training.apply(summary), *ranking.apply(ranked))

        arguments = {"training": training.arguments, "ranking": rankingArguments}
        return BackgroundJob("train_and_rank", arguments, apply, "Training and ranking")

    @requiresDependencies
    def predictSegmentation(self, *arguments, progress=None, **keywords):
        """The model's segmentation of the volume, in a new segmentation node (returned), computed in this process;
        the arguments are those of :meth:`predictionJob`."""
        return self.predictionJob(*arguments, **keywords).runHere(progress)

    @requiresDependencies
    def predictionJob(self, volumeNode, modelPath, device="auto"):
        """:meth:`predictSegmentation` as a background job (see :func:`SpatialALSlicerLib.ModelLogic.predictionJob`)."""
        from SpatialALSlicerLib import ModelLogic

        return ModelLogic.predictionJob(volumeNode, modelPath, device)

    @staticmethod
    def rankedOn(tableNode):
        """(volume node, segmentation node, segment IDs, slice axis) a queried-slices table was ranked on; the nodes
        are None when they are gone (or the table predates this record)."""
        from SpatialALSlicerLib import MRMLAdapter

        segmentIds = [i for i in (tableNode.GetAttribute(MRMLAdapter.TABLE_ATTRIBUTE_SEGMENTS) or "").split(",") if i]
        return (
            tableNode.GetNodeReference(MRMLAdapter.VOLUME_REFERENCE_ROLE),
            tableNode.GetNodeReference(MRMLAdapter.SEGMENTATION_REFERENCE_ROLE),
            segmentIds or None,
            int(tableNode.GetAttribute(MRMLAdapter.TABLE_ATTRIBUTE_AXIS) or 0),
        )

    def editedQueriedSlices(self, tableNode):
        """Queried slices still "to annotate" whose labels changed since they were queried (the radiologist drew
        on them but did not mark them annotated yet), in rank order. Compared on what the ranking was made on (its
        segmentation, segments and axis), whatever the panel shows now."""
        from SpatialALSlicerLib import MRMLAdapter

        volumeNode, segmentationNode, segmentIds, axis = self.rankedOn(tableNode)
        if volumeNode is None or segmentationNode is None:
            return []
        queried = json.loads(tableNode.GetAttribute(MRMLAdapter.TABLE_ATTRIBUTE_CHECKSUMS) or "{}")
        waiting = [
            row["slice"]
            for row in MRMLAdapter.queriedSlicesFromTable(tableNode)
            if row["status"] == MRMLAdapter.STATUS_TO_ANNOTATE and str(row["slice"]) in queried
        ]
        now = MRMLAdapter.sliceLabelChecksums(segmentationNode, segmentIds, volumeNode, axis, waiting)
        return [index for index in waiting if now[index] != queried[str(index)]]

    def markQueriedSliceAnnotated(self, tableNode, sliceIndex):
        """Mark a queried slice annotated in the segments and along the axis the table was ranked on, and in the
        table; returns all annotated slices."""
        from SpatialALSlicerLib import MRMLAdapter

        volumeNode, segmentationNode, segmentIds, axis = self.rankedOn(tableNode)
        if volumeNode is None or segmentationNode is None:
            raise MRMLAdapter.MRMLInputError(
                "The volume or segmentation this ranking was made on is gone from the scene; rank the slices again."
            )
        return self.markAnnotated(volumeNode, segmentationNode, segmentIds, [sliceIndex], axis, tableNode)

    @staticmethod
    def nextQueriedSlice(tableNode, currentSlice=None, direction=+1):
        """The next (or previous) queried slice in rank order still to annotate; None when none is left."""
        from SpatialALSlicerLib import MRMLAdapter

        rows = MRMLAdapter.queriedSlicesFromTable(tableNode) if tableNode else []
        if not rows:
            return None
        slices = [r["slice"] for r in rows]
        start = slices.index(currentSlice) if currentSlice in slices else (-1 if direction > 0 else 0)
        for step in range(1, len(rows) + 1):
            row = rows[(start + direction * step) % len(rows)]
            if row["status"] == MRMLAdapter.STATUS_TO_ANNOTATE:
                return row["slice"]
        return None

    def jumpToSlice(self, volumeNode, sliceAxis, index):
        """Centre the slice views on slice ``index``; returns its RAS centre."""
        from SpatialALSlicerLib import MRMLAdapter

        return MRMLAdapter.jumpToSlice(volumeNode, MRMLAdapter.sliceAxisIndex(volumeNode, sliceAxis), index)


#
# ActiveSliceSelectorTest
#


class ActiveSliceSelectorTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (ctest / Reload and Test) and under pytest with the slicer-core stand-in."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AsksForMissingDependencies()
        self.test_RankMarkAndStep()

    def test_AsksForMissingDependencies(self):
        from SpatialALSlicerLib.Dependencies import checkMissingDependenciesAreNamed

        checkMissingDependenciesAreNamed(
            self, lambda: ActiveSliceSelectorLogic().rankSlices(None, None, None, "random", 1)
        )

    def test_RankMarkAndStep(self):
        from SpatialALSlicerLib.Dependencies import unmetRequirements

        if unmetRequirements():
            return self.delayDisplay("Ranking test skipped: the Python dependencies are not installed")
        import numpy as np

        from spatial_al.volume import Geometry
        from SpatialALSlicerLib import MRMLAdapter

        self.delayDisplay("Ranking the slices of a synthetic volume")
        geometry = Geometry((20, 16, 12), spacing=(0.8, 0.8, 2.5))
        image = np.random.default_rng(0).normal(size=geometry.shape).astype(np.float32)
        volumeNode = MRMLAdapter.addVolumeNode(slicer.mrmlScene, image, geometry, "synthetic")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("organ")

        logic = ActiveSliceSelectorLogic()
        ranking, tableNode = logic.rankSlices(
            volumeNode, segmentationNode, None, "fixed_interval", 4, sliceAxis=0, interval=5
        )
        self.assertEqual(ranking.slices.tolist(), [2, 7, 12, 17])
        self.assertEqual(tableNode.GetTable().GetNumberOfRows(), 4)

        logic.markAnnotated(volumeNode, segmentationNode, [segmentId], [2, 7], 0, tableNode)
        self.assertEqual(MRMLAdapter.recordedAnnotatedSlices(segmentationNode, [segmentId], 0), [2, 7])
        self.assertEqual(logic.nextQueriedSlice(tableNode, None, +1), 12)
        self.assertEqual(logic.nextQueriedSlice(tableNode, 12, +1), 17)
        self.assertEqual(logic.nextQueriedSlice(tableNode, 12, -1), 17)
        self.delayDisplay("Test passed")
