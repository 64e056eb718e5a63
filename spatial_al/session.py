"""Propagation applied to a whole segmentation: every segment, every layer, without losing a person's work."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .annotation_record import SliceRecord, merge_pseudo_labels, slice_checksums
from .io.segmentation import Segmentation, smallest_label_dtype
from .progress import ProgressReporter
from .volume import Segment, normalize_slice_indices

if TYPE_CHECKING:  # imported where propagation runs: assembling layers must not need scipy or torch
    from .propagation import PropagationResult


@dataclass
class LayerPropagation:
    """Every segment of a segmentation propagated from the annotated slices (nothing merged yet).

    Attributes:
        pseudo_masks: segment identifier -> propagated bool mask (K, J, I); annotated slices as annotated, empty
            where nothing was propagated.
        confidence: per-slice confidence along the slice axis, shape (n_slices,); NaN where the method reached
            nothing.
        annotated: annotated slice indices.
        propagated: slice indices that received pseudo-labels.
        result: the propagation of the label layers.
    """

    pseudo_masks: dict[str, np.ndarray]
    confidence: np.ndarray
    annotated: np.ndarray
    propagated: np.ndarray
    result: PropagationResult


@dataclass
class SegmentationPropagation:
    """What :func:`propagate_segmentation` returns.

    Attributes:
        segmentation: the segmentation with pseudo-labels merged in and each segment's slice record in its tags.
        confidence: per-slice confidence along the slice axis, shape (n_slices,) (NaN where nothing was propagated).
        annotated: annotated slice indices.
        propagated: slice indices that received pseudo-labels (in at least one segment).
        kept_edited: segment name -> slices left untouched because a person drew there.
    """

    segmentation: Segmentation
    confidence: np.ndarray
    annotated: np.ndarray
    propagated: np.ndarray
    kept_edited: dict[str, tuple[int, ...]]


def assemble_layers(segments: Sequence[Segment], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[Segment, ...]]:
    """Pack boolean segment masks (K, J, I) into label layers (L, K, J, I) the way Slicer shares labelmaps.

    A segment keeps its layer and label value unless it would overlap a segment already placed there; it then moves
    to the first layer where it overlaps nothing (a new one if needed). No voxel of any segment is lost.
    """
    shape = masks[0].shape if masks else (0, 0, 0)
    layers: list[np.ndarray] = []
    placed: list[Segment] = []
    # a moved segment may take the next free value of its layer: leave room for one more value per segment
    largest = max((s.label_value for s in segments), default=1) + len(segments)
    dtype = smallest_label_dtype(largest)
    for segment, mask in zip(segments, masks, strict=True):
        preferred = [segment.layer] + [i for i in range(len(layers)) if i != segment.layer]
        for layer_index in preferred:
            while layer_index >= len(layers):
                layers.append(np.zeros(shape, dtype=dtype))
            layer = layers[layer_index]
            if layer[mask].any():
                continue
            used = {s.label_value for s in placed if s.layer == layer_index}
            value = segment.label_value if segment.label_value not in used else max(used | {0}) + 1
            layer[mask] = value
            placed.append(replace(segment, layer=layer_index, label_value=value))
            break
        else:
            layers.append(np.zeros(shape, dtype=dtype))
            layers[-1][mask] = segment.label_value
            placed.append(replace(segment, layer=len(layers) - 1))
    used_layers = sorted({s.layer for s in placed}) or [0]
    renumber = {old: new for new, old in enumerate(used_layers)}
    stacked = np.stack([layers[i] for i in used_layers]) if layers else np.zeros((1, *shape), dtype=dtype)
    return stacked, tuple(replace(s, layer=renumber[s.layer]) for s in placed)


def slice_checksums_by_segment(segmentation: Segmentation, axis: int) -> dict[str, tuple[str, ...]]:
    """Segment identifier -> one checksum per slice along ``axis`` of its mask (see
    :func:`~spatial_al.annotation_record.slice_checksums`): what a propagation read, to tell at write time which
    slices a person changed meanwhile."""
    return {
        segment.identifier: slice_checksums(segmentation.label_layers[segment.layer] == segment.label_value, axis)
        for segment in segmentation.segments
    }


def annotation_only(
    segmentation: Segmentation, annotated: Iterable[int], axis: int, segment_names: Sequence[str] | None = None
) -> Segmentation:
    """The segmentation with every slice but the annotated ones emptied (what a person drew, for a simulation); with
    ``segment_names``, only those segments are emptied and the others kept whole."""
    layers = segmentation.label_layers
    index: list[slice | np.ndarray] = [slice(None)] * 3
    index[axis] = np.setdiff1d(
        np.arange(layers.shape[1 + axis]), normalize_slice_indices(annotated, layers.shape[1 + axis])
    )
    kept = layers.copy()
    for segment in chosen_segments(segmentation, segment_names):
        layer = kept[segment.layer]
        layer[tuple(index)] = np.where(layer[tuple(index)] == segment.label_value, 0, layer[tuple(index)])
    return Segmentation(kept, segmentation.segments, segmentation.geometry)


def recorded_along(segment: Segment, axis: int) -> SliceRecord | None:
    """The segment's slice record when it counts slices along ``axis``; None otherwise."""
    record = SliceRecord.from_tags(segment.tags, segment.name)
    return record if record is not None and record.slice_axis == axis else None


