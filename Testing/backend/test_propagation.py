"""Propagation: sdf and contour interpolation against references computed another way, and the input checks."""

import numpy as np
import pytest
from scipy import ndimage

import spatial_al
from spatial_al.progress import OperationCancelled, RecordingProgress
from spatial_al.registry import UnknownNameError


def disc(radius_rows, radius_columns=None, shape=(40, 40), center=(20, 20)):
    """Boolean ellipse of the given radii (in pixels) on a 2D grid."""
    radius_columns = radius_rows if radius_columns is None else radius_columns
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return ((rows - center[0]) / radius_rows) ** 2 + ((columns - center[1]) / radius_columns) ** 2 <= 1


def full_slice_sdf_blend(first, last, t, sampling):
    """Reference: signed distances on whole (padded) slices, no cropping, blended linearly."""

    def sdf(mask):
        padded = np.pad(mask, 1)
        inside = ndimage.distance_transform_edt(padded, sampling=sampling)
        outside = ndimage.distance_transform_edt(~padded, sampling=sampling)
        return (inside - outside)[1:-1, 1:-1]

    return (1 - t) * sdf(first) + t * sdf(last) > 0


def test_identical_masks_give_the_same_mask_in_between():
    shape = np.zeros((7, 30, 30), np.uint8)
    shape[0, 5:20, 8:25] = shape[6, 5:20, 8:25] = 4
    shape[0, 22:27, 3:9] = shape[6, 22:27, 3:9] = 4
    result = spatial_al.propagate(shape, [0, 6], spacing=(5.0, 0.7, 1.3))
    for k in range(7):
        np.testing.assert_array_equal(result.labels[k], shape[0])
    np.testing.assert_allclose(result.confidence, 1.0)


def test_discs_interpolate_to_discs_of_the_interpolated_radius(disc_stack):
    result = spatial_al.propagate(disc_stack, [0, 10])
    for k in range(11):
        radius = 5 + k
        outside_by_more_than_a_pixel = disc(radius + 1) & ~disc(radius - 1)
        mismatch = (result.labels[k] == 1) != disc(radius)
        assert not (mismatch & ~outside_by_more_than_a_pixel).any(), f"slice {k} is not within a pixel of r={radius}"


def test_cropping_gives_the_full_slice_result():
    labels = np.zeros((9, 48, 40), np.uint8)
    labels[0][disc(6, 9, (48, 40), (15, 12))] = 1
    labels[8][disc(11, 5, (48, 40), (30, 22))] = 1
    result = spatial_al.propagate(labels, [0, 8], spacing=(3.0, 0.8, 1.2))
    for k in range(1, 8):
        expected = full_slice_sdf_blend(labels[0] == 1, labels[8] == 1, k / 8, (0.8, 1.2))
        np.testing.assert_array_equal(result.labels[k] == 1, expected)


def test_anisotropic_pixels_interpolate_in_millimetres():
    """Two 10 mm discs 16 mm apart on 1 x 2 mm pixels: mid-way, the blend of their signed distances (R - |p - c|)
    is positive inside the ellipse |p - c1| + |p - c2| < 2R, in millimetres."""
    rows, columns = np.mgrid[:40, :60] * np.array([1.0, 2.0])[:, None, None]  # positions in mm
    labels = np.zeros((3, 40, 60), np.uint8)
    labels[0][np.hypot(rows - 20, columns - 52) <= 10] = 1
    labels[2][np.hypot(rows - 20, columns - 68) <= 10] = 1
    distance_sum = np.hypot(rows - 20, columns - 52) + np.hypot(rows - 20, columns - 68)
    expected = distance_sum <= 20
    near_boundary = np.abs(distance_sum - 20) < 2.5
    physical = spatial_al.propagate(labels, [0, 2], spacing=(2.0, 1.0, 2.0)).labels[1] == 1
    in_pixels = spatial_al.propagate(labels, [0, 2], spacing=(2.0, 1.0, 1.0)).labels[1] == 1
    assert not ((physical != expected) & ~near_boundary).any()
    assert np.count_nonzero(physical != expected) * 3 < np.count_nonzero(in_pixels != expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_annotated_slices_are_bit_identical_and_dtype_is_kept(dtype):
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 16, 16)) > 0.6).astype(dtype) * 3
    labels[4] = 0  # an empty annotated slice
    annotated = [0, 4, 7, 11]
    result = spatial_al.propagate(labels, annotated)
    assert result.labels.dtype == labels.dtype and result.labels.shape == labels.shape
    np.testing.assert_array_equal(result.labels[annotated], labels[annotated])


