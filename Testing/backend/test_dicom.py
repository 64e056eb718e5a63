"""DICOM series in, DICOM-SEG in and out: real volumes written as CT series, checked against independent readers
(SimpleITK/GDCM's own series reader, pydicom, dcmqi's segimage2itkimage) and against pydicom-data's real SEGs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from spatial_al.annotation_record import SliceRecord
from spatial_al.data import chest_ct_files
from spatial_al.data.dicom_series import write_ct_series
from spatial_al.io import (
    choose_series,
    find_series,
    load_stack,
    read_segmentation,
    read_volume,
    write_segmentation,
)
from spatial_al.io.dicom import DicomSeriesError
from spatial_al.io.dicom_seg import DicomSegError, property_codes
from spatial_al.io.segmentation import Segmentation
from spatial_al.volume import Geometry, GeometryMismatchError, Segment


@pytest.fixture(scope="module")
def chest():
    """The chest CT (K, J, I), its geometry and its segmentation."""
    image, geometry = read_volume(chest_ct_files()[0])
    return image, geometry, read_segmentation(chest_ct_files()[1])


@pytest.fixture
def series_folder(tmp_path, chest):
    """The chest CT as a DICOM series whose files are numbered in reverse slice order."""
    image, geometry, _ = chest
    write_ct_series(tmp_path / "ct", image, geometry, slice_order=range(geometry.shape[0] - 1, -1, -1))
    return tmp_path / "ct"


def gdcm_series(folder: Path) -> sitk.Image:
    """The series as SimpleITK's own GDCM series reader reads it (the independent reference)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_a_series_reads_like_simpleitks_series_reader_and_like_the_volume_it_was_made_from(series_folder, chest):
    image, geometry, _ = chest
    array, read_geometry = read_volume(series_folder)
    reference = gdcm_series(series_folder)
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(reference))
    np.testing.assert_array_equal(array, image)
    assert not read_geometry.differences(geometry)
    np.testing.assert_allclose(read_geometry.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read_geometry.direction, reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(read_geometry.spacing, reference.GetSpacing(), atol=1e-4)


def test_several_series_in_a_folder_are_listed_and_one_is_picked_by_uid(tmp_path, chest):
    image, geometry, _ = chest
    write_ct_series(tmp_path / "a", image, geometry, series_description="Chest soft tissue")
    write_ct_series(tmp_path / "b", image[:20], geometry.__class__((20, *geometry.shape[1:]), geometry.spacing))
    localizer = tmp_path / "localizer"  # three orientations under one series UID, as scanners write scouts
    write_ct_series(localizer, image[:3], Geometry((3, *geometry.shape[1:]), geometry.spacing))
    for index, path in enumerate(sorted(localizer.iterdir())):
        dataset = pydicom.dcmread(path)
        dataset.ImageOrientationPatient = [[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1]][index]
        dataset.save_as(path)
    every = find_series(tmp_path)
    assert sorted(series.n_slices for series in every if series.is_volume) == [20, 34]
    scout = next(series for series in every if not series.is_volume)
    with pytest.raises(DicomSeriesError, match="mixes 3 image orientations"):
        read_volume(tmp_path, series_uid=scout.series_uid)
    with pytest.raises(DicomSeriesError) as error:
        read_volume(tmp_path)
    message = str(error.value)
    assert "2 image series" in message and "--series" in message
    assert "'Chest soft tissue'  34 slices" in message and "CT" in message
    short = next(series for series in every if series.n_slices == 20)
    array, _ = read_volume(tmp_path, series_uid=short.series_uid)
    np.testing.assert_array_equal(array, image[:20])
    with pytest.raises(DicomSeriesError, match=r"holds no series 1\.2\.3"):
        read_volume(tmp_path, series_uid="1.2.3")
    exam = tmp_path.parent / f"{tmp_path.name}-exam"
    shutil.copytree(tmp_path / "a", exam / "a")
    shutil.copytree(localizer, exam / "localizer")
    np.testing.assert_array_equal(read_volume(exam)[0], image)  # the scout beside the scan is no choice to make


def edit_headers(folder: Path, change) -> None:
    """Apply ``change(dataset, k)`` to every file of a series, k its slice index by position."""
    series = choose_series(folder)
    for k, path in enumerate(series.files):
        dataset = pydicom.dcmread(path)
        change(dataset, k)
        dataset.save_as(path)


def test_a_missing_slice_is_named_as_a_gap(series_folder):
    choose_series(series_folder).files[10].unlink()
    with pytest.raises(DicomSeriesError, match=r"has a gap: 1 slice\(s\) missing"):
        read_volume(series_folder)


def test_non_uniform_spacing_and_gantry_tilt_are_refused(series_folder, tmp_path):
    tilted = tmp_path / "tilted"
    shutil.copytree(series_folder, tilted)

    def stretch(dataset, k):
        dataset.ImagePositionPatient[2] = float(dataset.ImagePositionPatient[2]) + 0.5 * k * k

    def tilt(dataset, k):
        dataset.ImagePositionPatient[1] = float(dataset.ImagePositionPatient[1]) + 2.0 * k

    edit_headers(series_folder, stretch)
    with pytest.raises(DicomSeriesError, match="non-uniform slice spacing"):
        read_volume(series_folder)
    edit_headers(tilted, tilt)
    with pytest.raises(DicomSeriesError, match=r"gantry tilt of 11\.\d+ degrees"):
        read_volume(tilted)


def test_mixed_sizes_two_images_at_one_position_and_a_folder_without_images_are_named(series_folder, tmp_path):
    duplicate = tmp_path / "duplicate"
    shutil.copytree(series_folder, duplicate)
    first = choose_series(series_folder).files[0]
    dataset = pydicom.dcmread(first)
    dataset.Rows, dataset.Columns = 64, 256
    dataset.save_as(first)
    with pytest.raises(DicomSeriesError, match=r"mixes 2 image orientations or sizes \(128 x 128, 64 x 256\)"):
        read_volume(series_folder)
    copy = pydicom.dcmread(choose_series(duplicate).files[3])
    copy.SOPInstanceUID = pydicom.uid.generate_uid()
    copy.save_as(duplicate / "copy.dcm")
    with pytest.raises(DicomSeriesError, match="two images at the position"):
        read_volume(duplicate)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(DicomSeriesError, match="holds no DICOM image series"):
        read_volume(empty)


@pytest.mark.filterwarnings("ignore:The value length")  # highdicom's converter writes a 17-character DS
def test_an_enhanced_multi_frame_ct_reads_like_the_single_frame_series_and_takes_a_seg(series_folder, chest):
    import highdicom

    series = choose_series(series_folder)
    multiframe = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(path) for path in series.files],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=3,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    path = series_folder.parent / "enhanced" / "ct.dcm"
    path.parent.mkdir()
    multiframe.save_as(path)
    single, single_geometry = read_volume(series_folder)
    array, geometry = read_volume(path.parent)
    enhanced = choose_series(path.parent)
    assert enhanced.is_multiframe and not enhanced.geometry().differences(geometry)
    np.testing.assert_array_equal(array, single)
    assert not geometry.differences(single_geometry)
    segmentation = chest[2]
    seg = write_segmentation(path.parent.parent / "enhanced-seg.dcm", segmentation, source=enhanced)
    np.testing.assert_array_equal(load_stack(path.parent, seg).label_layers, segmentation.label_layers)


