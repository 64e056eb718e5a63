"""The scripted modules' Logic and their own Test classes, on slicer-core's MRML classes."""

import time
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
    tiny_preset,
)


def test_active_slice_selector_module_test_passes(slicer_modules):
    result = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures


def test_spatial_propagation_module_test_passes(slicer_modules):
    result = slicer_modules["SpatialPropagation"].SpatialPropagationTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures


@pytest.mark.parametrize("name", ["ActiveSliceSelector", "SpatialPropagation"])
def test_the_help_section_prints_the_batch_scripts_path(slicer_modules, name):
    from types import SimpleNamespace

    from SpatialALSlicerLib import BATCH_SCRIPT

    parent = SimpleNamespace()
    getattr(slicer_modules[name], name)(parent)
    assert BATCH_SCRIPT in parent.helpText and "--no-main-window --python-script" in parent.helpText
    assert BATCH_SCRIPT.endswith("BatchCommand.py") and Path(BATCH_SCRIPT).is_file()


def test_reranking_replaces_the_planes_and_leaves_segments_alone(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    before = {s.name: MRMLAdapter.segmentMaskInVolumeGrid(segmentation, s.segment_id, volume) for s in stack.segments}
    logic = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    _, table = logic.rankSlices(volume, segmentation, None, "random", 5, seed=1)
    ranking, again = logic.rankSlices(volume, segmentation, None, "fixed_interval", 4, tableNode=table)
    assert again is table
    planes = [table.GetNthNodeReference(MRMLAdapter.PLANE_REFERENCE_ROLE, i) for i in range(4)]
    assert sorted(int(p.GetAttribute("SpatialAL.Slice")) for p in planes) == sorted(ranking.slices.tolist())
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsPlaneNode") == 4
    for segment in stack.segments:
        after = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, segment.segment_id, volume)
        assert (after == before[segment.name]).all(), segment.name


def test_session_state_survives_a_scene_save_and_reload(slicer_modules, headless, tmp_path):
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.HeadlessScene import loadSceneBundle, saveSceneBundle

    volume, segmentation, _ = chest_ct_nodes(headless.scene)
    logic = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    _, table = logic.rankSlices(volume, segmentation, None, "fixed_interval", 4, interval=10)
    logic.markAnnotated(volume, segmentation, None, [1, 11], "axial", table)
    saveSceneBundle(headless.scene, tmp_path / "session.mrb")

    scene = loadSceneBundle(tmp_path / "session.mrb").scene
    table = scene.GetFirstNodeByClass("vtkMRMLTableNode")
    statuses = {row["slice"]: row["status"] for row in MRMLAdapter.queriedSlicesFromTable(table)}
    assert statuses == {1: "annotated", 11: "annotated", 21: "to annotate", 31: "to annotate"}
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert MRMLAdapter.recordedAnnotatedSlices(segmentation, None, 0) == [1, 11]
    assert logic.nextQueriedSlice(table) == 21


def test_propagation_logic_uses_the_recorded_slices_and_keeps_annotation(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lung = stack.segment("right lung")
    truth = stack.segment_mask(lung)
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    selector.markAnnotated(volume, segmentation, [lung.segment_id], [12, 15, 18], "axial")
    annotation = truth.copy()
    annotation[[13, 14, 16, 17]] = False
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, annotation)

    outcome = (
        slicer_modules["SpatialPropagation"]
        .SpatialPropagationLogic()
        .propagate(volume, segmentation, [lung.segment_id], method="sdf")
    )
    result = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    assert outcome.annotated.tolist() == [12, 15, 18] and outcome.propagated.tolist() == [13, 14, 16, 17]
    assert (result[[12, 15, 18]] == truth[[12, 15, 18]]).all()
    overlap = (result[13:18] & truth[13:18]).sum() * 2 / (result[13:18].sum() + truth[13:18].sum())
    assert overlap > 0.9
    assert (result[:12] == truth[:12]).all()  # slices outside the annotated range keep what was there


