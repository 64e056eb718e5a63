"""What a radiologist does to the modules besides the happy path: drawing while a propagation runs, a segmentation
stored as closed surfaces, leaving a panel mid-work, Undo, shortcuts from the Segment Editor, a first run before the
dependencies are installed, a headless run that fails. Each test reproduces a way the modules lost data or misled
the user, on slicer-core's MRML classes."""

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from module_panels import (
    ParameterNode,
    annotated_lung,
    chest_ct_nodes,
    propagation_panel,
    run_panel_job,
    selector_panel,
)

REPOSITORY = Path(__file__).resolve().parents[1]


def masks_of(segmentation, volume, segmentIds):
    from SpatialALSlicerLib import MRMLAdapter

    return {i: MRMLAdapter.segmentMaskInVolumeGrid(segmentation, i, volume) for i in segmentIds}


# --- what a person does while a propagation runs ---------------------------------------------------------------------


def test_slices_marked_drawn_or_erased_while_a_propagation_runs_are_left_as_they_are(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    mask[13, 40:44, 40:44] = True  # a stroke nobody marked annotated, made before the propagation
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, mask)
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    job = logic.propagationJob(volume, segmentation, [lung.segment_id], method="sdf")  # the segments are read now

    selector.markAnnotated(volume, segmentation, [lung.segment_id], [15], "axial")  # empty: the lung is absent there
    mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    mask[13] = False  # the stroke erased
    mask[17, 5:8, 5:8] = True  # a new stroke
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, mask)
    meanwhile = mask.copy()

    outcome = job.runHere()  # the result lands
    after = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    for index in (13, 15, 17):
        np.testing.assert_array_equal(after[index], meanwhile[index], err_msg=f"slice {index}")
    assert not after[15].any() and not after[13].any()
    written = sorted(set(range(11, 20)) - {13, 15, 17})
    assert outcome.propagated.tolist() == written and all(after[k].any() for k in written)
    assert set(outcome.keptEdited[lung.segment_id]) == {13, 17}
    assert "were left as they are" in outcome.summary()
    record = MRMLAdapter.sliceRecord(segmentation, lung.segment_id)
    assert record.annotated == (10, 15, 20) and record.propagated == tuple(written)


def test_a_preview_is_dropped_when_the_segmentation_changes_and_apply_says_why(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()

    logic.propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=True)
    selector.markAnnotated(volume, segmentation, [lung.segment_id], [15], "axial")  # preview -> mark -> apply
    assert not logic.hasPreview(segmentation) and logic.previewWasDropped(segmentation)
    assert segmentation.GetNodeReference(MRMLAdapter.PREVIEW_REFERENCE_ROLE) is None
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # the preview node is gone
    with pytest.raises(MRMLAdapter.MRMLInputError, match=r"changed after the preview was made.*press Preview again"):
        logic.applyPreview(volume, segmentation)
    assert MRMLAdapter.recordedPropagatedSlices(segmentation, [lung.segment_id], 0) == []
    assert not MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)[15].any()

    logic.propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=True)
    assert logic.hasPreview(segmentation) and not logic.previewWasDropped(segmentation)
    mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    mask[12, 0, 0] = True  # a stroke
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, mask)
    assert not logic.hasPreview(segmentation)

    logic.propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=True)
    outcome = logic.applyPreview(volume, segmentation)  # nothing changed since this preview: it is written
    assert 12 in outcome.keptEdited[lung.segment_id] and 15 not in outcome.propagated


def test_the_panel_refreshes_the_preview_after_a_stroke_or_says_it_was_dropped(slicer_modules, headless, monkeypatch):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    panel = propagation_panel(slicer_modules["SpatialPropagation"], volume, segmentation, monkeypatch)
    panel.onPreviewButton()
    panel.updateGUIFromParameterNode()
    assert panel.logic.hasPreview(segmentation) and panel.ui.applyButton.enabled

    mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    mask[12, 0, 0] = True
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, mask)
    assert not panel.ui.applyButton.enabled and "preview was dropped" in panel.ui.resultLabel.text

    panel._parameterNode.autoUpdate = True
    panel.onPreviewButton()
    mask[14, 0, 0] = True
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, mask)
    assert panel._previewTimer.active  # half a second after the last stroke, as Fill between slices waits
    panel._previewTimer.fire()
    assert panel.logic.hasPreview(segmentation) and panel.ui.resultLabel.text.startswith("Preview: ")


