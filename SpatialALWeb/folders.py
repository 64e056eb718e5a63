"""The files a web session may touch: the scans of the data folder, and names inside the output folder.

The server reads only under the data folder and writes only under the output folder given at start. A name that
comes from the page (a case to open, a file to download) is resolved inside its folder and refused when it would
lead out of it (``..``, an absolute path, a link pointing elsewhere).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from spatial_al.io.dicom import DicomSeries

IMAGE_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"


class OutsideFolderError(ValueError):
    """A file name that would lead out of the folder the server may use."""


@dataclass(frozen=True)
class Case:
    """A scan to annotate.

    Attributes:
        name: what the page lists (the image's file name without its suffix; a DICOM series' description and the
            end of its UID).
        image: the scalar volume file (a DICOM series' first file; None for a series not retrieved yet).
        segmentation: its segmentation (``.seg.nrrd``, DICOM-SEG or label map), None to start from an empty one.
        series: the DICOM series the image is, if it is one (Save then writes a DICOM-SEG too).
        server: the ``dicomweb:URL`` the series lives on: retrieved when opened, its SEG stored there by Save.
        study_uid, series_uid: which series of ``server``.
    """

    name: str
    image: Path | None
    segmentation: Path | None = None
    series: DicomSeries | None = None
    server: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None

    def opened(self) -> Case:
        """This case ready to read: a DICOMweb series retrieved into the cache (only instances not there yet), with
        the newest SEG on the server that references it as its segmentation."""
        if self.server is None or self.series is not None:
            return self
        from spatial_al.io.dicomweb import DicomWebServer

        server = DicomWebServer.from_argument(self.server)
        series = server.series({"StudyInstanceUID": self.study_uid, "SeriesInstanceUID": self.series_uid})
        segmentation = server.newest_segmentation_of(series)
        return replace(self, image=series.files[0], series=series, segmentation=segmentation)

    @property
    def source(self) -> Path | DicomSeries:
        """What the image is read from (:func:`spatial_al.io.load_stack`)."""
        return self.series if self.series is not None else self.image


def dicomCaseName(description: str, seriesUid: str) -> str:
    """A file-safe case name of a DICOM series: its description and the last 8 digits of its UID."""
    words = re.sub(r"[^A-Za-z0-9]+", "-", description).strip("-") or "series"
    return f"{words}-{seriesUid.replace('.', '')[-8:]}"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((suffix for suffix in (SEGMENTATION_SUFFIX, *IMAGE_SUFFIXES) if name.endswith(suffix)), "")


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` resolved, when it lies inside ``folder``; :class:`OutsideFolderError` otherwise."""
    root = Path(folder).resolve()
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or not candidate.is_relative_to(root):
        raise OutsideFolderError(
            f"{name!r} lies outside the folder this server was started on ({root}); name a file inside it."
        )
    return candidate


def findCases(folder: Path) -> list[Case]:
    """The scans directly in ``folder``, each with the segmentation named after it (``<name>.seg.nrrd``) if any, then
    the DICOM image series under it, each with the newest DICOM-SEG there that references it if any."""
    from spatial_al.io.dicom import dicom_files, find_series, newest_segmentations

    folder = Path(folder)
    cases = []
    for path in sorted(folder.iterdir()):
        suffix = _suffix(path)
        if not path.is_file() or suffix not in IMAGE_SUFFIXES:
            continue
        name = path.name[: -len(suffix)]
        segmentation = folder / f"{name}{SEGMENTATION_SUFFIX}"
        cases.append(Case(name, path, segmentation if segmentation.is_file() else None))
    if next(iter(dicom_files(folder)), None) is not None:
        segmentations = newest_segmentations([folder])
        for series in (series for series in find_series(folder) if series.is_volume):
            segmentation = segmentations.get(series.series_uid, (None, None))[0]
            name = dicomCaseName(series.description, series.series_uid)
            cases.append(Case(name, series.files[0], segmentation, series=series))
    return cases


def serverCases(address: str, filters: dict[str, str]) -> tuple[Path, list[Case]]:
    """(the cache folder, the image series the QIDO ``filters`` find on the ``dicomweb:URL`` server), nothing
    retrieved until a case is opened."""
    from spatial_al.io.dicomweb import DESCRIPTION, SERIES_UID, STUDY_UID, DicomWebServer, qido_value

    server = DicomWebServer.from_argument(address)
    found = server.image_entries(filters)
    if not found:
        raise ValueError(f"The DICOMweb server {server.url} holds no image series matching the filters {filters}.")
    cases = [
        Case(
            dicomCaseName(qido_value(entry, DESCRIPTION), qido_value(entry, SERIES_UID)),
            None,
            server=address,
            study_uid=qido_value(entry, STUDY_UID),
            series_uid=qido_value(entry, SERIES_UID),
        )
        for entry in found
    ]
    server.cache.mkdir(parents=True, exist_ok=True)
    return server.cache.resolve(), cases


def demoCase(output: Path) -> Case:
    """The chest CT shipped in slicerio (see README, Data readers) as a session starts: its ground truth on slices
    0, 11, 22 and 33, recorded as annotated (:func:`spatial_al.demo.starting_segmentation`). Written into
    ``output/demo-data`` the first time, and read from there after (a saved session picks up where it was)."""
    from spatial_al.data import chest_ct_files
    from spatial_al.demo import starting_segmentation
    from spatial_al.files import atomic_path
    from spatial_al.io import write_segmentation

    folder = Path(output) / "demo-data"
    folder.mkdir(parents=True, exist_ok=True)
    image, segmentation = folder / "CTChest.nrrd", folder / f"CTChest{SEGMENTATION_SUFFIX}"
    if not image.is_file():
        with atomic_path(image) as temporary:
            shutil.copyfile(chest_ct_files()[0], temporary)
    if not segmentation.is_file():
        write_segmentation(segmentation, starting_segmentation())
    return Case("CTChest", image, segmentation)


def casesFrom(
    data: str | Path | None,
    segmentation: str | Path | None = None,
    output: Path = Path("spatial-al-web"),
    filters: dict[str, str] | None = None,
) -> tuple[Path, list[Case]]:
    """(the data folder, its cases) of what ``spatial-al web`` was given: nothing (the demo, written into
    ``output``), an image (with ``segmentation``), a folder of images or DICOM series, or ``dicomweb:URL`` (the
    image series the QIDO ``filters`` find; the data folder is then the DICOMweb cache).

    Raises:
        FileNotFoundError: ``data`` or ``segmentation`` does not exist.
        ValueError: a folder holding no image, or a segmentation given with a folder.
    """
    from spatial_al.io.dicomweb import is_dicomweb

    if data is None:
        case = demoCase(output)
        return case.image.parent, [case]
    if is_dicomweb(str(data)):
        return serverCases(str(data), filters or {})
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{str(data)!r} does not exist: give an image file or a folder of images.")
    if data.is_dir():
        if segmentation is not None:
            raise ValueError("--segmentation goes with one image; in a folder, name it <image name>.seg.nrrd.")
        cases = findCases(data)
        if not cases:
            raise ValueError(
                f"{str(data)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series; give a folder of "
                "scans, or one scan."
            )
        return data.resolve(), cases
    if segmentation is not None and not Path(segmentation).is_file():
        raise FileNotFoundError(f"--segmentation {str(segmentation)!r} does not exist.")
    name = data.name[: -len(_suffix(data))] if _suffix(data) else data.stem
    segmentationPath = Path(segmentation).resolve() if segmentation is not None else None
    if segmentationPath is not None and not segmentationPath.is_relative_to(data.resolve().parent):
        raise ValueError(
            f"--segmentation {str(segmentation)!r} must lie in the image's folder ({data.resolve().parent}), which is "
            "the only folder this server reads."
        )
    return data.resolve().parent, [Case(name, data.resolve(), segmentationPath)]