def test_propagation_logic_explains_bad_input(slicer_modules, headless):
    from SpatialALSlicerLib.MRMLAdapter import MRMLInputError

    volume, segmentation, _ = chest_ct_nodes(headless.scene)
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    with pytest.raises(MRMLInputError, match="No annotated slice"):
        logic.propagate(volume, segmentation)
    with pytest.raises(MRMLInputError, match="right lung"):
        logic.propagate(volume, segmentation, ["no such segment"], annotatedSlices=[0, 3])
    with pytest.raises(ValueError, match="Did you mean 'sdf'"):
        logic.propagate(volume, segmentation, annotatedSlices=[0, 3], method="sdff")


def test_update_model_trains_then_fine_tunes_and_predicts_into_a_new_node(slicer_modules, headless, tmp_path):
    from conftest import TINY_UNET

    from spatial_al.models import preset_config
    from spatial_al.training import read_checkpoint
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lungs = [s.segment_id for s in stack.segments if s.name.endswith("lung")]
    before = {i: MRMLAdapter.segmentMaskInVolumeGrid(segmentation, i, volume) for i in lungs}
    logic = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    model = str(tmp_path / "lungs.pt")
    with pytest.raises(MRMLAdapter.MRMLInputError, match="Mark annotated"):
        logic.updateModel(volume, segmentation, lungs, model)
    logic.markAnnotated(volume, segmentation, lungs, [5, 15, 25], "axial")
    options = {"max_epochs": 2, "iterations_per_epoch": 2, "augment": False, "device": "cpu"}
    first = logic.updateModel(
        volume, segmentation, lungs, model, preset=preset_config("unet-small", features=TINY_UNET), **options
    )
    assert first.annotated_slices == [5, 15, 25] and first.round_index == 0 and first.steps == 4
    logic.markAnnotated(volume, segmentation, lungs, [30], "axial")
    second = logic.updateModel(volume, segmentation, lungs, model, **options)
    assert second.annotated_slices == [5, 15, 25, 30]
    assert read_checkpoint(model).trainer_state.round_index == 1  # fine-tuned, same file

    with pytest.raises(ValueError, match="model file in Slicer"):
        logic.rankSlices(volume, segmentation, lungs, "entropy", 3)
    ranking, table = logic.rankSlices(
        volume, segmentation, lungs, "entropy", 3, modelPath=model, device="cpu", min_spacing=3
    )
    assert len(ranking) == 3 and not {5, 15, 25, 30} & set(ranking.slices.tolist())
    assert np.diff(np.sort(ranking.slices)).min() >= 3
    rows = MRMLAdapter.queriedSlicesFromTable(table)
    assert [r["slice"] for r in rows] == ranking.slices.tolist()
    assert {(r["strategy"], r["status"]) for r in rows} == {("entropy", MRMLAdapter.STATUS_TO_ANNOTATE)}
    with pytest.raises(ValueError, match="does not match the segmentation"):  # every segment, the model knows two
        logic.rankSlices(volume, segmentation, None, "entropy", 3, modelPath=model, device="cpu")

    predicted = logic.predictSegmentation(volume, model, device="cpu")
    names = [predicted.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["right lung", "left lung"]
    assert predicted.GetName() == "CT (model prediction)"
    for segmentId in lungs:  # the annotation is untouched
        assert (MRMLAdapter.segmentMaskInVolumeGrid(segmentation, segmentId, volume) == before[segmentId]).all()


def test_an_edit_on_a_queried_slice_is_noticed_on_what_was_ranked_until_it_is_marked(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lung, ribs = stack.segment("right lung"), stack.segment("ribs")
    logic = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    ranking, table = logic.rankSlices(volume, segmentation, [lung.segment_id], "fixed_interval", 4, interval=10)
    assert logic.editedQueriedSlices(table) == []
    edited = int(ranking.slices[2])
    for segmentId in (ribs.segment_id, lung.segment_id):  # ribs were not ranked on: an edit there is not the lung's
        mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, segmentId, volume)
        mask[edited, :10, :10] = ~mask[edited, :10, :10]
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, segmentId, volume, mask)
        expected = [edited] if segmentId == lung.segment_id else []
        assert logic.editedQueriedSlices(table) == expected
    logic.markQueriedSliceAnnotated(table, edited)  # on the ranked segment and axis, whatever a panel shows now
    assert MRMLAdapter.recordedAnnotatedSlices(segmentation, [lung.segment_id], 0) == [edited]
    assert MRMLAdapter.sliceRecord(segmentation, ribs.segment_id) is None
    assert logic.editedQueriedSlices(table) == []
    headless.scene.RemoveNode(segmentation)
    assert logic.editedQueriedSlices(table) == []  # nothing to compare with
    with pytest.raises(MRMLAdapter.MRMLInputError, match="rank the slices again"):
        logic.markQueriedSliceAnnotated(table, int(ranking.slices[3]))


