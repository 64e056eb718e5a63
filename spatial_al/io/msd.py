"""Medical Segmentation Decathlon folders: ``dataset.json``, ``imagesTr/``, ``labelsTr/`` (and ``imagesTs/``).

The MSD layout lists cases in ``dataset.json``'s ``training`` entries (``{"image": "./imagesTr/x.nii.gz",
"label": "./labelsTr/x.nii.gz"}``) and names labels as ``{"0": "background", "1": "spleen"}``. The nnU-Net v2
variant (no ``training`` list; ``labels`` as ``{"background": 0, "spleen": 1}``; images ``<case>_0000<ending>``)
is read too. Multi-channel cases (MSD BraTS, prostate) are 4D: choose a channel.
"""

from __future__ import annotations

import json
from pathlib import Path

from .datasets import Case, CaseFolder


class MSDDataset(CaseFolder):
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


def _case_id(image: Path) -> str:
    name = image.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return image.stem
