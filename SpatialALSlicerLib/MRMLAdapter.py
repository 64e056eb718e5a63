"""The adapter between MRML nodes and the ``spatial_al`` backend, shared by both modules' Logic.

Axis order: every array here is KJI (``array[k, j, i]``), as ``slicer.util.arrayFromVolume`` returns it; a slice
axis is an array axis (0 = K). Masks of segments are given on the voxel grid of a *reference volume*, whatever
the segmentation's own geometry (extent, spacing, orientation) is: they are resampled (nearest neighbour) between
the two, and a linear parent transform of the segmentation is taken into account.

Uses Slicer's MRML and segmentation classes only (no Qt): runs inside Slicer and on slicer-core.
"""

import contextlib
import json

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from spatial_al.annotation_record import (
    RECORD_TAGS,
    SliceRecord,
    merge_pseudo_labels,
    recorded_annotated_slices,
    recorded_slices,
    slice_checksum,
)
from spatial_al.io.segmentation import Segmentation, default_color
from spatial_al.session import assemble_layers
from spatial_al.volume import Geometry, Segment, check_scalar_volume, resolve_slice_axis

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
STATUS_TO_ANNOTATE = "to annotate"
STATUS_ANNOTATED = "annotated"
STATUS_PROPAGATED = "propagated"
TABLE_COLUMNS = ("rank", "slice", "score", "strategy", "status")
TABLE_ATTRIBUTE_AXIS = "SpatialAL.SliceAxis"
TABLE_ATTRIBUTE_CHECKSUMS = "SpatialAL.QueriedSliceChecksums"  # JSON {slice: checksum} of the labels when queried
TABLE_ATTRIBUTE_SEGMENTS = "SpatialAL.QueriedSegments"  # comma-separated IDs of the segments the checksums cover
VOLUME_REFERENCE_ROLE = "SpatialAL.volume"
SEGMENTATION_REFERENCE_ROLE = "SpatialAL.segmentation"  # queried-slices table -> the segmentation it was ranked on
PLANE_REFERENCE_ROLE = "SpatialAL.plane"
UNDO_REFERENCE_ROLE = "SpatialAL.undo"  # segmentation node -> hidden copy of it before the last propagation
UNDO_SEGMENTS_ATTRIBUTE = "SpatialAL.UndoSegments"
PREVIEW_REFERENCE_ROLE = "SpatialAL.preview"  # segmentation node -> its propagation preview
PREVIEW_OPACITY = 0.5
BINARY_LABELMAP = "Binary labelmap"  # vtkSegmentationConverter's name of the representation the module writes


class MRMLInputError(ValueError):
    """A node given to the Logic cannot be used as it is; the message says why and what to do."""


# --- volumes -------------------------------------------------------------------------------------------------------


def volumeGeometry(volumeNode):
    """The :class:`spatial_al.volume.Geometry` of a volume node (KJI shape, LPS, ITK conventions)."""
    imageData = volumeNode.GetImageData() if volumeNode else None
    if imageData is None:
        raise MRMLInputError(f"The volume {volumeNode.GetName() if volumeNode else None!r} holds no image data.")
    ijkToRAS = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRAS)
    ijkToLPS = RAS_FROM_LPS @ slicer.util.arrayFromVTKMatrix(ijkToRAS)
    return Geometry.from_ijk_to_lps(ijkToLPS, tuple(reversed(imageData.GetDimensions())))


def sliceAxisIndex(volumeNode, sliceAxis):
    """Array axis (KJI) for ``sliceAxis``: 0, 1, 2, or a plane name resolved from the volume's orientation."""
    return resolve_slice_axis(sliceAxis, volumeGeometry(volumeNode))


