"""What the Slicer application sets up around an MRML scene, for running the Slicer layer on slicer-core.

Inside Slicer the application does this; outside it (the demo, batch scripts, the tests) :func:`createHeadlessScene`
does it: a scene, the application logic, the module logics whose node classes and segmentation converters the
adapter needs, and the three default slice views (Red, Yellow, Green).
"""

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path

import slicer
import vtk

# Module logics registered on the application logic, as Slicer's module manager does at startup.
MODULE_LOGIC_CLASSES = {
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}
SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


class HeadlessScene:
    """An MRML scene with the application and module logics Slicer would give it.

    Attributes:
        scene: the ``vtkMRMLScene``.
        applicationLogic: the ``vtkSlicerApplicationLogic``.
        moduleLogics: module name -> logic instance.
    """

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.applicationLogic = slicer.vtkSlicerApplicationLogic()
        self.applicationLogic.SetMRMLScene(self.scene)
        self.applicationLogic.SetSliceLogics(vtk.vtkCollection())
        self.applicationLogic.SetViewLogics(vtk.vtkCollection())
        self.applicationLogic.GetColorLogic().SetMRMLScene(self.scene)
        self.moduleLogics = {}
        for moduleName, className in MODULE_LOGIC_CLASSES.items():
            logic = getattr(slicer, className)()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.applicationLogic)
            self.applicationLogic.SetModuleLogic(moduleName, logic)
            self.moduleLogics[moduleName] = logic
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        for layoutName, orientation in SLICE_VIEWS.items():
            sliceNode = self.scene.AddNewNodeByClass("vtkMRMLSliceNode")
            sliceNode.SetName(layoutName)
            sliceNode.SetLayoutName(layoutName)
            sliceNode.SetSingletonTag(layoutName)
            sliceNode.SetOrientation(orientation)

    def sliceNode(self, layoutName):
        return self.scene.GetSingletonNode(layoutName, "vtkMRMLSliceNode")


@contextlib.contextmanager
def silencedVTKOutput():
    """Within the block, VTK's output window shows nothing (vtkArchive reports every file it zips to it)."""
    previous = vtk.vtkOutputWindow.GetInstance()
    previous.Register(None)
    silent = vtk.vtkOutputWindow()
    silent.SetDisplayModeToNever()
    vtk.vtkOutputWindow.SetInstance(silent)
    try:
        yield
    finally:
        vtk.vtkOutputWindow.SetInstance(previous)
        previous.UnRegister(None)


def saveSceneBundle(scene, path):
    """Write ``scene`` and every storable node's data into one ``.mrb`` file; returns the path.

    Storable nodes without a storage node get their default one (NRRD volumes, .seg.nrrd segmentations,
    .tsv tables, .mrk.json markups); volumes keep their voxel grid as it is, left-handed or not.
    """
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()  # None for a node type without a default storage node
            if storage is not None and storage.IsA("vtkMRMLVolumeArchetypeStorageNode"):
                # Keep a left-handed voxel grid as it is: flipping K on reload would move every recorded slice index.
                storage.SetForceRightHandedIJKCoordinateSystem(False)
    path = Path(path).resolve()  # WriteToMRB fails on a relative path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under its own name in a temporary folder beside it, then moved into place: a kill leaves the
    # previous bundle or none (the bundle's inner folder is named after the file, so the name is kept).
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as folder:
        staged = Path(folder) / path.name
        with silencedVTKOutput():
            written = scene.WriteToMRB(str(staged))
        if not written:
            raise OSError(f"Slicer could not write the scene bundle {str(path)!r}.")
        os.replace(staged, path)
    return str(path)


def loadSceneBundle(path):
    """A new :class:`HeadlessScene` holding the scene of an ``.mrb`` (or ``.mrml``) file.

    A bundle is unpacked into a temporary folder and its ``.mrml`` imported (``vtkMRMLScene.ReadFromMRB`` needs the
    application's remote-data cache, which a headless scene does not have).
    """
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        return _importScene(path)
    with tempfile.TemporaryDirectory(prefix="spatial_al_mrb_") as folder:
        with zipfile.ZipFile(path) as bundle:
            bundle.extractall(folder)
        scenes = sorted(Path(folder).rglob("*.mrml"))
        if not scenes:
            raise OSError(f"{str(path)!r} holds no .mrml scene.")
        return _importScene(scenes[0])


def _importScene(mrmlPath):
    headless = HeadlessScene()
    headless.scene.SetURL(str(mrmlPath))
    if not headless.scene.Import():
        raise OSError(f"Slicer could not read the scene {str(mrmlPath)!r}.")
    return headless