# --- a segmentation stored as closed surfaces ------------------------------------------------------------------------


def stored_as_closed_surfaces(segmentation):
    assert segmentation.CreateClosedSurfaceRepresentation()
    segmentation.SetSourceRepresentationToClosedSurface()
    assert segmentation.GetSegmentation().GetSourceRepresentationName() == "Closed surface"


def test_closed_surfaces_are_refused_before_any_change_then_converted_and_kept_through_a_save(
    slicer_modules, headless, tmp_path
):
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.HeadlessScene import loadSceneBundle, saveSceneBundle

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    stored_as_closed_surfaces(segmentation)
    tags = MRMLAdapter.segmentTags(segmentation, lung.segment_id)
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    for preview in (False, True):
        with pytest.raises(MRMLAdapter.MRMLInputError, match=r"stored as closed surface.*Convert it first"):
            logic.propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=preview)
    assert not logic.canUndo(segmentation) and MRMLAdapter.segmentTags(segmentation, lung.segment_id) == tags
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # no undo copy, no preview

    logic.convertToBinaryLabelmap(segmentation)
    assert logic.sourceIsBinaryLabelmap(segmentation)
    outcome = logic.propagate(volume, segmentation, [lung.segment_id], method="sdf")
    assert outcome.propagated.tolist() == list(range(11, 20))
    saveSceneBundle(headless.scene, tmp_path / "converted.mrb")
    scene = loadSceneBundle(tmp_path / "converted.mrb").scene
    reloaded = next(
        node
        for node in (scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode") for n in range(2))
        if not node.GetHideFromEditors()
    )
    volume = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert MRMLAdapter.sliceRecord(reloaded, lung.segment_id).propagated == tuple(range(11, 20))
    reread = MRMLAdapter.segmentMaskInVolumeGrid(reloaded, lung.segment_id, volume)
    assert all(reread[k].any() for k in range(11, 20))


@pytest.mark.parametrize("agreed", [False, True])
def test_the_panel_asks_before_converting_closed_surfaces(slicer_modules, headless, monkeypatch, agreed):
    import slicer

    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    stored_as_closed_surfaces(segmentation)
    panel = propagation_panel(slicer_modules["SpatialPropagation"], volume, segmentation, monkeypatch)
    questions = []
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kw: questions.append(text) or agreed)
    panel.onPropagateButton()
    assert len(questions) == 1 and "stored as closed surface" in questions[0]
    assert panel.logic.sourceIsBinaryLabelmap(segmentation) == agreed
    propagated = MRMLAdapter.recordedPropagatedSlices(segmentation, [lung.segment_id], 0)
    if agreed:
        assert propagated == list(range(11, 20)) and panel.ui.resultLabel.text.startswith("9 slices propagated")
    else:
        assert propagated == [] and panel.ui.resultLabel.text.startswith("Nothing was propagated")


# --- Undo ------------------------------------------------------------------------------------------------------------


def test_undo_puts_the_segments_back_in_as_few_labelmap_layers_as_before(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    ids = [s.segment_id for s in stack.segments]
    annotated = [10, 20]
    for segmentId in ids:
        mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, segmentId, volume)
        mask[np.setdiff1d(np.arange(mask.shape[0]), annotated)] = False
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, segmentId, volume, mask)
    slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic().markAnnotated(
        volume, segmentation, ids, annotated, "axial"
    )
    layers = segmentation.GetSegmentation().GetNumberOfLayers()
    before = masks_of(segmentation, volume, ids)
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    logic.propagate(volume, segmentation, ids, method="sdf")
    logic.undo(segmentation, volume)
    assert segmentation.GetSegmentation().GetNumberOfLayers() == layers
    after = masks_of(segmentation, volume, ids)
    assert all((after[i] == before[i]).all() for i in ids)


