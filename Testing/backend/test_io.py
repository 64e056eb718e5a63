"""Readers and writers, checked against independent readers (SimpleITK, nibabel, slicerio)."""

import json
import re

import nibabel
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from spatial_al.data import chest_ct_files
from spatial_al.io import (
    MSDDataset,
    Segmentation,
    load_stack,
    place_on_grid,
    read_segmentation,
    read_volume,
    write_segmentation,
    write_volume,
)
from spatial_al.volume import Geometry, GeometryMismatchError, Segment, resolve_slice_axis

GEOMETRY = Geometry(
    (6, 8, 10),
    spacing=(0.8, 1.1, 3.0),
    origin=(5.0, -7.0, 12.0),
    direction=(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
)


def label_map():
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[1:4, 2:5, 3:7] = 3
    labels[4:6, 0:3, 0:2] = 7
    return labels


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_round_trip_through_simpleitk(tmp_path, suffix):
    image = np.random.default_rng(1).normal(size=GEOMETRY.shape).astype(np.float32)
    path = write_volume(tmp_path / f"ct{suffix}", image, GEOMETRY)
    array, geometry = read_volume(path)
    np.testing.assert_array_equal(array, image)
    assert not geometry.differences(GEOMETRY, tolerance=1e-5)
    reference = sitk.ReadImage(str(path))
    assert reference.GetSize() == GEOMETRY.shape[::-1]
    np.testing.assert_allclose(reference.GetDirection(), GEOMETRY.direction, atol=1e-6)


def test_nifti_label_map_keeps_values_for_nibabel(tmp_path):
    segmentation = Segmentation(label_map(), (Segment("a", 3), Segment("b", 7)), GEOMETRY)
    path = write_segmentation(tmp_path / "labels.nii.gz", segmentation)
    voxels = np.asarray(nibabel.load(str(path)).dataobj)  # nibabel: (I, J, K)
    np.testing.assert_array_equal(voxels.transpose(2, 1, 0), label_map())
    again = read_segmentation(path)
    assert [s.label_value for s in again.segments] == [3, 7]
    assert not again.geometry.differences(GEOMETRY, tolerance=1e-5)


def test_chest_ct_segmentation_reads_with_names_colors_and_geometry():
    image_path, segmentation_path = chest_ct_files()
    segmentation = read_segmentation(segmentation_path)
    reference = slicerio.read_segmentation(str(segmentation_path))
    assert [s.name for s in segmentation.segments] == [s["name"] for s in reference["segments"]]
    assert segmentation.segments[4].name == "right lung"
    np.testing.assert_allclose(segmentation.segments[4].color, reference["segments"][4]["color"])
    np.testing.assert_array_equal(segmentation.label_layers[0], reference["voxels"].transpose(2, 1, 0))
    image = sitk.ReadImage(str(image_path))
    assert not segmentation.geometry.differences(read_volume(image_path)[1])
    assert segmentation.geometry.shape == image.GetSize()[::-1] == (34, 128, 128)


def test_seg_nrrd_round_trip_is_read_by_slicerio_and_simpleitk(tmp_path):
    segments = (
        Segment("liver", 3, color=(0.8, 0.3, 0.2), segment_id="liver", tags={"SpatialAL.AnnotatedSlices": "0,2"}),
        Segment("kidney", 7, color=(0.1, 0.5, 0.9), segment_id="kidney"),
    )
    path = write_segmentation(tmp_path / "out.seg.nrrd", Segmentation(label_map(), segments, GEOMETRY))
    written = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in written["segments"]] == ["liver", "kidney"]
    assert written["segments"][0]["tags"]["SpatialAL.AnnotatedSlices"] == "0,2"
    np.testing.assert_allclose(written["ijkToLPS"], GEOMETRY.ijk_to_lps, atol=1e-6)
    for segment in written["segments"]:
        np.testing.assert_array_equal(
            written["voxels"].transpose(2, 1, 0) == segment["labelValue"], label_map() == segment["labelValue"]
        )
    as_image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(as_image), label_map())
    assert as_image.GetMetaData("Segment1_Name") == "kidney"
    again = read_segmentation(path)
    assert again.segments == segments