def propagated_segmentation(segmentation: Segmentation) -> Segmentation:
    """The chest segmentation with a slice record on 'right lung': annotated 0, 11, 22, 33, the others propagated."""
    annotated = (0, 11, 22, 33)
    propagated = tuple(k for k in range(34) if k not in annotated)
    record = SliceRecord(0, annotated, propagated, (0.5,) * len(propagated), ("00000000",) * len(propagated), "sdf")
    segments = tuple(
        Segment(
            s.name, s.label_value, s.layer, s.color, s.segment_id, record.to_tags() if s.name == "right lung" else {}
        )
        for s in segmentation.segments
    )
    return Segmentation(segmentation.label_layers, segments, segmentation.geometry)


def test_a_dicom_seg_round_trips_voxels_names_colours_and_the_slice_record(series_folder, chest, tmp_path):
    segmentation = propagated_segmentation(chest[2])
    source = choose_series(series_folder)
    path = write_segmentation(tmp_path / "out" / "seg.dcm", segmentation, source=source)
    back = read_segmentation(path)
    assert back.referenced_series_uid == source.series_uid
    stack = load_stack(series_folder, path)
    np.testing.assert_array_equal(stack.label_layers, segmentation.label_layers)
    assert [s.name for s in stack.segments] == [s.name for s in segmentation.segments]
    assert [s.tags for s in stack.segments] == [s.tags for s in segmentation.segments]
    np.testing.assert_allclose([s.color for s in stack.segments], [s.color for s in segmentation.segments])
    dataset = pydicom.dcmread(path)
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and dataset.SegmentationType == "BINARY"
    assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid
    kinds = {item.SegmentLabel: item.SegmentAlgorithmType for item in dataset.SegmentSequence}
    assert kinds["right lung"] == "SEMIAUTOMATIC" and kinds["ribs"] == "MANUAL"
    lung = next(item for item in dataset.SegmentSequence if item.SegmentLabel == "right lung")
    assert lung.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # SNOMED CT: Lung
    assert "sdf" in lung.SegmentAlgorithmName