def arrayFromVolumeNode(volumeNode):
    """A copy of the voxels of a scalar volume node, shape (K, J, I).

    Raises:
        MRMLInputError: no image data, or a vector (RGB) / multi-component volume.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise MRMLInputError("Select a volume that holds image data.")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1 or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise MRMLInputError(
            f"The volume {volumeNode.GetName()!r} is not a scalar volume (it has "
            f"{volumeNode.GetImageData().GetNumberOfScalarComponents()} components): convert it with the "
            "'Vector to Scalar Volume' module first."
        )
    array = np.array(slicer.util.arrayFromVolume(volumeNode))
    check_scalar_volume(array, f"volume {volumeNode.GetName()!r}")
    return array


def _requireLinearTransform(node):
    transformNode = node.GetParentTransformNode()
    if transformNode is not None and not transformNode.IsTransformToWorldLinear():
        raise MRMLInputError(
            f"{node.GetName()!r} is under a non-linear transform; harden the transform (Transforms module) first."
        )


def referenceImageGeometry(volumeNode, segmentationNode):
    """An empty oriented image on the volume's voxel grid, expressed in the segmentation's coordinate frame.

    Only the geometry is built (extent and IJK-to-world matrix through the transforms between the two nodes); the
    voxels are not copied, as ``CreateOrientedImageDataFromVolumeNode`` would, nor is anything left referenced.
    """
    _requireLinearTransform(volumeNode)
    _requireLinearTransform(segmentationNode)
    if volumeNode.GetImageData() is None:
        raise MRMLInputError(f"The volume {volumeNode.GetName()!r} has no voxels; load or select another volume.")
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    volumeToSegmentation = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        volumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode(), volumeToSegmentation
    )
    imageToWorld = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(volumeToSegmentation, ijkToRas, imageToWorld)
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volumeNode.GetImageData().GetExtent())
    reference.SetImageToWorldMatrix(imageToWorld)
    return reference


def requireVolumeGrid(volumeNode, segmentationNode, shape):
    """Raise MRMLInputError unless the volume's voxel grid still has ``shape`` (K, J, I): a result computed on it
    before the volume was cropped or resampled must not be written."""
    current = tuple(reversed(referenceImageGeometry(volumeNode, segmentationNode).GetDimensions()))
    if current != tuple(shape):
        raise MRMLInputError(
            f"The volume {volumeNode.GetName()!r} now has {current} voxels (KJI), and the result was computed on "
            f"{tuple(shape)}: it changed meanwhile. Run the propagation again."
        )


def addVolumeNode(scene, array, geometry, name):
    """Add a scalar volume node holding ``array`` (K, J, I) on ``geometry``; returns the node."""
    volumeNode = _addImageNode(scene, "vtkMRMLScalarVolumeNode", array, geometry, name)
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def _addImageNode(scene, className, array, geometry, name):
    """Add a volume node of ``className`` holding a copy of ``array`` (K, J, I) on ``geometry``, without display."""
    volumeNode = scene.AddNewNodeByClass(className, name)
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(RAS_FROM_LPS @ geometry.ijk_to_lps))
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*reversed(array.shape))
    imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    volumeNode.SetAndObserveImageData(imageData)
    return volumeNode


# --- segments ------------------------------------------------------------------------------------------------------


def segmentIdsOrAll(segmentationNode, segmentIds=None):
    """``segmentIds`` checked to exist in the segmentation (all its segments when None or empty).

    Raises:
        MRMLInputError: a segment ID is missing (the message lists the segments there are).
    """
    if segmentationNode is None:
        raise MRMLInputError("Select a segmentation.")
    segmentation = segmentationNode.GetSegmentation()
    existing = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not segmentIds:
        if not existing:
            raise MRMLInputError(f"The segmentation {segmentationNode.GetName()!r} has no segments; add one first.")
        return existing
    missing = [segmentId for segmentId in segmentIds if segmentId not in existing]
    if missing:
        names = ", ".join(f"{i} ({segmentation.GetSegment(i).GetName()})" for i in existing) or "none"
        raise MRMLInputError(
            f"Segment {missing[0]!r} is not in {segmentationNode.GetName()!r}; its segments are: {names}."
        )
    return list(segmentIds)


def _arrayFromOrientedImage(image):
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(image.GetDimensions())))


def segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode):
    """Boolean mask (K, J, I) of one segment on the volume's voxel grid (False outside the segment's extent)."""
    reference = referenceImageGeometry(volumeNode, segmentationNode)
    segmentImage = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, segmentImage, False
    ):
        raise MRMLInputError(
            f"Segment {segmentId!r} has no binary labelmap; convert the segmentation's source representation to "
            "binary labelmap (Segmentations module) first."
        )
    shape = tuple(reversed(reference.GetDimensions()))
    if segmentImage.IsEmpty():
        return np.zeros(shape, dtype=bool)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        segmentImage, reference, resampled, False, False
    )
    # Segments that do not overlap share one labelmap layer, each with its own label value.
    labelValue = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    return _arrayFromOrientedImage(resampled).reshape(shape) == labelValue


def segmentationGeometry(segmentationNode):
    """The segmentation's own voxel grid (its reference image geometry, e.g. finer than the volume when oversampled),
    as an empty oriented image; None when it has none."""
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    serialized = segmentationNode.GetSegmentation().GetConversionParameter(name)
    geometry = slicer.vtkOrientedImageData()
    if not serialized or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, geometry, False):
        return None
    return geometry


def _sameGrid(first, second):
    if first.GetExtent() != second.GetExtent():
        return False
    matrices = [vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()]
    first.GetImageToWorldMatrix(matrices[0])
    second.GetImageToWorldMatrix(matrices[1])
    return np.allclose(*(slicer.util.arrayFromVTKMatrix(matrix) for matrix in matrices), atol=1e-6)


def _orientedLabelmap(geometry, array):
    """An unsigned-char oriented image on ``geometry`` holding ``array`` (KJI)."""
    labelmap = slicer.vtkOrientedImageData()
    labelmap.ShallowCopy(geometry)
    labelmap.CopyDirections(geometry)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    _arrayFromOrientedImage(labelmap)[:] = array.astype(np.uint8)
    labelmap.Modified()
    return labelmap


def _resampledArray(image, geometry):
    """``image`` resampled (nearest neighbour) onto ``geometry``, as a KJI array."""
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        image, geometry, resampled, False, False
    )
    return _arrayFromOrientedImage(resampled).reshape(tuple(reversed(geometry.GetDimensions())))


def setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, mask):
    """Replace one segment's voxels by ``mask`` (bool, K, J, I, on the volume's grid); other segments keep theirs.

    The segment is written in the segmentation's own grid, as the Segment Editor does: where that grid differs from
    the volume's (an oversampled segmentation, another source volume), only the voxels whose volume-grid value
    changes are written, so everything else, annotated slices included, stays bit-identical. Overlaps with other
    segments are kept as overlaps (Slicer moves the segment to its own layer).
    """
    requireBinaryLabelmapSource(segmentationNode)
    reference = referenceImageGeometry(volumeNode, segmentationNode)
    expected = tuple(reversed(reference.GetDimensions()))
    if mask.shape != expected:
        raise MRMLInputError(f"The mask has shape {mask.shape}; the volume's grid is {expected} (KJI).")
    own = segmentationGeometry(segmentationNode)
    if own is None or _sameGrid(own, reference):
        labelmap = _orientedLabelmap(reference, mask)
    else:
        changed = mask != segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode)
        changedThere = _resampledArray(_orientedLabelmap(reference, changed), own).astype(bool)
        newThere = _resampledArray(_orientedLabelmap(reference, mask), own).astype(bool)
        current = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentationNode, segmentId, current, False
        )
        labelValue = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
        currentThere = np.zeros(changedThere.shape, bool)
        if not current.IsEmpty():
            currentThere = _resampledArray(current, own) == labelValue
        labelmap = _orientedLabelmap(own, np.where(changedThere, newThere, currentThere))
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap,
        segmentationNode,
        segmentId,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        labelmap.GetExtent(),
    ):
        raise MRMLInputError(f"Slicer could not write segment {segmentId!r}.")


def segmentTags(segmentationNode, segmentId, keys=RECORD_TAGS):
    """The segment's tags among ``keys`` (Slicer's Python API cannot list a segment's tag keys) as a dict."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    tags = {}
    for key in keys:
        value = vtk.reference("")
        if segment.GetTag(key, value):
            tags[key] = str(value)
    return tags