def test_overlapping_segments_keep_their_layers(tmp_path):
    segmentation = read_segmentation(chest_ct_files()[0].with_name("SegmentationOverlapping.seg.nrrd"))
    assert segmentation.label_layers.shape[0] == 2
    sphere = segmentation.segments[-1]
    assert (sphere.name, sphere.layer) == ("overlapping sphere", 1)
    path = write_segmentation(tmp_path / "overlap.seg.nrrd", segmentation)
    again = read_segmentation(path)
    np.testing.assert_array_equal(again.label_layers, segmentation.label_layers)
    with pytest.raises(ValueError, match="overlapping"):
        write_segmentation(tmp_path / "overlap.nrrd", segmentation)


def test_seg_nrrd_extents_are_each_segments_bounding_box_in_ijk(tmp_path):
    """Slicer's SegmentN_Extent (i0 i1 j0 j1 k0 k1, inclusive), against np.nonzero, for label values that are not
    1..N, a second layer and an empty segment; the file keeps gzip encoding."""
    layers = np.zeros((2, *GEOMETRY.shape), np.uint8)
    layers[0] = label_map()
    layers[1, 2:5, 1, 4:9] = 2
    segments = (Segment("a", 3), Segment("b", 7), Segment("c", 2, layer=1), Segment("empty", 5))
    path = write_segmentation(tmp_path / "extents.seg.nrrd", Segmentation(layers, segments, GEOMETRY))
    header = nrrd.read_header(str(path))
    assert header["encoding"] == "gzip"
    for index, segment in enumerate(segments):
        written = [int(value) for value in header[f"Segment{index}_Extent"].split()]
        k, j, i = np.nonzero(layers[segment.layer] == segment.label_value)
        expected = [0, -1, 0, -1, 0, -1] if k.size == 0 else [i.min(), i.max(), j.min(), j.max(), k.min(), k.max()]
        assert written == expected, segment.name
    again = read_segmentation(path)
    assert [(s.name, s.label_value, s.layer) for s in again.segments] == [
        (s.name, s.label_value, s.layer) for s in segments
    ]
    np.testing.assert_array_equal(again.label_layers, layers)


def test_cropped_segmentation_is_padded_onto_the_image_grid():
    labels = label_map()
    cropped_geometry = Geometry(
        (3, 3, 4), GEOMETRY.spacing, tuple((GEOMETRY.ijk_to_lps @ [3, 2, 1, 1])[:3]), GEOMETRY.direction
    )
    cropped = Segmentation(labels[1:4, 2:5, 3:7], (Segment("a", 3),), cropped_geometry)
    placed = place_on_grid(cropped, GEOMETRY)
    np.testing.assert_array_equal(placed.label_layers[0], np.where(labels == 3, 3, 0))


def test_segmentation_on_another_grid_is_refused():
    other = Geometry(GEOMETRY.shape, (1.0, 1.1, 3.0), GEOMETRY.origin, GEOMETRY.direction)
    with pytest.raises(GeometryMismatchError, match="spacing"):
        place_on_grid(Segmentation(label_map(), (), other), GEOMETRY)


def test_load_stack_with_mismatched_labels_says_what_differs(tmp_path):
    image_path = write_volume(tmp_path / "image.nrrd", np.zeros(GEOMETRY.shape, np.int16), GEOMETRY)
    shifted = Geometry(GEOMETRY.shape, GEOMETRY.spacing, (5.3, -7.0, 12.0), GEOMETRY.direction)
    labels_path = write_segmentation(tmp_path / "labels.nrrd", Segmentation(label_map(), (), shifted))
    with pytest.raises(GeometryMismatchError, match="origin"):
        load_stack(image_path, labels_path)


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match=re.escape("broken.nrrd")):
        read_volume(broken)
    with pytest.raises(FileNotFoundError, match=re.escape("missing.nii.gz")):
        read_volume(tmp_path / "missing.nii.gz")


def test_four_dimensional_image_needs_a_channel(tmp_path):
    frames = [sitk.GetImageFromArray(np.full((3, 4, 5), value, np.int16)) for value in (1, 2)]
    path = tmp_path / "multi.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    with pytest.raises(ValueError, match=re.escape("channel=0..1")):
        read_volume(path)
    array, geometry = read_volume(path, channel=1)
    assert geometry.shape == (3, 4, 5) and (array == 2).all()


