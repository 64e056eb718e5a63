"""Cohorts: the offline demo cohort, MSD folders built by the tests, the slice cache and the subject-wise split."""

import json

import numpy as np
import pytest
from conftest import write_msd_folder

from spatial_al.data.cohort import chest_ct_cohort
from spatial_al.experiments.cohort import Cohort, build_cohort, open_source, split_subjects
from spatial_al.experiments.config import ConfigError, DataConfig


def test_the_demo_cohort_is_seeded_and_varies_anatomy_and_acquisition():
    first, again = chest_ct_cohort(3, seed=0), chest_ct_cohort(3, seed=0)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert len({volume.image.shape[0] for volume in chest_ct_cohort(6)}) > 1  # slice counts differ
    volume = first[0]
    assert volume.image.shape == volume.labels.shape and volume.image.shape[1:] == (128, 128)
    assert set(np.unique(volume.labels)) == {0, 1, 2, 3, 4} and volume.label_names[3] == "spine"
    assert not np.allclose(first[0].image[:10], first[1].image[:10])


def test_the_frog_cohort_renders_intensities_from_the_tissue_map(tmp_path):
    from importlib.util import find_spec

    if find_spec("pyvista") is None:
        pytest.skip("the frog tissue map ships in pyvista (the data extra)")
    data = DataConfig(image_size=32, demo_subjects=3)
    cohort = build_cohort(open_source("demo-frog", data), data, tmp_path)
    assert cohort.class_names == ["liver", "kidney", "heart", "stomach"] and cohort.names[0] == "frog-001"
    subject = cohort["frog-002"]
    assert subject.targets[:, 0].any() and subject.image.shape[1:] == (32, 32)
    liver, background = subject.targets[:, 0].astype(bool), ~subject.targets.any(1)
    assert abs(float(subject.image[liver].mean()) - float(subject.image[background].mean())) > 0.5  # visible


@pytest.mark.parametrize("thickness", [5.0, 1.25])
def test_a_slice_thickness_resamples_the_volume_along_the_slice_axis(tmp_path, thickness):
    from scipy import ndimage

    root = write_msd_folder(tmp_path / "Task09_Organ", cases=3)  # 12 slices of 2.5 mm
    data = DataConfig(labels={"organ": [1, 2]}, image_size=24, slice_thickness=thickness)
    original = build_cohort(open_source(root, data), DataConfig(labels={"organ": [1, 2]}, image_size=24), tmp_path)
    cohort = build_cohort(open_source(root, data), data, tmp_path)
    subject, before = cohort["case_001"], original["case_001"]
    assert subject.n_slices == round(12 * 2.5 / thickness) and subject.spacing[0] == pytest.approx(thickness)
    assert subject.spacing[1:] == pytest.approx(before.spacing[1:])
    # the organ keeps its extent in mm: its volume in mm^3 agrees within one slice's worth
    volume = [float(c.targets[:, 0].sum()) * c.spacing[0] for c in (subject, before)]
    assert volume[0] == pytest.approx(volume[1], rel=0.25)
    expected = ndimage.zoom(np.asarray(before.image), (subject.n_slices / 12, 1, 1), order=1, mode="nearest")
    if thickness > 2.5:  # thinned out: the linear resampling is smoothed first against aliasing
        assert np.corrcoef(expected.ravel(), np.asarray(subject.image).ravel())[0, 1] > 0.9
    else:
        assert np.abs(expected - np.asarray(subject.image)).mean() < 0.1
    with pytest.raises(ConfigError, match="slice_thickness must be a positive spacing"):
        DataConfig(slice_thickness=0)