def setSegmentTags(segmentationNode, segmentId, tags):
    """Set (add or replace) tags of a segment."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    for key, value in tags.items():
        segment.SetTag(key, str(value))


def sliceRecord(segmentationNode, segmentId):
    """The :class:`SliceRecord` stored in a segment's tags, or None; SliceRecordError names a damaged tag."""
    name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
    return SliceRecord.from_tags(segmentTags(segmentationNode, segmentId), name)


def namedSegmentTags(segmentationNode, segmentIds):
    """Segment name -> its record tags, for the segments ``segmentIds`` (all when None); a name Slicer lets two
    segments share is told apart by the segment's ID."""
    segmentation, named = segmentationNode.GetSegmentation(), {}
    for segmentId in segmentIdsOrAll(segmentationNode, segmentIds):
        name = segmentation.GetSegment(segmentId).GetName()
        named[name if name not in named else f"{name} ({segmentId})"] = segmentTags(segmentationNode, segmentId)
    return named


def recordedAnnotatedSlices(segmentationNode, segmentIds, axis):
    """Union of the annotated slices recorded in the segments' tags along ``axis`` (empty when none are; a record
    along another axis is ignored with a warning)."""
    return recorded_annotated_slices(namedSegmentTags(segmentationNode, segmentIds), axis) or []


def recordedPropagatedSlices(segmentationNode, segmentIds, axis):
    """Union of the slices recorded as propagated (pseudo-labeled) in the segments' tags along ``axis``."""
    return recorded_slices(namedSegmentTags(segmentationNode, segmentIds), axis, "propagated") or []


