"""The demo session end to end: every file it writes, read back by independent readers."""

import csv
import json
from importlib import metadata

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from spatial_al.data import chest_ct_files
from spatial_al.demo import DemoConfig, run_demo
from spatial_al.metrics import dice


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    from SpatialALSlicerLib.SessionScene import writeSessionScene

    output = tmp_path_factory.mktemp("demo")
    report = run_demo(output, DemoConfig(reference_method=None), scene_writer=writeSessionScene)
    return output, report


def test_report_has_lung_dice_timings_versions_and_seed(demo_output):
    output, report = demo_output
    on_disk = json.loads((output / "report.json").read_text())
    assert on_disk["results"]["dice_on_non_annotated_slices"] == report["results"]["dice_on_non_annotated_slices"]
    dice_sdf = on_disk["results"]["dice_on_non_annotated_slices"]["sdf"]
    assert dice_sdf["right lung"] > 0.9 and dice_sdf["left lung"] > 0.9
    assert on_disk["configuration"]["seed"] == 0 and on_disk["configuration"]["strategy_options"] == {"interval": 3}
    assert set(on_disk["seconds"]) >= {"load", "rank", "propagate", "write_files", "write_scene"}
    assert on_disk["environment"]["versions"]["slicerio"] == metadata.version("slicerio")
    assert on_disk["results"]["annotated_slices"] == list(range(0, 34, 3))


def test_report_dice_is_what_the_written_segmentation_scores(demo_output):
    output, report = demo_output
    written = slicerio.read_segmentation(str(output / "segmentation.seg.nrrd"))
    truth = slicerio.read_segmentation(str(chest_ct_files()[1]))
    evaluated = [k for k in range(34) if k % 3]
    for segment in written["segments"]:
        reference = next(s for s in truth["segments"] if s["name"] == segment["name"])
        found = written["voxels"][..., evaluated] == segment["labelValue"]
        expected = truth["voxels"][..., evaluated] == reference["labelValue"]
        reported = report["results"]["dice_on_non_annotated_slices"]["sdf"][segment["name"]]
        assert reported == pytest.approx(dice(found, expected), abs=1e-4)


def test_segmentation_reads_back_with_segments_geometry_and_slice_record(demo_output):
    output, _ = demo_output
    written = slicerio.read_segmentation(str(output / "segmentation.seg.nrrd"))
    truth = slicerio.read_segmentation(str(chest_ct_files()[1]))
    assert [s["name"] for s in written["segments"]] == [s["name"] for s in truth["segments"]]
    np.testing.assert_allclose(written["ijkToLPS"], truth["ijkToLPS"], atol=1e-6)
    assert written["voxels"].shape == truth["voxels"].shape
    ct = sitk.ReadImage(str(chest_ct_files()[0]))
    assert written["voxels"].shape == ct.GetSize()
    for segment in written["segments"]:
        tags = segment["tags"]
        assert tags["SpatialAL.SliceAxis"] == "0"
        assert tags["SpatialAL.AnnotatedSlices"] == ",".join(str(k) for k in range(0, 34, 3))
        assert tags["SpatialAL.PropagatedSlices"] == ",".join(str(k) for k in range(34) if k % 3)


def test_queried_slices_csv_and_overview_png(demo_output):
    output, _ = demo_output
    with (output / "queried_slices.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["rank", "slice", "score", "strategy"]
    assert [int(r["slice"]) for r in rows] == list(range(0, 34, 3))
    assert {r["strategy"] for r in rows} == {"fixed_interval"}
    picture = matplotlib.image.imread(output / "overview.png")
    assert picture.ndim == 3 and picture.shape[0] > 600 and picture.shape[1] > 600


def test_scene_bundle_opens_with_volume_segmentation_table_and_planes(demo_output, headless):
    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.HeadlessScene import loadSceneBundle

    output, _ = demo_output
    scene = loadSceneBundle(output / "scene.mrb").scene
    volume = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    table = scene.GetFirstNodeByClass("vtkMRMLTableNode")
    planes = [
        scene.GetNthNodeByClass(i, "vtkMRMLMarkupsPlaneNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsPlaneNode"))
    ]
    image = sitk.ReadImage(str(chest_ct_files()[0]))
    np.testing.assert_array_equal(MRMLAdapter.arrayFromVolumeNode(volume), sitk.GetArrayFromImage(image))
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 7
    rows = MRMLAdapter.queriedSlicesFromTable(table)
    assert [r["slice"] for r in rows] == list(range(0, 34, 3)) and {r["status"] for r in rows} == {"annotated"}
    assert sorted(int(p.GetAttribute("SpatialAL.Slice")) for p in planes) == list(range(0, 34, 3))
    lung = segmentation.GetSegmentation().GetSegmentIdBySegmentName("right lung")
    record = MRMLAdapter.sliceRecord(segmentation, lung)
    assert record.annotated == tuple(range(0, 34, 3))


@pytest.mark.slow
def test_make_demo_command_with_contour_reference(tmp_path):
    """What `make demo` runs: the CLI demo with Slicer's Fill-between-slices filter as the reference."""
    from spatial_al.cli import main

    assert main(["demo", "--output", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    dice_by_method = report["results"]["dice_on_non_annotated_slices"]
    assert dice_by_method["sdf"]["right lung"] >= dice_by_method["contour"]["right lung"]
    assert (tmp_path / "scene.mrb").is_file()


def test_the_scene_opens_each_module_on_the_session(demo_output, headless, slicer_modules):
    """The bundle holds each module's parameter node, as Slicer's parameterNodeWrapper stores it, so that opening
    the scene shows the volume, the segmentation and the queried-slices table in the modules."""
    import slicer

    from SpatialALSlicerLib import MRMLAdapter
    from SpatialALSlicerLib.HeadlessScene import loadSceneBundle

    output, _ = demo_output
    scene = loadSceneBundle(output / "scene.mrb").scene
    previous, slicer.mrmlScene = slicer.mrmlScene, scene
    try:
        selector = slicer_modules["ActiveSliceSelector"].ActiveSliceSelectorLogic().getParameterNode().parameterNode
        propagation = slicer_modules["SpatialPropagation"].SpatialPropagationLogic().getParameterNode().parameterNode
    finally:
        slicer.mrmlScene = previous
    table = scene.GetFirstNodeByClass("vtkMRMLTableNode")
    volume = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert selector.GetNodeReference("queriedSlices") is table and selector.GetParameter("queriedSlices") == ""
    for parameters in (selector, propagation):
        assert parameters.GetNodeReference("inputVolume") is volume
        assert parameters.GetNodeReference("segmentation") is segmentation
    assert scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 2  # found, not made anew
    assert table.GetNodeReference(MRMLAdapter.SEGMENTATION_REFERENCE_ROLE) is segmentation  # marking reaches it
    planes = table.GetNumberOfNodeReferences(MRMLAdapter.PLANE_REFERENCE_ROLE)
    assert planes == scene.GetNumberOfNodesByClass("vtkMRMLMarkupsPlaneNode") == 12  # the next ranking replaces them
