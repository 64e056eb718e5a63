"""A Slicer scene of an annotation session: what the demo and batch runs hand to a radiologist."""

from pathlib import Path

from spatial_al.volume import SliceStatus

from . import MRMLAdapter
from .HeadlessScene import HeadlessScene, loadSceneBundle, saveSceneBundle

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
    MRMLAdapter.recordRankedOn(tableNode, volumeNode, segmentationNode, None, stack.slice_axis)
    for plane in MRMLAdapter.addSlicePlanes(volumeNode, stack.slice_axis, session.ranking.slices):
        tableNode.AddNodeReferenceID(MRMLAdapter.PLANE_REFERENCE_ROLE, plane.GetID())
    MRMLAdapter.jumpToSlice(volumeNode, stack.slice_axis, int(session.ranking.slices[0]))
    nodes = {"inputVolume": volumeNode, "segmentation": segmentationNode}
    addModuleParameterNode(headless.scene, "ActiveSliceSelector", {**nodes, "queriedSlices": tableNode})
    addModuleParameterNode(headless.scene, "SpatialPropagation", nodes)
    return headless, volumeNode, segmentationNode, tableNode


def addModuleParameterNode(scene, moduleName, nodes):
    """The parameter node a module's Logic finds in ``scene`` (a singleton ``vtkMRMLScriptedModuleNode`` tagged with
    the module's name, as ``ScriptedLoadableModuleLogic.getParameterNode`` makes it), its node parameters set as
    Slicer's ``parameterNodeWrapper`` stores them: a node reference whose role is the parameter's name, beside an
    empty parameter of that name. The other parameters take their defaults when the module first reads the node."""
    parameterNode = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
    parameterNode.UnRegister(None)  # CreateNodeByClass hands over a reference Python already holds
    parameterNode.SetSingletonTag(moduleName)
    parameterNode.SetAttribute("ModuleName", moduleName)
    parameterNode.SetName(scene.GetUniqueNameByString(moduleName))
    parameterNode = scene.AddNode(parameterNode)
    for name, node in nodes.items():
        parameterNode.SetParameter(name, "")
        parameterNode.SetNodeReferenceID(name, node.GetID())
    return parameterNode


def writeSessionScene(session, path):
    """Write the session's scene as a Slicer bundle (``.mrb``); returns its path."""
    headless, *_ = buildSessionScene(session)
    saveSceneBundle(headless.scene, path)
    return Path(path)


def writeImageScene(image, segmentation, path):
    """Write a volume ``image`` (K, J, I) and its ``segmentation`` (on the same grid) as a Slicer bundle (``.mrb``)."""
    headless = HeadlessScene()
    volumeNode = MRMLAdapter.addVolumeNode(headless.scene, image, segmentation.geometry, "Image")
    MRMLAdapter.addSegmentationNode(headless.scene, segmentation, volumeNode, "Segmentation")
    saveSceneBundle(headless.scene, path)


def readSceneSegmentation(path):
    """The first segmentation of a bundle (``.mrb``), as a backend ``Segmentation`` on its first volume's grid."""
    scene = loadSceneBundle(path).scene
    volumeNode = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    segmentationNode = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    if volumeNode is None or segmentationNode is None:
        raise OSError(f"The bundle {str(path)!r} holds no volume with a segmentation.")
    return MRMLAdapter.segmentationFromNode(segmentationNode, volumeNode)