def recordAnnotatedSlices(segmentationNode, segmentIds, slices, axis):
    """Add ``slices`` to the annotated slices recorded in each segment's tags; returns the union over segments.

    Raises:
        MRMLInputError: a segment records its annotation along another slice axis.
    """
    annotated = set()
    for segmentId in segmentIdsOrAll(segmentationNode, segmentIds):
        record = sliceRecord(segmentationNode, segmentId) or SliceRecord(slice_axis=axis, annotated=())
        if record.slice_axis != axis:
            name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
            raise MRMLInputError(
                f"Segment {name!r} records its annotated slices along axis {record.slice_axis}, not {axis}: "
                "annotate along that axis, or work on a copy of the segment."
            )
        record = record.with_annotated(slices)
        setSegmentTags(segmentationNode, segmentId, record.to_tags())
        annotated.update(record.annotated)
    return sorted(annotated)


def segmentationFromNode(segmentationNode, volumeNode, segmentIds=None):
    """The segments as a backend :class:`Segmentation` on the volume's grid (layers re-packed without overlaps)."""
    segmentIds = segmentIdsOrAll(segmentationNode, segmentIds)
    segments, masks = [], []
    for index, segmentId in enumerate(segmentIds):
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        masks.append(segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode))
        segments.append(
            Segment(
                name=segment.GetName(),
                label_value=index + 1,
                color=tuple(segment.GetColor()),
                segment_id=segmentId,
                tags=segmentTags(segmentationNode, segmentId),
            )
        )
    layers, placed = assemble_layers(segments, masks)
    return Segmentation(layers, placed, volumeGeometry(volumeNode))


def addSegmentationNode(scene, segmentation, volumeNode, name):
    """Add a segmentation node holding a backend :class:`Segmentation` on ``volumeNode``'s grid; returns the node.

    Each layer goes in with one labelmap import (every segment of the layer in one pass, as Slicer's "Import
    labelmap" does), not one write per segment: ten segments of a 300 x 512 x 512 volume take 0.1 s, not 4 s.
    """
    expected = volumeGeometry(volumeNode).shape
    if segmentation.label_layers.shape[1:] != expected:
        raise MRMLInputError(
            f"The segmentation has shape {segmentation.label_layers.shape[1:]}; the volume's grid is {expected} (KJI)."
        )
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentIds = []
    for index, segment in enumerate(segmentation.segments):
        color = segment.color if segment.color is not None else default_color(index)
        segmentIds.append(
            segmentationNode.GetSegmentation().AddEmptySegment(segment.segment_id or "", segment.name, list(color))
        )
        setSegmentTags(segmentationNode, segmentIds[-1], segment.tags)
    for layer in sorted({segment.layer for segment in segmentation.segments}):
        inLayer = [index for index, segment in enumerate(segmentation.segments) if segment.layer == layer]
        _importLayer(
            segmentationNode,
            volumeNode,
            segmentation.label_layers[layer],
            [segmentation.segments[index].label_value for index in inLayer],
            [segmentIds[index] for index in inLayer],
        )
    return segmentationNode


def _importLayer(segmentationNode, volumeNode, labels, labelValues, segmentIds):
    """Write the voxels of ``labels`` (K, J, I) holding ``labelValues[n]`` into segment ``segmentIds[n]``, all at
    once; other voxels stay as they are."""
    # Slicer's import maps label 1..N to the N segment IDs given, in order: renumber the layer's values to that.
    largest = max(int(labels.max(initial=0)), *labelValues)
    renumbered = np.zeros(largest + 1, np.uint8 if len(labelValues) < 256 else np.uint16)
    renumbered[np.asarray(labelValues, int)] = np.arange(1, len(labelValues) + 1)
    scene = segmentationNode.GetScene()
    labelmapNode = _addImageNode(
        scene, "vtkMRMLLabelMapVolumeNode", renumbered[labels], volumeGeometry(volumeNode), "import"
    )
    # The volume's grid in the segmentation's frame: the import then places it with no transform of its own.
    imageToSegmentation = vtk.vtkMatrix4x4()
    referenceImageGeometry(volumeNode, segmentationNode).GetImageToWorldMatrix(imageToSegmentation)
    labelmapNode.SetIJKToRASMatrix(imageToSegmentation)
    ids = vtk.vtkStringArray()
    for segmentId in segmentIds:
        ids.InsertNextValue(segmentId)
    try:
        imported = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmapNode, segmentationNode, ids
        )
    finally:
        scene.RemoveNode(labelmapNode)
    if not imported:
        raise MRMLInputError(f"Slicer could not import the segments {', '.join(segmentIds)}.")