def test_dcmqi_reads_the_seg_with_the_same_voxels_per_segment(series_folder, chest, tmp_path):
    segmentation = chest[2]
    source = choose_series(series_folder)
    path = write_segmentation(tmp_path / "seg.dcm", segmentation, source=source)
    converter = Path(sys.executable).parent / "segimage2itkimage"
    output = tmp_path / "dcmqi"
    output.mkdir()
    subprocess.run(
        [str(converter), "--inputDICOM", str(path), "--outputDirectory", str(output), "-t", "nrrd"],
        check=True,
        capture_output=True,
    )
    meta = json.loads((output / "meta.json").read_text())
    labels = [attributes[0]["SegmentLabel"] for attributes in meta["segmentAttributes"]]
    assert labels == [s.name for s in segmentation.segments]
    reference = gdcm_series(series_folder)
    for number, segment in enumerate(segmentation.segments, start=1):
        mask = sitk.Resample(
            sitk.ReadImage(str(output / f"{number}.nrrd")), reference, sitk.Transform(), sitk.sitkNearestNeighbor
        )
        expected = segmentation.label_layers[segment.layer] == segment.label_value
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask) > 0, expected, err_msg=segment.name)


def test_overlapping_segments_come_back_in_their_layers_and_labelmap_refuses_them(series_folder, chest, tmp_path):
    segmentation = chest[2]
    body = (segmentation.label_layers[0] > 0).astype(np.uint8)
    layers = np.stack([segmentation.label_layers[0], body])
    overlapping = Segmentation(
        layers, (*segmentation.segments, Segment("body", 1, layer=1, color=(0.2, 0.4, 0.6))), segmentation.geometry
    )
    source = choose_series(series_folder)
    path = write_segmentation(tmp_path / "seg.dcm", overlapping, source=source)
    np.testing.assert_array_equal(load_stack(series_folder, path).label_layers, layers)
    from spatial_al.io.dicom_seg import write_dicom_seg

    with pytest.raises(DicomSegError, match="LABELMAP SEG cannot hold"):
        write_dicom_seg(tmp_path / "labelmap.dcm", overlapping, source, segmentation_type="LABELMAP")
    assert not (tmp_path / "labelmap.dcm").exists()


def test_a_seg_of_another_series_and_a_dcm_output_without_a_dicom_image_are_refused(series_folder, chest, tmp_path):
    image, geometry, segmentation = chest
    write_ct_series(tmp_path / "other", image, geometry)
    other = choose_series(tmp_path / "other")
    path = write_segmentation(tmp_path / "other-seg.dcm", segmentation, source=other)
    with pytest.raises(GeometryMismatchError, match=f"segments series {other.series_uid}, not the image's series"):
        load_stack(series_folder, path)
    with pytest.raises(ValueError, match="references the DICOM series it segments"):
        write_segmentation(tmp_path / "no-source.dcm", segmentation)
    shifted = Segmentation(segmentation.label_layers[:, :20], segmentation.segments, Geometry((20, 128, 128)))
    with pytest.raises(DicomSegError, match="not on the grid of series"):
        write_segmentation(tmp_path / "shifted.dcm", shifted, source=other)