def test_a_write_that_fails_half_way_puts_the_segments_back_and_keeps_the_previous_undo(
    slicer_modules, headless, monkeypatch
):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    ids = [s.segment_id for s in stack.segments if s.name.endswith("lung")]
    slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic().markAnnotated(
        volume, segmentation, ids, [10, 20], "axial"
    )
    for segmentId in ids:
        mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, segmentId, volume)
        mask[np.setdiff1d(np.arange(mask.shape[0]), [10, 20])] = False
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, segmentId, volume, mask)
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    logic.propagate(volume, segmentation, ids[:1], method="sdf")
    first_undo = segmentation.GetNodeReference(MRMLAdapter.UNDO_REFERENCE_ROLE)
    before = masks_of(segmentation, volume, ids)
    tags = {i: MRMLAdapter.segmentTags(segmentation, i) for i in ids}
    written = []
    real_write = MRMLAdapter.setSegmentMaskInVolumeGrid

    def failing_on_the_second_segment(node, segmentId, *arguments):
        written.append(segmentId)
        if len(written) == 2:
            raise MemoryError("the second segment could not be written")
        real_write(node, segmentId, *arguments)

    monkeypatch.setattr(MRMLAdapter, "setSegmentMaskInVolumeGrid", failing_on_the_second_segment)
    with pytest.raises(MemoryError):
        logic.propagate(volume, segmentation, ids, method="sdf")
    monkeypatch.undo()
    after = masks_of(segmentation, volume, ids)
    assert written == ids and all((after[i] == before[i]).all() for i in ids)
    assert {i: MRMLAdapter.segmentTags(segmentation, i) for i in ids} == tags
    assert segmentation.GetNodeReference(MRMLAdapter.UNDO_REFERENCE_ROLE) is first_undo  # Undo still takes back #1
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2


# --- the Logic's observers -------------------------------------------------------------------------------------------


def test_a_logic_leaves_no_scene_observer_and_no_preview_behind(slicer_modules, headless):
    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    module = slicer_modules["SpatialPropagation"]
    logics = [module.SpatialPropagationLogic() for _ in range(5)]  # the Python console makes one per use
    tags = [logic._sceneObservation[1] for logic in logics]
    assert all(headless.scene.GetCommand(tag) is not None for tag in tags)
    logics[0].propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=True)
    preview = weakref.ref(logics[0]._previews[segmentation].layers)
    del logics
    gc.collect()
    assert all(headless.scene.GetCommand(tag) is None for tag in tags)
    assert preview() is None  # the previewed volume's arrays went with the Logic


# --- panels ----------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:does not have observer")  # the stand-in parameter node was never observed
def test_leaving_the_panel_while_a_ranking_runs_still_lands_the_ranking_without_an_error(
    slicer_modules, headless, monkeypatch
):
    import slicer

    volume, segmentation, _ = chest_ct_nodes(headless.scene)
    module = slicer_modules["ActiveSliceSelector"]
    parameters = ParameterNode(
        inputVolume=volume, segmentation=segmentation, queriedSlices=None, volumeRanking=None, modelPath="",
        strategy="fixed_interval", budget=4, budgetUnit="slices", sliceAxis="axial", seed=0, minSpacing=0,
    )  # fmt: skip
    panel = selector_panel(module, parameters, monkeypatch)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: errors.append(text))
    monkeypatch.setattr(panel.logic, "rankingTakesLong", lambda strategy, modelPath: True)
    panel.onRankButton()
    assert panel.isRunning and panel.ui.rankButton.text == "Cancel"
    panel.exit()  # the radiologist switches to the Segment Editor
    assert panel._parameterNode is None
    run_panel_job(panel)
    assert errors == [] and parameters.queriedSlices is not None
    assert panel.ui.statusLabel.text.startswith("Slice ")  # and the views went to the first queried slice
    assert parameters.queriedSlices.GetTable().GetNumberOfRows() == 4


def test_an_error_writing_a_result_restores_the_panel(slicer_modules, headless, monkeypatch):
    import slicer

    volume, segmentation, _ = annotated_lung(slicer_modules, headless.scene, [10, 20])
    panel = propagation_panel(slicer_modules["SpatialPropagation"], volume, segmentation, monkeypatch)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: errors.append(text))
    monkeypatch.setattr(panel.logic, "methodIsInteractive", lambda method: False)

    def failing_write(*arguments):
        raise RuntimeError("the scene refused the write")

    monkeypatch.setattr(panel.logic, "_write", failing_write)
    panel.onPropagateButton()
    with pytest.raises(RuntimeError, match="refused the write"):
        run_panel_job(panel)
    ui = panel.ui
    assert not panel.isRunning and ui.propagateButton.text == "Propagate" and ui.propagateButton.enabled
    assert ui.previewButton.enabled and len(errors) == 1 and "refused the write" in errors[0]