def writePseudoLabels(
    segmentationNode, volumeNode, pseudoMasks, annotated, propagated, confidence, axis, method, asRead=None
):
    """Merge propagated masks into segments without losing anything a person drew or marked.

    Slices a segment records as annotated now are left as they are, like ``annotated``; with ``asRead``, so is every
    slice whose content changed since the propagation read the segment (drawn or erased while it ran).

    Args:
        pseudoMasks: segment ID -> propagated bool mask (K, J, I) on the volume's grid.
        annotated: annotated slice indices the propagation started from (left exactly as they are).
        propagated: slices to write pseudo-labels on.
        confidence: per-slice confidence, shape (n_slices,).
        axis: slice axis (KJI array axis).
        method: propagation method, recorded in the tags.
        asRead: segment ID -> one checksum per slice of the segment as the propagation read it
            (``spatial_al.session.slice_checksums_by_segment``); None when it was read just now.

    Returns:
        (segment ID -> slices left untouched because a person drew, erased or marked there; the slices that received
        pseudo-labels in at least one segment, sorted).
    """
    requireBinaryLabelmapSource(segmentationNode)
    keptEdited, written = {}, set()
    for segmentId, pseudo in pseudoMasks.items():
        merged = merge_pseudo_labels(
            current=segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode),
            pseudo=pseudo,
            annotated=annotated,
            propagated=propagated,
            confidence=confidence,
            previous_tags=segmentTags(segmentationNode, segmentId),
            slice_axis=axis,
            method=method,
            as_read=None if asRead is None else asRead[segmentId],
        )
        setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, merged.mask)
        setSegmentTags(segmentationNode, segmentId, merged.record.to_tags())
        written.update(merged.written)
        if merged.kept_edited:
            keptEdited[segmentId] = merged.kept_edited
    return keptEdited, sorted(written)


def requireBinaryLabelmapSource(segmentationNode):
    """Raise MRMLInputError, before anything is changed, when the segmentation's source representation is not a
    binary labelmap (a closed surface, say): what the module writes would not be saved, since Slicer saves the source
    representation and rebuilds the others from it."""
    source = segmentationNode.GetSegmentation().GetSourceRepresentationName()
    if source != BINARY_LABELMAP:
        raise MRMLInputError(
            f"The segmentation {segmentationNode.GetName()!r} is stored as {source.lower()}, and the module writes "
            "binary labelmaps, which Slicer would not save. Convert it first (the panel offers to; or Segmentations "
            "module > Representations > Binary labelmap > Make source representation; or, in Python, "
            "logic.convertToBinaryLabelmap(segmentationNode))."
        )


def convertToBinaryLabelmap(segmentationNode):
    """Make binary labelmap the source representation (creating it from the current source), as the Segment Editor
    does before the first edit of a segmentation stored as closed surfaces; returns True on success."""
    if segmentationNode.GetSegmentation().GetSourceRepresentationName() == BINARY_LABELMAP:
        return True
    if not segmentationNode.CreateBinaryLabelmapRepresentation():
        return False
    segmentationNode.SetSourceRepresentationToBinaryLabelmap()
    return segmentationNode.GetSegmentation().GetSourceRepresentationName() == BINARY_LABELMAP


@contextlib.contextmanager
def undoableChange(segmentationNode, segmentIds):
    """Change ``segmentIds`` within the block, with a hidden copy of the segmentation taken first for :func:`undo`
    (one level; saved with the scene, so undo works after reopening it). When the block raises, the segments are
    put back from that copy and the previous undo copy stays; otherwise the new copy replaces it."""
    scene = segmentationNode.GetScene()
    previous = segmentationNode.GetNodeReference(UNDO_REFERENCE_ROLE)
    snapshot = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{segmentationNode.GetName()} (before propagation)")
    snapshot.SetHideFromEditors(True)
    snapshot.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
    snapshot.SetAttribute(UNDO_SEGMENTS_ATTRIBUTE, ",".join(segmentIds))
    try:
        yield snapshot
    except BaseException:
        _restoreSegments(segmentationNode, snapshot)
        scene.RemoveNode(snapshot)
        raise
    segmentationNode.SetNodeReferenceID(UNDO_REFERENCE_ROLE, snapshot.GetID())
    if previous is not None:
        scene.RemoveNode(previous)


def undoSnapshot(segmentationNode):
    """The segmentation node holding the copy :func:`undoableChange` kept.

    Raises:
        MRMLInputError: there is nothing to undo.
    """
    snapshot = segmentationNode.GetNodeReference(UNDO_REFERENCE_ROLE)
    if snapshot is None:
        raise MRMLInputError(f"Nothing to undo: {segmentationNode.GetName()!r} was not propagated since it was loaded.")
    return snapshot