def test_min_spacing_is_passed_only_to_strategies_that_take_it(slicer_modules):
    logic = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    assert logic.spacingOptions("random", 4) == {"min_spacing": 4}
    assert logic.spacingOptions("fixed_interval", 4) == {}
    assert logic.spacingOptions("random", 0) == {}


def test_undo_restores_the_segmentation_exactly_and_accept_makes_a_slice_annotated(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lung = stack.segment("right lung")
    ids = [s.segment_id for s in stack.segments]
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    propagation = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    with pytest.raises(MRMLAdapter.MRMLInputError, match="Nothing to undo"):
        propagation.undo(segmentation)
    selector.markAnnotated(volume, segmentation, [lung.segment_id], [10, 20], "axial")
    annotation = stack.segment_mask(lung).copy()
    annotation[np.r_[0:10, 11:20, 21:34]] = False
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, lung.segment_id, volume, annotation)
    before = {i: MRMLAdapter.segmentMaskInVolumeGrid(segmentation, i, volume) for i in ids}
    tags = MRMLAdapter.segmentTags(segmentation, lung.segment_id)

    outcome = propagation.propagate(volume, segmentation, [lung.segment_id], method="sdf")
    assert outcome.propagated.tolist() == list(range(11, 20))
    assert propagation.accept(volume, segmentation, [lung.segment_id], [15], "axial") == [10, 15, 20]
    record = MRMLAdapter.sliceRecord(segmentation, lung.segment_id)
    assert 15 not in record.propagated and len(record.propagated) == 8

    assert propagation.canUndo(segmentation)
    assert propagation.undo(segmentation) == [lung.segment_id]
    assert not propagation.canUndo(segmentation)
    order = [segmentation.GetSegmentation().GetNthSegmentID(n) for n in range(len(ids))]
    assert order == ids  # the segment keeps its place
    for segmentId in ids:
        assert (MRMLAdapter.segmentMaskInVolumeGrid(segmentation, segmentId, volume) == before[segmentId]).all()
    assert MRMLAdapter.segmentTags(segmentation, lung.segment_id) == tags
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # the snapshot is gone


def test_preview_shows_the_propagation_beside_the_segmentation_and_apply_writes_it(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    before = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    tags = MRMLAdapter.segmentTags(segmentation, lung.segment_id)
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    outcome = logic.propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=True)

    assert (MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume) == before).all()
    assert MRMLAdapter.segmentTags(segmentation, lung.segment_id) == tags
    preview = segmentation.GetNodeReference(MRMLAdapter.PREVIEW_REFERENCE_ROLE)
    shown = preview.GetSegmentation().GetSegment(lung.segment_id)
    assert shown.GetName() == "right lung (propagated)" and preview.GetDisplayNode().GetOpacity() == 0.5
    previewed = MRMLAdapter.segmentMaskInVolumeGrid(preview, lung.segment_id, volume)
    assert outcome.propagated.tolist() == list(range(11, 20))
    lowest = outcome.propagated[np.argsort(outcome.confidence[outcome.propagated], kind="stable")[0]]
    assert f"Least confident, to review first: {lowest} (" in outcome.summary()
    assert previewed[11:20].any() and not previewed[[10, 20]].any() and not previewed[:10].any()

    applied = logic.applyPreview(volume, segmentation)
    written = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    assert (written[11:20] == previewed[11:20]).all() and (written[[10, 20]] == before[[10, 20]]).all()
    assert applied.propagated.tolist() == list(range(11, 20)) and logic.canUndo(segmentation)
    assert segmentation.GetNodeReference(MRMLAdapter.PREVIEW_REFERENCE_ROLE) is None
    with pytest.raises(MRMLAdapter.MRMLInputError, match="press Preview"):
        logic.applyPreview(volume, segmentation)


