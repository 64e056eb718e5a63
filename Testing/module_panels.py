"""Scenes and panels the modules' tests share: the chest CT as nodes, and each module's panel on fake widgets (there
is no Qt here; ``slicer_standin.qt_module`` gives the timer and shortcuts the panels' plumbing uses)."""

import sys
import time
import types

import numpy as np


def chest_ct_nodes(scene):
    """The chest CT and its ground-truth segmentation as nodes of ``scene``."""
    from spatial_al.data import chest_ct_files
    from spatial_al.io import load_stack
    from spatial_al.io.segmentation import Segmentation
    from SpatialALSlicerLib import MRMLAdapter

    stack = load_stack(*chest_ct_files())
    volume = MRMLAdapter.addVolumeNode(scene, stack.image, stack.geometry, "CT")
    truth = Segmentation(stack.label_layers, stack.segments, stack.geometry)
    return volume, MRMLAdapter.addSegmentationNode(scene, truth, volume, "Segmentation"), stack


def annotated_lung(slicer_modules, scene, slices):
    """Chest CT nodes with the right lung kept on ``slices`` only and those slices marked annotated."""
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(scene)
    lung = stack.segment("right lung")
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    selector.markAnnotated(volume, segmentation, [lung.segment_id], slices, "axial")
    annotation = np.zeros_like(stack.segment_mask(lung))
    annotation[slices] = stack.segment_mask(lung)[slices]
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, annotation)
    return volume, segmentation, lung


def tiny_preset(features):
    from spatial_al.models import preset_config

    return preset_config("unet-small", features=features)


class Button:
    def __init__(self):
        self.text, self.enabled, self.toolTip = "", True, ""


class ParameterNode(types.SimpleNamespace):
    """A module's parameters in a namespace; binding it to widgets does nothing here. One node is equal to itself
    only, as an MRML node is (observers are kept by node)."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def connectGui(self, ui):
        return None

    def disconnectGui(self, tag):
        pass


class TableView:
    def __init__(self):
        self.node, self.resets = None, 0

    def mrmlTableNode(self):
        return self.node

    def setMRMLTableNode(self, node):
        self.node, self.resets = node, self.resets + 1


class ComboBox:  # Qt's property names; items carry no data (no tooltips)
    def __init__(self, text=""):
        self.currentText = text
        self.currentIndex = 0

    def setCurrentText(self, text):
        self.currentText = text

    def itemData(self, index, role):
        return None


def progress_bar():
    return types.SimpleNamespace(setMaximum=lambda n: None, setValue=lambda n: None, setFormat=lambda f: None)


def propagation_panel(module, volume, segmentation, monkeypatch):
    """The Spatial Propagation panel on fake widgets, its parameters in a :class:`ParameterNode`."""
    import slicer_standin

    monkeypatch.setitem(sys.modules, "qt", slicer_standin.qt_module())
    panel = module.SpatialPropagationWidget()
    panel.logic = module.SpatialPropagationLogic()
    names = ("propagateButton", "previewButton", "applyButton", "undoButton")
    panel.ui = types.SimpleNamespace(
        **{name: Button() for name in names},
        progressBar=progress_bar(),
        resultLabel=types.SimpleNamespace(text=""),
        modelPathLineEdit=types.SimpleNamespace(currentPath="", enabled=False),
        methodComboBox=types.SimpleNamespace(currentText="sdf", setCurrentText=lambda text: None),
        segmentsTableView=types.SimpleNamespace(selectedSegmentIDs=lambda: []),
    )
    panel.initializeWork()
    panel._parameterNodeGuiTag = None
    panel._previewTimer = slicer_standin.QTimer()
    panel._previewTimer.connect("timeout()", panel.onPreviewButton)
    panel._parameterNode = ParameterNode(
        inputVolume=volume,
        segmentation=segmentation,
        method="sdf",
        modelPath="",
        annotatedSlices="",
        sliceAxis="axial",
        mostConfident=0,
        autoUpdate=False,
    )
    return panel


def selector_panel(module, parameterNode, monkeypatch):
    """The Active Slice Selector panel on fake widgets, showing ``parameterNode`` (a :class:`ParameterNode`)."""
    import slicer_standin

    monkeypatch.setitem(sys.modules, "qt", slicer_standin.qt_module())
    panel = module.ActiveSliceSelectorWidget()
    panel.logic = module.ActiveSliceSelectorLogic()
    names = ("rankButton", "nextButton", "previousButton", "markAnnotatedButton", "updateModelButton", "predictButton")
    panel.ui = types.SimpleNamespace(
        **{name: Button() for name in (*names, "rankVolumesButton")},
        queriedSlicesTableView=TableView(),
        volumeRankingTableView=TableView(),
        strategyComboBox=ComboBox("random"),
        modelPathLineEdit=types.SimpleNamespace(currentPath=""),
        statusLabel=types.SimpleNamespace(text=""),
        strategyHelpLabel=types.SimpleNamespace(text=""),
        progressBar=progress_bar(),
        segmentsTableView=types.SimpleNamespace(selectedSegmentIDs=lambda: []),
    )
    panel.initializeWork()
    panel._parameterNode, panel._parameterNodeGuiTag = parameterNode, None
    return panel


def run_panel_job(panel):
    """Fire the panel's poll timer until its background job has ended."""
    while panel._job is not None:
        panel._jobTimer.fire()
        time.sleep(0.05)
