"""The record of which slices a person annotated and which hold propagated pseudo-labels.

It travels with the segmentation as tags of each segment, which Slicer keeps through load and save and writes into
``.seg.nrrd`` headers (``SegmentN_Tags``):

============================== ==================================================================================
tag                            value
============================== ==================================================================================
``SpatialAL.SliceAxis``        array axis of the slices, KJI order of the segmentation's reference volume (0 = K)
``SpatialAL.AnnotatedSlices``  comma-separated indices of slices annotated by a person (empty slices included)
``SpatialAL.PropagatedSlices`` comma-separated indices of slices holding pseudo-labels
``SpatialAL.PropagationMethod`` method that made the pseudo-labels (e.g. ``sdf``)
``SpatialAL.PropagatedConfidence`` one confidence in [0, 1] per propagated slice, same order
``SpatialAL.PropagatedChecksums`` one CRC-32 (hex) per propagated slice of the mask written there, same order:
                               a slice whose content no longer matches was edited by a person
============================== ==================================================================================

Writing pseudo-labels into an existing segment (:func:`merge_pseudo_labels`) never changes an annotated slice, nor a
slice holding content nobody propagated (a person's strokes), nor a propagated slice a person edited since.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

TAG_SLICE_AXIS = "SpatialAL.SliceAxis"
TAG_ANNOTATED = "SpatialAL.AnnotatedSlices"
TAG_PROPAGATED = "SpatialAL.PropagatedSlices"
TAG_METHOD = "SpatialAL.PropagationMethod"
TAG_CONFIDENCE = "SpatialAL.PropagatedConfidence"
TAG_CHECKSUMS = "SpatialAL.PropagatedChecksums"
RECORD_TAGS = (TAG_SLICE_AXIS, TAG_ANNOTATED, TAG_PROPAGATED, TAG_METHOD, TAG_CONFIDENCE, TAG_CHECKSUMS)


def slice_checksum(mask: np.ndarray) -> str:
    """CRC-32 (8 hex digits) of a 2D boolean mask's bits."""
    return f"{zlib.crc32(np.packbits(np.asarray(mask, dtype=bool))):08x}"


def _join(values) -> str:
    return ",".join(str(v) for v in values)


