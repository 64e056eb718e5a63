"""A Slicer scene of an annotation session: what the demo and batch runs hand to a radiologist."""

from pathlib import Path

from spatial_al.volume import SliceStatus

from . import MRMLAdapter
from .HeadlessScene import HeadlessScene, saveSceneBundle

STATUS_NAMES = {
    SliceStatus.UNLABELED: MRMLAdapter.STATUS_TO_ANNOTATE,
    SliceStatus.ANNOTATED: MRMLAdapter.STATUS_ANNOTATED,
    SliceStatus.PSEUDO_LABELED: MRMLAdapter.STATUS_PROPAGATED,
}


def buildSessionScene(session):
    """A :class:`HeadlessScene` holding a session: volume, segmentation, queried-slices table, slice planes.

    Args:
        session: a ``spatial_al.demo.DemoSession`` (stack, ranking, propagation).
    """
    headless = HeadlessScene()
    stack = session.stack
    volumeNode = MRMLAdapter.addVolumeNode(headless.scene, stack.image, stack.geometry, "CT")
    segmentationNode = MRMLAdapter.addSegmentationNode(
        headless.scene, session.propagation.segmentation, volumeNode, "Segmentation (annotated + propagated)"
    )
    tableNode = headless.scene.AddNewNodeByClass("vtkMRMLTableNode", "Queried slices")
    statuses = [STATUS_NAMES[SliceStatus(stack.status[index])] for index in session.ranking.slices]
    MRMLAdapter.writeQueriedSlicesTable(tableNode, session.ranking, statuses, volumeNode)
    MRMLAdapter.addSlicePlanes(volumeNode, stack.slice_axis, session.ranking.slices)
    MRMLAdapter.jumpToSlice(volumeNode, stack.slice_axis, int(session.ranking.slices[0]))
    return headless, volumeNode, segmentationNode, tableNode


def writeSessionScene(session, path):
    """Write the session's scene as a Slicer bundle (``.mrb``); returns its path."""
    headless, *_ = buildSessionScene(session)
    saveSceneBundle(headless.scene, path)
    return Path(path)
