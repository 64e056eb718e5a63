"""Offline cohorts for active-learning studies, made from real scans that ship in packages: the chest CT and its
segmentation in ``slicerio`` (:func:`chest_ct_cohort`), and pyvista's frog tissue label map with intensities rendered
per tissue (:func:`frog_cohort`).

Each subject is the scan and its labels under a seeded, smooth change of anatomy and acquisition: a crop of the slice
range, a different slice thickness, a small in-plane rotation, scaling and shift, an elastic deformation, then an
intensity scale and offset, a smooth bias field, blur and noise. Labels follow the image through the same mapping
(nearest neighbour). The cohorts show that the studies run end to end on real anatomy; the papers' numbers need the
papers' datasets.

Arrays are (K, J, I), slices along K (axial); spacing is in array order (slice thickness first), in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# The demo's structures and the chest CT segments merged into each (slicerio's Segmentation.seg.nrrd names).
DEMO_STRUCTURES = {
    1: ("right lung", ("right lung",)),
    2: ("left lung", ("left lung",)),
    3: ("spine", ("cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column")),
    4: ("ribs", ("ribs",)),
}
AIR_HU = -1000.0
# The frog cohort's structures and their label values in pyvista's frog_tissues.vti (pyvista's tissue list).
FROG_STRUCTURES = {1: ("liver", (10,)), 2: ("kidney", (8,)), 3: ("heart", (6,)), 4: ("stomach", (15,))}
FROG_SLICE_STEP = 2  # every 2nd of the 1.5 mm slices: 3 mm slices, like a clinical MR series


@dataclass(frozen=True)
class CohortVolume:
    """One subject: a scan and its label map on the same grid.

    Attributes:
        name: subject name.
        image: (K, J, I) float32 intensities.
        labels: (K, J, I) uint8 label values.
        spacing: voxel size (3,) in mm, array order.
        label_names: label value -> structure name.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    label_names: dict[int, str]


def chest_label_map(stack) -> np.ndarray:
    """The chest CT segmentation as a (K, J, I) uint8 map of :data:`DEMO_STRUCTURES`."""
    labels = np.zeros(stack.geometry.shape, np.uint8)
    for value, (_, sources) in DEMO_STRUCTURES.items():
        for name in sources:
            labels[stack.segment_mask(stack.segment(name))] = value
    return labels


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], grid: int, amplitude: float) -> np.ndarray:
    """A smooth random field on ``shape``: uniform noise on a coarse ``grid`` per axis, cubic-upsampled, scaled to
    at most ``amplitude`` in absolute value."""
    coarse = rng.uniform(-1.0, 1.0, size=(grid,) * len(shape))
    field = ndimage.zoom(coarse, [n / grid for n in shape], order=3, mode="nearest")[tuple(slice(0, n) for n in shape)]
    return (amplitude * field / max(float(np.abs(field).max()), 1e-6)).astype(np.float32)


def deformed_subject(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    name: str,
    label_names: dict[int, str],
    background: float = AIR_HU,
    offset: float = 40.0,
    noise: tuple[float, float] = (5.0, 20.0),
) -> CohortVolume:
    """One seeded variation of a (K, J, I) scan and its label map (see the module docstring); intensity scale and
    bias act on the signal above ``background`` (air), then an offset within +-``offset`` and Gaussian noise of a
    standard deviation within ``noise`` are added (the defaults are Hounsfield units)."""
    depth, height, width = image.shape
    kept = int(rng.integers(int(0.75 * depth), depth + 1))
    first = int(rng.integers(0, depth - kept + 1))
    stretch = float(rng.uniform(0.8, 1.5))  # slices per source slice: thinner or thicker slices
    out_depth = max(8, round(kept * stretch))
    angle = np.deg2rad(rng.uniform(-10.0, 10.0))
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-6.0, 6.0, size=2)
    k, j, i = np.meshgrid(np.arange(out_depth), np.arange(height), np.arange(width), indexing="ij")
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    rows, columns = j - centre[0], i - centre[1]
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    source_rows = cos * rows - sin * columns + centre[0] + shift[0]
    source_columns = sin * rows + cos * columns + centre[1] + shift[1]
    shape = (out_depth, height, width)
    source_rows += smooth_field(rng, shape, 5, 4.0)
    source_columns += smooth_field(rng, shape, 5, 4.0)
    source_slices = first + k / stretch + smooth_field(rng, shape, 4, 0.4)
    coordinates = np.stack([source_slices, source_rows, source_columns])
    warped = ndimage.map_coordinates(image, coordinates, order=1, mode="nearest").astype(np.float32)
    warped_labels = ndimage.map_coordinates(labels, coordinates, order=0, mode="constant").astype(np.uint8)
    tissue = warped - background  # scale and bias act on the signal above air, as a scanner's calibration does
    bias = 1.0 + smooth_field(rng, shape, 3, 0.08)
    blurred = ndimage.gaussian_filter(tissue * bias * rng.uniform(0.9, 1.1), sigma=(0, *[rng.uniform(0, 0.8)] * 2))
    noisy = blurred + background + rng.uniform(-offset, offset) + rng.normal(0, rng.uniform(*noise), shape)
    slice_spacing = spacing[0] / stretch
    return CohortVolume(name, noisy.astype(np.float32), warped_labels, (slice_spacing, *spacing[1:]), label_names)


