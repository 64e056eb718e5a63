"""A montage of every slice of a stack, for a person to read at a glance.

Slices are shown as Slicer's slice views show them (``patientRightIsScreenLeft``): axial with patient left on
screen right and anterior up, coronal with left right and superior up, sagittal with posterior right and
superior up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_path
from .volume import Geometry, Segment

# Screen (right, up) directions in RAS of Slicer's default views, keyed by the RAS axis of the slice normal.
SCREEN_DIRECTIONS_RAS = {
    2: (np.array([-1.0, 0, 0]), np.array([0, 1.0, 0])),  # axial: right = L, up = A
    1: (np.array([-1.0, 0, 0]), np.array([0, 0, 1.0])),  # coronal: right = L, up = S
    0: (np.array([0, -1.0, 0]), np.array([0, 0, 1.0])),  # sagittal: right = P, up = S
}
QUERIED_FRAME_COLOR = "#ffd21f"


def display_orientation(geometry: Geometry, slice_axis: int) -> tuple[bool, bool, bool]:
    """How to turn a slice ``array.take(s, axis=slice_axis)`` (rows, columns) into screen orientation.

    Returns:
        (transpose, flip_rows, flip_columns) to apply in that order so row 0 is the top of the screen and
        columns run to screen right.
    """
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    directions = {axis: geometry.array_axis_direction(axis) * lps_to_ras for axis in range(3)}
    normal_axis = int(np.argmax(np.abs(directions[slice_axis])))
    right, up = SCREEN_DIRECTIONS_RAS[normal_axis]
    row_axis, column_axis = in_plane
    transpose = abs(directions[row_axis] @ right) > abs(directions[column_axis] @ right)
    if transpose:
        row_axis, column_axis = column_axis, row_axis
    flip_rows = directions[row_axis] @ up > 0  # rows growing upwards must be reversed (row 0 is the top)
    flip_columns = directions[column_axis] @ right < 0
    return bool(transpose), bool(flip_rows), bool(flip_columns)


def display_window(image: np.ndarray) -> tuple[float, float]:
    """Grey-level range to show: a chest window (-1000 to 500 HU) for CT, the 1st-99.5th percentiles otherwise."""
    low, high = np.percentile(image, [1, 99.5])
    if low <= -900:  # air at about -1000 HU: a CT in Hounsfield units
        return -1000.0, 500.0
    return float(low), float(high)


def oriented(slice_2d: np.ndarray, orientation: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_columns = orientation
    view = slice_2d.T if transpose else slice_2d
    return view[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1]


def render_overview(
    path: str | Path,
    image: np.ndarray | None,
    label_layers: np.ndarray,
    segments: Sequence[Segment],
    colors: Sequence[tuple[float, float, float]],
    geometry: Geometry,
    slice_axis: int,
    annotated: Sequence[int],
    propagated: Sequence[int],
    confidence: np.ndarray,
    queried: Sequence[int],
    title: str = "",
) -> Path:
    """Write a PNG montage of every slice along ``slice_axis``.

    Annotated slices show their labels filled, propagated slices lighter with their confidence, queried slices
    are framed. Arrays are KJI; ``label_layers`` is (L, K, J, I); ``confidence`` has one value per slice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle
    from skimage.segmentation import find_boundaries

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_slices = geometry.shape[slice_axis]
    orientation = display_orientation(geometry, slice_axis)
    in_plane_spacing = [s for axis, s in enumerate(geometry.array_spacing) if axis != slice_axis]
    pixel_aspect = in_plane_spacing[0] / in_plane_spacing[1]
    if orientation[0]:
        pixel_aspect = 1 / pixel_aspect
    columns = math.ceil(math.sqrt(n_slices))
    rows = math.ceil(n_slices / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows * 1.08 + 0.9), squeeze=False)
    figure.patch.set_facecolor("black")
    low, high = display_window(image) if image is not None else (0, 1)
    annotated_set, propagated_set, queried_set = set(annotated), set(propagated), set(queried)
    for index, axis in enumerate(axes.ravel()):
        axis.set_axis_off()
        if index >= n_slices:
            continue
        oriented_layers = [oriented(layer.take(index, axis=slice_axis), orientation) for layer in label_layers]
        background = (
            oriented(image.take(index, axis=slice_axis), orientation)
            if image is not None
            else np.zeros(oriented_layers[0].shape)
        )
        axis.imshow(
            background,
            cmap="gray",
            vmin=low,
            vmax=high,
            aspect=pixel_aspect,
            interpolation="nearest",
        )
        fill_alpha = 0.4 if index in annotated_set else 0.2
        overlay = np.zeros((*background.shape, 4))
        if index in annotated_set or index in propagated_set:
            for segment, color in zip(segments, colors, strict=True):
                mask = oriented_layers[segment.layer] == segment.label_value
                overlay[mask] = (*color, fill_alpha)
                overlay[find_boundaries(mask, mode="inner")] = (*color, 1.0)
        axis.imshow(overlay, aspect=pixel_aspect, interpolation="nearest")
        if index in annotated_set:
            caption = f"{index}  annotated"
        elif index in propagated_set:
            caption = f"{index}  propagated {confidence[index]:.2f}"
        else:
            caption = f"{index}  unlabeled"
        axis.set_title(caption, color="white", fontsize=8, pad=2)
        if index in queried_set:
            height, width = background.shape
            axis.add_patch(
                Rectangle((-0.5, -0.5), width, height, fill=False, edgecolor=QUERIED_FRAME_COLOR, linewidth=4)
            )
    handles = [Patch(facecolor=color, label=segment.name) for segment, color in zip(segments, colors, strict=True)]
    handles.append(Patch(facecolor="none", edgecolor=QUERIED_FRAME_COLOR, linewidth=2, label="queried slice"))
    figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False, labelcolor="white", fontsize=9
    )
    if title:
        figure.suptitle(title, color="white", fontsize=11)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=90, facecolor=figure.get_facecolor())
    plt.close(figure)
    return path
