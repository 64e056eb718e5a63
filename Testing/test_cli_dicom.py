"""The command line on hospital data: a DICOM series folder as the image, DICOM-SEG in and out, no patient data in the
run records."""

import json

import highdicom
import numpy as np
import pytest
import slicerio

from spatial_al.cli import main
from spatial_al.data import chest_ct_files
from spatial_al.data.dicom_series import FICTITIOUS_PATIENT, write_ct_series
from spatial_al.io import choose_series, read_segmentation, read_volume, write_segmentation


@pytest.fixture
def dicom_study(tmp_path):
    """The chest CT as a DICOM series (study/ct) and its reference segmentation as a DICOM-SEG (study/truth.dcm)."""
    image, geometry = read_volume(chest_ct_files()[0])
    write_ct_series(tmp_path / "study" / "ct", image, geometry)
    truth = write_segmentation(
        tmp_path / "study-seg" / "truth.dcm", read_segmentation(chest_ct_files()[1]), choose_series(tmp_path / "study")
    )
    return tmp_path / "study", truth


def patient_data_in(path) -> list[str]:
    text = path.read_text()
    return [value for value in FICTITIOUS_PATIENT.values() if value in text or value.split("^")[0] in text]


def test_propagate_a_dicom_series_to_a_dicom_seg_that_matches_the_seg_nrrd_bit_for_bit(dicom_study, tmp_path):
    study, truth = dicom_study
    outputs = {suffix: tmp_path / "out" / f"pseudo{suffix}" for suffix in (".dcm", ".seg.nrrd")}
    for output in outputs.values():
        arguments = ["propagate", str(study), str(truth), "--annotated", "0,11,22,33", "--output", str(output)]
        assert main([*arguments, "--quiet"]) == 0
    nrrd = slicerio.read_segmentation(str(outputs[".seg.nrrd"]))
    series = choose_series(study)
    seg = highdicom.seg.segread(str(outputs[".dcm"]))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    for number, info in enumerate(nrrd["segments"], start=1):
        # highdicom maps the SEG's frames onto the source images by their UIDs: an independent path to the voxels
        frames = seg.get_pixels_by_source_instance(
            [header.SOPInstanceUID for header in series.headers],
            segment_numbers=[number],
            assert_missing_frames_are_empty=True,
        )
        expected = np.asarray(nrrd["voxels"]).transpose(2, 1, 0) == info["labelValue"]
        np.testing.assert_array_equal(frames[..., 0].astype(bool), expected, err_msg=info["name"])
        assert str(seg.get_segment_description(number).SegmentLabel) == info["name"]
        assert seg.get_segment_description(number).SegmentAlgorithmType == "SEMIAUTOMATIC"
    record = json.loads((tmp_path / "out" / "pseudo.dcm.run.json").read_text())
    assert record["results"]["annotated_slices"] == [0, 11, 22, 33]
    for output in outputs.values():
        assert patient_data_in(output.with_name(output.name + ".run.json")) == []


def test_a_dicom_seg_is_written_only_for_a_dicom_image_and_series_are_picked_by_uid(dicom_study, tmp_path, capsys):
    study, truth = dicom_study
    nrrd_image, nrrd_truth = chest_ct_files()
    output = tmp_path / "p.dcm"
    assert main(["propagate", str(nrrd_image), str(nrrd_truth), "--annotated", "0,9", "--output", str(output)]) == 2
    assert "a DICOM-SEG references the DICOM series it segments" in capsys.readouterr().err
    assert not output.exists()

    image, geometry = read_volume(study)
    write_ct_series(study / "second", image[:20], geometry.__class__((20, *geometry.shape[1:]), geometry.spacing))
    ranking = tmp_path / "ranking.csv"
    arguments = ["rank", str(study), "--strategy", "fixed_interval", "--budget", "3", "--output", str(ranking)]
    assert main([*arguments, "--quiet"]) == 2
    message = capsys.readouterr().err
    assert "holds 2 image series; choose one with --series UID" in message and "20 slices" in message
    first = choose_series(study / "ct").series_uid
    assert main([*arguments, "--series", first, "--labels", str(truth), "--quiet"]) == 0
    assert len(ranking.read_text().splitlines()) == 4
    assert patient_data_in(ranking.with_name("ranking.csv.run.json")) == []


def test_rank_volumes_reads_dicom_series_and_dataset_layouts(dicom_study, tmp_path):
    import nibabel

    study, _ = dicom_study
    image, geometry = read_volume(study)
    write_ct_series(study / "second", image[:20], geometry.__class__((20, *geometry.shape[1:]), geometry.spacing))
    ranking = tmp_path / "dicom.csv"
    assert main(["rank-volumes", str(study), "--strategy", "random", "-k", "1", "--output", str(ranking)]) == 0
    ranked = {line.split(",")[1] for line in ranking.read_text().splitlines()[1:]}
    assert ranked == {series.series_uid for series in (choose_series(study / "ct"), choose_series(study / "second"))}

    kits = tmp_path / "kits"
    for case in ("case_00000", "case_00001"):
        (kits / case).mkdir(parents=True)
        nibabel.save(
            nibabel.Nifti1Image(image[:, :32, :32].astype(np.int16), np.eye(4)), kits / case / "imaging.nii.gz"
        )
        labels = (image[:, :32, :32] > 0).astype(np.uint8)
        nibabel.save(nibabel.Nifti1Image(labels, np.eye(4)), kits / case / "segmentation.nii.gz")
    ranking = tmp_path / "kits.csv"
    assert main(["rank-volumes", str(kits), "--strategy", "random", "-k", "1", "--output", str(ranking)]) == 0
    assert {line.split(",")[1] for line in ranking.read_text().splitlines()[1:]} == {"case_00000", "case_00001"}