def chest_ct_cohort(n_subjects: int = 14, seed: int = 0) -> list[CohortVolume]:
    """``n_subjects`` variations of the slicerio chest CT (see the module docstring); the same seed gives the same
    cohort. Structures: right lung, left lung, spine (the three vertebral segments merged) and ribs."""
    from ..io import load_stack
    from . import chest_ct_files

    stack = load_stack(*chest_ct_files())
    image = np.maximum(stack.image.astype(np.float32), AIR_HU)  # outside the field of view reads as air
    labels = chest_label_map(stack)
    spacing = stack.geometry.array_spacing
    names = {value: structure for value, (structure, _) in DEMO_STRUCTURES.items()}
    generators = np.random.default_rng(seed).spawn(n_subjects)
    return [
        deformed_subject(image, labels, spacing, rng, f"chest-{index:03d}", names)
        for index, rng in enumerate(generators, start=1)
    ]


def rendered_frog(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """pyvista's frog tissue map cropped to the frog, every :data:`FROG_SLICE_STEP`-th slice, in-plane downsampled so
    its longer side has ``size`` pixels, with an MR-like image rendered from it: a seeded mean intensity per tissue,
    smooth texture inside each, blur. Returns the image (K, J, I) float32, the map of :data:`FROG_STRUCTURES`
    (K, J, I) uint8 and the spacing (mm, array order)."""
    from . import frog_tissues_stack

    stack = frog_tissues_stack()
    tissues = stack.label_layers[0][::FROG_SLICE_STEP]
    box = ndimage.find_objects((tissues > 0).astype(np.uint8))[0]
    tissues = tissues[box]
    factor = size / max(tissues.shape[1:])
    tissues = ndimage.zoom(tissues, (1, factor, factor), order=0)
    rng = np.random.default_rng(seed)
    means = np.concatenate([[0.0], rng.uniform(40.0, 200.0, int(tissues.max()))])  # one contrast per tissue
    texture = 1.0 + smooth_field(rng, tissues.shape, 12, 0.15)
    image = ndimage.gaussian_filter(means[tissues] * texture, sigma=(0, 0.7, 0.7)).astype(np.float32)
    labels = np.zeros(tissues.shape, np.uint8)
    for value, (_, sources) in FROG_STRUCTURES.items():
        labels[np.isin(tissues, sources)] = value
    spacing = stack.geometry.array_spacing
    return image, labels, (spacing[0] * FROG_SLICE_STEP, spacing[1] / factor, spacing[2] / factor)


def frog_cohort(n_subjects: int = 14, seed: int = 0) -> list[CohortVolume]:
    """``n_subjects`` variations of the rendered frog (:func:`rendered_frog`; needs pyvista, the ``data`` extra):
    liver, kidney, heart and stomach on about 45 slices of 3 to 6 mm."""
    image, labels, spacing = rendered_frog(seed=seed)
    names = {value: structure for value, (structure, _) in FROG_STRUCTURES.items()}
    generators = np.random.default_rng(seed).spawn(n_subjects)
    return [
        deformed_subject(image, labels, spacing, rng, f"frog-{index:03d}", names, 0.0, offset=4.0, noise=(0.5, 2.0))
        for index, rng in enumerate(generators, start=1)
    ]