def test_step_shortcuts_work_from_anywhere_while_a_ranking_exists(slicer_modules, headless, monkeypatch):
    import slicer
    import slicer_standin

    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, _ = chest_ct_nodes(headless.scene)
    module = slicer_modules["ActiveSliceSelector"]
    logic = module.ActiveSliceSelectorLogic()
    _, table = logic.rankSlices(volume, segmentation, None, "fixed_interval", 3, interval=10)
    session = ParameterNode(inputVolume=volume, segmentation=segmentation, queriedSlices=None, sliceAxis="axial")
    mainWindow = slicer_standin.MainWindow()
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: mainWindow, raising=False)
    panel = selector_panel(module, session, monkeypatch)
    monkeypatch.setattr(panel.logic, "getParameterNode", lambda: session)
    panel.addStepShortcuts()
    forward, back = mainWindow.shortcuts
    assert (forward.key.text, back.key.text) == ("Ctrl+]", "Ctrl+[")
    panel._parameterNode = None  # the panel is not shown: the radiologist is in the Segment Editor
    forward.press()
    assert panel._currentSlice is None  # no ranking yet: nothing happens
    session.queriedSlices = table
    queried = [row["slice"] for row in MRMLAdapter.queriedSlicesFromTable(table)]
    forward.press()
    forward.press()
    assert panel._currentSlice == queried[1]
    back.press()
    assert panel._currentSlice == queried[0] and panel.ui.statusLabel.text.startswith(f"Slice {queried[0]}")
    panel.cleanup()
    assert mainWindow.shortcuts == []


def test_a_failing_step_is_shown_not_only_logged(slicer_modules, headless, monkeypatch):
    import slicer

    volume, segmentation, _ = chest_ct_nodes(headless.scene)
    module = slicer_modules["ActiveSliceSelector"]
    _, table = module.ActiveSliceSelectorLogic().rankSlices(volume, segmentation, None, "fixed_interval", 3)
    session = ParameterNode(inputVolume=volume, segmentation=segmentation, queriedSlices=table, sliceAxis="axial")
    panel = selector_panel(module, session, monkeypatch)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: errors.append(text))

    def no_transform(*arguments):
        raise ValueError("'CT' is under a non-linear transform; harden the transform first.")

    monkeypatch.setattr(panel.logic, "jumpToSlice", no_transform)
    with pytest.raises(ValueError):
        panel.onStepQueriedSlice(+1)
    assert len(errors) == 1 and "harden the transform" in errors[0]


# --- dependencies ----------------------------------------------------------------------------------------------------


def test_the_installer_keeps_loaded_packages_asks_to_restart_and_asks_again_when_pressed(
    slicer_modules, headless, monkeypatch, tmp_path
):
    import importlib.metadata

    import slicer

    from SpatialALSlicerLib import Dependencies

    installed = {"monai": False}
    monkeypatch.setattr(Dependencies, "unmetRequirements", lambda: [] if installed["monai"] else ["monai"])
    monkeypatch.setitem(Dependencies._asked, "declined", False)
    answers, calls = [False], []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a: calls.append("install?") or answers[0])
    assert Dependencies.ensureDependencies() is False and Dependencies.ensureDependencies() is False
    assert calls == ["install?"]  # a "no": opening another panel does not ask again
    real_version = importlib.metadata.version
    numpy_version = real_version("numpy")
    constraints = []

    def pip_install(arguments):
        calls.append(arguments)
        constraints.append(Path(arguments[1]).read_text())
        installed["monai"] = True
        monkeypatch.setattr(
            importlib.metadata, "version", lambda name: "9.9.9" if name == "numpy" else real_version(name)
        )  # a loaded package changed under Slicer

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(slicer.util, "tempDirectory", lambda key: str(tmp_path), raising=False)
    restarts = []
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, *a: calls.append(text) or True, raising=False)
    monkeypatch.setattr(slicer.util, "restart", lambda: restarts.append(True), raising=False)
    answers[0] = True
    assert Dependencies.ensureDependencies(askAgain=True) is True  # an action pressed after the "no": asked again
    assert calls[1] == "install?"
    assert calls[2][:2] == ["-c", str(tmp_path / "spatial-al-constraints.txt")] and calls[2][2] == "-r"
    assert f"numpy=={numpy_version}\n" in constraints[0] and "monai" not in constraints[0]
    assert "numpy 9.9.9" not in calls[3] and f"numpy {numpy_version} -> 9.9.9" in calls[3] and restarts == [True]


