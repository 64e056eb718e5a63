"""The propagation driver shared by every method: checks, slice-axis handling, top-N selection, the result."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compatibility import check_model
from ..metrics import label_values, mean_label_dice
from ..progress import ProgressReporter
from ..registry import Registry, info_of, with_info
from ..volume import Segment, SliceStatus, check_label_dtype, check_slice_axis, normalize_slice_indices


@dataclass(frozen=True)
class PropagationTask:
    """What a method reads: slice-first arrays along the propagation axis.

    Attributes:
        label_layers: (L, S, H, W) integer label layers; only the annotated slices are read.
        segments: the structures in ``label_layers`` (layer, label value, name); model-based methods match them to
            the model's classes by name.
        annotated: sorted annotated slice indices (at least one).
        spacing: voxel size in mm, (3,), slice axis first.
        image: (S, H, W) intensities, or None.
        model: a trained segmentation model, or None.
        device: where torch work runs ("auto", "cpu", "cuda", ... or a torch.device).
        batch_size: slices per forward pass.
        seed: seeds every random choice of the method.
        progress: receives progress reports and can cancel.
    """

    label_layers: np.ndarray
    segments: tuple[Segment, ...]
    annotated: np.ndarray
    spacing: np.ndarray
    image: np.ndarray | None = None
    model: Any = None
    device: Any = "auto"
    batch_size: int = 8
    seed: int = 0
    progress: ProgressReporter | None = None

    @property
    def n_slices(self) -> int:
        return self.label_layers.shape[1]


# A method fills every layer of a task: fn(task, **options) -> (filled layers (L, S, H, W), confidence (S,)).
# Confidence is in [0, 1] on the slices it filled and NaN on slices it did not fill; annotated slices of the output
# are ignored (the driver puts the annotation back).
PropagationMethod = Callable[..., tuple[np.ndarray, np.ndarray]]

PROPAGATORS: Registry[PropagationMethod] = Registry("propagation method")


@dataclass(frozen=True)
class MethodInfo:
    """What a propagation method needs and where it writes.

    Attributes:
        image: it reads the intensities.
        model: the kind of trained model it needs (a key of :data:`~spatial_al.compatibility.MODEL_KINDS`), or None.
        reads_annotation: it propagates the annotated slices' labels (False: it predicts from the image alone).
        fills_everywhere: it fills every slice, not only those between annotated slices.
        interactive: it finishes well under a second on a clinical volume, so a preview may follow each edit (Slicer's
            auto-update); slower methods (a worker process, a network to train or run) are previewed on request.
    """

    image: bool = False
    model: str | None = None
    reads_annotation: bool = True
    fills_everywhere: bool = False
    interactive: bool = False


def method_info(method: PropagationMethod) -> MethodInfo:
    return info_of(method, MethodInfo())


needs = with_info  # @needs(MethodInfo(...)) on a method


def per_label_map(function: Callable[..., tuple[np.ndarray, np.ndarray]]) -> PropagationMethod:
    """Turn a method for one label map into one for every layer of a task.

    ``function(labels (S, H, W), annotated, spacing (3,) slice first, progress, **options) -> (filled (S, H, W),
    confidence (S,))`` runs on each layer; the least confident layer speaks for a slice (``fmin`` skips NaN, a
    layer that filled nothing there). Options are ``function``'s keyword-only parameters.
    """

    @functools.wraps(function)
    def run(task: PropagationTask, **options) -> tuple[np.ndarray, np.ndarray]:
        results = [
            function(layer, task.annotated, task.spacing, task.progress, **options) for layer in task.label_layers
        ]
        # one layer (the usual case): its array as it is, no second volume-sized copy
        filled = results[0][0][np.newaxis] if len(results) == 1 else np.stack([result[0] for result in results])
        return filled, np.fmin.reduce(np.stack([result[1] for result in results]), axis=0)

    return run


@dataclass
class PropagationResult:
    """What :func:`propagate` returns.

    Attributes:
        labels: the filled labels, same shape, dtype and axis order as the input; annotated slices unchanged, and
            slices that were not propagated (unreached, or below the confidence cut) are 0.
        confidence: one value per slice along ``axis``, shape (n_slices,): 1 on annotated slices, in [0, 1] on every
            slice the method filled (also those the top-N cut dropped), NaN on slices it did not reach.
        annotated: the annotated slice indices, sorted.
        propagated: the slice indices holding pseudo-labels, sorted.
        axis: the slice axis.
        method: the method's registry name.
    """

    labels: np.ndarray
    confidence: np.ndarray
    annotated: np.ndarray
    propagated: np.ndarray
    axis: int
    method: str

    @property
    def status(self) -> np.ndarray:
        """Per-slice :class:`SliceStatus` values, shape (n_slices,)."""
        status = np.full(self.confidence.shape, SliceStatus.UNLABELED, dtype=np.int8)
        status[self.propagated] = SliceStatus.PSEUDO_LABELED
        status[self.annotated] = SliceStatus.ANNOTATED
        return status

    @property
    def unreached_slices(self) -> np.ndarray:
        """Slices the method did not fill (e.g. outside the annotated range: nothing is extrapolated there)."""
        return np.flatnonzero(np.isnan(self.confidence))

    @property
    def dropped_slices(self) -> np.ndarray:
        """Slices the method filled but the top-N / minimum-confidence cut left without pseudo-labels."""
        filled = np.flatnonzero(~np.isnan(self.confidence))
        return np.setdiff1d(filled, np.union1d(self.propagated, self.annotated))


def slice_spacing_first(spacing: Sequence[float] | None, axis: int) -> np.ndarray:
    """Array-order spacing (3,) reordered so the slice axis comes first (1 mm where unknown)."""
    expected = f"spacing must be three positive voxel sizes in mm in array order, e.g. (2.0, 0.8, 0.8); got {spacing!r}"
    if isinstance(spacing, (str, bytes)):
        raise TypeError(f"{expected}, a string: pass numbers, not text.")
    try:
        values = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{expected}.") from None
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{expected}.")
    return np.concatenate([[values[axis]], np.delete(values, axis)])


def default_segments(layers: np.ndarray, annotated: np.ndarray, model: Any) -> tuple[Segment, ...]:
    """Segments of unnamed label layers (L, S, H, W): the model's classes as label values 1..C of layer 0 (the
    layout :func:`~spatial_al.learning.predict_segmentation` writes), or one "label N" per value on the annotated
    slices."""
    if model is not None:
        return tuple(Segment(name, index + 1) for index, name in enumerate(model.config.class_names))
    return tuple(
        Segment(f"label {int(value)}", int(value), layer=index)
        for index, layer in enumerate(layers)
        for value in label_values(*(layer[a] for a in annotated))  # slice views: no copy of the annotated slices
    )


def kept_slices(
    confidence: np.ndarray, candidates: np.ndarray, most_confident: int | None, min_confidence: float | None
) -> np.ndarray:
    """The candidates that keep their pseudo-labels: at least ``min_confidence`` confident, and among the
    ``most_confident`` most confident (ties to the lower slice), as STAR keeps its top-N; sorted."""
    if most_confident is not None and most_confident < 1:
        raise ValueError(f"most_confident must be at least 1 slice, got {most_confident}.")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}.")
    order = candidates[np.lexsort((candidates, -confidence[candidates]))]
    if min_confidence is not None:
        order = order[confidence[order] >= min_confidence]
    return np.sort(order[:most_confident])


def propagate(
    labels: np.ndarray,
    annotated: Iterable[int],
    method: str = "sdf",
    image: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    axis: int = 0,
    progress: ProgressReporter | None = None,
    *,
    segments: Sequence[Segment] | None = None,
    model: Any = None,
    device: Any = "auto",
    batch_size: int = 8,
    seed: int = 0,
    most_confident: int | None = None,
    min_confidence: float | None = None,
    **options,
) -> PropagationResult:
    """Fill the slices that are not annotated with labels propagated from the annotated ones.

    Args:
        labels: a label map (K, J, I) or label layers (L, K, J, I) (any 3D order; ``axis`` and ``spacing`` follow
            it). Only the annotated slices are read; the rest may hold anything (e.g. a ground truth kept for
            evaluation). An annotated slice may be empty (structure absent there) and is kept empty.
        annotated: indices of the annotated slices along ``axis``.
        method: a name from :data:`PROPAGATORS` (``spatial-al methods``).
        image: intensities (K, J, I) on the same grid, for methods that use them.
        spacing: voxel size in mm along each array axis, in array order (KJI arrays: slice thickness first);
            None means 1 mm.
        axis: the slice axis (array axis 0, 1 or 2 of the 3D grid).
        progress: receives progress reports and can cancel.
        segments: the structures in ``labels`` (names matched to a model's classes); default: the model's classes
            as values 1..C, or one per label value.
        model: a trained model, for methods that need one.
        device: where torch work runs ("auto", "cpu", "cuda", "mps").
        batch_size: slices per forward pass.
        seed: seeds the method's random choices (sli2vol's training).
        most_confident: keep pseudo-labels on the N most confident filled slices only (STAR's top-N).
        min_confidence: keep pseudo-labels only on slices at least this confident.
        **options: options of the method (see its docstring).

    Returns:
        A :class:`PropagationResult`.

    Raises:
        ValueError: no annotated slice; one annotated slice for a method that fills between two; annotated slices
            that are all empty; an index out of range; labels that are not 3D/4D or not integer; an image of
            another shape; a method that needs an image or a model given none (or a model of the wrong kind,
            axis or classes); an unknown method (with the closest name) or option.
    """
    if isinstance(labels, (list, tuple)) and len({np.shape(layer) for layer in labels}) > 1:
        shapes = ", ".join(str(np.shape(layer)) for layer in labels)
        raise ValueError(f"The label layers must share one shape (the volume's), got {shapes}.")
    labels = np.asarray(labels)
    if labels.ndim not in (3, 4):
        raise ValueError(f"labels must be a 3D label map or 4D label layers, got shape {labels.shape}.")
    check_label_dtype(labels)
    given_a_mask = labels.dtype == bool
    if given_a_mask:  # propagated as label 1, returned as a mask
        labels = labels.view(np.uint8)
    layers = labels if labels.ndim == 4 else labels[np.newaxis]
    axis = check_slice_axis(axis)
    if image is not None and np.shape(image) != layers.shape[1:]:
        raise ValueError(f"image shape {np.shape(image)} differs from labels shape {layers.shape[1:]}.")
    function = PROPAGATORS.get(method)
    PROPAGATORS.check_options(method, options)
    info = method_info(function)
    n_slices = layers.shape[1 + axis]
    annotated_slices = normalize_slice_indices(annotated, n_slices)
    slice_first = np.moveaxis(layers, 1 + axis, 1)
    check_sources(method, info, slice_first, annotated_slices, n_slices, axis, options)
    if info.image and image is None:
        raise ValueError(
            f"The method {method!r} works on the image and none was given: pass the image (--image in "
            "spatial-al, the volume in Slicer), or use an interpolation method such as sdf."
        )
    segments = tuple(segments) if segments is not None else default_segments(slice_first, annotated_slices, model)
    check_model(
        model if info.model else None,
        f"The method {method!r}",
        info.model,
        axis,
        [("labels", segments)],
        model_free="a model-free method such as sdf or sli2vol",
    )
    task = PropagationTask(
        label_layers=slice_first,
        segments=segments,
        annotated=annotated_slices,
        spacing=slice_spacing_first(spacing, axis),
        image=None if image is None else np.moveaxis(np.asarray(image), axis, 0),
        model=model,
        device=device,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    filled, confidence = function(task, **options)
    confidence = np.asarray(confidence, dtype=np.float32)
    confidence[annotated_slices] = 1.0
    candidates = np.setdiff1d(np.flatnonzero(~np.isnan(confidence)), annotated_slices)
    propagated = kept_slices(confidence, candidates, most_confident, min_confidence)
    output = filled.astype(layers.dtype, copy=False)  # the method's own array: changed in place
    output[:, np.setdiff1d(np.arange(n_slices), np.union1d(propagated, annotated_slices))] = 0
    for a in annotated_slices:  # slice by slice: no temporary copy of all annotated slices
        output[:, a] = slice_first[:, a]
    output = np.moveaxis(output, 1, 1 + axis)
    if given_a_mask:
        output = output.view(bool)
    return PropagationResult(
        output if labels.ndim == 4 else output[0], confidence, annotated_slices, propagated, axis, method
    )


def check_sources(
    method: str,
    info: MethodInfo,
    layers: np.ndarray,
    annotated: np.ndarray,
    n_slices: int,
    axis: int,
    options: dict,
) -> None:
    """Raise ValueError when the annotated slices cannot feed ``method``: none, only one for a method that fills
    between two, or all empty for a method that propagates their labels."""
    if annotated.size == 0:
        raise ValueError(
            f"No annotated slice: propagation starts from annotated slices, so at least one is needed (the volume "
            f"has {n_slices} slices along axis {axis}). Annotate a slice and list it in `annotated`."
        )
    if n_slices == 1:
        raise ValueError(
            f"The volume has a single slice along axis {axis}, and it is the annotated one: there is no slice to "
            "propagate to. Choose the slice axis the scan was acquired along (axis 0 is K), or check that the image "
            "is a 3D volume and not a 2D picture."
        )
    if annotated.size == 1 and not (info.fills_everywhere or options.get("extrapolate", False)):
        raise ValueError(
            f"Only one annotated slice ({annotated[0]}): {method!r} fills the slices between two annotated slices "
            "and none lies between. Annotate a second slice on the other side of the structure, or use a method "
            "that reaches beyond the annotated range (star or sli2vol with extrapolate=True, or model)."
        )
    if info.reads_annotation and not any(layers[:, a].any() for a in annotated):
        raise ValueError(
            f"The annotated slices {annotated.tolist()} are empty in every segment, so there is nothing to "
            "propagate. Draw the structure on the annotated slices, or check the segments and the slice axis chosen."
        )


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
