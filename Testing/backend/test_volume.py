"""The slice-stack data model: geometry, statuses, input checks."""

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spatial_al.io.images import geometry_of
from spatial_al.volume import (
    Geometry,
    GeometryMismatchError,
    Segment,
    SliceStack,
    SliceStatus,
    check_scalar_volume,
    normalize_slice_indices,
    parse_slice_list,
    resolve_slice_axis,
    zeros_in_small_pages,
)


def rotated_geometry(shape=(9, 14, 17)):
    """Anisotropic voxels and a direction rotated 30 degrees about LPS z, with the I axis flipped."""
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = rotation @ np.diag([-1.0, 1.0, 1.0])
    return Geometry(shape, spacing=(0.7, 0.9, 2.5), origin=(10.0, -20.0, 35.0), direction=tuple(direction.ravel()))


def test_geometry_matches_simpleitk_physical_points():
    """ijk_to_lps maps indices where SimpleITK's TransformIndexToPhysicalPoint does."""
    geometry = rotated_geometry()
    image = sitk.Image(list(reversed(geometry.shape)), sitk.sitkUInt8)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    for index in [(0, 0, 0), (16, 13, 8), (3, 7, 2)]:
        expected = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose((geometry.ijk_to_lps @ [*index, 1])[:3], expected, atol=1e-9)
    assert not geometry_of(image).differences(geometry)


def test_geometry_round_trips_through_its_matrix():
    geometry = rotated_geometry()
    again = Geometry.from_ijk_to_lps(geometry.ijk_to_lps, geometry.shape)
    assert not again.differences(geometry, tolerance=1e-9)
    np.testing.assert_allclose(geometry.ijk_to_ras[:2], -geometry.ijk_to_lps[:2])


@pytest.mark.parametrize(
    ("plane", "direction", "expected_axis"),
    [
        ("axial", np.eye(3), 0),  # K runs along LPS z: axial slices are K slices
        ("coronal", np.eye(3), 1),
        ("sagittal", np.eye(3), 2),
        ("axial", np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]), 1),  # J runs along z (a sagittal acquisition)
        ("sagittal", np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]), 0),
    ],
)
def test_plane_names_resolve_to_the_array_axis_along_that_direction(plane, direction, expected_axis):
    geometry = Geometry((4, 5, 6), direction=tuple(np.asarray(direction, float).ravel()))
    assert resolve_slice_axis(plane, geometry) == expected_axis
    assert resolve_slice_axis(str(expected_axis), geometry) == expected_axis


def test_mismatch_error_says_what_differs():
    geometry = rotated_geometry()
    other = Geometry((9, 14, 16), spacing=(0.7, 0.9, 3.0), origin=geometry.origin, direction=geometry.direction)
    with pytest.raises(GeometryMismatchError) as error:
        geometry.require_same_grid(other)
    message = str(error.value)
    assert "size" in message and "spacing" in message and "origin" not in message and "Resample" in message


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((4, 5, 6, 3), "RGB"), ((4, 5, 6, 4), "RGBA"), ((2, 4, 5, 6), "4D"), ((5, 6), "2 dimension")],
)
def test_non_scalar_volumes_are_refused_with_the_fix(shape, expected):
    with pytest.raises(ValueError, match=expected):
        check_scalar_volume(np.zeros(shape))


def test_slice_indices_are_checked_and_sorted():
    np.testing.assert_array_equal(normalize_slice_indices([5, 0, 5, 2], 6), [0, 2, 5])
    with pytest.raises(ValueError, match=r"index 6 is out of range.*0 to 5"):
        normalize_slice_indices([0, 6], 6)
    with pytest.raises(ValueError, match="index -1 is out of range"):
        normalize_slice_indices([-1], 6)
    with pytest.raises(ValueError, match="whole numbers"):
        normalize_slice_indices([1.5], 6)


