"""MRMLAdapter on slicer-core's MRML classes: volumes, segments and their tags, slice planes, the queried-slices table.

Every volume has a rotated direction with its J axis flipped (the bundle test also runs a right-handed rotation),
anisotropic spacing and a non-cubic shape, so a swapped axis, a lost flip or a spacing applied to the wrong axis
shows up. Expected values come from numpy index arithmetic, SimpleITK or slicerio, not from the function under test.
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicerio
import vtk

import spatial_al
from spatial_al.annotation_record import RECORD_TAGS, TAG_ANNOTATED
from spatial_al.io.segmentation import Segmentation
from spatial_al.volume import Geometry, Segment
from SpatialALSlicerLib import HeadlessScene, MRMLAdapter
from SpatialALSlicerLib.MRMLAdapter import MRMLInputError

SHAPE_KJI = (9, 14, 17)
SPACING_IJK = (0.7, 0.9, 2.5)
ORIGIN_LPS = (12.5, -30.25, 47.0)
_ANGLE = np.deg2rad(30.0)
_ROTATION_ABOUT_L = np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(_ANGLE), -np.sin(_ANGLE)], [0.0, np.sin(_ANGLE), np.cos(_ANGLE)]]
)
DIRECTION = _ROTATION_ABOUT_L @ np.diag([1.0, -1.0, 1.0])  # 30 degrees about L, J axis flipped (left-handed IJK)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
LAYOUTS = ("Red", "Yellow", "Green")


def oblique_geometry(shape=SHAPE_KJI, origin=ORIGIN_LPS, direction=DIRECTION):
    return Geometry(shape, SPACING_IJK, origin, direction)


def distinct_voxels(shape):
    """Every voxel a different value, so any transposition or flip changes the array."""
    return np.arange(np.prod(shape)).reshape(shape).astype(np.int16)


def add_volume(scene, name="Volume", geometry=None):
    geometry = geometry or oblique_geometry()
    array = distinct_voxels(geometry.shape)
    return MRMLAdapter.addVolumeNode(scene, array, geometry, name), array, geometry


def add_segmentation(scene, referenceVolume, names=("Liver", "Spleen")):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
    ids = [node.GetSegmentation().AddEmptySegment("", name, [1.0, 0.5, 0.0]) for name in names]
    return node, ids


def random_mask(shape, seed, fraction=0.35):
    return np.random.default_rng(seed).random(shape) < fraction


def take_with_offset(source, offset_kji, shape):
    """result[k, j, i] = source[k + ok, j + oj, i + oi]; False where that index lies outside ``source``."""
    index = np.indices(shape) + np.reshape(offset_kji, (3, 1, 1, 1))
    inside = np.all((index >= 0) & (index < np.reshape(source.shape, (3, 1, 1, 1))), axis=0)
    result = np.zeros(shape, dtype=bool)
    result[inside] = source[tuple(axis[inside] for axis in index)]
    return result


def expected_plane(geometry, axis, index):
    """Centre, unit normal and in-plane size (mm) of a slice, from the geometry with plain numpy."""
    n_i, n_j, n_k = geometry.shape[::-1]
    centre_ijk = {
        0: ((n_i - 1) / 2, (n_j - 1) / 2, index),
        1: ((n_i - 1) / 2, index, (n_k - 1) / 2),
        2: (index, (n_j - 1) / 2, (n_k - 1) / 2),
    }[axis]
    in_plane_sizes = {
        0: (SPACING_IJK[0] * n_i, SPACING_IJK[1] * n_j),
        1: (SPACING_IJK[0] * n_i, SPACING_IJK[2] * n_k),
        2: (SPACING_IJK[1] * n_j, SPACING_IJK[2] * n_k),
    }[axis]
    centre = (geometry.ijk_to_ras @ np.append(centre_ijk, 1.0))[:3]
    normal = LPS_TO_RAS @ DIRECTION[:, 2 - axis]  # the IJK axis the slice axis runs along, as a RAS unit vector
    return centre, normal, np.array(in_plane_sizes)


def matrix_translation(matrix):
    return np.array([matrix.GetElement(row, 3) for row in range(3)])


# --- volumes -------------------------------------------------------------------------------------------------------


def test_volume_geometry_and_voxels_match_simpleitk_reading_of_saved_nrrd(headless, tmp_path):
    """The node saved by Slicer's own storage node and read by SimpleITK gives the adapter's geometry and array."""
    node, array, _ = add_volume(headless.scene)
    path = tmp_path / "volume.nrrd"
    node.AddDefaultStorageNode()
    node.GetStorageNode().SetFileName(str(path))
    assert node.GetStorageNode().WriteData(node)
    image = sitk.ReadImage(str(path))

    geometry = MRMLAdapter.volumeGeometry(node)
    voxels = MRMLAdapter.arrayFromVolumeNode(node)

    assert geometry.shape == tuple(reversed(image.GetSize())) == SHAPE_KJI
    np.testing.assert_allclose(geometry.spacing, image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(geometry.origin, image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(geometry.direction, image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), SPACING_IJK, atol=1e-5)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), DIRECTION, atol=1e-5)
    np.testing.assert_allclose(voxels, sitk.GetArrayFromImage(image), atol=1e-5)
    np.testing.assert_array_equal(voxels, array)


def test_vector_volume_is_refused_with_a_message_about_scalar_volumes(headless):
    """A 3-component vector volume raises MRMLInputError naming scalar volumes; a scalar one on the grid reads."""
    scalarNode, array, geometry = add_volume(headless.scene)
    vectorNode = headless.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Colour")
    vectorNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(geometry.ijk_to_ras))
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*reversed(SHAPE_KJI))
    imageData.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    vectorNode.SetAndObserveImageData(imageData)

    np.testing.assert_array_equal(MRMLAdapter.arrayFromVolumeNode(scalarNode), array)
    with pytest.raises(MRMLInputError, match="scalar"):
        MRMLAdapter.arrayFromVolumeNode(vectorNode)


# --- segment masks -------------------------------------------------------------------------------------------------

MASK_CASES = {
    "random voxels": lambda shape: random_mask(shape, seed=1),
    "opposite corners only": lambda shape: (
        np.pad(np.ones((1, 1, 1), bool), [(0, n - 1) for n in shape])
        | np.pad(np.ones((1, 1, 1), bool), [(n - 1, 0) for n in shape])
    ),
    "one slab along J": lambda shape: np.indices(shape)[1] == 5,
    "whole grid": lambda shape: np.ones(shape, bool),
    "empty": lambda shape: np.zeros(shape, bool),
}


@pytest.mark.parametrize("make_mask", MASK_CASES.values(), ids=MASK_CASES.keys())
def test_segment_mask_round_trips_on_the_volume_grid(headless, make_mask):
    """setSegmentMaskInVolumeGrid then segmentMaskInVolumeGrid gives back the exact mask."""
    volumeNode, _, _ = add_volume(headless.scene)
    segmentationNode, (segmentId, _) = add_segmentation(headless.scene, volumeNode)
    mask = make_mask(SHAPE_KJI)

    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, mask)

    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode), mask)


# offset (k, j, i): voxel (k, j, i) of the volume is voxel (k + ok, j + oj, i + oi) of the segmentation's own grid.
OWN_GRID_CASES = {
    "larger grid holding the volume": ((1, 2, 3), (12, 20, 21)),
    "grid overlapping one corner": ((-2, 4, -5), (8, 15, 16)),
}


@pytest.mark.parametrize(("offset_kji", "own_shape"), OWN_GRID_CASES.values(), ids=OWN_GRID_CASES.keys())
def test_segment_on_its_own_grid_is_read_on_the_volume_grid(headless, offset_kji, own_shape):
    """A segment written on another grid (shifted by whole voxels) reads back shifted onto the volume's grid."""
    volumeNode, _, geometry = add_volume(headless.scene)
    offset_ijk = np.array(offset_kji[::-1], dtype=float)
    own_origin = geometry.origin - (geometry.ijk_to_lps[:3, :3] @ offset_ijk)
    otherVolume, _, _ = add_volume(headless.scene, "Other grid", oblique_geometry(own_shape, tuple(own_origin)))
    segmentationNode, (segmentId, _) = add_segmentation(headless.scene, otherVolume)
    own_mask = random_mask(own_shape, seed=2)
    expected = take_with_offset(own_mask, offset_kji, SHAPE_KJI)
    assert expected.any() and not expected.all()

    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, otherVolume, own_mask)

    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, otherVolume), own_mask)
    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode), expected)


