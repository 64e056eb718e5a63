"""Fixtures shared by the suite: synthetic stacks, the chest CT, and Slicer's MRML classes without the app."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_FOLDERS = [REPOSITORY / "ActiveSliceSelector", REPOSITORY / "SpatialPropagation"]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def default_torch_threads():
    import torch

    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def process_settings_as_they_were(default_torch_threads):
    """A test that runs the command line in this process (``main([...])``) sets what a command sets for its own
    process: torch's thread count, the OpenMP variables workers inherit, how warnings print. Put them back, so that
    no later test runs with the threads an earlier one asked for."""
    import os
    import warnings

    import torch

    variables = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    format_warning = warnings.formatwarning
    yield
    warnings.formatwarning = format_warning
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if torch.get_num_threads() != default_torch_threads:
        torch.set_num_threads(default_torch_threads)


@pytest.fixture
def disc_stack():
    """Label map (K, J, I) = (11, 40, 40) of a disc whose radius grows from 5 to 15 voxels, slice by slice."""
    rows, columns = np.mgrid[:40, :40]
    return np.stack([((rows - 20) ** 2 + (columns - 20) ** 2 <= (5 + k) ** 2) for k in range(11)]).astype(np.uint8)


@pytest.fixture(scope="session")
def moving_stack():
    """SliceStack (K, J, I) = (19, 48, 48) for learned propagation: a disc that moves and grows along K (segment
    "disc", value 1) and a blob that grows then shrinks (segment "blob", value 2), rendered brighter than a textured
    background with noise. Annotating every 6th slice leaves gaps where copying the nearest slice is poor."""
    from spatial_al.volume import Geometry, Segment, SliceStack

    rows, columns = np.mgrid[:48, :48]
    labels = np.zeros((19, 48, 48), np.uint8)
    for k in range(19):
        labels[k][(rows - 14 - k) ** 2 + (columns - 16 - 0.5 * k) ** 2 <= (5 + 0.3 * k) ** 2] = 1
        labels[k][(rows - 34) ** 2 + (columns - 36) ** 2 <= (8 - abs(k - 9) * 0.6) ** 2] = 2
    texture = 20 * np.sin(rows / 5.0) * np.cos(columns / 7.0)
    image = labels * 50.0 + texture + np.random.default_rng(0).normal(0, 8, labels.shape)
    segments = (Segment("disc", 1), Segment("blob", 2))
    return SliceStack(image, labels, segments, Geometry(labels.shape, spacing=(2.0, 1.0, 1.0)))


@pytest.fixture(scope="session")
def chest_ct():
    """The slicerio chest CT as a SliceStack (image + 7-segment ground truth)."""
    from spatial_al.data import chest_ct_files
    from spatial_al.io import load_stack

    return load_stack(*chest_ct_files())


@pytest.fixture
def headless():
    """A HeadlessScene with ``slicer.mrmlScene``, ``slicer.app``, ``slicer.modules`` and the template's modules
    stood in for, as the Slicer application would set them up; removed afterwards."""
    import slicer_standin

    from SpatialALSlicerLib.HeadlessScene import HeadlessScene

    scene = HeadlessScene()
    slicer_standin.install(scene)
    yield scene
    slicer_standin.uninstall()
    scene.scene.Clear(True)


@pytest.fixture
def slicer_modules(headless):
    """The two scripted modules, imported as Slicer would from "Additional module paths"."""
    for folder in MODULE_FOLDERS:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    modules = {}
    for name in ("ActiveSliceSelector", "SpatialPropagation"):
        sys.modules.pop(name, None)
        modules[name] = importlib.import_module(name)
    yield modules
    for name in modules:
        sys.modules.pop(name, None)


TINY_UNET = (8, 16, 32, 64, 64, 8)


@pytest.fixture
def labeled_stack():
    """:func:`make_labeled_stack`."""
    return make_labeled_stack()


def make_labeled_stack():
    """SliceStack (K, J, I) = (10, 32, 32): a disc growing with K (segment "disc", value 1) and a fixed square
    (segment "square", value 2), rendered with noise; the image is brighter inside both."""
    from spatial_al.volume import Geometry, Segment, SliceStack

    rows, columns = np.mgrid[:32, :32]
    labels = np.zeros((10, 32, 32), np.uint8)
    for k in range(10):
        labels[k][(rows - 18) ** 2 + (columns - 18) ** 2 <= (4 + k) ** 2] = 1
        labels[k][2:8, 2:8] = 2
    image = labels * 60.0 + np.random.default_rng(0).normal(0, 10, labels.shape)
    segments = (Segment("disc", 1, color=(1.0, 0.0, 0.0)), Segment("square", 2, color=(0.0, 1.0, 0.0)))
    return SliceStack(image, labels, segments, Geometry(labels.shape, spacing=(0.8, 0.8, 2.0)))


def synthetic_case(rng, shape=(12, 24, 20), k_radius=4.0):
    """(image float32, labels uint8), KJI: an ellipsoid of label 1 (``k_radius`` slices from its centre along K) with
    a core of label 2, brighter than a noisy background, its centre shifted at random."""
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    distance = ((k - centre[0]) / k_radius) ** 2 + ((j - centre[1]) / 6) ** 2 + ((i - centre[2]) / 5) ** 2
    labels = np.where(distance <= 1, 1, 0).astype(np.uint8)
    labels[distance <= 0.3] = 2
    return (labels * 40.0 + rng.normal(0, 5, shape)).astype(np.float32), labels


def challenge_paths(root, layout, case):
    """(image, label) paths of case number ``case`` in the layout of the ACDC, KiTS19, LiTS or ATLAS challenge."""
    if layout == "ACDC":
        folder = root / f"patient{case + 1:03d}"
        return folder / f"patient{case + 1:03d}_frame01.nii.gz", folder / f"patient{case + 1:03d}_frame01_gt.nii.gz"
    if layout == "KiTS19":
        return root / f"case_{case:05d}" / "imaging.nii.gz", root / f"case_{case:05d}" / "segmentation.nii.gz"
    if layout == "LiTS":
        return root / "Training Batch 1" / f"volume-{case}.nii", root / "Training Batch 1" / f"segmentation-{case}.nii"
    anat = root / "Training" / "R001" / f"sub-r001s{case:03d}" / "ses-1" / "anat"
    stem = f"sub-r001s{case:03d}_ses-1_space-MNI152NLin2009aSym"
    return anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"


def write_challenge_folder(root, layout, cases=4, shape=(12, 24, 20)):
    """A folder in the layout of the ACDC, KiTS19, LiTS or ATLAS challenge (:func:`challenge_paths`) of
    :func:`synthetic_case` volumes (ATLAS: one lesion label)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    for case in range(cases):
        image, labels = synthetic_case(rng, shape)
        if layout == "ATLAS":
            labels = (labels > 0).astype(np.uint8)
        paths = challenge_paths(root, layout, case)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for array, path in zip((image, labels), paths, strict=True):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((1.5, 1.5, 5.0))
            sitk.WriteImage(volume, str(path))
    return root


