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


FROG_TISSUES_LICENSE = (
    "frog_tissues.vti ships in the pyvista package (MIT licence, https://github.com/pyvista/pyvista): a label map "
    "of 500 x 470 x 136 voxels (1 x 1 x 1.5 mm) of about 25 frog tissues; labels only, no intensity image."
)


def frog_tissues_file() -> Path:
    """Path of pyvista's frog tissue label map (``.vti``), found without importing pyvista (which loads VTK).

    Raises:
        FileNotFoundError: pyvista is not installed (``pip install pyvista``, or ``pip install -e '.[data]'``).
    """
    from importlib.util import find_spec

    spec = find_spec("pyvista")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The frog tissue label map ships in pyvista, which is not installed: pip install -e '.[data]'."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "examples" / "frog_tissues.vti"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall pyvista (pip install --force-reinstall pyvista).")
    return path


def frog_tissues_stack():
    """The frog tissue label map as a label-only :class:`~spatial_al.volume.SliceStack` (KJI, slices along K);
    each label value is a segment named "tissue N"."""
    import numpy as np

    from ..io.vti import read_vti
    from ..volume import SliceStack

    labels, geometry = read_vti(frog_tissues_file())
    names = {int(value): f"tissue {int(value)}" for value in np.unique(labels) if value}
    return SliceStack.from_label_map(labels, geometry=geometry, segment_names=names)