def test_pydicom_datas_real_liver_segs_read_with_their_labels_and_voxel_counts(tmp_path):
    from pydicom.data import get_testdata_file

    big_endian = get_testdata_file("liver_expb.dcm")
    with pytest.raises(DicomSegError, match=r"big endian.*dcmconv"):
        read_segmentation(big_endian)
    little_endian = tmp_path / "liver_expb_little.dcm"
    dataset = pydicom.dcmread(big_endian)
    bits = dataset.pixel_array  # decoded from big endian, then written little endian
    dataset.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pydicom.dcmwrite(little_endian, dataset, implicit_vr=False, little_endian=True, force_encoding=True)
    for path in (get_testdata_file("liver.dcm"), little_endian):
        dataset = pydicom.dcmread(path)
        frames = dataset.pixel_array.reshape(-1, dataset.Rows, dataset.Columns)
        segmentation = read_segmentation(path)
        assert [s.name for s in segmentation.segments] == [str(item.SegmentLabel) for item in dataset.SegmentSequence]
        assert segmentation.label_layers.shape[1:] == (dataset.NumberOfFrames, dataset.Rows, dataset.Columns)
        if dataset.SegmentationType == "BINARY":
            assert np.count_nonzero(segmentation.label_layers) == np.count_nonzero(frames)
        else:
            assert np.count_nonzero(segmentation.label_layers) == np.count_nonzero(
                frames >= dataset.MaximumFractionalValue / 2
            )


@pytest.mark.filterwarnings("ignore:The value length")  # highdicom's SpacingBetweenSlices
def test_a_fractional_seg_is_refused_with_what_to_do(series_folder, chest, tmp_path):
    import highdicom
    from pydicom.sr.codedict import codes

    source = choose_series(series_folder)
    headers = [pydicom.dcmread(path) for path in source.files]
    probabilities = (chest[2].label_layers[0] == 5).astype(np.float32) * 0.8
    seg = highdicom.seg.Segmentation(
        source_images=headers,
        pixel_array=probabilities,
        segmentation_type="FRACTIONAL",
        segment_descriptions=[
            highdicom.seg.SegmentDescription(
                1,
                "lung",
                codes.SCT.Organ,
                codes.SCT.Lung,
                "AUTOMATIC",
                highdicom.AlgorithmIdentificationSequence("net", codes.DCM.ArtificialIntelligence, "1"),
            )
        ],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(tmp_path / "fractional.dcm")
    with pytest.raises(DicomSegError, match="FRACTIONAL"):
        read_segmentation(tmp_path / "fractional.dcm")


@pytest.mark.parametrize(
    ("name", "code"), [("right lung", "39607008"), ("ribs", "113197003"), ("Liver", "10200004"), ("blob 7", "85756007")]
)
def test_segment_names_map_to_snomed_codes_or_a_generic_tissue(name, code):
    _, kind = property_codes(name)
    assert kind.value == code


def test_without_the_dicom_extra_the_error_says_how_to_install_it(monkeypatch, series_folder):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "highdicom" else real(name, *rest)
    )
    with pytest.raises(ImportError, match=r"needs highdicom: pip install 'spatial-active-learning\[dicom\]'"):
        read_volume(series_folder)


def test_a_folder_of_studies_is_a_cohort_of_the_series_with_a_seg_classes_matched_by_name(tmp_path, chest):
    from spatial_al.experiments.cohort import open_source
    from spatial_al.experiments.config import DataConfig
    from spatial_al.io import open_dataset

    image, geometry, segmentation = chest
    short = Geometry((20, *geometry.shape[1:]), geometry.spacing, geometry.origin, geometry.direction)
    write_ct_series(tmp_path / "a", image, geometry)
    write_ct_series(tmp_path / "b", image[:20], short)
    write_ct_series(tmp_path / "unlabelled", image[:10], Geometry((10, *geometry.shape[1:]), geometry.spacing))
    write_segmentation(tmp_path / "a-seg.dcm", segmentation, source=choose_series(tmp_path / "a"))
    reversed_segments = Segmentation(segmentation.label_layers[:, :20], segmentation.segments[::-1], short)
    write_segmentation(tmp_path / "b-seg.dcm", reversed_segments, source=choose_series(tmp_path / "b"))

    dataset = open_dataset(tmp_path)
    assert dataset.name == "DICOM" and len(dataset) == 2  # the unlabelled series is no case
    assert sorted(dataset.label_names.values()) == sorted(s.name for s in segmentation.segments)
    value_of = {name: value for value, name in dataset.label_names.items()}
    expected = np.zeros(geometry.shape, dtype=np.uint8)
    for segment in segmentation.segments:
        expected[segmentation.label_layers[0] == segment.label_value] = value_of[segment.name]
    source = open_source(tmp_path, DataConfig())
    volumes = {volume.name: volume for volume in source.volumes()}
    by_slices = {volume.image.shape[0]: volume for volume in volumes.values()}
    np.testing.assert_array_equal(by_slices[34].labels, expected)
    np.testing.assert_array_equal(by_slices[20].labels, expected[:20])
    assert set(volumes) == {choose_series(tmp_path / name).series_uid for name in ("a", "b")}
