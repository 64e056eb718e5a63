"""Readers and writers: volumes (NRRD, NIfTI, ..., DICOM series), segmentations (.seg.nrrd, DICOM-SEG, label maps),
dataset folders (MSD, ACDC, KiTS19, LiTS, ATLAS, DBC)."""

from __future__ import annotations

from pathlib import Path

from ..volume import Geometry, SliceStack, resolve_slice_axis
from .datasets import ACDCDataset, ATLASDataset, CaseFolder, KiTS19Dataset, LiTSDataset
from .dbc_dataset import DBCDataset
from .dicom import DicomSeries, DicomSeriesError, choose_series, find_series
from .dicom_dataset import DicomDataset, dataset_from_server
from .dicomweb import is_dicomweb
from .images import file_suffix, image_source, read_volume, write_volume
from .msd import MSDDataset
from .segmentation import Segmentation, place_on_grid, read_segmentation, write_segmentation

__all__ = [
    "ACDCDataset",
    "ATLASDataset",
    "CaseFolder",
    "DBCDataset",
    "DicomDataset",
    "DicomSeries",
    "DicomSeriesError",
    "KiTS19Dataset",
    "LiTSDataset",
    "MSDDataset",
    "Segmentation",
    "choose_series",
    "file_suffix",
    "find_series",
    "image_source",
    "load_stack",
    "open_dataset",
    "place_on_grid",
    "read_segmentation",
    "read_volume",
    "scans_in",
    "segmentation_on_image",
    "write_segmentation",
    "write_volume",
]


def load_stack(
    image_path: str | Path | DicomSeries,
    labels_path: str | Path | None = None,
    slice_axis: int | str = "axial",
    channel: int | None = None,
    series_uid: str | None = None,
) -> SliceStack:
    """Read an image and (optionally) its segmentation into a :class:`SliceStack`.

    Args:
        image_path: scalar volume file, DICOM folder, or a series :func:`image_source` found.
        labels_path: ``.seg.nrrd``, DICOM-SEG or label map on the image grid (a segmentation cropped to its extent
            is padded back onto it).
        slice_axis: array axis in KJI order (0, 1, 2) or "axial" / "coronal" / "sagittal".
        channel: channel of a 4D image.
        series_uid: the series to read where a DICOM folder holds several.

    Raises:
        GeometryMismatchError: the labels are on another grid (the message says what differs), or a DICOM-SEG
            segments another series.
    """
    source = image_source(image_path, series_uid)
    image, geometry = read_volume(source, channel=channel)
    if labels_path is None:
        segmentation = Segmentation(_empty_labels(image.shape), (), geometry)
    else:
        segmentation = segmentation_on_image(labels_path, geometry, source)
    axis = resolve_slice_axis(slice_axis, geometry)
    return SliceStack(image, segmentation.label_layers, segmentation.segments, geometry, slice_axis=axis)


def segmentation_on_image(path: str | Path, geometry: Geometry, source: Path | DicomSeries) -> Segmentation:
    """The segmentation file ``path`` placed on the grid of the image read from ``source`` (see
    :func:`place_on_grid`); a DICOM-SEG that references another series than ``source`` is refused.

    ``path`` may be ``dicomweb:URL``: the newest DICOM-SEG on that server that references ``source``'s series.
    """
    series_uid = source.series_uid if isinstance(source, DicomSeries) else None
    if is_dicomweb(path):
        path = newest_segmentation_on_server(str(path), source)
    return place_on_grid(read_segmentation(path), geometry, series_uid=series_uid)


def newest_segmentation_on_server(argument: str, source: Path | DicomSeries) -> Path:
    """The cached file of the newest DICOM-SEG on the ``dicomweb:URL`` server that references ``source``."""
    from .dicomweb import DicomWebServer

    if not isinstance(source, DicomSeries):
        raise ValueError(f"A segmentation from {argument} is a DICOM-SEG of a DICOM series; the image is not one.")
    found = DicomWebServer.from_argument(argument).newest_segmentation_of(source)
    if found is None:
        raise FileNotFoundError(
            f"The DICOMweb server {argument[len('dicomweb:') :]} holds no DICOM-SEG of series {source.series_uid}; "
            "give the segmentation as a file, or store one there first."
        )
    return found


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def scans_in(argument: str | Path, filters: dict[str, str] | None = None) -> list[tuple[str, Path | DicomSeries]]:
    """The scans to rank of a folder or server, as (name, source) pairs for :func:`read_volume`, in name order.

    ``argument`` is a folder of volume files (``.nii.gz``, ``.nrrd``, ``.mha``; ``.seg.nrrd`` left out), a dataset
    folder (:func:`open_dataset`: its cases' images), a folder of DICOM series (every image series, named by UID), or
    ``dicomweb:URL`` (every image series the QIDO ``filters`` find, retrieved into the cache).

    Raises:
        FileNotFoundError: not a folder, or one holding none of these.
    """
    if is_dicomweb(argument):
        from .dicomweb import DicomWebServer

        every = DicomWebServer.from_argument(str(argument)).image_series(filters or {})
        return [(series.series_uid, series) for series in every if series.is_volume]
    folder = Path(argument)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder; give the folder holding the scans to rank.")
    files = sorted(
        path
        for path in folder.iterdir()
        if path.name.lower().endswith(VOLUME_SUFFIXES) and not path.name.lower().endswith(".seg.nrrd")
    )
    if files:
        return [(path.name, path) for path in files]
    if (folder / "dataset.json").is_file() or any(layout.recognizes(folder) for layout in CASE_LAYOUTS[:-1]):
        dataset = open_dataset(folder)
        return [(case.case_id, case.image) for case in dataset.training_cases]
    # a localizer or a screenshot is a series too, but no volume to rank
    volumes = [series for series in find_series(folder) if series.is_volume] if DicomDataset.recognizes(folder) else []
    if not volumes:
        raise FileNotFoundError(
            f"{str(folder)!r} holds no volume ({', '.join(VOLUME_SUFFIXES)}), no dataset layout (MSD, ACDC, KiTS19, "
            "LiTS, ATLAS, DBC) and no DICOM series of two slices or more."
        )
    return [(series.series_uid, series) for series in volumes]


def _empty_labels(shape):
    import numpy as np

    return np.zeros(shape, dtype=np.uint8)


# the layouts found by their files (MSD by its dataset.json); DICOM last, as any folder with a DICOM file matches
CASE_LAYOUTS = (ACDCDataset, KiTS19Dataset, LiTSDataset, ATLASDataset, DBCDataset, DicomDataset)


def open_dataset(root: str | Path) -> CaseFolder:
    """The dataset in folder ``root``, by its layout: MSD (``dataset.json``), ACDC (``patientNNN/..._gt.nii.gz``),
    KiTS19 (``case_NNNNN/segmentation.nii.gz``), LiTS (``segmentation-N.nii``), ATLAS v2.0 (``..._T1lesion_mask``),
    Duke-Breast-Cancer-MRI with its breast and FGT masks (``Breast_MRI_NNN/...``) or DICOM studies (the image series
    their DICOM-SEGs reference); or the DICOM-SEGs of a ``dicomweb:URL`` server and the series they reference.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or none of these layouts.
    """
    if is_dicomweb(root):
        return dataset_from_server(str(root))
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a folder.")
    if (root / "dataset.json").is_file():
        return MSDDataset(root)
    for layout in CASE_LAYOUTS:
        if layout.recognizes(root):
            return layout(root)
    raise FileNotFoundError(
        f"{str(root)!r} is not a dataset folder this reads: expected an MSD task (dataset.json, imagesTr/, labelsTr/), "
        "ACDC (patientNNN/patientNNN_frameNN.nii.gz with _gt), KiTS19 (case_NNNNN/imaging.nii.gz and "
        "segmentation.nii.gz), LiTS (volume-N.nii and segmentation-N.nii), ATLAS v2.0 (<name>_T1w.nii.gz and "
        "<name>_label-L_desc-T1lesion_mask.nii.gz), DBC (Breast_MRI_NNN/ series with "
        "Segmentation_Breast_MRI_NNN_Breast.seg.nrrd) or DICOM series with DICOM-SEGs."
    )