def write_dbc_folder(root, patients=5, shape=(12, 24, 20)):
    """Duke-Breast-Cancer-MRI as TCIA and its segmentation supplement lay it out (``DBCDataset``): per patient a
    pre-contrast and a post-contrast DICOM series of a :func:`synthetic_case` volume and the two .seg.nrrd masks
    (breast: the ellipsoid; Dense: its core; Vessels: one row of the ellipsoid)."""
    from spatial_al.data.dicom_series import write_ct_series
    from spatial_al.io import Segmentation, write_segmentation
    from spatial_al.volume import Geometry, Segment

    rng = np.random.default_rng(2)
    geometry = Geometry(shape, spacing=(0.7, 0.7, 1.0))
    for case in range(patients):
        patient = f"Breast_MRI_{case + 1:03d}"
        image, labels = synthetic_case(rng, shape)
        study = root / "Duke-Breast-Cancer-MRI" / patient / "01-01-1990-NA-MRI BREAST-1"
        write_ct_series(study / "3.000000-ax dyn pre-1", image, geometry, series_description="ax dyn pre")
        write_ct_series(study / "4.000000-ax dyn 1st pass-2", image * 2, geometry, series_description="ax 1st pass")
        masks = root / "Supplement" / patient
        breast = Segmentation((labels > 0).astype(np.uint8), (Segment("Breast", 1),), geometry)
        write_segmentation(masks / f"Segmentation_{patient}_Breast.seg.nrrd", breast)
        dense_and_vessels = np.where(labels == 2, 2, 0).astype(np.uint8)
        dense_and_vessels[:, shape[1] // 2][labels[:, shape[1] // 2] == 1] = 1
        segments = (Segment("Vessels", 1), Segment("Dense", 2))
        write_segmentation(
            masks / f"Segmentation_{patient}_Dense_and_Vessels.seg.nrrd",
            Segmentation(dense_and_vessels, segments, geometry),
        )
    return root


def write_msd_folder(root, cases=5, shape=(12, 24, 20), channels=None, missing_label=None, k_radius=4.0):
    """An MSD task folder (dataset.json, imagesTr/, labelsTr/ as NIfTI) of ``cases`` subjects: an ellipsoid of label 1
    (:func:`synthetic_case`) with a core of label 2, brighter than a noisy background, shifted per case; 4D images
    when ``channels`` is set. ``missing_label`` names a case whose label file is not written."""
    import json

    import SimpleITK as sitk

    root.mkdir(parents=True, exist_ok=True)
    (root / "imagesTr").mkdir(exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    training = []
    for case in range(cases):
        image, labels = synthetic_case(rng, shape, k_radius)
        name = f"case_{case:03d}"
        if channels:
            volume = sitk.JoinSeries([sitk.GetImageFromArray(image * (c + 1)) for c in range(channels)])
        else:
            volume = sitk.GetImageFromArray(image)
            volume.SetSpacing((0.8, 0.8, 2.5))
        sitk.WriteImage(volume, str(root / "imagesTr" / f"{name}.nii.gz"))
        label_image = sitk.GetImageFromArray(labels)
        label_image.SetSpacing((0.8, 0.8, 2.5) if not channels else (1.0, 1.0, 1.0))
        if name != missing_label:
            sitk.WriteImage(label_image, str(root / "labelsTr" / f"{name}.nii.gz"))
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    description = {
        "name": root.name.split("_", 1)[-1],
        "labels": {"0": "background", "1": "organ", "2": "core"},
        "modality": {str(c): f"channel {c}" for c in range(channels or 1)},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


SMOKE_OPTIONS = ["--scale", "smoke", "--device", "cpu", "--quiet"]


def run_smoke_study(protocol, data, output, *extra):
    """``spatial-al experiment run PROTOCOL`` at the smoke scale on the CPU; its exit status."""
    from spatial_al.cli import main

    return main(["experiment", "run", protocol, "--data", str(data), "--output", str(output), *SMOKE_OPTIONS, *extra])


def run_records(study, seed=0):
    """The finished run records of ``study`` for ``seed``, by arm."""
    import json
    from pathlib import Path

    records = [json.loads(path.read_text()) for path in Path(study).glob(f"runs/*/seed-{seed}/run.json")]
    return {record["arm"]: record for record in records}