def work_in_progress(
    segmentation: Segmentation, annotated: Iterable[int], axis: int, segment_names: Sequence[str] | None = None
) -> Segmentation:
    """The segmentation as a propagation read from files merges into.

    A segment with a slice record along ``axis`` came out of an annotation session: it is kept whole, so a person's
    strokes and edited pseudo-labels survive the next propagation as they do in Slicer. A segment without one is read
    as a reference (a ground truth, or a label map from another tool): only its annotated slices are kept, the others
    emptied to receive pseudo-labels.
    """
    unrecorded = [s.name for s in chosen_segments(segmentation, segment_names) if recorded_along(s, axis) is None]
    return annotation_only(segmentation, annotated, axis, unrecorded) if unrecorded else segmentation


def edited_pseudo_labels(
    segmentation: Segmentation, axis: int, segment_names: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """Segment name -> the slices holding pseudo-labels a person edited or erased since they were written (see
    :meth:`~spatial_al.annotation_record.SliceRecord.edited_slices`); segments with none are left out."""
    edited = {}
    for segment in chosen_segments(segmentation, segment_names):
        record = recorded_along(segment, axis)
        if record is not None:
            mask = np.moveaxis(segmentation.label_layers[segment.layer] == segment.label_value, axis, 0)
            slices = sorted(record.edited_slices(mask))
            if slices:
                edited[segment.name] = slices
    return edited


def chosen_segments(segmentation: Segmentation, names: Sequence[str] | None) -> tuple[Segment, ...]:
    """The segments called ``names`` (all when None); ValueError naming the segments there are otherwise."""
    from .learning import select_segments

    return select_segments(segmentation.segments, names)


def only_segments(segmentation: Segmentation, segments: Sequence[Segment]) -> Segmentation:
    """The segmentation holding ``segments`` only: the other segments' label values are cleared from the layers."""
    kept = np.zeros_like(segmentation.label_layers)
    for segment in segments:
        layer = segmentation.label_layers[segment.layer]
        kept[segment.layer][layer == segment.label_value] = segment.label_value
    return Segmentation(kept, tuple(segments), segmentation.geometry)


def propagate_layers(
    segmentation: Segmentation,
    annotated: Iterable[int],
    method: str = "sdf",
    image: np.ndarray | None = None,
    axis: int = 0,
    progress: ProgressReporter | None = None,
    **options,
) -> LayerPropagation:
    """Propagate every segment of a segmentation from its annotated slices (arrays KJI, spacing from its geometry).

    ``options`` are those of :func:`spatial_al.propagation.propagate` (model, device, most_confident, ...) and of
    the method; the segments are the segmentation's.
    """
    from .propagation import propagate

    result = propagate(
        segmentation.label_layers,
        annotated,
        method,
        image,
        segmentation.geometry.array_spacing,
        axis,
        progress,
        segments=segmentation.segments,
        **options,
    )
    pseudo_masks = {
        segment.identifier: result.labels[segment.layer] == segment.label_value for segment in segmentation.segments
    }
    return LayerPropagation(pseudo_masks, result.confidence, result.annotated, result.propagated, result)


def propagate_segmentation(
    segmentation: Segmentation,
    annotated: Iterable[int],
    method: str = "sdf",
    image: np.ndarray | None = None,
    axis: int = 0,
    progress: ProgressReporter | None = None,
    *,
    segment_names: Sequence[str] | None = None,
    accept_edits: bool = False,
    **options,
) -> SegmentationPropagation:
    """Propagate the segments from the annotated slices and merge the pseudo-labels into the segmentation.

    Pseudo-labels are written only where they lose nothing (see
    :func:`spatial_al.annotation_record.merge_pseudo_labels`); each segment's tags record the annotated and
    propagated slices. Arrays are KJI; ``axis`` is the slice axis; spacing comes from the segmentation's geometry.
    ``segment_names`` limits the propagation to those segments (default: all); the others are kept as they are.
    With ``accept_edits``, the pseudo-labels a person edited or erased in any of those segments (see
    :func:`edited_pseudo_labels`) are taken as annotated slices of all of them, as Mark annotated does in Slicer.
    """
    if accept_edits:
        edited = edited_pseudo_labels(segmentation, axis, segment_names).values()
        annotated = sorted(
            set(normalize_slice_indices(annotated, segmentation.label_layers.shape[1 + axis])).union(*edited)
        )
    layers = segmentation.label_layers
    chosen = {segment.identifier for segment in chosen_segments(segmentation, segment_names)}
    sources = only_segments(segmentation, [s for s in segmentation.segments if s.identifier in chosen])
    propagation = propagate_layers(sources, annotated, method, image, axis, progress, **options)
    masks, segments, kept = [], [], {}
    for segment in segmentation.segments:
        if segment.identifier not in chosen:
            masks.append(layers[segment.layer] == segment.label_value)
            segments.append(segment)
            continue
        merged = merge_pseudo_labels(
            current=layers[segment.layer] == segment.label_value,
            pseudo=propagation.pseudo_masks[segment.identifier],
            annotated=propagation.annotated,
            propagated=propagation.propagated,
            confidence=propagation.confidence,
            previous_tags=segment.tags,
            slice_axis=axis,
            method=method,
        )
        masks.append(merged.mask)
        segments.append(replace(segment, tags={**segment.tags, **merged.record.to_tags()}))
        if merged.kept_edited:
            kept[segment.name] = merged.kept_edited
    label_layers, placed = assemble_layers(segments, masks)
    return SegmentationPropagation(
        Segmentation(label_layers, placed, segmentation.geometry),
        propagation.confidence,
        propagation.annotated,
        propagation.propagated,
        kept,
    )
