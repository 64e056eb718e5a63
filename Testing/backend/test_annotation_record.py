"""The annotated/propagated record in segment tags, and merging pseudo-labels without losing a person's work."""

import numpy as np
import pytest

from spatial_al.annotation_record import SliceRecord, merge_pseudo_labels, slice_checksum
from spatial_al.io.segmentation import Segmentation
from spatial_al.session import annotation_only, assemble_layers, propagate_segmentation
from spatial_al.volume import Geometry, Segment


def test_record_round_trips_through_tags():
    record = SliceRecord(1, (0, 5, 9), (1, 2), (0.75, 0.5), ("0badc0de", "12345678"), "sdf")
    tags = record.to_tags()
    assert all("|" not in key + value and ":" not in key for key, value in tags.items())
    assert SliceRecord.from_tags(tags) == record
    assert SliceRecord.from_tags({"other": "x"}) is None


def test_checksum_tells_masks_apart():
    mask = np.zeros((8, 9), bool)
    mask[2:5, 3:7] = True
    edited = mask.copy()
    edited[7, 8] = True
    assert slice_checksum(mask) == slice_checksum(mask.copy()) != slice_checksum(edited)


def test_with_annotated_moves_slices_out_of_the_propagated_ones():
    record = SliceRecord(0, (0, 9), (3, 4), (0.6, 0.5), ("aaaaaaaa", "bbbbbbbb"), "sdf").with_annotated([4])
    assert record.annotated == (0, 4, 9) and record.propagated == (3,) and record.checksums == ("aaaaaaaa",)


def merge(current, pseudo, previous_tags, annotated=(0, 8)):
    return merge_pseudo_labels(
        current, pseudo, np.array(annotated), np.arange(1, 8), np.full(9, 0.7), previous_tags, 0, "sdf"
    )


def test_merge_keeps_annotation_and_strokes_and_replaces_own_pseudo_labels():
    current = np.zeros((9, 6, 6), bool)
    current[0, 1:3, 1:3] = True  # annotated
    current[4, 0, 0] = True  # a person's stroke on a slice nobody annotated
    pseudo = np.ones((9, 6, 6), bool)
    first = merge(current, pseudo, {})
    np.testing.assert_array_equal(first.mask[[0, 8]], current[[0, 8]])
    np.testing.assert_array_equal(first.mask[4], current[4])
    assert first.kept_edited == (4,)
    assert first.mask[[1, 2, 3, 5, 6, 7]].all()
    assert first.record.propagated == (1, 2, 3, 5, 6, 7) and first.record.annotated == (0, 8)

    # Second round: new pseudo-labels replace ours, except on slice 6, which a person edited meanwhile.
    edited = first.mask.copy()
    edited[6, 0, :] = False
    smaller = np.zeros((9, 6, 6), bool)
    smaller[:, 2:4, 2:4] = True
    second = merge(edited, smaller, first.record.to_tags())
    np.testing.assert_array_equal(second.mask[[1, 2, 3, 5, 7]], smaller[[1, 2, 3, 5, 7]])
    np.testing.assert_array_equal(second.mask[6], edited[6])
    assert second.kept_edited == (4, 6)
    assert 6 not in second.record.propagated and second.record.edited == (6,)


def test_an_erased_pseudo_label_is_never_filled_again_until_marked_annotated():
    current = np.zeros((9, 6, 6), bool)
    current[[0, 8], 1:4, 1:4] = True
    pseudo = np.ones((9, 6, 6), bool)
    first = merge(current, pseudo, {})
    erased = first.mask.copy()
    erased[3] = False  # the structure is absent there, a person says
    second = merge(erased, pseudo, first.record.to_tags())
    assert not second.mask[3].any() and second.kept_edited == (3,) and second.record.edited == (3,)
    third = merge(second.mask, pseudo, second.record.to_tags())  # the record remembers it: still not filled
    assert not third.mask[3].any() and third.record.edited == (3,)
    assert SliceRecord.from_tags(third.record.to_tags()) == third.record
    marked = third.record.with_annotated([3])
    assert marked.annotated == (0, 3, 8) and marked.edited == ()


