"""The files a web session may touch: the scans of the data folder, and names inside the output folder.

The server reads only under the data folder and writes only under the output folder given at start. A name that
comes from the page (a case to open, a file to download) is resolved inside its folder and refused when it would
lead out of it (``..``, an absolute path, a link pointing elsewhere).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"


class OutsideFolderError(ValueError):
    """A file name that would lead out of the folder the server may use."""


@dataclass(frozen=True)
class Case:
    """A scan to annotate.

    Attributes:
        name: what the page lists (the image's file name without its suffix).
        image: the scalar volume file.
        segmentation: its segmentation (``.seg.nrrd`` or label map), None to start from an empty one.
    """

    name: str
    image: Path
    segmentation: Path | None = None


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
    """The scans directly in ``folder``, each with the segmentation named after it (``<name>.seg.nrrd``) if any."""
    folder = Path(folder)
    cases = []
    for path in sorted(folder.iterdir()):
        suffix = _suffix(path)
        if not path.is_file() or suffix not in IMAGE_SUFFIXES:
            continue
        name = path.name[: -len(suffix)]
        segmentation = folder / f"{name}{SEGMENTATION_SUFFIX}"
        cases.append(Case(name, path, segmentation if segmentation.is_file() else None))
    return cases


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
    data: str | Path | None, segmentation: str | Path | None = None, output: Path = Path("spatial-al-web")
) -> tuple[Path, list[Case]]:
    """(the data folder, its cases) of what ``spatial-al web`` was given: nothing (the demo, written into
    ``output``), an image (with ``segmentation``), or a folder of images.

    Raises:
        FileNotFoundError: ``data`` or ``segmentation`` does not exist.
        ValueError: a folder holding no image, or a segmentation given with a folder.
    """
    if data is None:
        case = demoCase(output)
        return case.image.parent, [case]
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{str(data)!r} does not exist: give an image file or a folder of images.")
    if data.is_dir():
        if segmentation is not None:
            raise ValueError("--segmentation goes with one image; in a folder, name it <image name>.seg.nrrd.")
        cases = findCases(data)
        if not cases:
            raise ValueError(
                f"{str(data)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}); give a folder of scans, or one scan."
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
