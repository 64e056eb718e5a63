"""Medical Segmentation Decathlon folders: ``dataset.json``, ``imagesTr/``, ``labelsTr/`` (and ``imagesTs/``).

The MSD layout lists cases in ``dataset.json``'s ``training`` entries (``{"image": "./imagesTr/x.nii.gz",
"label": "./labelsTr/x.nii.gz"}``) and names labels as ``{"0": "background", "1": "spleen"}``. The nnU-Net v2
variant (no ``training`` list; ``labels`` as ``{"background": 0, "spleen": 1}``; images ``<case>_0000<ending>``)
is read too. Multi-channel cases (MSD BraTS, prostate) are 4D: choose a channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..volume import SliceStack, resolve_slice_axis
from .images import read_volume
from .segmentation import place_on_grid, read_segmentation


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None


class MSDDataset:
    """An MSD-style dataset folder.

    Args:
        root: folder holding ``dataset.json``.

    Raises:
        FileNotFoundError: no ``dataset.json``, or a listed file is missing.
        ValueError: ``dataset.json`` is not valid JSON or lacks ``labels``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        description = self.root / "dataset.json"
        if not description.is_file():
            raise FileNotFoundError(
                f"{str(self.root)!r} is not an MSD dataset folder: it has no dataset.json "
                "(expected dataset.json, imagesTr/ and labelsTr/)."
            )
        try:
            self.description = json.loads(description.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(description)!r} is not valid JSON: {error}") from None
        if "labels" not in self.description:
            raise ValueError(f"{str(description)!r} has no 'labels' entry naming the label values.")
        self.name = self.description.get("name", self.root.name)
        self.label_names = self._label_names(self.description["labels"])
        self.modalities = {int(k): v for k, v in self.description.get("modality", {}).items()} or {
            int(k): v for k, v in self.description.get("channel_names", {}).items()
        }
        self.training_cases = self._training_cases()

    @staticmethod
    def _label_names(labels: dict) -> dict[int, str]:
        """Label value -> name without background; accepts {"1": "spleen"} (MSD) and {"spleen": 1} (nnU-Net v2)."""
        names = {}
        for key, value in labels.items():
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and not key.isdigit()):
                names[int(value)] = key
            else:
                names[int(key)] = str(value)
        names.pop(0, None)
        return names

    def _resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"dataset.json lists {relative!r}, but {str(path)!r} does not exist.")
        return path

    def _training_cases(self) -> list[Case]:
        if "training" in self.description:
            cases = []
            for entry in self.description["training"]:
                image = self._resolve(entry["image"])
                cases.append(Case(_case_id(image), image, self._resolve(entry["label"])))
            return cases
        ending = self.description.get("file_ending", ".nii.gz")
        cases = []
        for label in sorted((self.root / "labelsTr").glob(f"*{ending}")):
            case_id = label.name[: -len(ending)]
            cases.append(Case(case_id, self._resolve(f"imagesTr/{case_id}_0000{ending}"), label))
        return cases

    def __len__(self) -> int:
        return len(self.training_cases)

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


def _case_id(image: Path) -> str:
    name = image.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return image.stem
