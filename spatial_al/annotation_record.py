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
``SpatialAL.EditedSlices``     comma-separated indices of pseudo-labels a person edited or erased since they were
                               written (optional; absent means none)
============================== ==================================================================================

Writing pseudo-labels into an existing segment (:func:`merge_pseudo_labels`) never changes an annotated slice, nor a
slice holding content nobody propagated (a person's strokes), nor a propagated slice a person edited or erased since:
such a slice moves from the propagated slices to the edited ones, where it stays until a person marks it annotated.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

TAG_SLICE_AXIS = "SpatialAL.SliceAxis"
TAG_ANNOTATED = "SpatialAL.AnnotatedSlices"
TAG_PROPAGATED = "SpatialAL.PropagatedSlices"
TAG_METHOD = "SpatialAL.PropagationMethod"
TAG_CONFIDENCE = "SpatialAL.PropagatedConfidence"
TAG_CHECKSUMS = "SpatialAL.PropagatedChecksums"
TAG_EDITED = "SpatialAL.EditedSlices"
RECORD_TAGS = (TAG_SLICE_AXIS, TAG_ANNOTATED, TAG_PROPAGATED, TAG_METHOD, TAG_CONFIDENCE, TAG_CHECKSUMS, TAG_EDITED)


def slice_checksum(mask: np.ndarray) -> str:
    """CRC-32 (8 hex digits) of a 2D boolean mask's bits."""
    return f"{zlib.crc32(np.packbits(np.asarray(mask, dtype=bool))):08x}"


def slice_checksums(mask: np.ndarray, slice_axis: int) -> tuple[str, ...]:
    """One :func:`slice_checksum` per slice of a 3D boolean ``mask`` along ``slice_axis``."""
    return tuple(slice_checksum(np.take(mask, index, axis=slice_axis)) for index in range(mask.shape[slice_axis]))


class SliceRecordError(ValueError):
    """A segment's slice record cannot be used as it is; the message names the segment, the tag and the fix."""


def _slice_index(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def _confidence(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(text)
    return value


def _checksum(text: str) -> str:
    if len(text) != 8 or any(c not in "0123456789abcdef" for c in text.lower()):
        raise ValueError(text)
    return text.lower()


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
        edited: slices that held pseudo-labels a person has since edited or erased, sorted: never overwritten, and
            not read as annotation until a person marks them annotated.
    """

    slice_axis: int
    annotated: tuple[int, ...]
    propagated: tuple[int, ...] = ()
    confidence: tuple[float, ...] = ()
    checksums: tuple[str, ...] = ()
    method: str = ""
    edited: tuple[int, ...] = ()

    def __post_init__(self):
        if not len(self.propagated) == len(self.confidence) == len(self.checksums):
            raise SliceRecordError("A slice record needs one confidence and one checksum per propagated slice.")

    def to_tags(self) -> dict[str, str]:
        return {
            TAG_SLICE_AXIS: str(self.slice_axis),
            TAG_ANNOTATED: _join(self.annotated),
            TAG_PROPAGATED: _join(self.propagated),
            TAG_METHOD: self.method,
            TAG_CONFIDENCE: _join(f"{c:.4f}" for c in self.confidence),
            TAG_CHECKSUMS: _join(self.checksums),
            TAG_EDITED: _join(self.edited),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], segment: str = "") -> SliceRecord | None:
        """The record stored in a segment's tags, or None when the segment has none.

        Raises:
            SliceRecordError: a tag that cannot be read (a slice that is not a whole number, an axis other than 0, 1
                or 2, a confidence outside [0, 1], a checksum that is not 8 hex digits, lists of different lengths,
                a slice in two of the annotated, propagated and edited lists); the message names ``segment``, the
                tag and its value.
        """
        if not any(tag in tags for tag in RECORD_TAGS):
            return None

        def damaged(tag: str, expected: str) -> SliceRecordError:
            return SliceRecordError(
                f"Segment {segment!r}: its slice record's tag {tag} is {tags.get(tag, '(missing)')!r}, where "
                f"{expected} is expected. Correct the tag or remove the record (Slicer's Segmentations module shows "
                "segment tags), then mark the annotated slices again."
            )

        def values(tag: str, parse, expected: str) -> tuple:
            try:
                return tuple(parse(item.strip()) for item in _split(tags.get(tag, "")))
            except ValueError:
                raise damaged(tag, expected) from None

        axis = tags.get(TAG_SLICE_AXIS, "0").strip()  # absent: axis 0, as records without the tag were read
        if axis not in ("0", "1", "2"):
            raise damaged(TAG_SLICE_AXIS, "the array axis the slices run along: 0, 1 or 2")
        if TAG_ANNOTATED not in tags:
            raise damaged(TAG_ANNOTATED, "the annotated slices, comma-separated (empty when none is)")
        slice_list = "whole slice numbers from 0, comma-separated (as 2,9,17)"
        annotated = values(TAG_ANNOTATED, _slice_index, slice_list)
        propagated = values(TAG_PROPAGATED, _slice_index, slice_list)
        confidence = values(TAG_CONFIDENCE, _confidence, "one confidence from 0 to 1 per propagated slice")
        checksums = values(TAG_CHECKSUMS, _checksum, "one 8-digit hexadecimal checksum per propagated slice")
        if len(confidence) != len(propagated):
            raise damaged(TAG_CONFIDENCE, f"one confidence per propagated slice ({len(propagated)})")
        if len(checksums) != len(propagated):
            raise damaged(TAG_CHECKSUMS, f"one checksum per propagated slice ({len(propagated)})")
        edited = values(TAG_EDITED, _slice_index, slice_list)
        both = sorted(set(annotated) & set(propagated))
        if both:
            raise damaged(TAG_PROPAGATED, f"slices that are not annotated too (slice {both[0]} is in both)")
        twice = sorted(set(edited) & (set(annotated) | set(propagated)))
        if twice:
            raise damaged(TAG_EDITED, f"slices neither annotated nor propagated (slice {twice[0]} is listed there)")
        order = np.argsort(propagated, kind="stable")
        return cls(
            slice_axis=int(axis),
            annotated=tuple(sorted(set(annotated))),
            propagated=tuple(propagated[i] for i in order),
            confidence=tuple(confidence[i] for i in order),
            checksums=tuple(checksums[i] for i in order),
            method=tags.get(TAG_METHOD, ""),
            edited=tuple(sorted(set(edited))),
        )

    def check_range(self, n_slices: int, segment: str = "") -> None:
        """Raise :class:`SliceRecordError` when a recorded slice lies beyond the ``n_slices`` of the record's axis
        (a record written for another volume)."""
        for tag, slices in (
            (TAG_ANNOTATED, self.annotated),
            (TAG_PROPAGATED, self.propagated),
            (TAG_EDITED, self.edited),
        ):
            beyond = [index for index in slices if index >= n_slices]
            if beyond:
                raise SliceRecordError(
                    f"Segment {segment!r}: its slice record lists slice {beyond[0]} in {tag}, but the volume has "
                    f"{n_slices} slices along axis {self.slice_axis}: the record was written for another volume. "
                    "Correct the tag or remove the record, or name the annotated slices yourself (--annotated)."
                )

    def with_annotated(self, slices) -> SliceRecord:
        """This record with ``slices`` added to the annotated ones (and no longer counted as propagated or edited)."""
        added = {int(s) for s in slices}
        keep = [n for n, index in enumerate(self.propagated) if index not in added]
        return SliceRecord(
            slice_axis=self.slice_axis,
            annotated=tuple(sorted(set(self.annotated) | added)),
            propagated=tuple(self.propagated[n] for n in keep),
            confidence=tuple(self.confidence[n] for n in keep),
            checksums=tuple(self.checksums[n] for n in keep),
            method=self.method,
            edited=tuple(index for index in self.edited if index not in added),
        )

    def unedited_propagated_slices(self, current: np.ndarray) -> set[int]:
        """Propagated slices whose content in ``current`` (slice-first bool (S, H, W)) is still what was written."""
        return {
            index
            for index, checksum in zip(self.propagated, self.checksums, strict=True)
            if index < current.shape[0] and slice_checksum(current[index]) == checksum
        }

    def edited_slices(self, current: np.ndarray) -> set[int]:
        """Slices holding pseudo-labels a person edited or erased: those recorded as edited, and the propagated
        slices whose content in ``current`` (slice-first bool (S, H, W)) no longer matches what was written."""
        return set(self.edited) | (set(self.propagated) - self.unedited_propagated_slices(current))


def recorded_slices(
    segment_tags: Mapping[str, Mapping[str, str]],
    slice_axis: int,
    which: str = "annotated",
    n_slices: int | None = None,
) -> list[int] | None:
    """Union of the ``which`` ("annotated" or "propagated") slices that segments record along ``slice_axis``; None
    when no segment records any along that axis. A record along another axis says nothing about these slices: it is
    ignored, with a warning naming the segment.

    Args:
        segment_tags: segment name -> its tags.
        slice_axis: the array axis the slices are counted along.
        which: "annotated" or "propagated".
        n_slices: the volume's slices along ``slice_axis``, to refuse a record that lists slices beyond them.

    Raises:
        SliceRecordError: a record that cannot be read, or lists slices beyond ``n_slices``.
    """
    found = []
    for segment, tags in segment_tags.items():
        record = SliceRecord.from_tags(tags, segment)
        if record is None:
            continue
        if record.slice_axis != slice_axis:
            warnings.warn(
                f"Segment {segment!r} records its slices along axis {record.slice_axis}, and slices are counted "
                f"along axis {slice_axis} here: its record is ignored.",
                stacklevel=2,
            )
            continue
        if n_slices is not None:
            record.check_range(n_slices, segment)
        found.append(record)
    if not found:
        return None
    return sorted(set().union(*(getattr(record, which) for record in found)))


def recorded_annotated_slices(
    segment_tags: Mapping[str, Mapping[str, str]], slice_axis: int, n_slices: int | None = None
) -> list[int] | None:
    """Union of the annotated slices that segments (name -> tags) record along ``slice_axis`` (None: no record)."""
    return recorded_slices(segment_tags, slice_axis, "annotated", n_slices)


@dataclass
class MergedSegment:
    """Result of :func:`merge_pseudo_labels` for one segment.

    Attributes:
        mask: the segment after merging, bool, same shape and axis order as the inputs.
        record: the updated slice record (store it with ``record.to_tags()``).
        kept_edited: slices the propagation filled but left as they were: a person's strokes (not annotated, not a
            pseudo-label), a pseudo-label a person edited or erased, or a slice changed after the propagation read
            the segment.
        written: slices that received pseudo-labels.
    """

    mask: np.ndarray
    record: SliceRecord
    kept_edited: tuple[int, ...]
    written: tuple[int, ...]


def merge_pseudo_labels(
    current: np.ndarray,
    pseudo: np.ndarray,
    annotated: np.ndarray,
    propagated: np.ndarray,
    confidence: np.ndarray,
    previous_tags: Mapping[str, str],
    slice_axis: int,
    method: str,
    as_read: Sequence[str] | None = None,
) -> MergedSegment:
    """Write one segment's pseudo-labels where nothing of a person's would be lost.

    A propagated slice is written when it still holds the pseudo-label recorded in the segment's tags, or when it is
    empty and was never a pseudo-label a person erased. Left untouched: annotated slices (those given and those the
    segment's record holds now), slices with content nobody propagated (a person's strokes), and pseudo-labels a
    person edited or erased, which the record keeps as edited until a person marks them annotated. With
    ``as_read``, a slice whose content changed since the propagation read the segment (a stroke, or an erasure, made
    while it ran) is left untouched too. Every filled slice left untouched is listed in ``kept_edited``.

    Args:
        current: the segment now, bool (K, J, I) (any 3D order ``slice_axis`` refers to).
        pseudo: the propagated segment, same shape.
        annotated: annotated slice indices.
        propagated: slice indices to write pseudo-labels on.
        confidence: per-slice confidence, shape (n_slices,).
        previous_tags: the segment's tags before this propagation (its record, if any, is read from them).
        slice_axis: the slice axis.
        method: propagation method stored in the record.
        as_read: one :func:`slice_checksum` per slice of the segment as the propagation read it (see
            :func:`slice_checksums`); None when it was read just now.
    """
    current_first = np.moveaxis(np.asarray(current, dtype=bool), slice_axis, 0)
    pseudo_first = np.moveaxis(np.asarray(pseudo, dtype=bool), slice_axis, 0)
    previous = SliceRecord.from_tags(previous_tags)
    if previous is not None and previous.slice_axis != slice_axis:
        previous = None  # a record along another axis says nothing about these slices
    ours = previous.unedited_propagated_slices(current_first) if previous is not None else set()
    edited = previous.edited_slices(current_first) if previous is not None else set()
    annotated_set = {int(a) for a in annotated} | set(previous.annotated if previous is not None else ())
    merged = current_first.copy()
    written, kept = [], []
    for index in (int(p) for p in propagated):
        if index in annotated_set:
            continue
        unchanged_meanwhile = as_read is None or slice_checksum(current_first[index]) == as_read[index]
        free = index in ours or (index not in edited and not current_first[index].any())
        if unchanged_meanwhile and free:
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
        edited=tuple(sorted(edited - annotated_set)),
    )
    return MergedSegment(np.moveaxis(merged, 0, slice_axis), record, tuple(kept), tuple(written))
