"""Dataset folders of labelled cases: the readers behind the experiment runner's ``--data`` folders.

:class:`CaseFolder` holds what every layout shares (the case list, label names, loading a case on the image grid);
each layout only finds its cases: the Medical Segmentation Decathlon (:class:`~spatial_al.io.msd.MSDDataset`), ACDC
(:class:`ACDCDataset`), KiTS19 (:class:`KiTS19Dataset`), LiTS (:class:`LiTSDataset`) and ATLAS v2.0
(:class:`ATLASDataset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..volume import SliceStack, resolve_slice_axis
from .images import read_volume
from .segmentation import place_on_grid, read_segmentation


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None


class CaseFolder:
    """A folder of labelled cases. Subclasses set ``root``, ``name``, ``label_names`` (label value -> name, no
    background), ``modalities`` (channel -> name, empty for one channel) and ``training_cases``."""

    root: Path
    name: str
    label_names: dict[int, str]
    modalities: dict[int, str]
    training_cases: list[Case]

    def __len__(self) -> int:
        return len(self.training_cases)

    def fingerprint(self, names: Sequence[str]) -> str:
        """What identifies the content of the cases ``names`` for a cache key: their image files' sizes."""
        return f"{len(names)} cases {sum(self.case(name).image.stat().st_size for name in names)} bytes"

    def case(self, key: int | str) -> Case:
        if isinstance(key, int):
            if not 0 <= key < len(self.training_cases):
                raise IndexError(f"Case {key} is out of range: the dataset has {len(self.training_cases)} cases.")
            return self.training_cases[key]
        for case in self.training_cases:
            if case.case_id == key:
                return case
        raise KeyError(f"No case {key!r} in {self.name}; e.g. {[c.case_id for c in self.training_cases[:3]]}.")

    def load(self, key: int | str, channel: int | None = None, slice_axis: int | str = "axial") -> SliceStack:
        """One training case as a :class:`SliceStack` (labels placed on the image grid, geometry checked).

        Args:
            key: case index or case ID.
            channel: which channel of a 4D (multi-modal) image; ``self.modalities`` names them.
            slice_axis: array axis (0, 1, 2) or "axial" / "coronal" / "sagittal".
        """
        case = self.case(key)
        try:
            image, geometry = read_volume(case.image, channel=channel)
        except ValueError as error:
            if channel is None and self.modalities and "4D" in str(error):
                raise ValueError(f"{error} Channels: {self.modalities}.") from None
            raise
        segmentation = place_on_grid(read_segmentation(case.label, self.label_names), geometry)
        axis = resolve_slice_axis(slice_axis, geometry)
        return SliceStack(image, segmentation.label_layers, segmentation.segments, geometry, slice_axis=axis)


class ACDCDataset(CaseFolder):
    """The ACDC challenge (Bernard et al. 2018): ``patientNNN/patientNNN_frameNN.nii.gz`` with its manual labels
    ``patientNNN_frameNN_gt.nii.gz`` (the end-diastolic and end-systolic frames; 1 right ventricle, 2 myocardium, 3
    left ventricle), in ``training/`` and ``testing/`` or directly under ``root``. A case is one labelled frame,
    ``patientNNN_frameNN``; the 4D cine files are not read. The short-axis slices are cut along array axis 0 (the
    acquisition axis; the planes are oblique, so "axial" may name another axis).

    Raises:
        FileNotFoundError: no labelled frame under ``root``, or a label without its image.
    """

    name = "ACDC"
    LABELS: ClassVar[dict[int, str]] = {1: "right ventricle", 2: "myocardium", 3: "left ventricle"}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.label_names = dict(self.LABELS)
        self.modalities = {}
        self.training_cases = []
        for label in sorted(self.root.glob("**/patient[0-9][0-9][0-9]_frame[0-9][0-9]_gt.nii*")):
            image = label.with_name(label.name.replace("_gt", ""))
            if not image.is_file():
                raise FileNotFoundError(f"{str(label)!r} has no image beside it (expected {image.name}).")
            self.training_cases.append(Case(image.name.split(".")[0], image, label))
        if not self.training_cases:
            raise FileNotFoundError(
                f"{str(self.root)!r} holds no ACDC frame: expected patientNNN/patientNNN_frameNN.nii.gz with "
                "patientNNN_frameNN_gt.nii.gz beside it."
            )

    @staticmethod
    def recognizes(root: Path) -> bool:
        """Whether ``root`` has the ACDC layout (one labelled frame is enough)."""
        return next(root.glob("**/patient[0-9][0-9][0-9]_frame[0-9][0-9]_gt.nii*"), None) is not None