def test_label_values_are_kept_and_labels_do_not_bleed():
    labels = np.zeros((5, 30, 30), np.uint16)
    labels[[0, 4], 5:12, 5:12] = 2
    labels[[0, 4], 15:25, 12:28] = 900
    result = spatial_al.propagate(labels, [0, 4])
    assert set(np.unique(result.labels)) == {0, 2, 900}
    np.testing.assert_array_equal(result.labels[2], labels[0])


def test_a_structure_seen_on_one_side_shrinks_and_ends_mid_gap():
    labels = np.zeros((11, 40, 40), np.uint8)
    labels[0][disc(9)] = 1  # slice 10 is annotated and empty: the structure ends inside the gap
    areas = (spatial_al.propagate(labels, [0, 10]).labels == 1).sum(axis=(1, 2))
    assert (np.diff(areas[:6]) < 0).all() and areas[4] > 0
    assert (areas[5:] == 0).all()
    early = (spatial_al.propagate(labels, [0, 10], tip_fraction=0.3).labels == 1).sum(axis=(1, 2))
    assert early[2] > 0 and (early[3:] == 0).all()


def test_an_empty_annotated_slice_is_a_boundary():
    labels = np.zeros((9, 30, 30), np.uint8)
    labels[[0, 8]] = disc(8, shape=(30, 30), center=(15, 15))
    result = spatial_al.propagate(labels, [0, 4, 8])
    assert not result.labels[4].any()
    areas = result.labels.sum(axis=(1, 2))
    assert areas[1] > 0 and areas[7] > 0  # each side's disc shrinks into the gap and ends half-way
    assert not areas[2:7].any()


def test_slices_outside_the_annotated_range_are_not_extrapolated():
    labels = np.ones((10, 8, 8), np.uint8)
    result = spatial_al.propagate(labels, [3, 6])
    assert not result.labels[[0, 1, 2, 7, 8, 9]].any()
    assert np.isnan(result.confidence[[0, 1, 2, 7, 8, 9]]).all()
    np.testing.assert_array_equal(result.unreached_slices, [0, 1, 2, 7, 8, 9])
    np.testing.assert_array_equal(result.propagated, [4, 5])


def test_confidence_falls_with_distance_and_disagreement():
    labels = np.zeros((11, 20, 20), np.uint8)
    labels[0, 2:8, 2:8] = 1
    labels[10, 12:18, 12:18] = 1  # shares nothing with slice 0
    confidence = spatial_al.propagate(labels, [0, 10]).confidence
    np.testing.assert_allclose(confidence, [1, 0.8, 0.6, 0.4, 0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1], atol=1e-6)


def test_propagation_along_another_axis_is_the_same_computation(disc_stack):
    along_first = spatial_al.propagate(disc_stack, [0, 5, 10], spacing=(2.0, 1.0, 1.0))
    moved = np.moveaxis(disc_stack, 0, 2)
    along_last = spatial_al.propagate(moved, [0, 5, 10], spacing=(1.0, 1.0, 2.0), axis=2)
    np.testing.assert_array_equal(np.moveaxis(along_last.labels, 2, 0), along_first.labels)
    np.testing.assert_array_equal(along_last.confidence, along_first.confidence)


def test_a_single_slice_volume_is_refused_as_one_annotated_slice_is():
    labels = np.zeros((1, 6, 6), np.uint8)
    labels[0, 1:3, 1:4] = 5
    with pytest.raises(ValueError, match=r"single slice along axis 0.*no slice to propagate to"):
        spatial_al.propagate(labels, [0])


def test_a_boolean_mask_propagates_as_label_one_and_comes_back_a_mask(disc_stack):
    mask = disc_stack.astype(bool)
    result = spatial_al.propagate(mask, [0, 10])
    expected = spatial_al.propagate(disc_stack, [0, 10])
    assert result.labels.dtype == bool
    np.testing.assert_array_equal(result.labels, expected.labels.astype(bool))
    np.testing.assert_array_equal(result.confidence, expected.confidence)


@pytest.mark.parametrize("spacing", ["2,1,1", ("2", "a", "1"), {"k": 2}])
def test_spacing_that_is_not_three_numbers_is_refused_naming_the_form(spacing):
    with pytest.raises((TypeError, ValueError), match=r"spacing must be three positive voxel sizes in mm .*\(2\.0"):
        spatial_al.propagate(np.ones((5, 4, 4), np.uint8), [0, 4], spacing=spacing)