def test_slice_lists_parse_with_ranges():
    assert parse_slice_list("10, 0,3-5,,") == [0, 3, 4, 5, 10]
    with pytest.raises(ValueError, match="'x'"):
        parse_slice_list("1,x")


def test_annotation_is_recorded_not_inferred_from_foreground():
    """An empty annotated slice stays annotated; a slice with foreground is not annotated unless marked."""
    labels = np.zeros((5, 4, 4), np.uint8)
    labels[2, 1:3, 1:3] = 1
    stack = SliceStack.from_label_map(labels)
    assert stack.annotated_slices.size == 0
    stack.mark_annotated([0, 4])
    np.testing.assert_array_equal(stack.annotated_slices, [0, 4])
    stack.mark_pseudo_labeled([1, 2], [0.8, 0.6])
    assert stack.status.tolist() == [1, 2, 2, 0, 1]
    assert stack.pseudo_labeled_slices.tolist() == [1, 2] and stack.unlabeled_slices.tolist() == [3]
    np.testing.assert_allclose(stack.confidence[[0, 1, 2, 4]], [1, 0.8, 0.6, 1])
    assert np.isnan(stack.confidence[3])
    with pytest.raises(ValueError, match="never replace annotations"):
        stack.mark_pseudo_labeled([0], [0.5])


def test_stack_along_another_axis_counts_its_slices():
    stack = SliceStack(None, np.zeros((3, 5, 7), np.uint8), (Segment("a", 1),), Geometry((3, 5, 7)), slice_axis=2)
    assert stack.n_slices == 7 and stack.slice_shape == (3, 5)
    assert stack.status.shape == (7,) and (stack.status == SliceStatus.UNLABELED).all()


def test_stack_refuses_labels_off_the_grid_and_probability_maps():
    with pytest.raises(GeometryMismatchError):
        SliceStack(None, np.zeros((3, 5, 7), np.uint8), (), Geometry((3, 5, 6)))
    with pytest.raises(ValueError, match="whole non-negative"):
        SliceStack.from_label_map(np.full((3, 4, 4), 0.5))


def test_reversed_ranges_and_masks_of_another_length_are_refused_and_masks_are_read_as_masks():
    with pytest.raises(ValueError, match="The range '8-4' runs backwards; write it low to high: 4-8"):
        parse_slice_list("0,11,8-4")
    mask = np.zeros(6, bool)
    mask[[1, 4]] = True
    np.testing.assert_array_equal(normalize_slice_indices(mask, 6), [1, 4])  # not the indices {0, 1}
    with pytest.raises(ValueError, match=r"needs one value per slice \(6\), got shape \(2,\)"):
        normalize_slice_indices(np.array([True, False]), 6)
    with pytest.raises(ValueError, match=r"indices must be whole numbers, got \['a'\]"):
        normalize_slice_indices(["a"], 6)


def vma_flags(address: int) -> list[str]:
    """The kernel's VmFlags of this process's memory mapping holding ``address`` (Linux /proc/self/smaps)."""
    mapping = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and ":" not in first:
            start, stop = (int(bound, 16) for bound in first.split("-"))
            mapping = start <= address < stop
        elif first == "VmFlags:" and mapping:
            return line.split()[1:]
    raise AssertionError(f"no mapping holds address {address:#x}")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_zeros_in_small_pages_are_writable_zeros_the_kernel_keeps_in_base_pages(dtype):
    shape = (12, 256, 320)
    array = zeros_in_small_pages(shape, dtype)
    assert array.shape == shape and array.dtype == dtype and array.flags.writeable
    np.testing.assert_array_equal(array, np.zeros(shape, dtype))
    array[3, 10:20] = 7
    assert int(array.sum()) == 7 * 10 * 320
    assert zeros_in_small_pages((0, 4), dtype).shape == (0, 4)
    if sys.platform == "linux":
        assert "nh" in vma_flags(array.ctypes.data)  # madvise(MADV_NOHUGEPAGE) on the array's own mapping