@pytest.mark.parametrize("shift_ijk", [(2, 0, 0), (0, -3, 1), (1, 2, -2)], ids=str)
def test_segmentation_parent_transform_shifts_the_mask_on_the_volume_grid(headless, shift_ijk):
    """A parent translation by whole voxels along the volume's axes moves the mask by those voxels."""
    volumeNode, _, geometry = add_volume(headless.scene)
    segmentationNode, (segmentId, _) = add_segmentation(headless.scene, volumeNode)
    mask = random_mask(SHAPE_KJI, seed=3)
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, mask)
    translation = np.eye(4)
    translation[:3, 3] = geometry.ijk_to_ras[:3, :3] @ np.asarray(shift_ijk, dtype=float)
    transformNode = headless.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(translation))

    segmentationNode.SetAndObserveTransformNodeID(transformNode.GetID())

    expected = take_with_offset(mask, tuple(-s for s in shift_ijk[::-1]), SHAPE_KJI)
    assert not np.array_equal(expected, mask)
    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode), expected)


def test_overlapping_segments_each_keep_their_voxels(headless):
    """Writing a segment that overlaps another, then rewriting the first, leaves each segment's own mask."""
    volumeNode, _, _ = add_volume(headless.scene)
    segmentationNode, (firstId, secondId) = add_segmentation(headless.scene, volumeNode)
    first, second, first_again = (random_mask(SHAPE_KJI, seed=s, fraction=0.5) for s in (4, 5, 6))
    assert (first & second).any() and (first_again & second).any()

    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, firstId, volumeNode, first)
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, secondId, volumeNode, second)
    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, firstId, volumeNode), first)
    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, secondId, volumeNode), second)

    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, firstId, volumeNode, first_again)
    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, firstId, volumeNode), first_again)
    assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, secondId, volumeNode), second)