def restoreUndoSnapshot(segmentationNode):
    """Put back the segments copied by :func:`undoableChange` exactly (masks, tags, colours, order), then drop the
    snapshot; returns the restored segment IDs.

    Raises:
        MRMLInputError: there is nothing to undo.
    """
    snapshot = undoSnapshot(segmentationNode)
    segmentIds = _restoreSegments(segmentationNode, snapshot)
    segmentationNode.RemoveNodeReferenceIDs(UNDO_REFERENCE_ROLE)
    segmentationNode.GetScene().RemoveNode(snapshot)
    return segmentIds


def _restoreSegments(segmentationNode, snapshot):
    """Put back the snapshot's segments (its ``UNDO_SEGMENTS_ATTRIBUTE``) in their places, then merge the labelmap
    layers into as few as hold them without overlaps, as Slicer shares them (each copied segment arrives in a layer
    of its own); returns the restored segment IDs."""
    segmentation, saved = segmentationNode.GetSegmentation(), snapshot.GetSegmentation()
    segmentIds = [i for i in (snapshot.GetAttribute(UNDO_SEGMENTS_ATTRIBUTE) or "").split(",") if i]
    wasModifying = segmentationNode.StartModify()
    for segmentId in segmentIds:
        index = segmentation.GetSegmentIndex(segmentId)
        if index >= 0:
            segmentation.RemoveSegment(segmentId)
        segmentation.CopySegmentFromSegmentation(saved, segmentId)
        if index >= 0:
            segmentation.SetSegmentIndex(segmentId, index)
    segmentation.CollapseBinaryLabelmaps(False)
    segmentationNode.EndModify(wasModifying)
    return segmentIds


def showPreview(segmentationNode, volumeNode, pseudoMasks, propagated, axis):
    """Show propagated masks without touching the segmentation: a separate node "<name> (preview)" with one segment
    "<segment> (propagated)" per segment (same colour, half opacity) holding its mask on the ``propagated`` slices
    only. Replaces the previous preview of the node; returns the preview node.

    Args:
        pseudoMasks: segment ID -> propagated bool mask (K, J, I) on the volume's grid.
        propagated: slice indices along ``axis`` that hold pseudo-labels.
        axis: slice axis (KJI array axis).
    """
    removePreview(segmentationNode)
    preview = segmentationNode.GetScene().AddNewNodeByClass(
        "vtkMRMLSegmentationNode", f"{segmentationNode.GetName()} (preview)"
    )
    preview.CreateDefaultDisplayNodes()
    preview.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    preview.GetDisplayNode().SetOpacity(PREVIEW_OPACITY)
    index = [slice(None)] * 3
    index[axis] = np.asarray(propagated, dtype=np.int64)
    for segmentId, mask in pseudoMasks.items():
        source = segmentationNode.GetSegmentation().GetSegment(segmentId)
        shown = np.zeros_like(mask)
        shown[tuple(index)] = mask[tuple(index)]
        previewId = preview.GetSegmentation().AddEmptySegment(
            segmentId, f"{source.GetName()} (propagated)", source.GetColor()
        )
        setSegmentMaskInVolumeGrid(preview, previewId, volumeNode, shown)
    segmentationNode.SetNodeReferenceID(PREVIEW_REFERENCE_ROLE, preview.GetID())
    return preview


def removePreview(segmentationNode):
    """Remove the preview node of :func:`showPreview`, if any."""
    preview = segmentationNode.GetNodeReference(PREVIEW_REFERENCE_ROLE)
    if preview is not None:
        segmentationNode.RemoveNodeReferenceIDs(PREVIEW_REFERENCE_ROLE)
        segmentationNode.GetScene().RemoveNode(preview)


# --- slices in the views -------------------------------------------------------------------------------------------


