"""DICOM image series: found in a folder, checked, sorted along the slice normal and read as a KJI volume.

A folder (searched recursively) may hold several series; each is a :class:`DicomSeries`. Single-frame images are
sorted by the projection of ImagePositionPatient on the slice normal (the cross product of the two
ImageOrientationPatient vectors), as Slicer's DICOM import does, so array slice ``k`` is ``files[k]``; the pixels
are read by SimpleITK/GDCM (every transfer syntax GDCM decodes, rescale slope and intercept applied). A multi-frame
(enhanced) image is read through highdicom. Geometry comes from the DICOM attributes: spacing (I, J, K) is
(PixelSpacing[1], PixelSpacing[0], distance between slice positions), direction columns are the row and column
cosines and the slice normal, origin is the first slice's position (LPS).

A series that is not one regular grid (a missing slice, non-uniform spacing, gantry tilt, mixed orientations or
image sizes, two images at one position) raises :class:`DicomSeriesError` naming what is wrong and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..volume import Geometry

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
NOT_IMAGES = {
    SEGMENTATION_STORAGE,
    "1.2.840.10008.5.1.4.1.1.66.7",  # label map segmentation
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.11.1",  # grayscale softcopy presentation state
}
POSITION_TOLERANCE_MM = 0.01  # spacing deviations below this are rounding in the headers, not irregular sampling
SPACING_RELATIVE_TOLERANCE = 0.01
TILT_TOLERANCE_DEGREES = 0.05


DICOM_LIBRARIES = ("pydicom", "highdicom", "dicomweb_client")


def require_dicom_libraries() -> None:
    """Raise ImportError saying how to install the ``dicom`` extra when one of its libraries is missing."""
    from importlib.util import find_spec

    missing = [name for name in DICOM_LIBRARIES if find_spec(name) is None]
    if missing:
        raise ImportError(
            f"Reading and writing DICOM needs {', '.join(missing)}: pip install 'spatial-active-learning[dicom]' "
            "(pydicom, highdicom, dicomweb-client). Inside Slicer, load DICOM with the DICOM module instead."
        )


class DicomSeriesError(ValueError):
    """A DICOM folder or series cannot be read as one regular volume (the message names the problem and the fix)."""


@dataclass(frozen=True)
class DicomSeries:
    """One image series of a DICOM folder.

    Attributes:
        series_uid, study_uid, frame_of_reference_uid: the series' identifiers.
        description, modality: SeriesDescription and Modality ("" where absent).
        files: the image files, sorted along the slice normal (single-frame: ``files[k]`` is array slice k).
        headers: their datasets without pixel data, in the same order (the source images a DICOM-SEG references).
        problem: why the files cannot be ordered into one volume (raised when it is read), None when they can.
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    description: str
    modality: str
    files: tuple[Path, ...]
    headers: tuple  # pydicom Datasets
    problem: str | None = None

    @property
    def is_multiframe(self) -> bool:
        return len(self.headers) == 1 and int(getattr(self.headers[0], "NumberOfFrames", 1) or 1) > 1

    @property
    def n_slices(self) -> int:
        return int(self.headers[0].NumberOfFrames) if self.is_multiframe else len(self.headers)

    @property
    def is_volume(self) -> bool:
        """Whether the files can be ordered into one volume of at least two slices (its grid is checked when read)."""
        return self.problem is None and self.n_slices > 1

    def geometry(self) -> Geometry:
        """The grid :meth:`read` returns, from the headers alone (no pixel data read)."""
        if self.problem is not None:
            raise DicomSeriesError(self.problem)
        if not self.is_multiframe:
            return single_frame_geometry(self.headers, self.series_uid)
        import highdicom

        grid = highdicom.Image.from_dataset(self.headers[0], copy=False).get_volume_geometry()
        if grid is None:
            raise DicomSeriesError(f"The multi-frame series {self.series_uid} is not one regular volume.")
        return kji_geometry(grid.affine, grid.spatial_shape)[0]

    def summary(self) -> str:
        """One line: UID, modality, description, slice count."""
        description = self.description or "(no description)"
        return f"{self.series_uid}  {self.modality or '?'}  {description!r}  {self.n_slices} slices"

    def read(self) -> tuple[np.ndarray, Geometry]:
        """The volume (K, J, I) and its geometry; the pixel values are modality values (e.g. Hounsfield units)."""
        geometry = self.geometry()
        if self.is_multiframe:
            return _read_multiframe(self.files[0])
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(path) for path in self.files])
        try:
            image = reader.Execute()
        except RuntimeError as error:
            cause = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown cause"
            raise DicomSeriesError(
                f"Could not decode the pixels of series {self.series_uid}: {cause}. Its transfer syntax is "
                f"{self.headers[0].file_meta.get('TransferSyntaxUID', '?')}; convert the files to an uncompressed "
                "transfer syntax (e.g. DCMTK's dcmdjpeg) and try again."
            ) from None
        array = sitk.GetArrayFromImage(image)
        if array.shape != geometry.shape:
            raise DicomSeriesError(f"Series {self.series_uid} decoded to {array.shape}, expected {geometry.shape}.")
        return array, geometry