def test_a_preview_never_reaches_the_next_scene(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    logic.propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=True)
    identifier = segmentation.GetID()
    assert logic.hasPreview(segmentation)
    from spatial_al.propagation import sli2vol

    sli2vol._trained["a network learned on this scene's volume"] = None
    headless.scene.Clear(False)  # File > Close Scene
    assert not sli2vol._trained

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [5, 25])
    assert segmentation.GetID() == identifier  # IDs start again in the new scene
    assert not logic.hasPreview(segmentation)
    with pytest.raises(MRMLAdapter.MRMLInputError, match="has no preview"):
        logic.applyPreview(volume, segmentation)


def test_undo_copy_survives_a_scene_save_and_restores_after_reload(slicer_modules, headless, tmp_path):
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.HeadlessScene import loadSceneBundle, saveSceneBundle

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    before = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    logic.propagate(volume, segmentation, [lung.segment_id], method="sdf")
    saveSceneBundle(headless.scene, tmp_path / "propagated.mrb")

    scene = loadSceneBundle(tmp_path / "propagated.mrb").scene
    nodes = [scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode") for n in range(2)]
    reloaded = next(node for node in nodes if not node.GetHideFromEditors())
    volume = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert MRMLAdapter.sliceRecord(reloaded, lung.segment_id).propagated == tuple(range(11, 20))
    assert logic.canUndo(reloaded) and logic.undo(reloaded) == [lung.segment_id]
    assert (MRMLAdapter.segmentMaskInVolumeGrid(reloaded, lung.segment_id, volume) == before).all()
    assert MRMLAdapter.sliceRecord(reloaded, lung.segment_id).propagated == ()


def test_learned_propagation_reads_the_model_file_and_asks_for_one(slicer_modules, headless, tmp_path):
    from conftest import TINY_UNET

    from spatial_al.models import preset_config
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [8, 14, 20])
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    modelPath = str(tmp_path / "star.pt")
    preset = preset_config("star-small", features=TINY_UNET)
    selector.updateModel(
        volume, segmentation, [lung.segment_id], modelPath, preset=preset, device="cpu", max_epochs=1, augment=False
    )
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    assert logic.methodUsesModel("star") and not logic.methodUsesModel("sli2vol")
    with pytest.raises(MRMLAdapter.MRMLInputError, match="choose the model file"):
        logic.propagate(volume, segmentation, [lung.segment_id], method="star")
    outcome = logic.propagate(
        volume, segmentation, [lung.segment_id], method="star", modelPath=modelPath, device="cpu", mostConfident=5
    )
    assert len(outcome.propagated) == 5 and set(outcome.propagated) < set(range(9, 20)) - {14}
    record = MRMLAdapter.sliceRecord(segmentation, lung.segment_id)
    assert record.method == "star" and record.propagated == tuple(outcome.propagated.tolist())
    with pytest.raises(ValueError, match="does not match the segmentation"):  # the model knows the right lung only
        logic.propagate(volume, segmentation, None, method="star", modelPath=modelPath, device="cpu")