def test_segments_sharing_a_layer_read_back_one_by_one(headless):
    """Disjoint segments share one labelmap layer (each its own label value); each reads back alone."""
    volumeNode, _, _ = add_volume(headless.scene)
    segmentationNode, ids = add_segmentation(headless.scene, volumeNode, names=("Liver", "Spleen", "Kidney"))
    owner = np.random.default_rng(7).integers(0, 4, size=SHAPE_KJI)  # 0: background, 1-3: one segment each
    for index, segmentId in enumerate(ids, start=1):
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, owner == index)
    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 1
    for index, segmentId in enumerate(ids, start=1):
        assert np.array_equal(
            MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode), owner == index
        )


# --- pseudo-labels and tags ----------------------------------------------------------------------------------------


def test_write_pseudo_labels_never_loses_what_a_person_drew(headless):
    """Annotated slices and a stroke stay bit-identical; pseudo-labels are replaced later unless edited in between."""
    volumeNode, _, _ = add_volume(headless.scene)
    segmentationNode, (segmentId, _) = add_segmentation(headless.scene, volumeNode)
    annotated, stroke_slice, propagated = [0, 8], 4, list(range(1, 8))
    drawn = np.zeros(SHAPE_KJI, bool)
    drawn[0] = random_mask(SHAPE_KJI[1:], seed=7)
    drawn[8] = random_mask(SHAPE_KJI[1:], seed=8)
    drawn[stroke_slice, 5:8, 3:11] = True
    pseudo = random_mask(SHAPE_KJI, seed=9, fraction=0.4)
    assert all(not np.array_equal(pseudo[s], drawn[s]) for s in (*annotated, stroke_slice))
    confidence = np.linspace(1.0, 0.2, SHAPE_KJI[0]) ** 1.7
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, drawn)
    MRMLAdapter.recordAnnotatedSlices(segmentationNode, [segmentId], annotated, 0)

    kept, reported = MRMLAdapter.writePseudoLabels(
        segmentationNode, volumeNode, {segmentId: pseudo}, annotated, propagated, confidence, 0, "sdf"
    )

    after = MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode)
    written = [s for s in propagated if s != stroke_slice]
    assert kept == {segmentId: (stroke_slice,)} and reported == written
    for index in (*annotated, stroke_slice):
        assert np.array_equal(after[index], drawn[index]), f"slice {index}"
    for index in written:
        assert np.array_equal(after[index], pseudo[index]), f"slice {index}"
    record = MRMLAdapter.sliceRecord(segmentationNode, segmentId)
    assert (record.slice_axis, record.annotated, record.propagated) == (0, tuple(annotated), tuple(written))
    np.testing.assert_allclose(record.confidence, confidence[written], atol=5e-5)

    edited_slice = 6
    edited = after.copy()
    edited[edited_slice, 7, 8] = not edited[edited_slice, 7, 8]
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, edited)
    second_pseudo = random_mask(SHAPE_KJI, seed=10, fraction=0.4)
    assert all(not np.array_equal(second_pseudo[s], pseudo[s]) for s in written)

    kept_again, _ = MRMLAdapter.writePseudoLabels(
        segmentationNode, volumeNode, {segmentId: second_pseudo}, annotated, propagated, confidence, 0, "sdf"
    )

    again = MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode)
    rewritten = [s for s in written if s != edited_slice]
    assert kept_again == {segmentId: (stroke_slice, edited_slice)}
    for index in (*annotated, stroke_slice):
        assert np.array_equal(again[index], drawn[index]), f"slice {index}"
    assert np.array_equal(again[edited_slice], edited[edited_slice])
    for index in rewritten:
        assert np.array_equal(again[index], second_pseudo[index]), f"slice {index}"
    record = MRMLAdapter.sliceRecord(segmentationNode, segmentId)
    assert (record.annotated, record.propagated) == (tuple(annotated), tuple(rewritten))


