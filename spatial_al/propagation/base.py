"""The propagation driver shared by every method: checks, slice-axis handling, the result."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..metrics import mean_label_dice
from ..progress import ProgressReporter
from ..registry import Registry
from ..volume import SliceStatus, check_label_dtype, check_slice_axis, normalize_slice_indices

# A method fills a slice-first label map: fn(labels (S, H, W), annotated (sorted int array), spacing (3,) mm in
# that order, image (S, H, W) or None, progress, **options) -> (filled labels (S, H, W), confidence (S,)).
# It reads only the annotated slices of ``labels``; confidence is NaN on slices it did not fill.
PropagationMethod = Callable[..., tuple[np.ndarray, np.ndarray]]

PROPAGATORS: Registry[PropagationMethod] = Registry("propagation method")


@dataclass
class PropagationResult:
    """What :func:`propagate` returns.

    Attributes:
        labels: the filled label map, same shape, dtype and axis order as the input; annotated slices unchanged.
        confidence: one value per slice along ``axis``, shape (n_slices,): 1 on annotated slices, in [0, 1] on
            propagated slices, NaN on slices no annotation reaches (before the first or after the last annotated
            slice: nothing is extrapolated there).
        annotated: the annotated slice indices, sorted.
        axis: the slice axis.
        method: the method's registry name.
    """

    labels: np.ndarray
    confidence: np.ndarray
    annotated: np.ndarray
    axis: int
    method: str

    @property
    def status(self) -> np.ndarray:
        """Per-slice :class:`SliceStatus` values, shape (n_slices,)."""
        status = np.where(np.isnan(self.confidence), SliceStatus.UNLABELED, SliceStatus.PSEUDO_LABELED)
        status[self.annotated] = SliceStatus.ANNOTATED
        return status.astype(np.int8)

    @property
    def propagated_slices(self) -> np.ndarray:
        return np.flatnonzero(self.status == SliceStatus.PSEUDO_LABELED)

    @property
    def unreached_slices(self) -> np.ndarray:
        """Slices outside the annotated range, left without pseudo-labels."""
        return np.flatnonzero(self.status == SliceStatus.UNLABELED)


def slice_spacing_first(spacing: Sequence[float] | None, axis: int) -> np.ndarray:
    """Array-order spacing (3,) reordered so the slice axis comes first (1 mm where unknown)."""
    values = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
    if values.shape != (3,) or np.any(values <= 0):
        raise ValueError(f"spacing must be three positive voxel sizes in array order, got {spacing!r}.")
    return np.concatenate([[values[axis]], np.delete(values, axis)])


def propagate(
    labels: np.ndarray,
    annotated: Iterable[int],
    method: str = "sdf",
    image: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    axis: int = 0,
    progress: ProgressReporter | None = None,
    **options,
) -> PropagationResult:
    """Fill every slice between annotated slices with labels propagated from them.

    Args:
        labels: label map, shape (K, J, I) (any 3D order; ``axis`` and ``spacing`` follow it). Only the annotated
            slices are read; the rest may hold anything (e.g. a ground truth kept for evaluation).
        annotated: indices of the annotated slices along ``axis``. An annotated slice may be empty (structure
            absent there), and is kept empty.
        method: a name from :data:`PROPAGATORS` (``spatial-al methods``).
        image: intensities on the same grid, for methods that use them.
        spacing: voxel size in mm along each array axis, in array order (KJI arrays: slice thickness first);
            None means 1 mm.
        axis: the slice axis (array axis 0, 1 or 2).
        progress: receives progress reports and can cancel.
        **options: options of the method (see its docstring).

    Returns:
        A :class:`PropagationResult`.

    Raises:
        ValueError: no annotated slice, an index out of range, a label map that is not 3D or not integer, an
            unknown method (with the closest name) or option.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D label map, got shape {labels.shape}.")
    check_label_dtype(labels)
    axis = check_slice_axis(axis)
    if image is not None and np.shape(image) != labels.shape:
        raise ValueError(f"image shape {np.shape(image)} differs from labels shape {labels.shape}.")
    function = PROPAGATORS.get(method)
    PROPAGATORS.check_options(method, options)
    n_slices = labels.shape[axis]
    annotated_slices = normalize_slice_indices(annotated, n_slices)
    if annotated_slices.size == 0:
        raise ValueError(
            f"No annotated slice: propagation copies labels from annotated slices, so at least one is needed "
            f"(the volume has {n_slices} slices along axis {axis}). Annotate a slice and list it in `annotated`."
        )
    slice_first = np.moveaxis(labels, axis, 0)
    image_first = None if image is None else np.moveaxis(np.asarray(image), axis, 0)
    filled, confidence = function(
        slice_first, annotated_slices, slice_spacing_first(spacing, axis), image_first, progress, **options
    )
    filled = filled.astype(labels.dtype, copy=False)
    filled[annotated_slices] = slice_first[annotated_slices]
    confidence = np.asarray(confidence, dtype=np.float32)
    confidence[annotated_slices] = 1.0
    return PropagationResult(np.moveaxis(filled, 0, axis), confidence, annotated_slices, axis, method)


def gaps(annotated: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive pairs (a, b) of annotated slices with at least one slice between them."""
    return [(int(a), int(b)) for a, b in itertools.pairwise(annotated) if b - a > 1]


def interpolation_confidence(labels: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Per-slice confidence of a pseudo-label interpolated between two annotated slices, shape (S,).

    ``1 - (1 - agreement) * 2 * d / gap``: ``d`` is the distance (in slices) to the nearer annotated slice, ``gap``
    the distance between the two, and ``agreement`` the mean Dice, over the labels present on either, of the two
    annotated slices (1 when both are empty). Identical neighbours give 1 everywhere; neighbours that share
    nothing give 0 in the middle of the gap. NaN outside the annotated range.

    Args:
        labels: slice-first label map (S, H, W); only annotated slices are read.
        annotated: sorted annotated slice indices.
    """
    confidence = np.full(labels.shape[0], np.nan, dtype=np.float32)
    for a, b in gaps(annotated):
        agreement = mean_label_dice(labels[a], labels[b])
        k = np.arange(a + 1, b)
        nearer = np.minimum(k - a, b - k)
        confidence[a + 1 : b] = 1.0 - (1.0 - agreement) * 2.0 * nearer / (b - a)
    return confidence