def test_queried_slices_filled_by_propagation_show_as_propagated_until_undone(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    _, table = selector.rankSlices(volume, segmentation, [lung.segment_id], "fixed_interval", 4, interval=5)
    queried = [row["slice"] for row in MRMLAdapter.queriedSlicesFromTable(table)]
    assert any(10 < k < 20 for k in queried) and any(not 10 < k < 20 for k in queried)
    propagation = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    propagation.propagate(volume, segmentation, [lung.segment_id], method="sdf")

    statuses = {row["slice"]: row["status"] for row in MRMLAdapter.queriedSlicesFromTable(table)}
    assert statuses == {k: "propagated" if 10 < k < 20 else "to annotate" for k in queried}
    propagation.revert(segmentation, volume)
    assert {row["status"] for row in MRMLAdapter.queriedSlicesFromTable(table)} == {"to annotate"}


def test_only_fast_methods_update_the_preview_after_each_edit(slicer_modules):
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic
    interactive = {name for name, _ in logic.methods() if logic.methodIsInteractive(name)}
    assert interactive == {"sdf"}  # contour starts an ITK process; sli2vol, star and model run networks


def test_dependencies_are_checked_by_version_and_asked_for_once_per_session(slicer_modules, headless, monkeypatch):
    import importlib.metadata

    import slicer

    from SpatialALSlicerLib import Dependencies

    assert Dependencies.unmetRequirements() == []  # this environment has everything
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.21.0" if name == "numpy" else real_version(name))
    assert Dependencies.unmetRequirements() == ["numpy (1.21.0 installed, >=1.24 needed)"]
    asked = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *args: asked.append(args) or False, raising=False)
    monkeypatch.setitem(Dependencies._asked, "declined", False)
    assert Dependencies.ensureDependencies() is False and Dependencies.ensureDependencies() is False
    assert len(asked) == 1  # declined once: the other panels do not ask again
    volume, segmentation, _ = chest_ct_nodes(headless.scene)
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    with pytest.raises(RuntimeError, match=r"needs numpy \(1.21.0 installed, >=1.24 needed\)\. Open the"):
        logic.propagate(volume, segmentation, method="sdf")


def test_long_work_runs_in_a_worker_process_with_progress_then_writes_the_scene(slicer_modules, headless, tmp_path):
    from conftest import TINY_UNET

    from spatial_al.progress import RecordingProgress
    from spatial_al.training import read_checkpoint
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.BackgroundWork import FINISHED

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lungs = [s.segment_id for s in stack.segments if s.name.endswith("lung")]
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    selector.markAnnotated(volume, segmentation, lungs, [5, 15, 25], "axial")
    model = str(tmp_path / "lungs.pt")
    options = {"max_epochs": 2, "iterations_per_epoch": 2, "augment": False, "device": "cpu"}
    job = selector.updateModelJob(volume, segmentation, lungs, model, preset=tiny_preset(TINY_UNET), **options)
    progress = RecordingProgress()
    assert job.start().wait(progress) == FINISHED, job.error
    summary = job.finish()
    assert (summary.round_index, summary.steps, summary.annotated_slices) == (0, 4, [5, 15, 25])
    assert read_checkpoint(model).trainer_state.finished and not job._folder  # the job's files are gone
    assert any("epoch 2" in message for _, _, message in progress.reports)  # the worker's progress came through

    propagation = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()
    for segmentId in lungs:  # what a person drew: the annotated slices only
        mask = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, segmentId, volume)
        mask[np.setdiff1d(np.arange(mask.shape[0]), [5, 15, 25])] = False
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentation, segmentId, volume, mask)
    before = {i: MRMLAdapter.segmentMaskInVolumeGrid(segmentation, i, volume) for i in lungs}
    job = propagation.propagationJob(volume, segmentation, lungs, method="sdf", sliceAxis="axial").start()
    assert all((MRMLAdapter.segmentMaskInVolumeGrid(segmentation, i, volume) == before[i]).all() for i in lungs)
    assert job.wait() == FINISHED, job.error
    outcome = job.finish()  # written now, in this (the main) thread
    assert outcome.propagated.tolist() == [k for k in range(6, 25) if k not in (15,)]
    here = propagation.propagate(volume, segmentation, lungs, method="sdf", sliceAxis="axial")
    np.testing.assert_array_equal(here.confidence, outcome.confidence)  # the same job, run in this process