def test_merge_along_another_axis():
    current = np.zeros((4, 5, 9), bool)
    pseudo = np.ones((4, 5, 9), bool)
    merged = merge_pseudo_labels(current, pseudo, np.array([0, 8]), np.arange(1, 8), np.ones(9), {}, 2, "sdf")
    assert not merged.mask[..., [0, 8]].any() and merged.mask[..., 1:8].all()
    assert merged.record.slice_axis == 2


def test_assemble_layers_keeps_every_voxel_of_overlapping_segments():
    first, second, third = np.zeros((3, 4, 4, 4), bool)
    first[0, :2] = True
    second[0, 1:3] = True  # overlaps first
    third[2] = True
    segments = (Segment("a", 1), Segment("b", 2), Segment("c", 3))
    layers, placed = assemble_layers(segments, [first, second, third])
    assert layers.shape[0] == 2 and [s.layer for s in placed] == [0, 1, 0]
    for segment, mask in zip(placed, [first, second, third], strict=True):
        np.testing.assert_array_equal(layers[segment.layer] == segment.label_value, mask)


def test_propagate_segmentation_records_slices_in_every_segment():
    labels = np.zeros((7, 10, 10), np.uint8)
    labels[[0, 6], 2:6, 2:6] = 1
    labels[[0, 6], 6:9, 6:9] = 2
    segmentation = Segmentation(labels, (Segment("a", 1), Segment("b", 2)), Geometry(labels.shape))
    result = propagate_segmentation(segmentation, [0, 6])
    assert [s.name for s in result.segmentation.segments] == ["a", "b"]
    for segment in result.segmentation.segments:
        record = SliceRecord.from_tags(segment.tags)
        assert record.annotated == (0, 6) and record.propagated == (1, 2, 3, 4, 5) and record.method == "sdf"
    np.testing.assert_array_equal(result.segmentation.label_layers[0][3], labels[0])


def test_only_the_named_segments_are_propagated_and_the_others_kept_whole():
    labels = np.zeros((7, 10, 10), np.uint8)
    labels[[0, 6], 2:6, 2:6] = 1
    labels[[0, 3], 6:9, 6:9] = 2  # "b" also holds a stroke on slice 3, which is not annotated
    segmentation = Segmentation(labels, (Segment("a", 1), Segment("b", 2)), Geometry(labels.shape))
    result = propagate_segmentation(segmentation, [0, 6], segment_names=["a"])
    a, b = result.segmentation.segments
    layers = result.segmentation.label_layers
    np.testing.assert_array_equal(layers[b.layer] == b.label_value, labels == 2)
    assert b.tags == {} and SliceRecord.from_tags(a.tags).propagated == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(layers[a.layer][1:6] == a.label_value, np.broadcast_to(labels[0] == 1, (5, 10, 10)))
    with pytest.raises(ValueError, match=r"No segment named 'c'.*it has: a, b"):
        propagate_segmentation(segmentation, [0, 6], segment_names=["c"])
    sources = annotation_only(segmentation, [0, 6], 0, ["b"])
    np.testing.assert_array_equal(sources.label_layers[0] == 1, labels == 1)  # "a" is kept whole
    np.testing.assert_array_equal(
        sources.label_layers[0] == 2, np.isin(np.arange(7), [0, 6])[:, None, None] & (labels == 2)
    )


def test_nothing_to_fill_leaves_the_segmentation_as_it_is():
    labels = np.zeros((2, 5, 5), np.uint8)
    labels[:, 1:3, 1:3] = 1
    segmentation = Segmentation(labels, (Segment("a", 1),), Geometry(labels.shape))
    result = propagate_segmentation(segmentation, [0, 1])
    np.testing.assert_array_equal(result.segmentation.label_layers[0], labels)
    assert result.propagated.size == 0


def test_label_values_above_65535_are_kept():
    masks = [np.zeros((2, 3, 3), bool) for _ in range(2)]
    masks[0][0, 0, 0] = masks[1][1, 1, 1] = True
    layers, placed = assemble_layers([Segment("a", 70000), Segment("b", 300)], masks)
    assert layers.dtype == np.uint32 and layers[0, 0, 0, 0] == 70000 and layers[0, 1, 1, 1] == 300
    assert [s.label_value for s in placed] == [70000, 300]