def slicePlaneRAS(volumeNode, axis, index):
    """Where slice ``index`` along array ``axis`` lies in RAS.

    Returns:
        (center (3,), normal (3,), in-plane axes (2, 3) unit vectors, in-plane size (2,) in mm).
    """
    geometry = volumeGeometry(volumeNode)
    ijkToRAS = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRAS)
    matrix = slicer.util.arrayFromVTKMatrix(ijkToRAS)
    if volumeNode.GetParentTransformNode() is not None:
        _requireLinearTransform(volumeNode)
        toWorld = vtk.vtkMatrix4x4()
        volumeNode.GetParentTransformNode().GetMatrixTransformToWorld(toWorld)
        matrix = slicer.util.arrayFromVTKMatrix(toWorld) @ matrix
    shapeIJK = np.array(geometry.shape[::-1], dtype=float)
    ijkAxis = 2 - axis
    centerIJK = (shapeIJK - 1) / 2
    centerIJK[ijkAxis] = index
    center = (matrix @ np.append(centerIJK, 1.0))[:3]
    columns = matrix[:3, :3]
    normal = columns[:, ijkAxis] / np.linalg.norm(columns[:, ijkAxis])
    inPlane = [i for i in range(3) if i != ijkAxis]
    axes = np.array([columns[:, i] / np.linalg.norm(columns[:, i]) for i in inPlane])
    size = np.array([np.linalg.norm(columns[:, i]) * shapeIJK[i] for i in inPlane])
    return center, normal, axes, size


def jumpToSlice(volumeNode, axis, index):
    """Centre every slice view of the volume's scene on slice ``index`` (the view along ``axis`` shows it)."""
    center, _, _, _ = slicePlaneRAS(volumeNode, axis, index)
    slicer.vtkMRMLSliceNode.JumpAllSlices(volumeNode.GetScene(), *center, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return center


def addSlicePlanes(volumeNode, axis, slices, namePrefix="Queried slice", color=(1.0, 0.82, 0.12)):
    """One locked plane markup per slice, covering the volume's cross-section; returns the plane nodes."""
    scene = volumeNode.GetScene()
    planes = []
    for rank, index in enumerate(slices, start=1):
        center, normal, axes, size = slicePlaneRAS(volumeNode, axis, int(index))
        plane = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", f"{namePrefix} {int(index)} (rank {rank})")
        plane.SetSizeMode(plane.SizeModeAbsolute)
        plane.SetCenterWorld(*center)
        plane.SetAxesWorld(axes[0], np.cross(normal, axes[0]), normal)
        plane.SetSize(*size)
        plane.SetLocked(True)
        plane.SetAttribute("SpatialAL.Slice", str(int(index)))
        plane.SetAttribute(TABLE_ATTRIBUTE_AXIS, str(axis))
        plane.CreateDefaultDisplayNodes()
        display = plane.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetOpacity(0.25)
        display.SetHandlesInteractive(False)
        display.SetPropertiesLabelVisibility(False)  # five names over the image hide it; the table names each plane
        planes.append(plane)
    return planes


# --- the table of queried slices -----------------------------------------------------------------------------------


def writeQueriedSlicesTable(tableNode, ranking, statuses, volumeNode=None):
    """Fill a table node with the ranking: columns rank, slice, score, strategy, status (one row per slice)."""
    table = vtk.vtkTable()
    columns = {
        "rank": vtk.vtkIntArray(),
        "slice": vtk.vtkIntArray(),
        "score": vtk.vtkDoubleArray(),
        "strategy": vtk.vtkStringArray(),
        "status": vtk.vtkStringArray(),
    }
    for name in TABLE_COLUMNS:
        columns[name].SetName(name)
        table.AddColumn(columns[name])
    for row, status in zip(ranking, statuses, strict=True):
        columns["rank"].InsertNextValue(row.rank)
        columns["slice"].InsertNextValue(row.slice)
        columns["score"].InsertNextValue(row.score)
        columns["strategy"].InsertNextValue(ranking.strategy)
        columns["status"].InsertNextValue(status)
    wasModifying = tableNode.StartModify()
    tableNode.SetAndObserveTable(table)
    tableNode.SetLocked(True)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.SetAttribute(TABLE_ATTRIBUTE_AXIS, str(ranking.axis))
    if volumeNode is not None:
        tableNode.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volumeNode.GetID())
    tableNode.EndModify(wasModifying)
    return tableNode


def recordRankedOn(tableNode, volumeNode, segmentationNode, segmentIds, axis):
    """Keep in a queried-slices table what its ranking was made on: the segmentation, its segments and a checksum of
    their labels on each queried slice when queried, so that an edit there is noticed later, and that marking a slice
    annotated reaches those segments along that axis, whatever the panel shows by then."""
    slices = [row["slice"] for row in queriedSlicesFromTable(tableNode)]
    checksums = sliceLabelChecksums(segmentationNode, segmentIds, volumeNode, axis, slices)
    tableNode.SetAttribute(TABLE_ATTRIBUTE_CHECKSUMS, json.dumps(checksums))
    tableNode.SetAttribute(TABLE_ATTRIBUTE_SEGMENTS, ",".join(segmentIdsOrAll(segmentationNode, segmentIds)))
    tableNode.SetNodeReferenceID(SEGMENTATION_REFERENCE_ROLE, segmentationNode.GetID())