def test_update_model_hands_back_the_ranking_by_the_new_model_from_the_same_worker(slicer_modules, headless, tmp_path):
    """ "Update model" trains and ranks in one background process: the queried slices arrive with the model, the same
    as ranking afterwards with the checkpoint written, and the table and planes are in the scene."""
    from conftest import TINY_UNET

    from spatial_al.progress import RecordingProgress
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.BackgroundWork import FINISHED

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lungs = [s.segment_id for s in stack.segments if s.name.endswith("lung")]
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    selector.markAnnotated(volume, segmentation, lungs, [5, 15, 25], "axial")
    model = str(tmp_path / "lungs.pt")
    training = {"preset": tiny_preset(TINY_UNET), "max_epochs": 1, "iterations_per_epoch": 2, "augment": False}
    job = selector.updateModelAndRankJob(
        volume, segmentation, lungs, model, "entropy", 4, "axial", training | {"device": "cpu"}, device="cpu"
    )
    progress = RecordingProgress()
    assert job.start().wait(progress) == FINISHED, job.error
    summary, ranking, table = job.finish()

    assert summary.annotated_slices == [5, 15, 25] and summary.steps == 2
    assert len(ranking) == 4 and not {5, 15, 25} & set(ranking.slices.tolist())
    again, _ = selector.rankSlices(volume, segmentation, lungs, "entropy", 4, modelPath=model, device="cpu")
    assert again.slices.tolist() == ranking.slices.tolist()
    np.testing.assert_allclose(again.scores, ranking.scores, rtol=1e-5)
    rows = MRMLAdapter.queriedSlicesFromTable(table)
    assert [row["slice"] for row in rows] == ranking.slices.tolist()
    messages = [message for _, _, message in progress.reports]  # the worker reported training, then ranking
    assert any("epoch 1" in message for message in messages) and messages[-1].startswith("entropy")


def test_a_slice_marked_annotated_while_a_ranking_ran_is_listed_as_annotated(slicer_modules, headless):
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.BackgroundWork import FINISHED

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lungs = [s.segment_id for s in stack.segments if s.name.endswith("lung")]
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    selector.markAnnotated(volume, segmentation, lungs, [5, 15, 25], "axial")
    expected, _ = selector.rankSlices(volume, segmentation, lungs, "fixed_interval", 3, interval=10)
    job = selector.rankingJob(volume, segmentation, lungs, "fixed_interval", 3, interval=10).start()
    assert job.wait() == FINISHED, job.error
    marked = int(expected.slices[0])
    selector.markAnnotated(volume, segmentation, lungs, [marked], "axial")  # drawn and marked meanwhile
    ranking, table = job.finish()
    assert ranking.slices.tolist() == expected.slices.tolist()
    statuses = {row["slice"]: row["status"] for row in MRMLAdapter.queriedSlicesFromTable(table)}
    assert statuses[marked] == MRMLAdapter.STATUS_ANNOTATED
    assert [statuses[int(k)] for k in expected.slices[1:]] == [MRMLAdapter.STATUS_TO_ANNOTATE] * 2


def test_a_cancelled_job_stops_writes_nothing_and_a_failed_one_says_why(slicer_modules, headless, tmp_path):
    from conftest import TINY_UNET

    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.BackgroundWork import CANCELLED, FAILED, RUNNING

    volume, segmentation, stack = chest_ct_nodes(headless.scene)
    lungs = [s.segment_id for s in stack.segments if s.name.endswith("lung")]
    selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    selector.markAnnotated(volume, segmentation, lungs, [5, 15, 25], "axial")
    model = tmp_path / "lungs.pt"
    job = selector.updateModelJob(
        volume, segmentation, lungs, str(model), preset=tiny_preset(TINY_UNET), max_epochs=1000, device="cpu"
    ).start()
    while job.poll() == RUNNING and "epoch" not in job.progress[2]:
        time.sleep(0.05)
    job.cancel()
    assert job.poll() == RUNNING  # until the worker has stopped
    assert job.wait() == CANCELLED
    with pytest.raises(RuntimeError, match="Training did not finish"):
        job.finish()

    job = selector.rankingJob(volume, segmentation, None, "entropy", 3, modelPath=str(tmp_path / "none.pt")).start()
    assert job.wait() == FAILED and "none.pt" in job.error
    assert headless.scene.GetFirstNodeByClass("vtkMRMLTableNode") is None  # nothing was written
    assert MRMLAdapter.recordedPropagatedSlices(segmentation, lungs, 0) == []