def _segment_voxels_ijk(data, info):
    voxels = np.asarray(data["voxels"])
    layer = voxels[info.get("layer", 0)] if voxels.ndim == 4 else voxels
    return layer == info["labelValue"]


@pytest.mark.parametrize("transformed", [False, True], ids=["volume in place", "volume under a transform"])
def test_added_segmentation_node_keeps_every_segment_its_layer_id_color_and_tags(headless, transformed):
    """Layers go in as whole labelmaps: label values need not be 1..N, overlaps across layers stay overlaps, and
    every segment reads back alone (through Slicer's per-segment read) with its own voxels, ID, name, colour, tags."""
    volumeNode, _, geometry = add_volume(headless.scene)
    if transformed:
        transform = headless.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.array(
            [[1, 0, 0, 4.5], [0, 1, 0, -2.0], [0, 0, 1, 7.0], [0, 0, 0, 1]], float)))  # fmt: skip
        volumeNode.SetAndObserveTransformNodeID(transform.GetID())
    layers = np.zeros((2, *SHAPE_KJI), np.uint8)
    first, second = random_mask(SHAPE_KJI, seed=21, fraction=0.4), random_mask(SHAPE_KJI, seed=22, fraction=0.4)
    layers[0][first] = 3
    layers[0][second & ~first] = 7
    overlapping = random_mask(SHAPE_KJI, seed=23, fraction=0.3)
    layers[1][overlapping] = 2
    segments = (
        Segment("liver", 3, 0, (0.8, 0.3, 0.2), "liver_id", {TAG_ANNOTATED: "0,4"}),
        Segment("spleen", 7, 0, (0.1, 0.5, 0.9), "spleen_id"),
        Segment("tumour", 2, 1, None, "tumour_id", {TAG_ANNOTATED: "2"}),
        Segment("empty", 9, 0, (0.2, 0.2, 0.2), "empty_id"),
    )
    segmentation = Segmentation(layers, segments, geometry)

    node = MRMLAdapter.addSegmentationNode(headless.scene, segmentation, volumeNode, "Added")

    assert MRMLAdapter.segmentIdsOrAll(node) == ["liver_id", "spleen_id", "tumour_id", "empty_id"]
    for segment in segments:
        expected = layers[segment.layer] == segment.label_value
        read = MRMLAdapter.segmentMaskInVolumeGrid(node, segment.segment_id, volumeNode)
        assert np.array_equal(read, expected), (segment.name, read.sum(), expected.sum(), (read & expected).sum())
        stored = node.GetSegmentation().GetSegment(segment.segment_id)
        assert stored.GetName() == segment.name
        if segment.color is not None:
            np.testing.assert_allclose(stored.GetColor(), segment.color, atol=1e-6)
        assert MRMLAdapter.segmentTags(node, segment.segment_id).get(TAG_ANNOTATED) == segment.tags.get(TAG_ANNOTATED)
    assert headless.scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0  # nothing left over


def test_added_segmentation_node_on_another_grid_is_refused(headless):
    volumeNode, _, geometry = add_volume(headless.scene)
    wrong = Segmentation(np.zeros((1, 3, 4, 5), np.uint8), (Segment("a", 1),), geometry)
    with pytest.raises(MRMLInputError, match=r"shape \(3, 4, 5\); the volume's grid is \(9, 14, 17\)"):
        MRMLAdapter.addSegmentationNode(headless.scene, wrong, volumeNode, "Wrong")


