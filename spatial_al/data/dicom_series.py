"""Real volumes written as DICOM CT series with the headers a scanner writes (no package ships a CT series with its
DICOM-SEG, so tests, benchmarks and the DICOM demo make one from the built-in chest CT).

The series is CT Image Storage, one file per slice, explicit VR little endian, int16 stored values with a
RescaleIntercept of -1024; the patient attributes are fictitious but filled, so that tests can check that no run
record ever copies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from ..files import atomic_path
from ..volume import Geometry

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024
FICTITIOUS_PATIENT = {"PatientName": "Doe^Jane^^^", "PatientID": "SAL-000123", "PatientBirthDate": "19580214"}


def write_ct_series(
    folder: str | Path,
    volume: np.ndarray,
    geometry: Geometry,
    *,
    series_description: str = "Chest 3.0 mm",
    study_uid: str | None = None,
    patient: dict[str, str] | None = None,
    slice_order: Sequence[int] | None = None,
) -> list[Path]:
    """Write a KJI volume of Hounsfield units as a single-frame CT series, one atomically written file per slice.

    Args:
        folder: created if missing; files are named ``IM000001.dcm``, ... in ``slice_order``.
        volume: (K, J, I) values in HU (rounded to integers).
        geometry: its grid; ImagePositionPatient of slice k is the LPS position of voxel (0, 0, k).
        study_uid: the study to add the series to (a new one by default).
        patient: PatientName, PatientID, PatientBirthDate (fictitious defaults).
        slice_order: the slice index each successive file (and InstanceNumber) holds; scanners do not always
            number from the first position, so readers must sort by position.

    Returns:
        The files, in the order written.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    now = datetime.now()
    stored = np.clip(np.rint(volume) - RESCALE_INTERCEPT, np.iinfo(np.int16).min, np.iinfo(np.int16).max)
    stored = stored.astype(np.int16)
    shared = {
        **FICTITIOUS_PATIENT,
        **(patient or {}),
        "PatientSex": "F",
        "StudyInstanceUID": study_uid or generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "StudyDate": now.strftime("%Y%m%d"),
        "StudyTime": now.strftime("%H%M%S"),
        "SeriesDate": now.strftime("%Y%m%d"),
        "StudyID": "1",
        "AccessionNumber": "ACC0001",
        "ReferringPhysicianName": "",
        "SeriesNumber": 2,
        "SeriesDescription": series_description,
        "Modality": "CT",
        "Manufacturer": "SpatialActiveLearning",
        "BodyPartExamined": "CHEST",
        "PatientPosition": "HFS",
        "KVP": 120,
        "SliceThickness": round(geometry.spacing[2], 6),
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "PositionReferenceIndicator": "",
        "PixelSpacing": [round(geometry.spacing[1], 6), round(geometry.spacing[0], 6)],
        "ImageOrientationPatient": [*geometry.direction_matrix[:, 0], *geometry.direction_matrix[:, 1]],
        "Rows": geometry.shape[1],
        "Columns": geometry.shape[2],
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 1,
        "RescaleIntercept": RESCALE_INTERCEPT,
        "RescaleSlope": 1,
        "RescaleType": "HU",
        "WindowCenter": 40,
        "WindowWidth": 400,
    }
    order = list(range(geometry.shape[0])) if slice_order is None else list(slice_order)
    files = []
    for number, k in enumerate(order, start=1):
        dataset = _dataset(shared)
        position = geometry.ijk_to_lps @ np.array([0.0, 0.0, float(k), 1.0])
        dataset.SOPClassUID = CT_IMAGE_STORAGE
        dataset.SOPInstanceUID = generate_uid()
        dataset.InstanceNumber = number
        dataset.ImagePositionPatient = [round(float(v), 6) for v in position[:3]]
        dataset.SliceLocation = round(float(position[2]), 6)
        dataset.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = folder / f"IM{number:06d}.dcm"
        with atomic_path(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        files.append(path)
    return files


def _dataset(attributes: dict):
    from pydicom.dataset import Dataset

    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 100"
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset
