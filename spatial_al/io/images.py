"""Scalar volumes and label maps from and to image files (NRRD, NIfTI, MetaImage, ...) through SimpleITK.

Arrays are KJI-ordered (``SimpleITK.GetArrayFromImage`` order); geometry is returned as a :class:`Geometry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..files import atomic_path
from ..volume import Geometry, check_scalar_volume
from .dicom import DicomSeries, choose_series, is_dicom_input
from .dicomweb import is_dicomweb

LABEL_MAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")


def file_suffix(path: str | Path) -> str:
    """Lower-case suffix including double suffixes that matter here (".seg.nrrd", ".nii.gz")."""
    name = Path(path).name.lower()
    for double in (".seg.nrrd", ".nii.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def require_file(path: str | Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The {what} {str(path)!r} does not exist (or is not a file).")
    return path


def read_sitk_image(path: str | Path, what: str = "image") -> sitk.Image:
    """Read any image SimpleITK reads; an unreadable file raises ValueError naming the file and the cause."""
    path = require_file(path, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        cause = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown format"
        raise ValueError(
            f"Could not read the {what} {str(path)!r}: {cause}. Expected a volume file SimpleITK can read "
            "(.nrrd, .nii, .nii.gz, .mha, ...)."
        ) from None


def geometry_of(image: sitk.Image) -> Geometry:
    """The :class:`Geometry` of a 3D SimpleITK image (KJI shape)."""
    return Geometry(image.GetSize()[::-1], image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def to_sitk_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image from a KJI array on ``geometry``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def read_volume(
    path: str | Path | DicomSeries, channel: int | None = None, what: str = "image", series_uid: str | None = None
) -> tuple[np.ndarray, Geometry]:
    """Read a 3D scalar volume.

    Args:
        path: volume file, DICOM folder (or one multi-frame DICOM file), or a series :func:`image_source` found.
        channel: for a 4D file (several channels or time points, e.g. MSD BraTS), which 3D volume to take.
        what: how the file is named in error messages.
        series_uid: the series to read where a DICOM folder holds several.

    Returns:
        The voxel array, shape (K, J, I), and its geometry.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, 2D image, RGB/vector image, or 4D image without ``channel``; a DICOM folder
            with no series, several and no ``series_uid``, or a series that is not one regular grid.
    """
    source = image_source(path, series_uid)
    if isinstance(source, DicomSeries):
        return source.read()
    image = read_sitk_image(path, what)
    if image.GetDimension() == 4:
        size = image.GetSize()
        if channel is None:
            raise ValueError(
                f"The {what} {str(path)!r} is 4D ({size[3]} channels or time points of size {size[:3]}). "
                f"Choose one with channel=0..{size[3] - 1} (--channel on the command line)."
            )
        if not 0 <= channel < size[3]:
            raise ValueError(f"channel={channel} is out of range: {str(path)!r} has {size[3]} channels.")
        image = sitk.Extract(image, (*size[:3], 0), (0, 0, 0, channel))
    array = sitk.GetArrayFromImage(image)
    try:
        check_scalar_volume(array, what)
    except ValueError as error:
        raise ValueError(f"{error} (file {str(path)!r})") from None
    return array, geometry_of(image)


def image_source(
    path: str | Path | DicomSeries,
    series_uid: str | None = None,
    study_uid: str | None = None,
    filters: Mapping[str, str] | None = None,
) -> Path | DicomSeries:
    """Where an image argument's voxels come from: the :class:`DicomSeries` of a DICOM folder or file (the one
    with ``series_uid`` where there are several), of a ``dicomweb:URL`` server (retrieved into the cache; the series
    picked by ``series_uid``, ``study_uid`` and QIDO ``filters`` such as ``{"Modality": "CT"}``), else the file path.
    """
    if isinstance(path, DicomSeries):
        return path
    if is_dicomweb(path):
        from .dicomweb import DicomWebServer

        selection = {**(filters or {}), "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        return DicomWebServer.from_argument(str(path)).series({k: v for k, v in selection.items() if v})
    if study_uid is not None or filters:
        raise ValueError(f"--study and --qido search a DICOMweb server; {str(path)!r} is not a dicomweb: address.")
    if is_dicom_input(path):
        return choose_series(path, series_uid)
    if series_uid is not None:
        raise ValueError(
            f"--series {series_uid} picks a DICOM series, but {str(path)!r} is not a DICOM folder or file."
        )
    return Path(path)


def write_volume(path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
    """Write a KJI array on ``geometry`` to a single-file format SimpleITK writes (chosen by the file suffix),
    atomically."""
    path = Path(path)
    if file_suffix(path) in (".mhd", ".hdr", ".img"):
        raise ValueError(f"{str(path)!r} is a two-file format; write a single file (.nrrd, .nii.gz, .nii, .mha).")
    with atomic_path(path) as temporary:
        sitk.WriteImage(to_sitk_image(array, geometry), str(temporary), useCompression=compress)
    return path