@pytest.mark.parametrize("overlapping", [False, True], ids=["disjoint segments", "overlapping segments"])
def test_tags_and_voxels_survive_seg_nrrd_storage_read_by_slicerio(headless, tmp_path, overlapping):
    """Slicer's .seg.nrrd writer keeps names, the record tags, each segment's voxels (IJK) and the grid."""
    volumeNode, _, geometry = add_volume(headless.scene)
    segmentationNode, ids = add_segmentation(headless.scene, volumeNode)
    first = random_mask(SHAPE_KJI, seed=11, fraction=0.5)
    second = random_mask(SHAPE_KJI, seed=12, fraction=0.5)
    if not overlapping:
        second &= ~first
    masks = dict(zip(ids, (first, second), strict=True))
    assert (first & second).any() == overlapping
    for segmentId, slices in zip(ids, ([0, 4], [2, 5, 8]), strict=True):
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, masks[segmentId])
        MRMLAdapter.recordAnnotatedSlices(segmentationNode, [segmentId], slices, 0)
    path = tmp_path / "x.seg.nrrd"
    segmentationNode.AddDefaultStorageNode()
    segmentationNode.GetStorageNode().SetFileName(str(path))
    assert segmentationNode.GetStorageNode().WriteData(segmentationNode)

    data = slicerio.read_segmentation(str(path))

    segments = {info["id"]: info for info in data["segments"]}
    assert sorted(segments) == sorted(ids)
    np.testing.assert_allclose(data["ijkToLPS"], geometry.ijk_to_lps, atol=1e-5)
    for segmentId, mask in masks.items():
        info = segments[segmentId]
        assert info["name"] == segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        tags = MRMLAdapter.segmentTags(segmentationNode, segmentId)
        assert {key: info["tags"].get(key) for key in RECORD_TAGS} == tags
        assert np.array_equal(_segment_voxels_ijk(data, info), mask.transpose(2, 1, 0))
    assert segments[ids[0]]["tags"][TAG_ANNOTATED] == "0,4"
    assert segments[ids[1]]["tags"][TAG_ANNOTATED] == "2,5,8"


BUNDLE_DIRECTIONS = [
    pytest.param(_ROTATION_ABOUT_L, id="rotated, right-handed IJK"),
    pytest.param(DIRECTION, id="rotated and J flipped, left-handed IJK"),
]


@pytest.mark.parametrize("direction", BUNDLE_DIRECTIONS)
def test_scene_bundle_round_trip_keeps_voxels_geometry_masks_and_tags(headless, tmp_path, direction):
    """Volume and a 2-segment tagged segmentation saved to .mrb and reloaded are unchanged."""
    volumeNode, array, geometry = add_volume(headless.scene, geometry=oblique_geometry(direction=direction))
    segmentationNode, ids = add_segmentation(headless.scene, volumeNode)
    ends_only = random_mask(SHAPE_KJI, seed=14)
    ends_only[1:-1] = False
    masks = {ids[0]: random_mask(SHAPE_KJI, seed=13), ids[1]: ends_only}
    for segmentId, mask in masks.items():
        MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, mask)
    MRMLAdapter.recordAnnotatedSlices(segmentationNode, [ids[0]], [1, 7], 0)
    pseudo = random_mask(SHAPE_KJI, seed=15)
    MRMLAdapter.writePseudoLabels(
        segmentationNode, volumeNode, {ids[1]: pseudo}, [0, 8], range(1, 8), np.full(SHAPE_KJI[0], 0.5), 0, "linear"
    )
    masks[ids[1]] = MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, ids[1], volumeNode)
    tags = {segmentId: MRMLAdapter.segmentTags(segmentationNode, segmentId) for segmentId in ids}
    assert tags[ids[1]]["SpatialAL.PropagatedSlices"] == "1,2,3,4,5,6,7"

    path = HeadlessScene.saveSceneBundle(headless.scene, tmp_path / "s.mrb")
    reloaded = HeadlessScene.loadSceneBundle(path)

    try:
        volumes = reloaded.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        segmentations = reloaded.scene.GetNodesByClass("vtkMRMLSegmentationNode")
        assert (volumes.GetNumberOfItems(), segmentations.GetNumberOfItems()) == (1, 1)
        newVolume, newSegmentation = volumes.GetItemAsObject(0), segmentations.GetItemAsObject(0)
        assert MRMLAdapter.volumeGeometry(newVolume).differences(geometry, tolerance=1e-6) == []
        np.testing.assert_array_equal(MRMLAdapter.arrayFromVolumeNode(newVolume), array)
        assert MRMLAdapter.segmentIdsOrAll(newSegmentation) == ids
        for segmentId, mask in masks.items():
            assert np.array_equal(MRMLAdapter.segmentMaskInVolumeGrid(newSegmentation, segmentId, newVolume), mask)
            assert MRMLAdapter.segmentTags(newSegmentation, segmentId) == tags[segmentId]
    finally:
        reloaded.scene.Clear(True)