@pytest.mark.parametrize(
    ("labels", "annotated", "kwargs", "error", "message"),
    [
        (np.zeros((5, 4, 4), np.uint8), [], {}, ValueError, "No annotated slice"),
        (np.zeros((5, 4, 4), np.uint8), [0, 5], {}, ValueError, "index 5 is out of range"),
        (np.zeros((4, 4), np.uint8), [0], {}, ValueError, "3D label map"),
        (np.full((5, 4, 4), 0.3), [0], {}, ValueError, "whole non-negative"),
        (np.zeros((5, 4, 4), np.uint8), [0], {"method": "sdv"}, UnknownNameError, "Did you mean 'sdf'"),
        (np.zeros((5, 4, 4), np.uint8), [0], {"tip": 0.5}, ValueError, "tip_fraction"),
        (np.ones((5, 4, 4), np.uint8), [0, 4], {"tip_fraction": 0}, ValueError, r"in \(0, 1\]"),
        (np.ones((5, 4, 4), np.uint8), [0, 4], {"spacing": (1, 0, 1)}, ValueError, "three positive"),
        (np.ones((5, 4, 4), np.uint8), [2], {}, ValueError, "Only one annotated slice"),
        (np.ones((5, 4, 4), np.uint8), [2], {"method": "contour"}, ValueError, "extrapolate=True"),
        (np.zeros((5, 4, 4), np.uint8), [0, 4], {}, ValueError, "empty in every segment"),
        (np.ones((5, 4, 4), np.uint8), [0, 4], {"method": "sli2vol"}, ValueError, "works on the image"),
        (np.ones((5, 4, 4), np.uint8), [0, 4], {"method": "star", "image": np.ones((5, 4, 4))}, ValueError, "--model"),
        (np.ones((5, 4, 4), np.uint8), [0, 4], {"most_confident": 0}, ValueError, "at least 1 slice"),
        (np.ones((5, 4, 4), np.uint8), [0, 4], {"min_confidence": 2}, ValueError, r"in \[0, 1\]"),
    ],
)
def test_bad_input_is_explained(labels, annotated, kwargs, error, message):
    with pytest.raises(error, match=message):
        spatial_al.propagate(labels, annotated, **kwargs)


def test_progress_is_reported_and_cancel_stops_the_call(disc_stack):
    recorder = RecordingProgress()
    spatial_al.propagate(disc_stack, [0, 2, 4, 6, 8, 10], progress=recorder)
    assert recorder.reports[-1][:2] == (5, 5)
    with pytest.raises(OperationCancelled):
        spatial_al.propagate(disc_stack, [0, 2, 4, 6, 8, 10], progress=RecordingProgress(cancel_after=2))


def test_contour_interpolation_fills_between_and_respects_empty_annotated_slices():
    """ITK's filter (in its worker process): a constant square stays; an empty annotated slice stays a boundary."""
    labels = np.zeros((13, 24, 24), np.uint8)
    labels[[0, 6], 4:14, 6:18] = 3
    labels[12] = 0
    result = spatial_al.propagate(labels, [0, 6, 12], method="contour")
    for k in range(7):
        np.testing.assert_array_equal(result.labels[k], labels[0])
    assert not result.labels[7:].any()


def test_the_paper_sdf_variant_is_less_is_mores_formula_and_skips_labels_that_do_not_overlap():
    def paper_distance(mask):  # edt(x) - edt(not x) + 0.5 on the whole slice, in pixels
        return ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask) + 0.5

    labels = np.zeros((5, 40, 40), np.uint8)
    labels[0][disc(6)] = 1
    labels[4][disc(12, 8)] = 1
    labels[0][disc(5, center=(6, 6))] = 2  # absent from slice 4, so the two masks do not overlap: no pseudo-label
    result = spatial_al.propagate(labels, [0, 4], "sdf", spacing=(5.0, 2.0, 1.0), variant="paper")
    for k in (1, 2, 3):
        t = k / 4
        expected = (1 - t) * paper_distance(labels[0] == 1) + t * paper_distance(labels[4] == 1) >= 0
        np.testing.assert_array_equal(result.labels[k] == 1, expected)  # pixel units: the spacing is not used
        assert not (result.labels[k] == 2).any()
    shrinking = spatial_al.propagate(labels, [0, 4], "sdf", spacing=(5.0, 2.0, 1.0))
    assert (shrinking.labels[1] == 2).any()  # the default variant lets a one-sided structure taper instead
    with pytest.raises(ValueError, match="variant must be one of shrink_tips, paper"):
        spatial_al.propagate(labels, [0, 4], "sdf", variant="pixels")


def test_label_layers_of_different_shapes_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"must share one shape .*\(5, 4, 4\), \(5, 4, 3\)"):
        spatial_al.propagate([np.zeros((5, 4, 4), np.uint8), np.zeros((5, 4, 3), np.uint8)], [0, 4])


def test_nan_spacing_is_refused():
    with pytest.raises(ValueError, match="spacing must be three positive voxel sizes"):
        spatial_al.propagate(np.ones((5, 4, 4), np.uint8), [0, 4], spacing=(np.nan, 1.0, 1.0))