def writeVolumeRankingTable(tableNode, ranking, volumeNodes):
    """Fill a table node with a volume ranking (``spatial_al.VolumeRanking``): columns rank, volume, score,
    strategy, best first; each row's volume node is referenced in the same order (role ``VOLUME_REFERENCE_ROLE``)."""
    table = vtk.vtkTable()
    columns = {"rank": vtk.vtkIntArray(), "volume": vtk.vtkStringArray(), "score": vtk.vtkDoubleArray()}
    columns["strategy"] = vtk.vtkStringArray()
    for name, column in columns.items():
        column.SetName(name)
        table.AddColumn(column)
    wasModifying = tableNode.StartModify()
    tableNode.RemoveNodeReferenceIDs(VOLUME_REFERENCE_ROLE)
    for rank, index in enumerate(ranking.order, start=1):
        columns["rank"].InsertNextValue(rank)
        columns["volume"].InsertNextValue(ranking.names[index])
        columns["score"].InsertNextValue(float(ranking.scores[index]))
        columns["strategy"].InsertNextValue(ranking.strategy)
        tableNode.AddNodeReferenceID(VOLUME_REFERENCE_ROLE, volumeNodes[index].GetID())
    tableNode.SetAndObserveTable(table)
    tableNode.SetLocked(True)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.EndModify(wasModifying)
    return tableNode


def queriedSlicesFromTable(tableNode):
    """Rows of a queried-slices table as a list of dicts (rank, slice, score, strategy, status)."""
    table = tableNode.GetTable()
    return [
        {
            "rank": table.GetValueByName(row, "rank").ToInt(),
            "slice": table.GetValueByName(row, "slice").ToInt(),
            "score": table.GetValueByName(row, "score").ToDouble(),
            "strategy": table.GetValueByName(row, "strategy").ToString(),
            "status": table.GetValueByName(row, "status").ToString(),
        }
        for row in range(table.GetNumberOfRows())
    ]


def setQueriedSliceStatus(tableNode, sliceIndex, status):
    """Set the status of one queried slice in the table; returns False when the slice is not in it."""
    table = tableNode.GetTable()
    for row in range(table.GetNumberOfRows()):
        if table.GetValueByName(row, "slice").ToInt() == int(sliceIndex):
            table.SetValueByName(row, "status", vtk.vtkVariant(status))
            table.Modified()
            tableNode.Modified()
            return True
    return False


def markSlicesAnnotated(volumeNode, segmentationNode, segmentIds, slices, sliceAxis, tableNode=None):
    """Record ``slices`` as annotated in the segments (no longer propagated) and in the queried-slices table, if
    given; returns all annotated slices."""
    axis = sliceAxisIndex(volumeNode, sliceAxis)
    annotated = recordAnnotatedSlices(segmentationNode, segmentIds, slices, axis)
    if tableNode is not None:
        for index in slices:
            setQueriedSliceStatus(tableNode, index, STATUS_ANNOTATED)
    return annotated


def syncQueriedSliceStatuses(volumeNode, segmentationNode, segmentIds):
    """In every queried-slices table of ``volumeNode``, show as "propagated" the queried slices not yet annotated
    that the segments record as propagated, and as "to annotate" those they no longer do (after an undo)."""
    scene = volumeNode.GetScene()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
        tableNode = scene.GetNthNodeByClass(index, "vtkMRMLTableNode")
        axis = tableNode.GetAttribute(TABLE_ATTRIBUTE_AXIS)
        if axis is None or tableNode.GetNodeReference(VOLUME_REFERENCE_ROLE) is not volumeNode:
            continue
        propagated = set(recordedPropagatedSlices(segmentationNode, segmentIds, int(axis)))
        for row in queriedSlicesFromTable(tableNode):
            if row["status"] != STATUS_ANNOTATED:
                status = STATUS_PROPAGATED if row["slice"] in propagated else STATUS_TO_ANNOTATE
                if status != row["status"]:
                    setQueriedSliceStatus(tableNode, row["slice"], status)


def sliceLabelChecksums(segmentationNode, segmentIds, volumeNode, axis, slices):
    """{slice: checksums of the segments' masks on that slice, joined} (KJI ``axis``): a cheap fingerprint that
    changes when any voxel of the slice is painted or erased."""
    masks = [
        segmentMaskInVolumeGrid(segmentationNode, i, volumeNode) for i in segmentIdsOrAll(segmentationNode, segmentIds)
    ]
    return {
        int(index): "".join(slice_checksum(np.take(mask, int(index), axis=axis)) for mask in masks) for index in slices
    }