def test_propagation_and_its_undo_are_steps_of_the_segment_editors_history(slicer_modules, headless, monkeypatch):
    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    logic = slicer_modules["SpatialPropagation"].SpatialPropagationLogic()

    class SegmentEditor:  # records the states saveStateForUndo() would keep, as Slicer's editor widget does
        def __init__(self):
            self.states = []

        def saveStateForUndo(self):
            self.states.append(MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume))

    editor = SegmentEditor()
    monkeypatch.setattr(
        type(logic), "segmentEditorFor", staticmethod(lambda node: editor if node is segmentation else None)
    )
    drawn = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    logic.propagate(volume, segmentation, [lung.segment_id], method="sdf", preview=True)
    assert editor.states == []  # a preview changes nothing
    logic.propagate(volume, segmentation, [lung.segment_id], method="sdf")
    propagated = MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume)
    assert len(editor.states) == 1 and (editor.states[0] == drawn).all()  # Ctrl+Z restores exactly the drawing
    logic.undo(segmentation, volume)
    assert len(editor.states) == 2 and (editor.states[1] == propagated).all()  # Ctrl+Z brings the propagation back
    assert (MRMLAdapter.segmentMaskInVolumeGrid(segmentation, lung.segment_id, volume) == drawn).all()
    with pytest.raises(MRMLAdapter.MRMLInputError, match="Nothing to undo"):
        logic.undo(segmentation, volume)
    assert len(editor.states) == 2  # nothing recorded for an undo that did nothing


def test_the_panel_runs_slow_work_in_the_background_with_cancel_and_errors_shown(slicer_modules, headless, monkeypatch):
    import slicer

    from SpatialALSlicerLib import MRMLAdapter

    volume, segmentation, lung = annotated_lung(slicer_modules, headless.scene, [10, 20])
    panel = propagation_panel(slicer_modules["SpatialPropagation"], volume, segmentation, monkeypatch)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: errors.append(text))
    monkeypatch.setattr(panel.logic, "methodIsInteractive", lambda method: False)  # sdf as a slow method would run
    ui = panel.ui

    panel.onPropagateButton()
    assert panel.isRunning and ui.propagateButton.text == "Cancel" and ui.propagateButton.enabled
    assert not any(button.enabled for button in (ui.previewButton, ui.applyButton, ui.undoButton))
    assert MRMLAdapter.recordedPropagatedSlices(segmentation, [lung.segment_id], 0) == []  # not written yet
    run_panel_job(panel)
    assert ui.propagateButton.text == "Propagate" and ui.previewButton.enabled and ui.undoButton.enabled
    assert ui.resultLabel.text.startswith("9 slices propagated")
    assert MRMLAdapter.recordedPropagatedSlices(segmentation, [lung.segment_id], 0) == list(range(11, 20))

    panel.onPreviewButton()
    panel.onPreviewButton()  # pressed again: Cancel
    assert ui.previewButton.text == "Cancelling..."
    run_panel_job(panel)
    assert ui.resultLabel.text == "Cancelled." and errors == [] and not panel.logic.hasPreview(segmentation)

    panel._parameterNode.method, panel._parameterNode.modelPath = "model", "/nowhere/lungs.pt"
    panel.onPropagateButton()
    run_panel_job(panel)
    assert len(errors) == 1 and errors[0].startswith("Propagation failed.") and "/nowhere/lungs.pt" in errors[0]
    assert not panel.isRunning and ui.propagateButton.enabled