def _split(text: str) -> list[str]:
    return [item for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class SliceRecord:
    """Annotated and propagated slices of one segment.

    Attributes:
        slice_axis: array axis (KJI) the slice indices run along.
        annotated: slices a person annotated, sorted.
        propagated: slices holding pseudo-labels, sorted.
        confidence: one value per propagated slice.
        checksums: one :func:`slice_checksum` per propagated slice, of the mask written there.
        method: propagation method name.
    """

    slice_axis: int
    annotated: tuple[int, ...]
    propagated: tuple[int, ...] = ()
    confidence: tuple[float, ...] = ()
    checksums: tuple[str, ...] = ()
    method: str = ""

    def __post_init__(self):
        if not len(self.propagated) == len(self.confidence) == len(self.checksums):
            raise ValueError("A slice record needs one confidence and one checksum per propagated slice.")

    def to_tags(self) -> dict[str, str]:
        return {
            TAG_SLICE_AXIS: str(self.slice_axis),
            TAG_ANNOTATED: _join(self.annotated),
            TAG_PROPAGATED: _join(self.propagated),
            TAG_METHOD: self.method,
            TAG_CONFIDENCE: _join(f"{c:.4f}" for c in self.confidence),
            TAG_CHECKSUMS: _join(self.checksums),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> SliceRecord | None:
        """The record stored in a segment's tags, or None when the segment has none."""
        if TAG_ANNOTATED not in tags:
            return None
        return cls(
            slice_axis=int(tags.get(TAG_SLICE_AXIS, "0")),
            annotated=tuple(int(v) for v in _split(tags[TAG_ANNOTATED])),
            propagated=tuple(int(v) for v in _split(tags.get(TAG_PROPAGATED, ""))),
            confidence=tuple(float(v) for v in _split(tags.get(TAG_CONFIDENCE, ""))),
            checksums=tuple(_split(tags.get(TAG_CHECKSUMS, ""))),
            method=tags.get(TAG_METHOD, ""),
        )

    def with_annotated(self, slices) -> SliceRecord:
        """This record with ``slices`` added to the annotated ones (and no longer counted as propagated)."""
        added = {int(s) for s in slices}
        keep = [n for n, index in enumerate(self.propagated) if index not in added]
        return SliceRecord(
            slice_axis=self.slice_axis,
            annotated=tuple(sorted(set(self.annotated) | added)),
            propagated=tuple(self.propagated[n] for n in keep),
            confidence=tuple(self.confidence[n] for n in keep),
            checksums=tuple(self.checksums[n] for n in keep),
            method=self.method,
        )

    def unedited_propagated_slices(self, current: np.ndarray) -> set[int]:
        """Propagated slices whose content in ``current`` (slice-first bool (S, H, W)) is still what was written."""
        return {
            index
            for index, checksum in zip(self.propagated, self.checksums, strict=True)
            if index < current.shape[0] and slice_checksum(current[index]) == checksum
        }


def recorded_slices(
    segment_tags: Iterable[Mapping[str, str]], slice_axis: int, which: str = "annotated"
) -> list[int] | None:
    """Union of the ``which`` ("annotated" or "propagated") slices that segments (given by their tags) record
    along ``slice_axis``; None when no segment records any along that axis."""
    records = [SliceRecord.from_tags(tags) for tags in segment_tags]
    found = [record for record in records if record is not None and record.slice_axis == slice_axis]
    if not found:
        return None
    return sorted(set().union(*(getattr(record, which) for record in found)))


def recorded_annotated_slices(segment_tags: Iterable[Mapping[str, str]], slice_axis: int) -> list[int] | None:
    """Union of the annotated slices that segments record along ``slice_axis`` (None: no record)."""
    return recorded_slices(segment_tags, slice_axis, "annotated")


@dataclass
class MergedSegment:
    """Result of :func:`merge_pseudo_labels` for one segment.

    Attributes:
        mask: the segment after merging, bool, same shape and axis order as the inputs.
        record: the updated slice record (store it with ``record.to_tags()``).
        kept_edited: slices left as they were because a person drew there (not annotated, not our pseudo-label).
    """

    mask: np.ndarray
    record: SliceRecord
    kept_edited: tuple[int, ...]


def merge_pseudo_labels(
    current: np.ndarray,
    pseudo: np.ndarray,
    annotated: np.ndarray,
    propagated: np.ndarray,
    confidence: np.ndarray,
    previous_tags: Mapping[str, str],
    slice_axis: int,
    method: str,
) -> MergedSegment:
    """Write one segment's pseudo-labels where nothing of a person's would be lost.

    A propagated slice is written when it is empty in ``current`` or still holds the pseudo-label recorded in the
    segment's tags; annotated slices and every other slice with content (a person's strokes, or an edited
    pseudo-label) are left untouched and listed in ``kept_edited``.

    Args:
        current: the segment now, bool (K, J, I) (any 3D order ``slice_axis`` refers to).
        pseudo: the propagated segment, same shape.
        annotated: annotated slice indices.
        propagated: slice indices to write pseudo-labels on.
        confidence: per-slice confidence, shape (n_slices,).
        previous_tags: the segment's tags before this propagation (its record, if any, is read from them).
        slice_axis: the slice axis.
        method: propagation method stored in the record.
    """
    current_first = np.moveaxis(np.asarray(current, dtype=bool), slice_axis, 0)
    pseudo_first = np.moveaxis(np.asarray(pseudo, dtype=bool), slice_axis, 0)
    previous = SliceRecord.from_tags(previous_tags)
    if previous is not None and previous.slice_axis != slice_axis:
        previous = None  # a record along another axis says nothing about these slices
    ours = previous.unedited_propagated_slices(current_first) if previous is not None else set()
    annotated_set = {int(a) for a in annotated}
    merged = current_first.copy()
    written, kept = [], []
    for index in (int(p) for p in propagated):
        if index in annotated_set:
            continue
        if index in ours or not current_first[index].any():
            merged[index] = pseudo_first[index]
            written.append(index)
        else:
            kept.append(index)
    # Earlier pseudo-labels on slices not rewritten now stay recorded while nobody edits them.
    still_ours = sorted(i for i in ours if i not in written and i not in annotated_set)
    previous_confidence = dict(zip(previous.propagated, previous.confidence, strict=True)) if previous else {}
    all_propagated = sorted(written + still_ours)
    record = SliceRecord(
        slice_axis=slice_axis,
        annotated=tuple(sorted(annotated_set)),
        propagated=tuple(all_propagated),
        confidence=tuple(
            float(confidence[i]) if i in written else float(previous_confidence[i]) for i in all_propagated
        ),
        checksums=tuple(slice_checksum(merged[i]) for i in all_propagated),
        method=method,
    )
    return MergedSegment(np.moveaxis(merged, 0, slice_axis), record, tuple(kept))
