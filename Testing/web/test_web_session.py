"""The browser app's loop and its file rules, on a headless scene (no server, no browser): the same calls the page's
buttons make."""

import csv

import numpy as np
import pytest
import slicerio

pytest.importorskip("trame_slicer", reason="the web extra is not installed (make web)")

from spatial_al.annotation_record import SliceRecord
from SpatialALWeb.folders import OutsideFolderError, casesFrom, demoCase, findCases, inside


@pytest.mark.parametrize("name", ["../secret.nrrd", "a/../../b.nrrd", "/etc/passwd"])
def test_a_name_leading_out_of_the_folder_is_refused(tmp_path, name):
    with pytest.raises(OutsideFolderError, match="outside the folder"):
        inside(tmp_path, name)
    assert inside(tmp_path, "case.nrrd") == (tmp_path / "case.nrrd").resolve()


def test_a_link_pointing_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "escape").symlink_to(tmp_path)
    with pytest.raises(OutsideFolderError):
        inside(tmp_path / "data", "escape/other.nrrd")


def test_cases_of_a_folder_pair_images_with_their_segmentations(tmp_path):
    for name in ("b.nrrd", "b.seg.nrrd", "a.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    cases = findCases(tmp_path)
    paired = [(case.name, case.segmentation.name if case.segmentation else None) for case in cases]
    assert paired == [("a", None), ("b", "b.seg.nrrd")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        casesFrom(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        casesFrom(tmp_path / "missing.nrrd")


def test_the_demo_starts_from_four_annotated_slices_recorded(tmp_path):
    case = demoCase(tmp_path)
    read = slicerio.read_segmentation(str(case.segmentation))
    voxels = read["voxels"]  # (I, J, K)
    assert sorted(np.unique(np.nonzero(voxels)[2]).tolist()) == [0, 11, 22, 33]
    for segment in read["segments"]:
        assert SliceRecord.from_tags(segment["tags"]).annotated == (0, 11, 22, 33)
    assert demoCase(tmp_path) == case  # read from there the next time, not written again


def test_the_loop_on_the_modules_logic_writes_files_an_independent_reader_agrees_with(headless, tmp_path):
    from SpatialALWeb.session import AnnotationSession

    case = demoCase(tmp_path / "output")
    session = AnnotationSession(headless.scene, case, tmp_path / "output")
    session.rankingJob("fixed_interval", 5).runHere()
    rows = session.queriedSlices()
    assert [row["status"] for row in rows] == ["to annotate"] * 5 and rows[0]["slice"] not in (0, 11, 22, 33)
    target = rows[0]["slice"]
    session.jumpTo(target)
    assert session.sliceShown(headless.sliceNode("Red")) == target
    with pytest.raises(Exception, match="preview"):
        session.applyPreview()

    # a stroke on the queried slice (here written through the adapter, as the Segment Editor would)
    from SpatialALSlicerLib import MRMLAdapter

    segmentId = session.segmentationNode.GetSegmentation().GetNthSegmentID(0)
    mask = MRMLAdapter.segmentMaskInVolumeGrid(session.segmentationNode, segmentId, session.volumeNode)
    mask[target, 60:66, 60:66] = True
    MRMLAdapter.setSegmentMaskInVolumeGrid(session.segmentationNode, segmentId, session.volumeNode, mask)
    assert session.markAnnotated(target) == sorted([0, 11, 22, 33, target])
    session.propagate("sdf", preview=True)
    assert session.hasPreview()
    applied = session.applyPreview()
    assert session.canUndo() and len(applied.propagated) > 0
    assert session.undo() is True and session.hasPreview()  # the applied preview is shown again
    session.applyPreview()
    saved = session.save()

    read = slicerio.read_segmentation(str(saved.segmentation))
    voxels = np.transpose(read["voxels"], (2, 1, 0)) if read["voxels"].ndim == 3 else None
    first = read["segments"][0]
    assert voxels is not None
    labels = voxels == first["labelValue"]
    assert labels[target, 60:66, 60:66].all()  # the stroke, on the slice marked annotated
    record = SliceRecord.from_tags(first["tags"])
    assert target in record.annotated and set(applied.propagated.tolist()) <= set(record.propagated)
    # pseudo-labels fill the slices between two annotated slices that hold the structures (11 and 22)
    assert set(range(12, 22)) <= set(record.propagated) and all((voxels[k] != 0).any() for k in range(12, 22))
    with open(saved.queried_slices) as file:
        statuses = {int(row["slice"]): row["status"] for row in csv.DictReader(file)}
    assert statuses[target] == "annotated"
    assert saved.scene.stat().st_size > 0


def test_update_model_fills_the_queried_slices_by_the_new_model_and_costs_are_said_first(headless, tmp_path):
    from conftest import TINY_UNET

    from spatial_al.models import preset_config
    from SpatialALWeb.session import AnnotationSession

    case = demoCase(tmp_path / "output")
    session = AnnotationSession(headless.scene, case, tmp_path / "output")
    costs = session.rankingCosts()
    assert costs["random"].startswith("random: under a second on cpu") and "mc_dropout: about" in costs["mc_dropout"]
    model = tmp_path / "output" / "model.pt"
    training = {"preset": preset_config("unet-small", features=TINY_UNET), "max_epochs": 1, "iterations_per_epoch": 2}
    summary = session.updateModelJob(model, "entropy", 4, 2, augment=False, device="cpu", **training).runHere()
    assert summary.annotated_slices == [0, 11, 22, 33] and model.is_file()
    rows = session.queriedSlices()
    slices = [row["slice"] for row in rows]
    assert len(rows) == 4 and {row["strategy"] for row in rows} == {"entropy"}
    assert not {0, 11, 22, 33} & set(slices) and np.diff(sorted(slices)).min() >= 2  # min spacing 2
    session.rankingJob("fixed_interval", 3).runHere()  # the same table is reused for the next ranking
    assert [row["strategy"] for row in session.queriedSlices()] == ["fixed_interval"] * 3


def test_a_dicom_folder_lists_its_series_and_save_writes_a_dicom_seg_of_the_same_voxels(headless, tmp_path):
    from spatial_al.data import chest_ct_files
    from spatial_al.data.dicom_series import write_ct_series
    from spatial_al.demo import starting_segmentation
    from spatial_al.io import choose_series, load_stack, read_volume, write_segmentation
    from SpatialALWeb.session import AnnotationSession

    image, geometry = read_volume(chest_ct_files()[0])
    write_ct_series(tmp_path / "data" / "ct", image, geometry, series_description="Chest 3.0 mm")
    series = choose_series(tmp_path / "data")
    write_segmentation(tmp_path / "data" / "start.dcm", starting_segmentation(), source=series)
    folder, cases = casesFrom(tmp_path / "data")
    (case,) = cases
    assert folder == (tmp_path / "data").resolve() and case.name.startswith("Chest-3-0-mm-")
    assert case.series.series_uid == series.series_uid and case.segmentation.name == "start.dcm"

    session = AnnotationSession(headless.scene, case, tmp_path / "output")
    assert session.annotatedSlices() == [0, 11, 22, 33]  # the slice record came back from the DICOM-SEG
    session.propagate("sdf")
    saved = session.save()
    assert saved.dicom_seg == tmp_path / "output" / f"{case.name}.dcm" and saved.stored_uid is None
    nrrd = slicerio.read_segmentation(str(saved.segmentation))
    stack = load_stack(tmp_path / "data", saved.dicom_seg)
    np.testing.assert_array_equal(stack.label_layers[0], np.transpose(nrrd["voxels"], (2, 1, 0)))
    assert [s.tags for s in stack.segments] == [s["tags"] for s in nrrd["segments"]]