def test_the_selector_panel_follows_a_reloaded_scene_and_keeps_its_table_view(slicer_modules, headless, monkeypatch):
    volume, segmentation, _ = chest_ct_nodes(headless.scene)
    table = headless.scene.AddNewNodeByClass("vtkMRMLTableNode")
    scans = headless.scene.AddNewNodeByClass("vtkMRMLTableNode")
    parameters = ParameterNode(
        inputVolume=volume, segmentation=segmentation, queriedSlices=table, modelPath="", strategy="entropy",
        volumeRanking=scans, sliceAxis="axial",
    )  # fmt: skip
    panel = selector_panel(slicer_modules["ActiveSliceSelector"], parameters, monkeypatch)
    panel.updateGUIFromParameterNode()
    assert panel.ui.strategyComboBox.currentText == "entropy"  # the parameter node's choice, e.g. after a reload
    cost = panel.ui.strategyHelpLabel.text.splitlines()[-1]  # what ranking this CT (34 x 128 x 128) should take
    assert cost.startswith("entropy: under a second on cpu") and "scaled to 34 slices of 128 x 128" in cost
    for _ in range(3):  # every parameter change calls this; the table view keeps its node (and its selection)
        panel.updateGUIFromParameterNode()
    assert panel.ui.queriedSlicesTableView.resets == 1 and panel.ui.queriedSlicesTableView.node is table
    assert panel.ui.volumeRankingTableView.resets == 1 and panel.ui.volumeRankingTableView.node is scans
    assert panel.ui.rankButton.enabled and not panel.ui.updateModelButton.enabled  # no model file chosen
    assert panel.ui.rankVolumesButton.enabled and panel.ui.rankVolumesButton.text == "Rank scans"


def test_the_scenes_volumes_are_ranked_to_say_which_scan_to_annotate_first(slicer_modules, headless):
    from spatial_al.volume import Geometry
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.BackgroundWork import FINISHED

    rng = np.random.default_rng(0)
    nodes = []
    for index in range(3):
        image = np.full((6, 20, 20), -1000.0, np.float32)
        image[1:5, 4 : 10 + 3 * index, 4:16] = 40.0 + rng.normal(0, 5, (4, 6 + 3 * index, 12))
        nodes.append(MRMLAdapter.addVolumeNode(headless.scene, image, Geometry(image.shape), f"scan {index + 1}"))
    logic = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic()
    ranking, table = logic.rankVolumes(nodes, "random", 2, sliceAxis=0, seed=1)
    rows = [table.GetTable().GetValueByName(row, "volume").ToString() for row in range(3)]
    assert rows == [nodes[i].GetName() for i in ranking.order] and ranking.top(2) == rows[:2]
    referenced = [table.GetNthNodeReference(MRMLAdapter.VOLUME_REFERENCE_ROLE, i) for i in range(3)]
    assert [node.GetName() for node in referenced] == rows  # each row leads to its scan
    options = {"samples": 2, "training_slices": 2, "max_epochs": 1, "window": (0, 100), "device": "cpu"}
    job = logic.volumeRankingJob(nodes, "proxy_entropy", 1, sliceAxis=0, tableNode=table, **options).start()
    assert job.wait() == FINISHED, job.error
    ranking, same_table = job.finish()
    assert same_table is table and table.GetTable().GetNumberOfRows() == 3 and np.all(ranking.scores > 0)
    with pytest.raises(MRMLAdapter.MRMLInputError, match="No volume to rank"):
        logic.volumeRankingJob([], "random", 1)
    with pytest.raises(
        MRMLAdapter.MRMLInputError, match="4 scans to annotate first, but 3 are loaded; choose at most 3"
    ):
        logic.volumeRankingJob(nodes, "random", 4)
    headless.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a label map")
    assert logic.scansInScene(headless.scene) == nodes  # "Rank scans" ranks these: the scans, not label maps


def test_the_panels_scan_strategies_are_the_backends():
    import ast

    from spatial_al.selection.volumes import VOLUME_STRATEGIES

    source = (Path(__file__).parents[1] / "ActiveSliceSelector" / "ActiveSliceSelector.py").read_text()
    listed = next(
        node.value for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "VOLUME_STRATEGIES"
    )  # fmt: skip
    assert sorted(ast.literal_eval(listed)) == sorted(VOLUME_STRATEGIES)
