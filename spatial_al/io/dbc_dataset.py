"""Duke-Breast-Cancer-MRI (Saha et al. 2018) with its 3D breast and fibroglandular tissue masks (Lew et al. 2024,
TCIA's "3D Breast and FGT MRI Segmentation Supplemental Data"): the DBC data of the MIDL 2025 slice study.

The layout, as TCIA's download with descriptive paths and the supplement give it (both anywhere under the root)::

    Breast_MRI_NNN/<study>/<series>/*.dcm                      the patient's MRI series, one folder per series
    Breast_MRI_NNN/Segmentation_Breast_MRI_NNN_Breast.seg.nrrd
    Breast_MRI_NNN/Segmentation_Breast_MRI_NNN_Dense_and_Vessels.seg.nrrd

The masks were drawn on the fat-saturated T1-weighted pre-contrast series (the dataset authors' preprocessing reads
that series against them). Which folder holds it: TCIA's file mapping table, saved as CSV in the dataset folder or
a folder in it (``Breast-Cancer-MRI-filepath_filename-mapping.csv``: the row whose ``original_path_and_filename``
names the patient's "pre" files gives the series folder in its ``descriptive_path``); without the table, the one
series of the patient whose SeriesDescription has the word "pre". The masks are placed on that series by their
geometry (a grid that differs is refused, naming the difference), not by the array rotations the authors' code
applies.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..volume import Segment, SliceStack, resolve_slice_axis
from .datasets import Case, CaseFolder
from .dicom import dicom_files, read_headers
from .images import read_volume
from .segmentation import Segmentation, place_on_grid, read_segmentation

PATIENT = re.compile(r"^Breast_MRI_\d+$")
PRE_CONTRAST = re.compile(r"\bpre\b", re.IGNORECASE)
MAPPING_COLUMNS = ("original_path_and_filename", "descriptive_path")


@dataclass(frozen=True)
class DBCCase(Case):
    """A case of :class:`DBCDataset`: ``image`` is the pre-contrast series folder, ``label`` the breast mask,
    ``fgt_and_vessels`` the Dense_and_Vessels mask."""

    fgt_and_vessels: Path | None = None


class DBCDataset(CaseFolder):
    """The patients of Duke-Breast-Cancer-MRI that have both supplemental masks (see the module docstring), as one
    label map each: 1 breast, 2 FGT (the "Dense" segment), 3 vessels, FGT and vessels drawn over the breast mask
    (a voxel in both FGT and vessels is FGT, as the dataset authors' code resolves it). The MIDL study's two DBC tasks
    are the breast (label values 1, 2, 3) and the FGT (2).

    Raises:
        FileNotFoundError: no patient with both masks and a DICOM folder, or no mapping table row and no single
            series described "pre" for a patient (naming its series and the fix).
    """

    name = "DBC"
    LABELS: ClassVar[dict[int, str]] = {1: "breast", 2: "FGT", 3: "vessels"}
    SEGMENT_NAMES: ClassVar[dict[str, int]] = {"breast": 1, "vessels": 3, "dense": 2}  # drawn in this order

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.label_names = dict(self.LABELS)
        self.modalities = {}
        mapped = pre_contrast_folders(self.root)
        self.training_cases = []
        for patient, folders in sorted(patient_folders(self.root).items()):
            masks = [folder for folder in folders if (folder / mask_name(patient, "Breast")).is_file()]
            if not masks or not any(next(dicom_files(folder), None) for folder in folders):
                continue  # a patient without masks (822 of 922), or whose series were not downloaded
            breast, fgt_and_vessels = (masks[0] / mask_name(patient, part) for part in ("Breast", "Dense_and_Vessels"))
            if not fgt_and_vessels.is_file():
                raise FileNotFoundError(
                    f"{str(breast)!r} has no {fgt_and_vessels.name} beside it; the supplement gives both masks of a "
                    "patient in one folder."
                )
            series = pre_contrast_series(patient, folders, mapped.get(patient))
            self.training_cases.append(DBCCase(patient, series, breast, fgt_and_vessels))
        if not self.training_cases:
            raise FileNotFoundError(
                f"{str(self.root)!r} holds no DBC patient with its masks: expected Breast_MRI_NNN/<study>/<series>/"
                "*.dcm and Segmentation_Breast_MRI_NNN_Breast.seg.nrrd with ..._Dense_and_Vessels.seg.nrrd."
            )

    @staticmethod
    def recognizes(root: Path) -> bool:
        """Whether ``root`` holds one patient folder with its breast mask."""
        return any(
            (folder / mask_name(patient, "Breast")).is_file()
            for patient, folders in patient_folders(root).items()
            for folder in folders
        )

    def fingerprint(self, names: Sequence[str]) -> str:
        """The cases' series files' and masks' sizes."""
        cases = [self.case(name) for name in names]
        sizes = sum(path.stat().st_size for case in cases for path in case.image.iterdir() if path.is_file())
        masks = sum(case.label.stat().st_size + case.fgt_and_vessels.stat().st_size for case in cases)
        return f"{len(names)} cases {sizes} + {masks} bytes"

    def load(self, key: int | str, channel: int | None = None, slice_axis: int | str = "axial") -> SliceStack:
        """One patient: the pre-contrast series and its masks as one label map (``label_names``)."""
        case = self.case(key)
        assert isinstance(case, DBCCase) and case.fgt_and_vessels is not None
        image, geometry = read_volume(case.image)
        labels = np.zeros(geometry.shape, dtype=np.uint8)
        for path in (case.label, case.fgt_and_vessels):
            segmentation = place_on_grid(read_segmentation(path), geometry)
            for name, value in self.SEGMENT_NAMES.items():
                segment = named_segment(segmentation, name, path)
                if segment is not None:
                    labels[segmentation.label_layers[segment.layer] == segment.label_value] = value
        axis = resolve_slice_axis(slice_axis, geometry)
        segments = tuple(Segment(name, value) for value, name in self.label_names.items())
        return SliceStack(image, labels[np.newaxis], segments, geometry, slice_axis=axis)


def mask_name(patient: str, part: str) -> str:
    return f"Segmentation_{patient}_{part}.seg.nrrd"


def named_segment(segmentation: Segmentation, name: str, path: Path) -> Segment | None:
    """The segment called ``name`` (case-insensitive; a breast mask's single segment whatever its name)."""
    found = [segment for segment in segmentation.segments if segment.name.lower() == name]
    if not found and name == "breast" and path.name.endswith("_Breast.seg.nrrd") and len(segmentation.segments) == 1:
        return segmentation.segments[0]
    if not found and name != "breast" and path.name.endswith("_Dense_and_Vessels.seg.nrrd"):
        names = ", ".join(segment.name for segment in segmentation.segments)
        raise ValueError(f"{str(path)!r} has no segment {name.title()!r} (its segments: {names}).")
    return found[0] if found else None


def patient_folders(root: Path) -> dict[str, list[Path]]:
    """Every folder named Breast_MRI_NNN under ``root`` (not searched inside), by patient."""
    found: dict[str, list[Path]] = {}
    for folder, subfolders, _ in os.walk(root):
        for name in [name for name in subfolders if PATIENT.match(name)]:
            found.setdefault(name, []).append(Path(folder) / name)
        subfolders[:] = sorted(name for name in subfolders if not PATIENT.match(name) and not name.startswith("."))
    return found


def pre_contrast_folders(root: Path) -> dict[str, str]:
    """Patient -> the name of its pre-contrast series folder, from TCIA's mapping table (a CSV with its columns
    ``original_path_and_filename`` and ``descriptive_path``) in ``root`` or a folder in it (not deeper: the image
    folders hold hundreds of thousands of files); empty without one."""
    mapped: dict[str, str] = {}
    for table in sorted([*root.glob("*.csv"), *root.glob("*/*.csv")]):
        with table.open(newline="") as file:
            rows = csv.DictReader(file)
            if not set(MAPPING_COLUMNS) <= set(rows.fieldnames or ()):
                continue
            for row in rows:
                original = row["original_path_and_filename"].replace("\\", "/").split("/")
                patient = next((part for part in original if PATIENT.match(part)), None)
                after = original[original.index(patient) + 1 :] if patient else []
                if any("pre" in part.lower() for part in after[:-1]):  # the folders below the patient, not the file
                    parts = [part for part in row["descriptive_path"].replace("\\", "/").split("/") if part]
                    mapped.setdefault(patient, parts[-2])
    return mapped


def pre_contrast_series(patient: str, folders: list[Path], mapped: str | None) -> Path:
    """The folder of ``patient``'s pre-contrast series under its DICOM ``folders``: the one named ``mapped``, or
    without it the one whose SeriesDescription has the word "pre"."""
    series = sorted({path.parent for folder in folders for path in dicom_files(folder)})
    if mapped is not None:
        chosen = [folder for folder in series if folder.name == mapped]
        if len(chosen) == 1:
            return chosen[0]
        raise FileNotFoundError(
            f"The mapping table names {mapped!r} as {patient}'s pre-contrast series, but its folders hold "
            f"{[folder.name for folder in series]}; download the series with TCIA's descriptive paths."
        )
    descriptions = {}
    for folder in series:
        first = read_headers([next(dicom_files(folder))])
        descriptions[folder] = str(getattr(first[0][1], "SeriesDescription", "")) if first else ""
    chosen = [folder for folder, description in descriptions.items() if PRE_CONTRAST.search(description)]
    if len(chosen) != 1:
        listed = "; ".join(f"{folder.name} ({description!r})" for folder, description in descriptions.items())
        raise FileNotFoundError(
            f"{patient}: {'no' if not chosen else 'more than one'} series is described as pre-contrast ({listed}). "
            "Put TCIA's Breast-Cancer-MRI-filepath_filename-mapping table, saved as CSV, in the dataset folder: it "
            "names the series the masks were drawn on."
        )
    return chosen[0]
