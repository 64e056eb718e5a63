"""A study from a real PACS over DICOMweb: Debian's Orthanc as a process, the CT series and its reference SEG sent
with DCMTK's storescu, rank and propagate on dicomweb:, the result stored back with STOW-RS and fetched again with
DCMTK's getscu (a second, independent client), read by dcmqi and compared bit for bit with the .seg.nrrd."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio

from spatial_al.cli import main
from spatial_al.data import chest_ct_files
from spatial_al.data.dicom_series import FICTITIOUS_PATIENT, write_ct_series
from spatial_al.io import choose_series, dicomweb, read_segmentation, read_volume, write_segmentation
from Testing.pacs import AE_TITLE, CLIENT_AE_TITLE, PASSWORD, USER, OrthancServer, free_port, orthanc_executable

pytestmark = pytest.mark.skipif(
    orthanc_executable() is None or shutil.which("storescu") is None,
    reason="needs Debian's orthanc, orthanc-dicomweb and dcmtk (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The chest CT as a DICOM series and its reference segmentation as a SEG, in a local folder."""
    folder = tmp_path_factory.mktemp("study")
    image, geometry = read_volume(chest_ct_files()[0])
    write_ct_series(folder / "ct", image, geometry)
    write_segmentation(
        folder / "seg" / "truth.dcm", read_segmentation(chest_ct_files()[1]), choose_series(folder / "ct")
    )
    return folder


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, study):
    """Orthanc holding the study, sent by DCMTK's storescu (C-STORE)."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        files = [str(path) for path in sorted(study.rglob("*.dcm"))]
        subprocess.run(
            ["storescu", "-R", "-aet", CLIENT_AE_TITLE, "-aec", AE_TITLE, "127.0.0.1", str(server.dicom_port), *files],
            check=True,
            capture_output=True,
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def signed_in(monkeypatch, tmp_path):
    """The PACS's credentials in the environment, a fresh cache folder."""
    monkeypatch.setenv(dicomweb.USER_VARIABLE, USER)
    monkeypatch.setenv(dicomweb.PASSWORD_VARIABLE, PASSWORD)
    monkeypatch.setenv(dicomweb.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv(dicomweb.CONFIG_VARIABLE, str(tmp_path / "no-config.json"))
    return tmp_path / "cache"


def fetch_with_getscu(server: OrthancServer, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    subprocess.run(
        [
            "getscu", "-aet", CLIENT_AE_TITLE, "-aec", AE_TITLE, "-S", "127.0.0.1", str(server.dicom_port),
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
            "-k", f"SeriesInstanceUID={series_uid}", "-od", str(folder),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return sorted(folder.iterdir())


def test_rank_and_propagate_on_a_pacs_store_the_seg_and_dcmtk_fetches_it_back(pacs, study, signed_in, tmp_path, capsys):
    address = f"dicomweb:{pacs.dicomweb}"
    ranking = tmp_path / "ranking.csv"
    rank = ["rank", address, "--strategy", "fixed_interval", "--budget", "5", "--output", str(ranking), "--quiet"]
    assert main(rank) == 0
    cached = sorted(signed_in.rglob("*.dcm"))
    assert len(cached) == 34
    stamps = [path.stat().st_mtime_ns for path in cached]
    assert main(rank) == 0  # the second run reads the cache: no instance written again
    assert [path.stat().st_mtime_ns for path in sorted(signed_in.rglob("*.dcm")) if path in cached] == stamps

    nrrd, dcm = tmp_path / "pseudo.seg.nrrd", tmp_path / "pseudo.dcm"
    propagate = ["propagate", address, address, "--annotated", "0,11,22,33", "--quiet"]
    assert main([*propagate, "--output", str(nrrd)]) == 0
    assert main([*propagate, "--output", str(dcm), "--store"]) == 0
    out = capsys.readouterr().out
    assert "Stored pseudo.dcm" in out

    written = pydicom.dcmread(dcm, stop_before_pixels=True)
    fetched = fetch_with_getscu(pacs, written.StudyInstanceUID, written.SeriesInstanceUID, tmp_path / "fetched")
    assert len(fetched) == 1
    assert pydicom.dcmread(fetched[0], stop_before_pixels=True).SOPInstanceUID == written.SOPInstanceUID
    converted = tmp_path / "dcmqi"
    converted.mkdir()
    segimage2itkimage = Path(sys.executable).parent / "segimage2itkimage"
    subprocess.run(
        [str(segimage2itkimage), "--inputDICOM", str(fetched[0]), "--outputDirectory", str(converted), "-t", "nrrd"],
        check=True,
        capture_output=True,
    )
    reference = sitk.ReadImage(str(chest_ct_files()[0]))
    expected = slicerio.read_segmentation(str(nrrd))
    voxels = np.asarray(expected["voxels"]).transpose(2, 1, 0)
    for number, info in enumerate(expected["segments"], start=1):
        mask = sitk.Resample(
            sitk.ReadImage(str(converted / f"{number}.nrrd")), reference, sitk.Transform(), sitk.sitkNearestNeighbor
        )
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask) > 0, voxels == info["labelValue"], info["name"])

    for record in (ranking, nrrd, dcm):
        text = record.with_name(record.name + ".run.json").read_text()
        assert PASSWORD not in text and USER not in text
        assert not [value for value in FICTITIOUS_PATIENT.values() if value.split("^")[0] in text]
        assert json.loads(text)["configuration"]["image"] == address


def test_a_pacs_that_refuses_is_down_or_is_silent_is_named_without_the_password(
    pacs, signed_in, tmp_path, monkeypatch, capsys
):
    def rank(address: str) -> int:
        output = str(tmp_path / "r.csv")
        return main(["rank", address, "--strategy", "random", "--budget", "2", "--output", output, "--quiet"])

    monkeypatch.setenv(dicomweb.PASSWORD_VARIABLE, "wrong")
    assert rank(f"dicomweb:{pacs.dicomweb}") == 2
    assert "(HTTP 401): it needs credentials" in capsys.readouterr().err
    monkeypatch.setenv(dicomweb.PASSWORD_VARIABLE, PASSWORD)

    assert rank(f"dicomweb:{pacs.url}/no-such-path") == 2
    assert "(HTTP 404)" in capsys.readouterr().err

    assert rank(f"dicomweb:http://127.0.0.1:{free_port()}/dicom-web") == 2
    assert "nothing answers there" in capsys.readouterr().err

    assert rank(f"dicomweb:http://{USER}:{PASSWORD}@127.0.0.1:{pacs.http_port}/dicom-web") == 2
    error = capsys.readouterr().err
    assert "holds a user name or password" in error and PASSWORD not in error

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    monkeypatch.setattr(dicomweb, "TIMEOUT_SECONDS", 1.0)
    try:
        assert rank(f"dicomweb:http://127.0.0.1:{silent.getsockname()[1]}/dicom-web") == 2
    finally:
        silent.close()
    assert "did not answer within 1 s" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_credentials_come_from_the_config_file_by_the_longest_url_prefix(tmp_path, monkeypatch):
    for variable in (dicomweb.TOKEN_VARIABLE, dicomweb.USER_VARIABLE, dicomweb.PASSWORD_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    config = tmp_path / "dicomweb.json"
    config.write_text(
        json.dumps(
            {
                "servers": [
                    {"url": "https://pacs.example/", "username": "general", "password": "a"},
                    {"url": "https://pacs.example/dicom-web", "token": "t0k3n"},
                ]
            }
        )
    )
    monkeypatch.setenv(dicomweb.CONFIG_VARIABLE, str(config))
    assert dicomweb.credentials_for("https://pacs.example/dicom-web") == {"token": "t0k3n"}
    assert dicomweb.credentials_for("https://pacs.example/other") == {"username": "general", "password": "a"}
    assert dicomweb.credentials_for("https://elsewhere/dicom-web") == {}
    config.write_text('{"servers": "t0k3n"}')
    with pytest.raises(dicomweb.DicomWebError) as error:
        dicomweb.credentials_for("https://pacs.example/dicom-web")
    assert "t0k3n" not in str(error.value)


def test_store_needs_a_dicomweb_image_and_a_dcm_output(tmp_path, capsys):
    image, truth = chest_ct_files()
    output = tmp_path / "p.dcm"
    assert main(["propagate", str(image), str(truth), "--annotated", "0,9", "--output", str(output), "--store"]) == 2
    assert "--store sends the DICOM-SEG back" in capsys.readouterr().err
    assert not output.exists()


def test_a_pacs_is_a_cohort_of_its_segmented_series_and_a_set_of_scans_to_rank(pacs, study, signed_in, tmp_path):
    from spatial_al.experiments.cohort import open_source
    from spatial_al.experiments.config import DataConfig

    address = f"dicomweb:{pacs.dicomweb}"
    ct = choose_series(study / "ct")
    source = open_source(address, DataConfig())
    assert source.names == [ct.series_uid]
    assert sorted(source.label_names.values()) == sorted(
        s.name for s in read_segmentation(chest_ct_files()[1]).segments
    )
    (volume,) = source.volumes()
    assert volume.image.shape == (34, 128, 128) and np.count_nonzero(volume.labels) > 0

    ranking = tmp_path / "scans.csv"
    patient = FICTITIOUS_PATIENT["PatientID"]
    arguments = ["rank-volumes", address, "--qido", "Modality=CT", "--qido", f"PatientID={patient}"]
    assert main([*arguments, "--strategy", "random", "-k", "1", "--output", str(ranking)]) == 0
    assert ranking.read_text().splitlines()[1].split(",")[1] == ct.series_uid
    record = ranking.with_name("scans.csv.run.json").read_text()
    assert patient not in record and "PatientID=<withheld>" in record  # a search may name a patient, no record does


def test_the_web_session_opens_a_series_from_the_pacs_and_save_stores_its_seg_there(
    pacs, study, signed_in, headless, tmp_path
):
    from SpatialALWeb.folders import casesFrom
    from SpatialALWeb.session import AnnotationSession

    address = f"dicomweb:{pacs.dicomweb}"
    ct = choose_series(study / "ct")
    folder, cases = casesFrom(address, filters={"Modality": "CT"})
    assert folder == signed_in.resolve() and [case.series_uid for case in cases] == [ct.series_uid]
    assert not list(signed_in.rglob("*.dcm"))  # nothing retrieved before a case is opened

    session = AnnotationSession(headless.scene, cases[0], tmp_path / "output")
    assert session.case.series.n_slices == 34 and session.case.segmentation is not None
    saved = session.save()
    stored = pacs.get("/instances?expand")  # Orthanc's own REST API: a second view of what the PACS holds
    uids = {instance["MainDicomTags"]["SOPInstanceUID"] for instance in stored}
    assert saved.stored_uid in uids
    assert pydicom.dcmread(saved.dicom_seg, stop_before_pixels=True).SOPInstanceUID == saved.stored_uid


def test_the_test_pacs_answers_dicom_only_from_its_client(pacs, study):
    one = str(next((study / "ct").iterdir()))
    stranger = ["storescu", "-aet", "STRANGER", "-aec", AE_TITLE, "127.0.0.1", str(pacs.dicom_port), one]
    assert subprocess.run(stranger, capture_output=True).returncode != 0
    known = ["storescu", "-aet", CLIENT_AE_TITLE, "-aec", AE_TITLE, "127.0.0.1", str(pacs.dicom_port), one]
    assert subprocess.run(known, capture_output=True).returncode == 0