def test_rgb_image_is_refused(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(ValueError, match="RGB"):
        read_volume(path)


def make_msd_folder(root, nnunet_v2=False):
    """An MSD-style dataset of two cases, written the way the Decathlon (or nnU-Net v2) lays them out."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case in ("spleen_1", "spleen_7"):
        image_name = f"{case}_0000.nii.gz" if nnunet_v2 else f"{case}.nii.gz"
        write_volume(root / "imagesTr" / image_name, np.zeros(GEOMETRY.shape, np.int16), GEOMETRY)
        write_segmentation(root / "labelsTr" / f"{case}.nii.gz", Segmentation(label_map(), (), GEOMETRY))
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    if nnunet_v2:
        description = {
            "labels": {"background": 0, "spleen": 3, "tumour": 7},
            "file_ending": ".nii.gz",
            "channel_names": {"0": "CT"},
        }
    else:
        description = {
            "name": "Spleen",
            "labels": {"0": "background", "3": "spleen", "7": "tumour"},
            "modality": {"0": "CT"},
            "training": training,
        }
    (root / "dataset.json").write_text(json.dumps(description))


@pytest.mark.parametrize("nnunet_v2", [False, True])
def test_msd_folder_loads_cases_with_label_names(tmp_path, nnunet_v2):
    make_msd_folder(tmp_path, nnunet_v2)
    dataset = MSDDataset(tmp_path)
    assert len(dataset) == 2 and dataset.case(1).case_id == "spleen_7"
    assert dataset.modalities == {0: "CT"}
    stack = dataset.load("spleen_1")
    assert [(s.name, s.label_value) for s in stack.segments] == [("spleen", 3), ("tumour", 7)]
    np.testing.assert_array_equal(stack.label_layers[0], label_map())
    assert stack.slice_axis == 0


def test_msd_folder_problems_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("dataset.json")):
        MSDDataset(tmp_path)
    make_msd_folder(tmp_path)
    (tmp_path / "labelsTr" / "spleen_7.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("spleen_7.nii.gz")):
        MSDDataset(tmp_path)


def test_segments_sharing_a_name_are_refused_with_their_label_values():
    labels = np.zeros((1, 2, 2, 2), np.uint8)
    segments = (Segment("lung", 1), Segment("heart", 2), Segment("lung", 3, layer=0))
    with pytest.raises(ValueError, match=r"share a name \('lung': label 1 \(layer 0\), label 3 \(layer 0\)\)"):
        Segmentation(labels, segments, Geometry((2, 2, 2)))


def test_an_empty_segmentation_file_is_named_as_such(tmp_path):
    empty = tmp_path / "empty.seg.nrrd"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is an empty file \(0 bytes\)"):
        read_segmentation(empty)


def kidney_map():
    """label_map() with KiTS19's values: 1 kidney, 2 tumour."""
    labels = label_map()
    return np.select([labels == 3, labels == 7], [1, 2], 0).astype(np.uint8)


def write_case(image_path, label_path, labels):
    """An image brighter where ``labels`` is set, and (unless ``label_path`` is None) the label map, on GEOMETRY."""
    image_path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(image_path, (labels * 100).astype(np.int16), GEOMETRY)
    if label_path is not None:
        write_segmentation(label_path, Segmentation(labels, (), GEOMETRY))


def test_acdc_and_kits19_folders_are_read_and_told_apart_from_msd(tmp_path):
    from spatial_al.io import ACDCDataset, KiTS19Dataset, MSDDataset, open_dataset

    heart = np.zeros(GEOMETRY.shape, np.uint8)
    heart[1:5, 2:6, 2:5], heart[1:5, 3:5, 3:4] = 2, 3  # myocardium around the left ventricle
    acdc = tmp_path / "ACDC" / "database" / "training"
    for patient, frame in (("patient001", "01"), ("patient001", "12"), ("patient002", "01")):
        name = f"{patient}_frame{frame}"
        write_case(acdc / patient / f"{name}.nii.gz", acdc / patient / f"{name}_gt.nii.gz", heart)
    write_case(acdc / "patient001" / "patient001_4d.nii.gz", None, heart)  # the cine file is not a case
    kits = tmp_path / "kits19"
    kidney = kidney_map()
    write_case(
        kits / "data" / "case_00000" / "imaging.nii.gz", kits / "data" / "case_00000" / "segmentation.nii.gz", kidney
    )
    write_case(kits / "data" / "case_00210" / "imaging.nii.gz", None, kidney)  # a test case: no segmentation
    make_msd_folder(tmp_path / "Task09_Spleen")

    acdc_dataset = open_dataset(tmp_path / "ACDC")
    assert isinstance(acdc_dataset, ACDCDataset) and acdc_dataset.name == "ACDC"
    assert [c.case_id for c in acdc_dataset.training_cases] == [
        "patient001_frame01",
        "patient001_frame12",
        "patient002_frame01",
    ]
    stack = acdc_dataset.load("patient001_frame12", slice_axis=0)
    assert [(s.name, s.label_value) for s in stack.segments] == [("myocardium", 2), ("left ventricle", 3)]
    np.testing.assert_array_equal(stack.label_layers[0], heart)
    kits_dataset = open_dataset(kits)
    assert isinstance(kits_dataset, KiTS19Dataset) and [c.case_id for c in kits_dataset.training_cases] == [
        "case_00000"
    ]
    assert [(s.name, s.label_value) for s in kits_dataset.load(0).segments] == [("kidney", 1), ("tumor", 2)]
    assert isinstance(open_dataset(tmp_path / "Task09_Spleen"), MSDDataset)

    (acdc / "patient002" / "patient002_frame01.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("patient002_frame01_gt.nii.gz' has no image beside it")):
        ACDCDataset(tmp_path / "ACDC")
    with pytest.raises(FileNotFoundError, match=r"expected an MSD task .* ACDC .* KiTS19"):
        open_dataset(tmp_path / "Task09_Spleen" / "imagesTr")


def test_a_study_reads_a_kits19_folder_and_its_protocol_entry_by_the_layout_name(tmp_path):
    from spatial_al.experiments.cohort import FolderSource
    from spatial_al.experiments.config import DataConfig
    from spatial_al.experiments.protocols import Protocol, dataset_key

    root = tmp_path / "downloads"
    for case in ("case_00000", "case_00001"):
        write_case(root / case / "imaging.nii.gz", root / case / "segmentation.nii.gz", kidney_map())
    protocol = Protocol(
        "sbc_al", "", "", {"datasets": {"ACDC": {}, "KiTS19": {"data": {"labels": {"kidney": [1, 2]}}}}}
    )
    assert dataset_key(protocol, root) == "KiTS19"  # the folder's name says nothing; its layout does
    source = FolderSource(root, DataConfig(slice_axis="axial"))
    assert source.names == ["case_00000", "case_00001"] and source.label_names == {1: "kidney", 2: "tumor"}
    volume = next(source.volumes())
    axial = resolve_slice_axis("axial", GEOMETRY)
    assert volume.image.shape[0] == GEOMETRY.shape[axial]  # slices first, cut along the axial axis
    np.testing.assert_array_equal(volume.labels, np.moveaxis(kidney_map(), axial, 0))


def test_lits_and_atlas_folders_are_read_by_their_layouts(tmp_path):
    from spatial_al.io import ATLASDataset, LiTSDataset, open_dataset

    lits = tmp_path / "LITS17"
    for batch, number in (("Training Batch 1", 2), ("Training Batch 1", 10), ("Training Batch 2", 100)):
        folder = lits / batch
        write_case(folder / f"volume-{number}.nii", folder / f"segmentation-{number}.nii", kidney_map())
    write_case(lits / "Training Batch 2" / "volume-101.nii", None, kidney_map())  # no segmentation: no case
    dataset = open_dataset(lits)
    assert isinstance(dataset, LiTSDataset)
    assert [c.case_id for c in dataset.training_cases] == ["volume-2", "volume-10", "volume-100"]  # numeric order
    assert [(s.name, s.label_value) for s in dataset.load("volume-10").segments] == [("liver", 1), ("tumor", 2)]

    anat = tmp_path / "ATLAS_2" / "Training" / "R001" / "sub-r001s001" / "ses-1" / "anat"
    stem = "sub-r001s001_ses-1_space-MNI152NLin2009aSym"
    lesion = (kidney_map() > 0).astype(np.uint8)
    write_case(anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", lesion)
    atlas = open_dataset(tmp_path / "ATLAS_2")
    assert isinstance(atlas, ATLASDataset) and [c.case_id for c in atlas.training_cases] == [stem]
    np.testing.assert_array_equal(atlas.load(0).label_layers[0], lesion)
    with pytest.raises(FileNotFoundError, match="holds no ATLAS case"):
        ATLASDataset(tmp_path / "LITS17")