FIRST_RUN = """
import sys
sys.path[:0] = {paths!r}
import slicer_standin
from SpatialALSlicerLib.HeadlessScene import HeadlessScene
slicer_standin.install(HeadlessScene())
from SpatialALSlicerLib.Dependencies import unmetRequirements
print("unmet", sorted(unmetRequirements()))
import ActiveSliceSelector, SpatialPropagation
for module, name in ((ActiveSliceSelector, "ActiveSliceSelector"), (SpatialPropagation, "SpatialPropagation")):
    result = getattr(module, name + "Test")("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures
    print("passed", name)
import module_panels, types
panel = SpatialPropagation.SpatialPropagationWidget()
panel.logic = SpatialPropagation.SpatialPropagationLogic()
panel.ui = types.SimpleNamespace(
    **{{name: module_panels.Button() for name in ("propagateButton", "previewButton", "applyButton", "undoButton")}},
    modelPathLineEdit=types.SimpleNamespace(currentPath="", enabled=True),
    methodComboBox=module_panels.ComboBox(""),
)
panel.initializeWork()
panel._parameterNode = module_panels.ParameterNode(inputVolume=None, segmentation=None, method="star", modelPath="")
panel.updateGUIFromParameterNode()
print("panel", panel.ui.modelPathLineEdit.enabled)
print("loaded", sorted(name for name in ("torch", "scipy", "monai", "skimage") if name in sys.modules))
"""


def test_both_modules_load_and_pass_their_self_tests_in_a_slicer_without_torch_or_scipy(tmp_path):
    """As the Extensions build runs them: a Python with Slicer's own packages (numpy, vtk, SimpleITK, MRML) only."""
    import importlib.util

    site = Path(importlib.util.find_spec("numpy").origin).parents[1]
    bundled = [p for p in site.iterdir() if p.name.split("-")[0].split(".")[0] in ("numpy", "vtk", "vtkmodules")]
    # slicer_layer_dm: a Slicer library the web extra adds into the slicer package (Slicer ships it too)
    slicer_libraries = ("simpleitk", "slicer", "slicer_core", "slicer_layer_dm")
    bundled += [p for p in site.iterdir() if p.name.split("-")[0].lower() in slicer_libraries]
    packages = tmp_path / "site-packages"
    packages.mkdir()
    for path in bundled:
        (packages / path.name).symlink_to(path)
    paths = [
        str(REPOSITORY / "Testing"),
        str(REPOSITORY),
        *(str(REPOSITORY / name) for name in ("ActiveSliceSelector", "SpatialPropagation")),
        str(packages),
    ]
    process = subprocess.run(
        [sys.executable, "-S", "-c", FIRST_RUN.format(paths=paths)], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    lines = process.stdout.splitlines()
    assert "'scipy'" in lines[0] and "'torch'" in lines[0] and "'monai'" in lines[0]
    assert "passed ActiveSliceSelector" in lines and "passed SpatialPropagation" in lines
    assert "panel False" in lines  # no model file asked for: the backend that says which methods need one is absent
    assert lines[-1] == "loaded []"


# --- headless Slicer -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (MemoryError("out of memory"), 1, "MemoryError: out of memory"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
        (RuntimeError("CUDA error"), 1, "RuntimeError: CUDA error"),
        (KeyboardInterrupt(), 130, "Cancelled"),
        (SystemExit(2), 2, ""),
    ],
)
def test_the_batch_script_turns_every_failure_into_an_exit_status(monkeypatch, capsys, failure, status, message):
    from spatial_al import cli
    from SpatialALSlicerLib import BatchCommand

    def failing(arguments):
        raise failure

    monkeypatch.setattr(cli, "main", failing)
    assert BatchCommand.exitStatus(["BatchCommand.py", "--", "rank"]) == status
    assert message in capsys.readouterr().err


