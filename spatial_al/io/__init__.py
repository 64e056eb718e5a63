"""Readers and writers: volumes (NRRD, NIfTI, ...), segmentations (.seg.nrrd, label maps), MSD folders."""

from __future__ import annotations

from pathlib import Path

from ..volume import SliceStack, resolve_slice_axis
from .images import file_suffix, read_volume, write_volume
from .msd import MSDDataset
from .segmentation import Segmentation, place_on_grid, read_segmentation, write_segmentation

__all__ = [
    "MSDDataset",
    "Segmentation",
    "file_suffix",
    "load_stack",
    "place_on_grid",
    "read_segmentation",
    "read_volume",
    "write_segmentation",
    "write_volume",
]


def load_stack(
    image_path: str | Path,
    labels_path: str | Path | None = None,
    slice_axis: int | str = "axial",
    channel: int | None = None,
) -> SliceStack:
    """Read an image and (optionally) its segmentation into a :class:`SliceStack`.

    Args:
        image_path: scalar volume file.
        labels_path: ``.seg.nrrd`` or label map on the image grid (a segmentation cropped to its extent is
            padded back onto it).
        slice_axis: array axis in KJI order (0, 1, 2) or "axial" / "coronal" / "sagittal".
        channel: channel of a 4D image.

    Raises:
        GeometryMismatchError: the labels are on another grid (the message says what differs).
    """
    image, geometry = read_volume(image_path, channel=channel)
    if labels_path is None:
        segmentation = Segmentation(_empty_labels(image.shape), (), geometry)
    else:
        segmentation = place_on_grid(read_segmentation(labels_path), geometry)
    axis = resolve_slice_axis(slice_axis, geometry)
    return SliceStack(image, segmentation.label_layers, segmentation.segments, geometry, slice_axis=axis)


def _empty_labels(shape):
    import numpy as np

    return np.zeros(shape, dtype=np.uint8)