def is_dicom_input(path: str | Path) -> bool:
    """True for a folder (a DICOM folder: other volumes are single files) or a file that starts like DICOM."""
    path = Path(path)
    if path.is_dir():
        return True
    return path.is_file() and _has_dicom_preamble(path)


def _has_dicom_preamble(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(132)[128:] == b"DICM"


def dicom_files(folder: Path) -> Iterable[Path]:
    """Files under ``folder`` (recursively) that carry the DICOM preamble, in name order; hidden files skipped."""
    for root, directories, names in os.walk(folder):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if not name.startswith(".") and name.upper() != "DICOMDIR" and _has_dicom_preamble(path):
                yield path


def read_headers(paths: Iterable[Path]) -> list[tuple[Path, object]]:
    """(path, dataset without pixel data) of each file pydicom reads."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for path in paths:
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except (InvalidDicomError, EOFError, OSError, ValueError):
            continue  # not a DICOM file after all (or truncated): the folder's other files are still read
    return headers


def find_series(path: str | Path) -> list[DicomSeries]:
    """The image series in a DICOM folder (recursively) or of one DICOM file, in SeriesInstanceUID order.

    Segmentations, structure sets and presentation states are left out (see :func:`find_segmentations`).
    """
    require_dicom_libraries()
    path = Path(path)
    files = [path] if path.is_file() else list(dicom_files(path))
    grouped: dict[str, list[tuple[Path, object]]] = {}
    for file, header in read_headers(files):
        if str(getattr(header, "SOPClassUID", "")) in NOT_IMAGES or "Rows" not in header:
            continue
        grouped.setdefault(str(getattr(header, "SeriesInstanceUID", "")), []).append((file, header))
    return [_series(uid, members) for uid, members in sorted(grouped.items())]


def find_segmentations(path: str | Path) -> list[tuple[Path, object]]:
    """(file, header) of every DICOM-SEG under a folder (recursively), in file name order."""
    files = [Path(path)] if Path(path).is_file() else list(dicom_files(Path(path)))
    return [(file, header) for file, header in read_headers(files) if header.SOPClassUID == SEGMENTATION_STORAGE]


def newest_segmentations(roots: Sequence[Path]) -> dict[str, tuple[Path, object]]:
    """Series UID -> (file, header) of the newest DICOM-SEG (by ContentDate and ContentTime) under ``roots`` that
    references that series."""
    newest: dict[str, tuple[str, Path, object]] = {}
    for root in roots:
        for path, header in find_segmentations(root):
            stamp = f"{getattr(header, 'ContentDate', '')}{getattr(header, 'ContentTime', '')}"
            for item in getattr(header, "ReferencedSeriesSequence", []):
                uid = str(item.SeriesInstanceUID)
                if uid not in newest or stamp > newest[uid][0]:
                    newest[uid] = (stamp, path, header)
    return {uid: (path, header) for uid, (_, path, header) in newest.items()}


def _series(uid: str, members: list[tuple[Path, object]]) -> DicomSeries:
    """The series of ``members``, sorted along the normal; one that cannot be (a localizer's three orientations,
    missing positions) keeps its problem for when it is read, so the folder's other series stay readable."""
    first = members[0][1]
    multiframe = [file for file, header in members if int(getattr(header, "NumberOfFrames", 1) or 1) > 1]
    ordered, problem = members, None
    if multiframe and len(members) > 1:
        problem = (
            f"Series {uid} holds {len(members)} files of which {len(multiframe)} are multi-frame images; a volume is "
            "one multi-frame file or a stack of single-frame files. Keep one file of the series."
        )
    elif not multiframe:
        try:
            ordered = sort_along_normal(members, uid)
        except DicomSeriesError as error:
            problem = str(error)
    return DicomSeries(
        series_uid=uid,
        study_uid=str(getattr(first, "StudyInstanceUID", "")),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")),
        description=str(getattr(first, "SeriesDescription", "")),
        modality=str(getattr(first, "Modality", "")),
        files=tuple(file for file, _ in ordered),
        headers=tuple(header for _, header in ordered),
        problem=problem,
    )


def orientation_of(header) -> np.ndarray:
    """(3, 3) array: row cosine (direction of increasing column index I), column cosine (J) and slice normal."""
    cosines = np.asarray([float(v) for v in header.ImageOrientationPatient]).reshape(2, 3)
    return np.vstack([cosines, np.cross(cosines[0], cosines[1])])


def sort_along_normal(members: Sequence[tuple[Path, object]], uid: str) -> list[tuple[Path, object]]:
    """Single-frame images sorted by position along the slice normal; raises DicomSeriesError when they mix
    orientations or sizes, or lack the position attributes."""
    missing = [file.name for file, header in members if "ImagePositionPatient" not in header]
    missing += [file.name for file, header in members if "ImageOrientationPatient" not in header]
    if missing:
        raise DicomSeriesError(
            f"Series {uid}: {len(missing)} images lack ImagePositionPatient or ImageOrientationPatient (e.g. "
            f"{missing[0]}), so their place in the volume is unknown. Export the series again with its geometry."
        )
    kinds = {
        (tuple(np.round(orientation_of(header)[:2].ravel(), 4)), int(header.Rows), int(header.Columns))
        for _, header in members
    }
    if len(kinds) > 1:
        sizes = sorted({f"{rows} x {columns}" for _, rows, columns in kinds})
        raise DicomSeriesError(
            f"Series {uid} mixes {len(kinds)} image orientations or sizes ({', '.join(sizes)}): it holds several "
            "acquisitions under one series UID. Split them into separate series (e.g. by ImageOrientationPatient "
            "in Slicer's DICOM browser) and open one."
        )
    normal = orientation_of(members[0][1])[2]
    return sorted(members, key=lambda member: float(np.dot(_position(member[1]), normal)))


def _position(header) -> np.ndarray:
    return np.asarray([float(v) for v in header.ImagePositionPatient])


def single_frame_geometry(headers: Sequence, uid: str) -> Geometry:
    """The grid of single-frame images sorted along their normal; raises DicomSeriesError unless they sample
    one regular grid (no gap, uniform spacing, no gantry tilt, no two images at one position)."""
    if len(headers) < 2:
        raise DicomSeriesError(
            f"Series {uid} is a single image, not a volume: slices are ranked and propagated in 3D volumes."
        )
    orientation = orientation_of(headers[0])
    positions = np.asarray([_position(header) for header in headers])
    along = positions @ orientation[2]
    steps = np.diff(along)
    if np.any(steps < POSITION_TOLERANCE_MM):
        index = int(np.argmin(steps))
        raise DicomSeriesError(
            f"Series {uid} has two images at the position {along[index]:.2f} mm along the slice normal: it holds "
            "several acquisitions (time points, echoes) under one series UID. Split them, or pick the files of one."
        )
    spacing = float(np.median(steps))
    irregular = np.abs(steps - spacing) > max(POSITION_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * spacing)
    if irregular.any():
        gaps = np.round(steps / spacing).astype(int)
        if np.all(np.abs(steps - gaps * spacing) <= max(POSITION_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * spacing)):
            missing = int(np.sum(gaps - 1))
            first = int(np.flatnonzero(gaps > 1)[0])
            raise DicomSeriesError(
                f"Series {uid} has a gap: {missing} slice(s) missing (the first between {along[first]:.2f} mm and "
                f"{along[first + 1]:.2f} mm along the normal, where images lie every {spacing:.3g} mm). The "
                "series is incomplete: retrieve or copy it again."
            )
        raise DicomSeriesError(
            f"Series {uid} has non-uniform slice spacing (from {steps.min():.3g} to {steps.max():.3g} mm); a volume "
            "needs one spacing. Resample it to a regular grid first (e.g. Slicer's DICOM import with acquisition "
            "geometry regularization, or 'Resample Scalar Volume')."
        )
    extent = positions[-1] - positions[0]
    tilt = np.degrees(np.arccos(np.clip(np.dot(extent / np.linalg.norm(extent), orientation[2]), -1.0, 1.0)))
    if tilt > TILT_TOLERANCE_DEGREES:
        raise DicomSeriesError(
            f"Series {uid} was acquired with a gantry tilt of {tilt:.2f} degrees: its slices are sheared, not a "
            "rectangular grid. Resample it first (Slicer's DICOM import with acquisition geometry regularization "
            "on), then open the resampled volume."
        )
    first = headers[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    return Geometry(
        shape=(len(headers), int(first.Rows), int(first.Columns)),
        spacing=(column_spacing, row_spacing, spacing),
        origin=tuple(positions[0]),
        direction=tuple(orientation.T.ravel()),
    )


def _read_multiframe(path: Path) -> tuple[np.ndarray, Geometry]:
    import highdicom

    try:
        volume = highdicom.imread(str(path)).get_volume(apply_real_world_transform=False)
    except (ValueError, RuntimeError) as error:
        raise DicomSeriesError(
            f"The multi-frame image {str(path)!r} is not one regular volume: {error}. Resample it first."
        ) from None
    return volume_to_kji(volume)


def kji_geometry(affine: np.ndarray, spatial_shape: Sequence[int]) -> tuple[Geometry, bool]:
    """The Geometry of a highdicom grid (``affine``: (frame, row, column) index -> LPS; ``spatial_shape`` in that
    order) with its frames along the slice normal (row cosine x column cosine) as single-frame series are, and
    whether the frames must be reversed for that."""
    affine = np.asarray(affine, dtype=float)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = affine[:3, :3][:, ::-1]  # (frame, row, column) index -> (I, J, K) = (column, row, frame)
    ijk_to_lps[:3, 3] = affine[:3, 3]
    reverse = np.dot(np.cross(ijk_to_lps[:3, 0], ijk_to_lps[:3, 1]), ijk_to_lps[:3, 2]) < 0
    if reverse:
        ijk_to_lps[:3, 3] += ijk_to_lps[:3, 2] * (spatial_shape[0] - 1)
        ijk_to_lps[:3, 2] *= -1
    return Geometry.from_ijk_to_lps(ijk_to_lps, tuple(spatial_shape)), bool(reverse)


def volume_to_kji(volume) -> tuple[np.ndarray, Geometry]:
    """A highdicom ``Volume`` as a KJI array (channels last, if any) and its Geometry (see :func:`kji_geometry`)."""
    array = np.asarray(volume.array)
    geometry, reverse = kji_geometry(volume.affine, array.shape[:3])
    return np.ascontiguousarray(array[::-1] if reverse else array), geometry


def kji_volume_geometry(geometry: Geometry, frame_of_reference_uid: str):
    """A highdicom ``VolumeGeometry`` of a KJI grid (the inverse of :func:`volume_to_kji`)."""
    import highdicom

    affine = np.eye(4)
    affine[:3, :3] = geometry.ijk_to_lps[:3, :3][:, ::-1]
    affine[:3, 3] = geometry.origin
    return highdicom.VolumeGeometry(
        affine, geometry.shape, coordinate_system="PATIENT", frame_of_reference_uid=frame_of_reference_uid
    )


def choose_series(path: str | Path, series_uid: str | None = None) -> DicomSeries:
    """The one volume of a DICOM folder (a localizer or a single screenshot beside it is not one), or the series with
    ``series_uid``.

    Raises:
        DicomSeriesError: no image series, an unknown UID, or several volumes and no UID (the message lists them).
    """
    every = find_series(path)
    if not every:
        raise DicomSeriesError(
            f"{str(path)!r} holds no DICOM image series (DICOM-SEG, structure sets and non-DICOM files are not "
            "images). Give the folder the scan's files are in."
        )
    listing = "\n".join(f"  {series.summary()}" for series in every)
    if series_uid is not None:
        for series in every:
            if series.series_uid == series_uid:
                return series
        raise DicomSeriesError(f"{str(path)!r} holds no series {series_uid}; it holds:\n{listing}")
    volumes = [series for series in every if series.is_volume]
    if len(volumes) == 1:
        return volumes[0]
    if len(every) == 1:
        return every[0]  # reading it says what keeps it from being a volume
    if volumes:
        listing = "\n".join(f"  {series.summary()}" for series in volumes)
    raise DicomSeriesError(
        f"{str(path)!r} holds {len(volumes) or len(every)} image series; choose one with --series UID "
        f"(series_uid=...):\n{listing}"
    )