# --- slices in the views -------------------------------------------------------------------------------------------

SLICE_CASES = [(0, 0), (0, 6), (1, 10), (2, 0), (2, 16)]


@pytest.mark.parametrize(("axis", "index"), SLICE_CASES)
def test_slice_plane_ras_matches_the_geometry(headless, axis, index):
    """Centre, normal, in-plane axes and size of a slice equal those computed from Geometry.ijk_to_ras."""
    volumeNode, _, geometry = add_volume(headless.scene)
    expected_centre, expected_normal, expected_size = expected_plane(geometry, axis, index)

    centre, normal, axes, size = MRMLAdapter.slicePlaneRAS(volumeNode, axis, index)

    np.testing.assert_allclose(centre, expected_centre, atol=1e-6)
    np.testing.assert_allclose(normal, expected_normal, atol=1e-9)
    np.testing.assert_allclose(size, expected_size, atol=1e-9)
    in_plane = [LPS_TO_RAS @ DIRECTION[:, c] for c in range(3) if c != 2 - axis]
    np.testing.assert_allclose(axes, in_plane, atol=1e-9)


def test_slice_plane_follows_the_volume_parent_transform(headless):
    """Under a rigid parent transform, the centre and normal are those of the volume moved by the transform."""
    volumeNode, _, geometry = add_volume(headless.scene)
    angle = np.deg2rad(20.0)
    toParent = np.eye(4)
    toParent[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    toParent[:3, 3] = (4.0, -7.5, 11.0)
    transformNode = headless.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Rigid")
    transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParent))
    volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    local_centre, local_normal, _ = expected_plane(geometry, 1, 5)

    centre, normal, _, _ = MRMLAdapter.slicePlaneRAS(volumeNode, 1, 5)

    np.testing.assert_allclose(centre, (toParent @ np.append(local_centre, 1.0))[:3], atol=1e-6)
    np.testing.assert_allclose(normal, toParent[:3, :3] @ local_normal, atol=1e-9)


@pytest.mark.parametrize(("axis", "slices"), [(0, [6, 1, 3]), (2, [15, 2])])
def test_add_slice_planes_places_one_plane_per_slice(headless, axis, slices):
    """One plane markup per slice, centred on the slice, along its normal, with the slice index as attribute."""
    volumeNode, _, geometry = add_volume(headless.scene)

    planes = MRMLAdapter.addSlicePlanes(volumeNode, axis, slices)

    assert headless.scene.GetNodesByClass("vtkMRMLMarkupsPlaneNode").GetNumberOfItems() == len(slices)
    assert len(planes) == len(slices)
    for plane, index in zip(planes, slices, strict=True):
        expected_centre, expected_normal, expected_size = expected_plane(geometry, axis, index)
        centre, normal = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        plane.GetCenterWorld(centre)
        plane.GetNormalWorld(normal)
        np.testing.assert_allclose(centre, expected_centre, atol=1e-5)
        np.testing.assert_allclose(normal, expected_normal, atol=1e-6)
        np.testing.assert_allclose(plane.GetSize(), expected_size, atol=1e-5)
        assert plane.GetAttribute("SpatialAL.Slice") == str(index)
        assert plane.GetAttribute(MRMLAdapter.TABLE_ATTRIBUTE_AXIS) == str(axis)


@pytest.mark.parametrize(("axis", "index"), [(0, 5), (1, 2), (2, 11)])
def test_jump_to_slice_centres_every_slice_view_on_the_slice(headless, axis, index):
    """Red, Yellow and Green slice nodes are translated to the slice centre (centred jump)."""
    volumeNode, _, geometry = add_volume(headless.scene)
    expected_centre, _, _ = expected_plane(geometry, axis, index)
    for layout in LAYOUTS:
        assert not np.allclose(matrix_translation(headless.sliceNode(layout).GetSliceToRAS()), expected_centre)

    centre = MRMLAdapter.jumpToSlice(volumeNode, axis, index)

    np.testing.assert_allclose(centre, expected_centre, atol=1e-6)
    for layout in LAYOUTS:
        translation = matrix_translation(headless.sliceNode(layout).GetSliceToRAS())
        np.testing.assert_allclose(translation, expected_centre, atol=1e-6, err_msg=layout)


