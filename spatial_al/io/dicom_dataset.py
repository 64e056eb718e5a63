"""A cohort of DICOM studies: every image series that a DICOM-SEG references is a case, the newest such SEG its
ground truth. The series and SEGs come from a folder (searched recursively) or from a DICOMweb server
(``dicomweb:URL``: the SEG series its QIDO search finds, and the series they reference, retrieved into the cache).

Cases are named by their SeriesInstanceUID (never by a patient attribute). Label values are given to segment names
in sorted order over the whole cohort (``label_names``), so that "liver" is the same class in every case whatever
its segment number in each SEG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..volume import Segment, SliceStack, resolve_slice_axis
from .datasets import Case, CaseFolder
from .dicom import DicomSeries, DicomSeriesError, dicom_files, find_series, newest_segmentations
from .segmentation import place_on_grid


@dataclass(frozen=True)
class DicomCase(Case):
    """A case of a :class:`DicomDataset`: ``image`` is the series' first file, ``label`` its SEG."""

    series: DicomSeries | None = None


class DicomDataset(CaseFolder):
    """Image series with a DICOM-SEG, in the folders ``roots``.

    Raises:
        FileNotFoundError: no image series that a SEG references.
    """

    name = "DICOM"

    def __init__(self, roots: Path | Sequence[Path], description: str | None = None):
        roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(root) for root in roots]
        self.root = roots[0]
        self.description = description or ", ".join(str(root) for root in roots)
        self.modalities = {}
        every_series = {series.series_uid: series for root in roots for series in find_series(root)}
        newest = {uid: found for uid, found in newest_segmentations(roots).items() if uid in every_series}
        self.training_cases = [
            DicomCase(uid, every_series[uid].files[0], path, every_series[uid])
            for uid, (path, _) in sorted(newest.items())
        ]
        if not self.training_cases:
            raise FileNotFoundError(
                f"{self.description} holds no DICOM image series with a DICOM-SEG that references it; a cohort's "
                "cases are the series that have a segmentation."
            )
        names = sorted({str(item.SegmentLabel) for _, header in newest.values() for item in header.SegmentSequence})
        self.label_names = dict(enumerate(names, start=1))

    @staticmethod
    def recognizes(root: Path) -> bool:
        """Whether ``root`` holds DICOM files (one is enough; the cases are checked when the folder is opened)."""
        return next(iter(dicom_files(root)), None) is not None

    def load(self, key: int | str, channel: int | None = None, slice_axis: int | str = "axial") -> SliceStack:
        """One case: its series and its SEG as one label map of the cohort's label values (``label_names``).

        Raises:
            ValueError: segments of the SEG overlap (a cohort's classes are one label map).
        """
        from .dicom_seg import read_dicom_seg

        case = self.case(key)
        assert isinstance(case, DicomCase) and case.series is not None
        image, geometry = case.series.read()
        segmentation = place_on_grid(read_dicom_seg(case.label), geometry, series_uid=case.series.series_uid)
        value_of = {name: value for value, name in self.label_names.items()}
        labels = np.zeros(geometry.shape, dtype=np.uint8 if len(value_of) < 256 else np.uint16)
        for segment in segmentation.segments:
            mask = segmentation.label_layers[segment.layer] == segment.label_value
            if np.any(labels[mask]):
                raise ValueError(
                    f"Case {case.case_id}: segment {segment.name!r} of {case.label.name} overlaps another; a cohort's "
                    "classes must not overlap (one label map per case)."
                )
            labels[mask] = value_of[segment.name]
        axis = resolve_slice_axis(slice_axis, geometry)
        segments = tuple(Segment(name, value) for value, name in self.label_names.items())
        return SliceStack(image, labels[np.newaxis], segments, geometry, slice_axis=axis)

    def fingerprint(self, names: Sequence[str]) -> str:
        """The cases' series UIDs and their SEG files (the cache holds one file per SOPInstanceUID)."""
        return " ".join(f"{name}:{self.case(name).label.name}" for name in names)


def dataset_from_server(argument: str, filters: Mapping[str, str] | None = None) -> DicomDataset:
    """The SEG series on the ``dicomweb:URL`` server matching ``filters`` (e.g. ``{"StudyInstanceUID": ...}``) and
    the image series they reference, retrieved into the cache, as a :class:`DicomDataset`."""
    from .dicomweb import DicomWebServer

    server = DicomWebServer.from_argument(argument)
    folders = server.retrieve_segmented(filters or {})
    if not folders:
        raise DicomSeriesError(f"The DICOMweb server {server.url} holds no DICOM-SEG series to make a cohort of.")
    return DicomDataset(folders, description=f"DICOMweb {server.url}")
