"""Built-in real data, installed from the package registries (nothing is downloaded at run time)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CHEST_CT_LICENSE = (
    "CTChest4.nrrd and Segmentation.seg.nrrd ship in the slicerio package (MIT licence, "
    "https://github.com/lassoan/slicerio): a chest CT of 128 x 128 x 34 voxels (3.05 x 3.05 x 10 mm) from 3D "
    "Slicer's sample data, with a Slicer segmentation of ribs, vertebrae, lungs and tissue."
)


def chest_ct_files() -> tuple[Path, Path]:
    """Paths of the chest CT (``.nrrd``) and its segmentation (``.seg.nrrd``) inside the installed slicerio."""
    folder = resources.files("slicerio") / "data"
    image, segmentation = Path(str(folder / "CTChest4.nrrd")), Path(str(folder / "Segmentation.seg.nrrd"))
    for path in (image, segmentation):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: reinstall slicerio (pip install --force-reinstall slicerio).")
    return image, segmentation
