"""The annotation loop of the browser front end, on the Qt modules' own Logic (no second implementation).

An :class:`AnnotationSession` holds one scan and its segmentation in an MRML scene and does what the panels ask:
rank slices (``ActiveSliceSelectorLogic``), jump the views to one, mark it annotated, preview / apply / undo a
propagation (``SpatialPropagationLogic``), update the model and predict in a background process
(``SpatialALSlicerLib.ModelLogic`` through the Logic), and save. It holds no GUI: the trame app wires its methods to
buttons, and its tests run it on a headless scene. Slice indices count along an array axis of the volume's voxel
array, KJI order (0 = K, axial for most scans), as everywhere in the Logic.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SpatialALWeb.folders import Case

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_FOLDERS = (REPOSITORY / "ActiveSliceSelector", REPOSITORY / "SpatialPropagation")


def moduleLogics():
    """(ActiveSliceSelectorLogic, SpatialPropagationLogic) instances: the modules imported from the source tree as
    Slicer imports them from "Additional module paths" (``ScriptedModuleRuntime.install`` must have run)."""
    for folder in MODULE_FOLDERS:
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    import ActiveSliceSelector
    import SpatialPropagation

    return ActiveSliceSelector.ActiveSliceSelectorLogic(), SpatialPropagation.SpatialPropagationLogic()


@dataclass
class SavedFiles:
    """What :meth:`AnnotationSession.save` wrote: the segmentation (``.seg.nrrd`` with the slice record), the scene
    bundle (``.mrb``), the queried slices (``.csv``, None before any ranking), the DICOM-SEG (``.dcm``, for a DICOM
    series) and the SOPInstanceUID it was stored under on the case's DICOMweb server (None when not stored)."""

    segmentation: Path
    scene: Path
    queried_slices: Path | None
    dicom_seg: Path | None = None
    stored_uid: str | None = None

    def files(self) -> list[Path]:
        return [path for path in (self.segmentation, self.scene, self.queried_slices, self.dicom_seg) if path]