class KiTS19Dataset(CaseFolder):
    """The KiTS19 challenge (Heller et al. 2021): ``case_NNNNN/imaging.nii.gz`` and ``segmentation.nii.gz`` (1
    kidney, 2 tumour), under ``root`` or ``root/data``; cases without a segmentation (the test set) are left out.
    A protocol that segments the kidney with its tumour merges label 2 into 1 (``data.labels``).

    Raises:
        FileNotFoundError: no case with a segmentation under ``root``.
    """

    name = "KiTS19"
    LABELS: ClassVar[dict[int, str]] = {1: "kidney", 2: "tumor"}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.label_names = dict(self.LABELS)
        self.modalities = {}
        self.training_cases = [
            Case(folder.name, folder / "imaging.nii.gz", folder / "segmentation.nii.gz")
            for folder in self._case_folders(self.root)
            if (folder / "segmentation.nii.gz").is_file() and (folder / "imaging.nii.gz").is_file()
        ]
        if not self.training_cases:
            raise FileNotFoundError(
                f"{str(self.root)!r} holds no KiTS19 case: expected case_NNNNN/imaging.nii.gz and "
                "case_NNNNN/segmentation.nii.gz (under the folder or its data/ subfolder)."
            )

    @staticmethod
    def _case_folders(root: Path) -> list[Path]:
        return sorted([*root.glob("case_[0-9]*"), *root.glob("data/case_[0-9]*")])

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        """Whether ``root`` has the KiTS19 layout (one case with a segmentation is enough)."""
        return any((folder / "segmentation.nii.gz").is_file() for folder in cls._case_folders(root))


class LiTSDataset(CaseFolder):
    """The LiTS challenge (Bilic et al. 2023): ``volume-N.nii`` with ``segmentation-N.nii`` (1 liver, 2 tumour; also
    ``.nii.gz``), in one folder or its subfolders (the two training batches). A case is ``volume-N``.

    Raises:
        FileNotFoundError: no volume with its segmentation under ``root``.
    """

    name = "LiTS"
    LABELS: ClassVar[dict[int, str]] = {1: "liver", 2: "tumor"}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.label_names = dict(self.LABELS)
        self.modalities = {}
        self.training_cases = []
        for label in sorted(self._labels(self.root), key=lambda path: int(path.name.split("-")[1].split(".")[0])):
            image = label.with_name(label.name.replace("segmentation-", "volume-"))
            if image.is_file():
                self.training_cases.append(Case(image.name.split(".")[0], image, label))
        if not self.training_cases:
            raise FileNotFoundError(
                f"{str(self.root)!r} holds no LiTS case: expected volume-N.nii with segmentation-N.nii beside it."
            )

    @staticmethod
    def _labels(root: Path) -> list[Path]:
        return [path for path in root.glob("**/segmentation-[0-9]*.nii*") if path.name.split("-")[1][0].isdigit()]

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        """Whether ``root`` has the LiTS layout (one segmentation-N.nii is enough)."""
        return bool(cls._labels(root))


class ATLASDataset(CaseFolder):
    """ATLAS v2.0 (Liew et al. 2022; stroke lesions on T1-weighted MRI), in its BIDS layout:
    ``.../sub-XXX/ses-N/anat/<name>_T1w.nii.gz`` with the lesion mask ``<name>_label-L_desc-T1lesion_mask.nii.gz``
    beside it (1 lesion). A case is the T1w file's subject and session.

    Raises:
        FileNotFoundError: no T1w image with its lesion mask under ``root``.
    """

    name = "ATLAS"
    LABELS: ClassVar[dict[int, str]] = {1: "lesion"}
    MASK_SUFFIX = "_label-L_desc-T1lesion_mask.nii.gz"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.label_names = dict(self.LABELS)
        self.modalities = {}
        self.training_cases = []
        for mask in sorted(self.root.glob(f"**/*{self.MASK_SUFFIX}")):
            stem = mask.name[: -len(self.MASK_SUFFIX)]
            image = mask.with_name(f"{stem}_T1w.nii.gz")
            if image.is_file():
                self.training_cases.append(Case(stem, image, mask))
        if not self.training_cases:
            raise FileNotFoundError(
                f"{str(self.root)!r} holds no ATLAS case: expected <name>_T1w.nii.gz with "
                f"<name>{self.MASK_SUFFIX} beside it."
            )

    @classmethod
    def recognizes(cls, root: Path) -> bool:
        """Whether ``root`` has the ATLAS layout (one lesion mask is enough)."""
        return next(root.glob(f"**/*{cls.MASK_SUFFIX}"), None) is not None