def test_the_batch_script_exits_slicer_with_the_commands_status():
    """Slicer runs the script and exits only on SystemExit; the script ends with one on every path."""
    from SpatialALSlicerLib import BATCH_SCRIPT

    process = subprocess.run(
        [
            sys.executable,
            BATCH_SCRIPT,
            "--",
            "propagate",
            "/nowhere/ct.nrrd",
            "/nowhere/seg.nrrd",
            "--output",
            "o.nrrd",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2 and "/nowhere/ct.nrrd" in process.stderr


# --- the extension as installed and as listed ------------------------------------------------------------------------


def cmake_installed_files(package):
    listing = subprocess.run(
        [
            "cmake",
            f"-DPACKAGE={package}",
            f"-DSOURCE_DIR={REPOSITORY}",
            "-P",
            str(REPOSITORY / "Testing" / "list_package_files.cmake"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    files = {"script": set(), "data": set()}
    for line in (listing.stdout + listing.stderr).splitlines():
        kind, _, path = line.removeprefix("-- ").partition(" ")
        if kind in files:
            files[kind].add(path)
    return files


def test_the_installed_extension_holds_every_file_the_backend_reads():
    import importlib.resources

    import tomllib

    import spatial_al
    from spatial_al.experiments.protocols import PROTOCOLS

    installed = cmake_installed_files("spatial_al")
    package = Path(spatial_al.__file__).parent
    scripts = {str(p.relative_to(package)) for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert installed["script"] == scripts
    protocols = importlib.resources.files("spatial_al.experiments") / "protocols"
    read_through_resources = {
        str(Path(str(protocols / PROTOCOLS.get(name))).relative_to(package)) for name in PROTOCOLS.names()
    }
    assert read_through_resources and read_through_resources <= installed["data"]
    declared = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    wheel = {str(p.relative_to(package)) for pattern in declared["spatial_al"] for p in package.glob(pattern)}
    assert installed["data"] == wheel  # the wheel and the extension carry the same files
    assert "requirements.txt" in (REPOSITORY / "CMakeLists.txt").read_text()


def test_the_extensions_index_entry_agrees_with_the_cmake_metadata():
    import re

    cmake = (REPOSITORY / "CMakeLists.txt").read_text()

    def extension(field):
        return re.search(rf'set\(EXTENSION_{field} "([^"]*)"\)', cmake).group(1)

    entry = json.loads((REPOSITORY / "Resources" / "ExtensionsIndex" / "SpatialActiveLearning.json").read_text())
    schema_fields = {
        "$schema",
        "build_dependencies",
        "build_subdirectory",
        "category",
        "scm_revision",
        "scm_url",
        "tier",
    }
    assert set(entry) <= schema_fields and entry["$schema"].endswith(
        "slicer-extension-catalog-entry-schema-v1.0.1.json#"
    )
    assert entry["build_dependencies"] == extension("DEPENDS").split(";") == ["PyTorch"]
    assert entry["category"] == extension("CATEGORY") and entry["scm_url"] == extension("HOMEPAGE")
    assert re.fullmatch(r"[^()]+ \([^()]+\)(, [^()]+ \([^()]+\))*", extension("CONTRIBUTORS"))  # "Name (Affiliation)"
    for url in (extension("ICONURL"), extension("SCREENSHOTURLS")):
        assert url.startswith(entry["scm_url"].replace("github.com", "raw.githubusercontent.com") + "/main/")
        assert (REPOSITORY / url.split("/main/", 1)[1]).is_file()
    assert (REPOSITORY / "LICENSE.txt").read_text().lstrip().startswith("Apache License\n")
    for name in ("ActiveSliceSelector", "SpatialPropagation"):
        source = (REPOSITORY / name / f"{name}.py").read_text()
        assert f"contributors = [{extension('CONTRIBUTORS')!r}]".replace("'", '"') in source