class AnnotationSession:
    """One scan and its segmentation in ``scene``, and the loop's actions on them.

    Args:
        scene: the MRML scene the views show.
        case: the scan (and segmentation) to open.
        output: the folder :meth:`save` writes into.
        sliceAxis: the slice axis or plane ("axial", "coronal", "sagittal" or 0, 1, 2).
    """

    def __init__(self, scene, case: Case, output: Path, sliceAxis="axial"):
        from spatial_al.io import load_stack, segmentation_on_image
        from spatial_al.io.segmentation import Segmentation
        from SpatialALSlicerLib import MRMLAdapter

        self.scene = scene
        self.case = case = case.opened()
        self.output = Path(output)
        self.selector, self.propagation = moduleLogics()
        stack = load_stack(case.source, slice_axis=sliceAxis)
        if case.segmentation is not None:
            segmentation = segmentation_on_image(case.segmentation, stack.geometry, case.source)
        else:
            segmentation = Segmentation(np.zeros((1, *stack.image.shape), np.uint8), (), stack.geometry)
        self.volumeNode = MRMLAdapter.addVolumeNode(scene, stack.image, stack.geometry, case.name)
        self.segmentationNode = MRMLAdapter.addSegmentationNode(
            scene, segmentation, self.volumeNode, f"{case.name} segmentation"
        )
        self.axis = stack.slice_axis
        self.tableNode = None
        self.appliedMethod = None  # the method of the preview applied last, while Undo can take it back
        self.job = None  # the background job running (model update or prediction), if any
        self._editObservations = []  # (observed object, observer tag) of observeEdits

    # -- ranking and navigation --------------------------------------------------------------------------------------

    def rankingJob(self, strategy: str, budget: int, minSpacing: int = 0, modelPath: str = ""):
        """Ranking ``budget`` slices with ``strategy`` as a background job, not started: its result fills the
        queried-slices table (the previous ranking's is reused) and shows the slices as planes."""
        job = self.selector.rankingJob(
            self.volumeNode,
            self.segmentationNode,
            None,
            strategy,
            int(budget),
            sliceAxis=self.axis,
            tableNode=self.tableNode,
            modelPath=modelPath,
            **self.selector.spacingOptions(strategy, minSpacing),
        )
        writeRanking = job.apply

        def keepTable(ranking):
            result, self.tableNode = writeRanking(ranking)
            return result

        job.apply = keepTable
        return job

    def rankingCosts(self) -> dict[str, str]:
        """Strategy name -> what ranking this case with it should take here, in words (from benchmark figures)."""
        return {
            name: self.selector.rankingCost(self.volumeNode, self.axis, name) for name, _ in self.selector.strategies()
        }

    def rankingTakesLong(self, strategy: str, modelPath: str = "") -> bool:
        """Whether ranking with ``strategy`` runs a network (then in a background process)."""
        return self.selector.rankingTakesLong(strategy, modelPath)

    def queriedSlices(self) -> list[dict]:
        """The queried-slices table's rows (rank, slice, score, strategy, status); [] before any ranking."""
        from SpatialALSlicerLib import MRMLAdapter

        return MRMLAdapter.queriedSlicesFromTable(self.tableNode) if self.tableNode is not None else []

    def nextQueriedSlice(self, currentSlice: int | None, direction: int = +1) -> int | None:
        """The next (``direction`` +1) or previous (-1) queried slice still to annotate; None when none is left."""
        return self.selector.nextQueriedSlice(self.tableNode, currentSlice, direction)

    def jumpTo(self, sliceIndex: int) -> None:
        """Centre every slice view on slice ``sliceIndex`` (the view along the slice axis shows it)."""
        self.selector.jumpToSlice(self.volumeNode, self.axis, int(sliceIndex))

    def sliceShown(self, sliceNode) -> int:
        """The slice index along the slice axis that ``sliceNode``'s plane passes through (the nearest one)."""
        import vtk

        sliceToRAS = sliceNode.GetSliceToRAS()
        centerRAS = [sliceToRAS.GetElement(row, 3) for row in range(3)] + [1.0]
        rasToIJK = vtk.vtkMatrix4x4()
        self.volumeNode.GetRASToIJKMatrix(rasToIJK)
        ijk = rasToIJK.MultiplyPoint(centerRAS)
        return round(ijk[2 - self.axis])

    def markAnnotated(self, sliceIndex: int) -> list[int]:
        """Record slice ``sliceIndex`` as annotated in every segment (and in the table); returns all annotated."""
        if self.segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            from SpatialALSlicerLib.MRMLAdapter import MRMLInputError

            raise MRMLInputError("The segmentation has no segment yet: add a segment and draw on the slice first.")
        return self.selector.markAnnotated(
            self.volumeNode, self.segmentationNode, None, [int(sliceIndex)], self.axis, self.tableNode
        )

    def annotatedSlices(self) -> list[int]:
        from SpatialALSlicerLib import MRMLAdapter

        return MRMLAdapter.recordedAnnotatedSlices(self.segmentationNode, None, self.axis)

    # -- propagation -------------------------------------------------------------------------------------------------

    def propagate(self, method: str, preview: bool = False, mostConfident: int = 0, progress=None):
        """Propagate (or, with ``preview``, show without writing) from the recorded annotated slices; returns the
        Logic's ``PropagationOutcome``."""
        if not preview:
            self.appliedMethod = None
        return self.propagation.propagate(
            self.volumeNode,
            self.segmentationNode,
            method=method,
            sliceAxis=self.axis,
            mostConfident=mostConfident or None,
            preview=preview,
            progress=progress,
        )

    def applyPreview(self):
        outcome = self.propagation.applyPreview(self.volumeNode, self.segmentationNode)
        self.appliedMethod = outcome.method
        return outcome

    def hasPreview(self) -> bool:
        return self.propagation.hasPreview(self.segmentationNode)

    def previewWasDropped(self) -> bool:
        """Whether the last preview was dropped because the segmentation changed after it (a stroke, a mark)."""
        return self.propagation.previewWasDropped(self.segmentationNode)

    def methodIsInteractive(self, method: str) -> bool:
        """Whether ``method`` is fast enough to preview again after each edit (``MethodInfo.interactive``)."""
        return self.propagation.methodIsInteractive(method)

    def observeEdits(self, callback) -> None:
        """Call ``callback()`` after each change of the segmentation (a stroke, a segment added, removed or changed),
        until :meth:`close`."""
        import slicer

        from SpatialPropagation import SEGMENTATION_CHANGES

        segmentation = self.segmentationNode.GetSegmentation()
        self._editObservations += [
            (segmentation, segmentation.AddObserver(getattr(slicer.vtkSegmentation, event), lambda *_: callback()))
            for event in SEGMENTATION_CHANGES
        ]

    def close(self) -> None:
        """Stop the observations :meth:`observeEdits` made (before the scene is cleared for another case)."""
        for observed, tag in self._editObservations:
            observed.RemoveObserver(tag)
        self._editObservations = []

    def canUndo(self) -> bool:
        return self.propagation.canUndo(self.segmentationNode)

    def undo(self) -> bool:
        """Put the segments back as they were before the last propagation. When that propagation was an applied
        preview, the preview is made again from the segments as they are back (Apply writes it again); returns
        whether it was."""
        self.propagation.undo(self.segmentationNode, self.volumeNode)
        method, self.appliedMethod = self.appliedMethod, None
        if method is not None:
            self.propagate(method, preview=True)
        return method is not None

    # -- model -------------------------------------------------------------------------------------------------------

    def updateModelJob(self, modelPath: Path, strategy: str, budget: int, minSpacing: int = 0, **options):
        """The model update (train, or fine-tune the checkpoint at ``modelPath``) then the ranking of ``budget``
        slices with ``strategy`` by the new model, as one background job, not started: the queried slices arrive
        with the model. Its result is the training summary; the ranking fills the queried-slices table."""
        job = self.selector.updateModelAndRankJob(
            self.volumeNode,
            self.segmentationNode,
            None,
            str(modelPath),
            strategy,
            int(budget),
            self.axis,
            options,
            tableNode=self.tableNode,
            **self.selector.spacingOptions(strategy, minSpacing),
        )
        writeResults = job.apply

        def keepTable(result):
            summary, _, self.tableNode = writeResults(result)
            return summary

        job.apply = keepTable
        return job

    def predictionJob(self, modelPath: Path):
        return self.selector.predictionJob(self.volumeNode, str(modelPath))

    # -- saving ------------------------------------------------------------------------------------------------------

    def save(self) -> SavedFiles:
        """Write the segmentation (``.seg.nrrd``, slice record in its segments' tags), the scene (``.mrb``), the
        queried slices (``.csv``) and, for a DICOM series, a DICOM-SEG (``.dcm``) into the output folder, each
        atomically; a series from a DICOMweb server gets its SEG stored there (STOW-RS). Returns what was written."""
        from spatial_al.files import write_text_atomic
        from spatial_al.io import write_segmentation
        from SpatialALSlicerLib import MRMLAdapter
        from SpatialALSlicerLib.HeadlessScene import saveSceneBundle

        self.output.mkdir(parents=True, exist_ok=True)
        segmentation = MRMLAdapter.segmentationFromNode(self.segmentationNode, self.volumeNode)
        segmentationPath = write_segmentation(self.output / f"{self.case.name}.seg.nrrd", segmentation)
        scenePath = Path(saveSceneBundle(self.scene, self.output / f"{self.case.name}.mrb"))
        csvPath = None
        rows = self.queriedSlices()
        if rows:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            csvPath = write_text_atomic(self.output / f"{self.case.name}-queried-slices.csv", text.getvalue())
        saved = SavedFiles(segmentationPath, scenePath, csvPath)
        if self.case.series is not None:
            saved.dicom_seg = write_segmentation(self.output / f"{self.case.name}.dcm", segmentation, self.case.series)
        if self.case.server is not None:
            from spatial_al.io.dicomweb import DicomWebServer

            saved.stored_uid = DicomWebServer.from_argument(self.case.server).store(saved.dicom_seg)
        return saved