# --- the table of queried slices -----------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1])
def test_queried_slices_table_round_trips_and_updates_status(headless, axis):
    """Rows read back as written; a status change shows; an unknown slice is reported; the volume is referenced."""
    volumeNode, array, _ = add_volume(headless.scene)
    ranking = spatial_al.rank(array.astype(float), "fixed_interval", 3, axis=axis)
    statuses = [MRMLAdapter.STATUS_TO_ANNOTATE, MRMLAdapter.STATUS_ANNOTATED, MRMLAdapter.STATUS_PROPAGATED]
    tableNode = headless.scene.AddNewNodeByClass("vtkMRMLTableNode", "Queried slices")

    MRMLAdapter.writeQueriedSlicesTable(tableNode, ranking, statuses, volumeNode)

    expected = [
        {"rank": n + 1, "slice": int(s), "score": pytest.approx(float(c)), "strategy": "fixed_interval", "status": t}
        for n, (s, c, t) in enumerate(zip(ranking.slices, ranking.scores, statuses, strict=True))
    ]
    assert MRMLAdapter.queriedSlicesFromTable(tableNode) == expected
    assert tableNode.GetNodeReference(MRMLAdapter.VOLUME_REFERENCE_ROLE).GetID() == volumeNode.GetID()
    assert tableNode.GetAttribute(MRMLAdapter.TABLE_ATTRIBUTE_AXIS) == str(axis)

    assert MRMLAdapter.setQueriedSliceStatus(tableNode, int(ranking.slices[0]), MRMLAdapter.STATUS_ANNOTATED)
    expected[0]["status"] = MRMLAdapter.STATUS_ANNOTATED
    assert MRMLAdapter.queriedSlicesFromTable(tableNode) == expected

    absent = min(set(range(array.shape[axis])) - {int(s) for s in ranking.slices})
    assert not MRMLAdapter.setQueriedSliceStatus(tableNode, absent, MRMLAdapter.STATUS_PROPAGATED)
    assert MRMLAdapter.queriedSlicesFromTable(tableNode) == expected


# --- bad inputs ----------------------------------------------------------------------------------------------------


def _missing_segment(scene, volumeNode):
    segmentationNode, ids = add_segmentation(scene, volumeNode)
    return lambda: MRMLAdapter.segmentIdsOrAll(segmentationNode, [ids[0], "NoSuchSegment"]), [
        "NoSuchSegment",
        *ids,
        "Liver",
        "Spleen",
    ]


def _empty_segmentation(scene, volumeNode):
    segmentationNode, _ = add_segmentation(scene, volumeNode, names=())
    return lambda: MRMLAdapter.segmentIdsOrAll(segmentationNode), ["no segments"]


def _annotation_along_another_axis(scene, volumeNode):
    segmentationNode, ids = add_segmentation(scene, volumeNode)
    MRMLAdapter.recordAnnotatedSlices(segmentationNode, [ids[0]], [3], 0)

    def call():
        try:
            MRMLAdapter.recordAnnotatedSlices(segmentationNode, [ids[0]], [5], 1)
        finally:
            record = MRMLAdapter.sliceRecord(segmentationNode, ids[0])
            assert (record.slice_axis, record.annotated) == (0, (3,)), "the failed call changed the record"

    return call, ["axis 0", "axis"]


BAD_INPUT_CASES = {
    "missing segment id": _missing_segment,
    "empty segmentation": _empty_segmentation,
    "annotation along another axis": _annotation_along_another_axis,
}


@pytest.mark.parametrize("build", BAD_INPUT_CASES.values(), ids=BAD_INPUT_CASES.keys())
def test_bad_inputs_raise_mrml_input_error_saying_why(headless, build):
    """Each bad input raises MRMLInputError whose message names what is wrong."""
    volumeNode, _, _ = add_volume(headless.scene)
    call, fragments = build(headless.scene, volumeNode)

    with pytest.raises(MRMLInputError) as raised:
        call()

    for fragment in fragments:
        assert fragment in str(raised.value)


