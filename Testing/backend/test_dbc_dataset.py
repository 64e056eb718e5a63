"""The Duke-Breast-Cancer-MRI reader (the MIDL 2025 study's DBC): TCIA's DICOM series with the supplement's breast
and FGT masks, the pre-contrast series found by description or by TCIA's mapping table, masks placed by geometry and
their segments found by name whatever their label values and layers."""

import csv

import numpy as np
import pydicom
import pytest
import slicerio

from spatial_al.data.dicom_series import write_ct_series
from spatial_al.experiments.protocols import dataset_key, load_protocol
from spatial_al.io import DBCDataset, Segmentation, open_dataset, write_segmentation
from spatial_al.volume import Geometry, Segment

GEOMETRY = Geometry((6, 12, 10), spacing=(0.7, 0.7, 1.0), origin=(-3.5, 10.0, -20.0))
STUDY = "01-01-1990-NA-MRI BREAST BILATERAL W  WO-97538"


def patient_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 400, GEOMETRY.shape).astype(np.float32)


def write_series(root, patient, folder, description, volume):
    write_ct_series(
        root / "Duke-Breast-Cancer-MRI" / patient / STUDY / folder, volume, GEOMETRY, series_description=description
    )


def masks_of(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breast, FGT and vessel masks (K, J, I) of a patient; FGT and vessels overlap on some voxels."""
    generator = np.random.default_rng(100 + seed)
    breast = np.zeros(GEOMETRY.shape, bool)
    breast[1:5, 2:10, 1:9] = True
    fgt = breast & (generator.random(GEOMETRY.shape) < 0.3)
    vessels = breast & (generator.random(GEOMETRY.shape) < 0.2)
    return breast, fgt, vessels


def write_masks(root, patient, seed, layout):
    """The supplement's two .seg.nrrd files; ``layout`` "swapped" gives Dense label 1 and Vessels 2 in one layer
    (FGT winning where they overlap), "layers" puts them in two overlapping layers and crops the breast mask to
    its extent as Slicer may save it."""
    breast, fgt, vessels = masks_of(seed)
    folder = root / "Supplement" / patient
    cropped = layout == "layers"
    breast_geometry = GEOMETRY
    breast_layers = breast.astype(np.uint8)
    if cropped:
        breast_layers = breast_layers[1:5, 2:10, 1:9]
        origin = np.add(GEOMETRY.origin, np.multiply((1, 2, 1), GEOMETRY.spacing))
        breast_geometry = Geometry(breast_layers.shape, GEOMETRY.spacing, tuple(origin))
    write_segmentation(
        folder / f"Segmentation_{patient}_Breast.seg.nrrd",
        Segmentation(breast_layers, (Segment("Segment_1", 1),), breast_geometry),
    )
    if layout == "swapped":
        labels = np.where(vessels, 2, 0).astype(np.uint8)
        labels[fgt] = 1
        layers, segments = labels, (Segment("Dense", 1), Segment("Vessels", 2))
    else:
        layers = np.stack([vessels.astype(np.uint8) * 4, fgt.astype(np.uint8) * 7])
        segments = (Segment("Vessels", 4, layer=0), Segment("Dense", 7, layer=1))
    write_segmentation(
        folder / f"Segmentation_{patient}_Dense_and_Vessels.seg.nrrd", Segmentation(layers, segments, GEOMETRY)
    )


def expected_labels(seed: int) -> np.ndarray:
    breast, fgt, vessels = masks_of(seed)
    labels = np.where(breast, 1, 0)
    labels[vessels] = 3
    labels[fgt] = 2
    return labels


@pytest.fixture
def dbc(tmp_path):
    """Two patients with masks (pre-contrast and a post-contrast series each), one with masks but no images, one
    with images but no masks."""
    for seed, (patient, layout) in enumerate((("Breast_MRI_001", "swapped"), ("Breast_MRI_002", "layers"))):
        write_series(tmp_path, patient, "3.000000-ax dyn pre-93877", "ax dyn pre", patient_image(seed))
        write_series(tmp_path, patient, "4.000000-ax dyn 1st pass-12345", "ax dyn 1st pass", patient_image(seed) + 50)
        write_masks(tmp_path, patient, seed, layout)
    write_masks(tmp_path, "Breast_MRI_003", 2, "swapped")
    write_series(tmp_path, "Breast_MRI_004", "3.000000-ax dyn pre-1", "ax dyn pre", patient_image(4))
    return tmp_path


def test_dbc_reads_the_pre_contrast_series_with_breast_fgt_and_vessels_as_one_label_map(dbc):
    dataset = open_dataset(dbc)
    assert isinstance(dataset, DBCDataset)
    assert [case.case_id for case in dataset.training_cases] == ["Breast_MRI_001", "Breast_MRI_002"]
    assert dataset.label_names == {1: "breast", 2: "FGT", 3: "vessels"}
    for seed, case in enumerate(dataset.training_cases):
        stack = dataset.load(case.case_id)
        np.testing.assert_allclose(stack.image, patient_image(seed))  # the pre-contrast series, not the post
        np.testing.assert_array_equal(stack.label_layers[0], expected_labels(seed))
        assert [(s.name, s.label_value) for s in stack.segments] == [("breast", 1), ("FGT", 2), ("vessels", 3)]
        assert stack.geometry == GEOMETRY


def test_the_masks_are_read_by_segment_name_as_slicerio_reads_them(dbc):
    """The FGT label is the segment slicerio calls Dense, whatever its label value and layer in the file."""
    stack = open_dataset(dbc).load("Breast_MRI_002")
    path = dbc / "Supplement" / "Breast_MRI_002" / "Segmentation_Breast_MRI_002_Dense_and_Vessels.seg.nrrd"
    segmentation = slicerio.read_segmentation(str(path))
    dense = next(s for s in segmentation["segments"] if s["name"] == "Dense")
    layers = segmentation["voxels"]  # slicerio's order: (layers, I, J, K)
    fgt = (layers[dense["layer"]] if layers.ndim == 4 else layers) == dense["labelValue"]
    assert fgt.sum() > 0
    np.testing.assert_array_equal(stack.label_layers[0] == 2, np.transpose(fgt, (2, 1, 0)))


def test_tcias_mapping_table_names_the_series_when_no_description_says_pre(dbc):
    patient = "Breast_MRI_001"
    series_folder = dbc / "Duke-Breast-Cancer-MRI" / patient / STUDY
    for folder in series_folder.iterdir():  # descriptions that do not name the phase
        for path in folder.iterdir():
            header = pydicom.dcmread(path)
            header.SeriesDescription = "T1 fat sat"
            header.save_as(path)
    with pytest.raises(FileNotFoundError, match=r"no series is described as pre-contrast.*mapping table"):
        DBCDataset(dbc)
    with (dbc / "Breast-Cancer-MRI-filepath_filename-mapping.csv").open("w", newline="") as file:
        table = csv.writer(file)
        table.writerow(["original_path_and_filename", "descriptive_path", "classic_path"])
        for phase, folder in (("post_1", "4.000000-ax dyn 1st pass-12345"), ("pre", "3.000000-ax dyn pre-93877")):
            descriptive = f"Duke-Breast-Cancer-MRI/{patient}/{STUDY}//{folder}/1-1.dcm"
            table.writerow([f"DICOM_Images/{patient}/{phase}/1.dcm", descriptive, ""])
    dataset = DBCDataset(dbc)
    np.testing.assert_allclose(dataset.load(patient).image, patient_image(0))


def test_the_slice_studies_take_the_dbc_entry_for_a_dbc_folder(dbc):
    for protocol in ("slice_config", "slice_config_3d"):
        assert dataset_key(load_protocol(protocol), dbc) == "DBC"
    entry = load_protocol("slice_config").content["datasets"]["DBC"]
    assert entry["data"]["labels"] == {"breast": [1, 2, 3]}  # the breast task; FGT is labels {"FGT": [2]}