@pytest.mark.parametrize(("pixel_spacing", "size"), [(1.6, 16), (0.4, 32)])
def test_a_pixel_spacing_resamples_each_slice_and_centres_it_in_the_square(tmp_path, pixel_spacing, size):
    import SimpleITK as sitk

    root = write_msd_folder(tmp_path / "Task09_Organ", cases=3)  # 24 x 20 pixels of 0.8 mm
    data = DataConfig(labels={"organ": [1, 2]}, image_size=size, pixel_spacing=pixel_spacing)
    subject = build_cohort(open_source(root, data), data, tmp_path)["case_001"]
    assert subject.spacing == pytest.approx((2.5, pixel_spacing, pixel_spacing))
    assert subject.image.shape == (12, size, size)
    # the organ against SimpleITK's own resampling of the label file onto the same grid (nearest neighbour), with the
    # grid's centre on the image's centre: in mm, the slices are the same
    labels = sitk.ReadImage(str(root / "labelsTr" / "case_001.nii.gz"))
    centre = np.array(labels.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in labels.GetSize()]))
    grid = sitk.Image([size, size, 12], labels.GetPixelID())
    grid.SetSpacing((pixel_spacing, pixel_spacing, 2.5))
    origin = centre - np.array([pixel_spacing, pixel_spacing, 0]) * (size - 1) / 2
    grid.SetOrigin((*origin[:2], labels.GetOrigin()[2]))
    reference = sitk.GetArrayFromImage(sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    organ = np.asarray(subject.targets[:, 0]).astype(bool)
    assert (organ & reference).sum() / (organ | reference).sum() > 0.6  # a small organ: a pixel of rounding costs
    offset = np.subtract(np.argwhere(organ).mean(0), np.argwhere(reference).mean(0))[1:] * pixel_spacing
    assert np.abs(offset).max() < pixel_spacing  # in place within a pixel
    if size == 16:  # 12 x 10 pixels padded about the centre: 2 rows above and below, 3 columns each side
        background = float(subject.image.min())
        assert np.all(subject.image[:, :2] == background) and np.all(subject.image[:, :, -3:] == background)
    with pytest.raises(ConfigError, match="pixel_spacing must be a positive spacing"):
        DataConfig(pixel_spacing=-1.0)


def test_an_msd_folder_is_cached_once_and_memory_mapped(tmp_path):
    root = write_msd_folder(tmp_path / "Task09_Organ", cases=4)
    data = DataConfig(labels={"organ": [1, 2], "core": [2]}, image_size=16)
    source = open_source(root, data)
    assert source.names == ["case_000", "case_001", "case_002", "case_003"]
    cohort = build_cohort(source, data, tmp_path / "cache")
    subject = cohort["case_002"]
    assert isinstance(subject.image, np.memmap) and subject.image.dtype == np.float32
    assert subject.image.shape == (12, 16, 16) and subject.targets.shape == (12, 2, 16, 16)
    assert np.all(subject.targets[:, 1] <= subject.targets[:, 0])  # the core lies inside the merged organ class
    assert subject.spacing == pytest.approx((2.5, 0.8 * 24 / 16, 0.8 * 24 / 16))
    assert abs(float(np.mean(subject.image[:, :15]))) < 0.5  # z-scored (the padded rows aside)
    modified = (cohort.folder / "cohort.json").stat().st_mtime_ns
    again = build_cohort(open_source(root, data), data, tmp_path / "cache")
    assert again.folder == cohort.folder and (again.folder / "cohort.json").stat().st_mtime_ns == modified
    assert json.loads((cohort.folder / "cohort.json").read_text())["classes"] == ["organ", "core"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no partial build left


def test_a_subject_list_keeps_only_those_cases_and_names_unknown_ones(tmp_path):
    root = write_msd_folder(tmp_path / "Task01_BrainTumour", cases=4)
    lgg = DataConfig(labels={"organ": [1, 2]}, subjects=["case_003", "case_001"])
    assert open_source(root, lgg).names == ["case_001", "case_003"]  # the dataset's order
    with pytest.raises(ConfigError, match="lacks: case_009; its cases are named like case_000"):
        open_source(root, DataConfig(labels={"organ": [1, 2]}, subjects=["case_001", "case_009"]))


def test_a_four_dimensional_msd_image_needs_its_channel(tmp_path):
    root = write_msd_folder(tmp_path / "Task01_BrainTumour", cases=3, shape=(8, 12, 12), channels=2)
    with pytest.raises(ValueError, match="4D"):
        build_cohort(open_source(root, DataConfig(image_size=16)), DataConfig(image_size=16), tmp_path / "cache")
    data = DataConfig(channel=1, image_size=16)
    cohort = build_cohort(open_source(root, data), data, tmp_path / "cache")
    assert cohort.class_names == ["organ", "core"] and isinstance(cohort, Cohort)


def test_bad_data_gets_errors_that_name_the_fix(tmp_path):
    root = write_msd_folder(tmp_path / "Task02_Heart", cases=3, missing_label="case_001")
    with pytest.raises(FileNotFoundError, match=r"labelsTr/case_001\.nii\.gz"):
        open_source(root, DataConfig())
    with pytest.raises(FileNotFoundError, match="neither 'demo' nor 'demo-frog' nor a folder"):
        open_source(tmp_path / "nowhere", DataConfig())
    complete = write_msd_folder(tmp_path / "Task03", cases=3)
    with pytest.raises(ConfigError, match=r"class 'tumour' takes label values \[7\]"):
        build_cohort(
            open_source(complete, DataConfig(labels={"tumour": [7]})), DataConfig(labels={"tumour": [7]}), tmp_path
        )


def test_the_split_is_subject_wise_seeded_and_refuses_too_few_subjects():
    names = [f"s{i:02d}" for i in range(10)]
    split = split_subjects(names, [0.7, 0.1, 0.2], seed=0)
    assert (len(split.training), len(split.validation), len(split.test)) == (7, 1, 2)
    assert sorted(split.training + split.validation + split.test) == names
    assert split == split_subjects(names, [0.7, 0.1, 0.2], seed=0) != split_subjects(names, [0.7, 0.1, 0.2], seed=1)
    assert split_subjects(names[:2], [0.8, 0.0, 0.2], 0).validation == []
    with pytest.raises(ConfigError, match=r"has 2 subjects but the split .* needs at least 3"):
        split_subjects(names[:2], [0.7, 0.1, 0.2], seed=0)


def test_a_split_by_slices_gives_each_part_its_share_of_the_slices_in_whole_subjects():
    from spatial_al.experiments.cohort import split_by_slices

    counts = {"a": 10, "b": 10, "c": 10, "d": 40, "e": 20, "f": 10}
    # a, b, c open the three parts; then d (training 40 short of 50), e (validation 20 short), f (test 10 short)
    split = split_by_slices(list("abcdef"), [0.5, 0.3, 0.2], counts)
    assert (split.training, split.validation, split.test) == (["a", "d"], ["b", "e"], ["c", "f"])
    assert split_by_slices(list("abcdef"), [0.8, 0.0, 0.2], counts).validation == []
    # by subjects, 6 subjects at 0.5 / 0.3 / 0.2 would be 3 / 2 / 1 whatever their slices
    names = [f"s{i:02d}" for i in range(12)]
    sizes = {name: 10 + 90 * (i % 3 == 0) for i, name in enumerate(names)}  # every third subject is ten times larger
    split = split_subjects(names, [0.7, 0.1, 0.2], seed=0, slice_counts=sizes)
    parts = (split.training, split.validation, split.test)
    shares = [sum(sizes[n] for n in part) / sum(sizes.values()) for part in parts]
    assert sorted(split.training + split.validation + split.test) == names
    assert np.allclose(shares, [0.7, 0.1, 0.2], atol=0.1)