def test_scene_bundle_is_written_to_a_relative_path(headless, tmp_path, monkeypatch):
    """`spatial-al demo --output demo-output` hands a relative path to the bundle writer."""
    _, array, _ = add_volume(headless.scene)
    monkeypatch.chdir(tmp_path)
    HeadlessScene.saveSceneBundle(headless.scene, "out/session.mrb")
    reloaded = HeadlessScene.loadSceneBundle(tmp_path / "out" / "session.mrb").scene
    np.testing.assert_array_equal(
        MRMLAdapter.arrayFromVolumeNode(reloaded.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")), array
    )


def resident_megabytes():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set size from /proc")
def test_segment_reads_copy_no_voxels_and_leave_nothing_referenced(headless):
    geometry = Geometry((60, 160, 160), SPACING_IJK, ORIGIN_LPS, DIRECTION)  # 3 MB of int16 voxels
    volumeNode, _, _ = add_volume(headless.scene, geometry=geometry)
    segmentationNode, (segmentId, _) = add_segmentation(headless.scene, volumeNode)
    MRMLAdapter.setSegmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode, random_mask(geometry.shape, 5))
    reference = MRMLAdapter.referenceImageGeometry(volumeNode, segmentationNode)
    assert reference.GetReferenceCount() == 1 and reference.GetPointData().GetScalars() is None
    slicers = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volumeNode, None)
    slicers.UnRegister(None)  # the object Slicer hands over is the caller's to release
    ours, theirs = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(ours)
    slicers.GetImageToWorldMatrix(theirs)
    assert reference.GetExtent() == slicers.GetExtent()
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(ours), slicer.util.arrayFromVTKMatrix(theirs))
    MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode)
    before = resident_megabytes()
    for _ in range(50):
        MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, segmentId, volumeNode)
    assert resident_megabytes() - before < 30  # a leaked voxel copy per read would add 150 MB


def fine_grid(reference, factor=2):
    """``reference`` with its I and J voxels split ``factor`` times (an oversampled segmentation's grid)."""
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    array = slicer.util.arrayFromVTKMatrix(matrix)
    array[:3, :2] /= factor
    fine = slicer.vtkOrientedImageData()
    fine.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(array))
    low_i, high_i, low_j, high_j, low_k, high_k = reference.GetExtent()
    fine.SetExtent(low_i, factor * (high_i + 1) - 1, low_j, factor * (high_j + 1) - 1, low_k, high_k)
    return fine


def own_grid_mask(segmentationNode, segmentId, grid):
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, image, False
    )
    value = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    return MRMLAdapter._resampledArray(image, grid) == value


def test_pseudo_labels_are_written_in_an_oversampled_segmentations_own_grid(headless):
    volumeNode, _, _ = add_volume(headless.scene)
    segmentationNode, (liver, spleen) = add_segmentation(headless.scene, volumeNode)
    fine = fine_grid(MRMLAdapter.referenceImageGeometry(volumeNode, segmentationNode))
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    segmentationNode.GetSegmentation().SetConversionParameter(
        name, slicer.vtkSegmentationConverter.SerializeImageGeometry(fine)
    )
    shape = tuple(reversed(fine.GetDimensions()))
    annotated, propagated = [0, 8], list(range(1, 8))
    for segmentId, seed in ((liver, 1), (spleen, 2)):  # detail finer than a volume voxel
        drawn = random_mask(shape, seed, fraction=0.3) & ~random_mask(shape, seed + 10, fraction=0.5)
        if segmentId == liver:  # the liver is annotated on two slices; the spleen everywhere
            drawn[propagated] = False
        labelmap = MRMLAdapter._orientedLabelmap(fine, drawn)
        mode = slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, segmentationNode, segmentId, mode, labelmap.GetExtent()
        )
    before = {segmentId: own_grid_mask(segmentationNode, segmentId, fine) for segmentId in (liver, spleen)}
    MRMLAdapter.recordAnnotatedSlices(segmentationNode, [liver], annotated, 0)
    pseudo = random_mask(SHAPE_KJI, seed=9, fraction=0.4)

    MRMLAdapter.writePseudoLabels(
        segmentationNode, volumeNode, {liver: pseudo}, annotated, propagated, np.ones(SHAPE_KJI[0]), 0, "sdf"
    )

    after = {segmentId: own_grid_mask(segmentationNode, segmentId, fine) for segmentId in (liver, spleen)}
    np.testing.assert_array_equal(after[liver][annotated], before[liver][annotated])  # bit-identical, fine detail
    np.testing.assert_array_equal(after[spleen], before[spleen])
    read = MRMLAdapter.segmentMaskInVolumeGrid(segmentationNode, liver, volumeNode)
    np.testing.assert_array_equal(read[propagated], pseudo[propagated])
    assert MRMLAdapter.segmentationGeometry(segmentationNode).GetExtent() == fine.GetExtent()
