"""Overlap metrics on label maps.

Dice is counted with numpy rather than MONAI's ``compute_dice``: the report and the propagation confidence need it
on plain 2D/3D masks without importing torch; the tests check it against ``monai.metrics.compute_dice``.
"""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; 1.0 when both are empty (nothing to find, nothing found)."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"Masks differ in shape: {prediction.shape} vs {reference.shape}.")
    total = np.count_nonzero(prediction) + np.count_nonzero(reference)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(prediction & reference) / total


def label_values(*label_maps: np.ndarray) -> np.ndarray:
    """The sorted non-zero values present in any of the label maps.

    Counted with ``np.bincount`` over the non-zero pixels for unsigned label types (several times faster than
    ``np.unique``'s sort or hash on whole slices, and than counting the background too); ``np.unique`` otherwise.
    """
    if all(np.asarray(m).dtype.kind in "bu" and np.asarray(m).dtype.itemsize <= 2 for m in label_maps):
        present = [np.flatnonzero(np.bincount(m[m != 0])) for m in map(np.asarray, label_maps)]
        values = np.unique(np.concatenate(present)) if present else np.zeros(0, np.intp)
        return values[values != 0]
    values = np.unique(np.concatenate([np.ravel(m) for m in label_maps]))
    return values[values != 0]


def mean_label_dice(first: np.ndarray, second: np.ndarray) -> float:
    """Mean Dice over the non-zero label values present in either label map; 1.0 when both are empty.

    Slices (2D) are counted on the smallest box holding every labeled pixel of both, so large, mostly empty slices
    stay cheap."""
    if first.ndim == 2:
        occupied = (first != 0) | (second != 0)
        rows, columns = (np.flatnonzero(occupied.any(axis=other)) for other in (1, 0))
        if rows.size == 0:
            return 1.0
        box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
        first, second = first[box], second[box]
    values = label_values(first, second)
    if values.size == 0:
        return 1.0
    return float(np.mean([dice(first == value, second == value) for value in values]))
