"""The slice-stack data model: a 3D scan, its labels, its geometry, and the state of each slice.

Axis order: every array is indexed ``[k, j, i]`` (KJI), as SimpleITK's ``GetArrayFromImage`` and Slicer's
``slicer.util.arrayFromVolume`` return it: axis 0 runs along the image's K (third) index, axis 2 along I (first).
Spacing, origin and direction follow ITK's convention: spacing is given for (I, J, K), positions are LPS millimetres,
and column ``c`` of the direction matrix is the unit vector of index axis ``c`` (I, J, K) in LPS.

The *slice axis* is an array axis (0, 1 or 2); slice ``s`` is ``array.take(s, axis=slice_axis)``. Which slices a
person annotated is recorded explicitly (an annotated slice may hold no foreground: the structure is absent there),
never inferred from the labels.
"""

from __future__ import annotations

import enum
import mmap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

ANATOMICAL_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # LPS axis each plane is perpendicular to


class GeometryMismatchError(ValueError):
    """Two volumes that must share a voxel grid do not."""


@dataclass(frozen=True)
class Geometry:
    """The voxel grid of a volume.

    Attributes:
        shape: array shape, KJI order.
        spacing: voxel size in mm along I, J, K.
        origin: LPS position (mm) of voxel (i, j, k) = (0, 0, 0).
        direction: 3x3 matrix, row-major, column c = LPS unit vector of index axis c (I, J, K).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in np.asarray(self.direction).ravel()))
        if len(self.shape) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("A geometry needs a 3D shape, 3 spacings, a 3D origin and a 3x3 direction matrix.")
        if min(self.spacing) <= 0:
            raise ValueError(f"Voxel spacing must be positive, got {self.spacing}.")

    @classmethod
    def from_ijk_to_lps(cls, ijk_to_lps: np.ndarray, shape: tuple[int, int, int]) -> Geometry:
        """Geometry from a 4x4 voxel (i, j, k) -> LPS matrix and a KJI array shape."""
        matrix = np.asarray(ijk_to_lps, dtype=float)
        spacing = np.linalg.norm(matrix[:3, :3], axis=0)
        return cls(shape, tuple(spacing), tuple(matrix[:3, 3]), tuple((matrix[:3, :3] / spacing).ravel()))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction).reshape(3, 3)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k, 1) to RAS millimetres (Slicer's world frame)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_lps

    @property
    def array_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes (K, J, I)."""
        return self.spacing[::-1]

    def array_axis_direction(self, axis: int) -> np.ndarray:
        """LPS unit vector along which array axis ``axis`` (0 = K, 1 = J, 2 = I) runs."""
        return self.direction_matrix[:, 2 - axis]

    def array_axis_for(self, plane: str) -> int:
        """The array axis along which slices are ``plane`` ("axial", "coronal" or "sagittal") slices."""
        lps_axis = ANATOMICAL_AXES[plane]
        alignment = [abs(self.array_axis_direction(axis)[lps_axis]) for axis in range(3)]
        return int(np.argmax(alignment))

    def differences(self, other: Geometry, tolerance: float = 1e-3) -> list[str]:
        """What differs between two grids, one readable line per property; empty when they match.

        Spacing and origin are compared with an absolute tolerance in mm, directions as unit vectors.
        """
        found = []
        if self.shape != other.shape:
            found.append(f"size (KJI) {self.shape} vs {other.shape}")
        if not np.allclose(self.spacing, other.spacing, atol=tolerance):
            found.append(f"spacing (mm, IJK) {_rounded(self.spacing)} vs {_rounded(other.spacing)}")
        if not np.allclose(self.origin, other.origin, atol=tolerance * max(1.0, max(self.spacing))):
            found.append(f"origin (mm, LPS) {_rounded(self.origin)} vs {_rounded(other.origin)}")
        if not np.allclose(self.direction, other.direction, atol=tolerance):
            found.append(f"direction {_rounded(self.direction)} vs {_rounded(other.direction)}")
        return found

    def require_same_grid(self, other: Geometry, what: str = "labels", reference: str = "image") -> None:
        """Raise :class:`GeometryMismatchError` saying what differs when ``other`` is not on this grid."""
        found = self.differences(other)
        if found:
            raise GeometryMismatchError(
                f"The {what} are not on the voxel grid of the {reference}: " + "; ".join(found) + ". "
                f"Resample the {what} onto the {reference} first (nearest-neighbour interpolation), e.g. with "
                "Slicer's 'Resample Image (BRAINS)' or SimpleITK.Resample(labels, image, sitk.Transform(), "
                "sitk.sitkNearestNeighbor)."
            )


def _rounded(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


class SliceStatus(enum.IntEnum):
    """What is known about a slice."""

    UNLABELED = 0
    ANNOTATED = 1  # labels drawn (or confirmed) by a person; possibly empty
    PSEUDO_LABELED = 2  # labels propagated or predicted; carry a confidence


@dataclass(frozen=True)
class Segment:
    """One structure of a segmentation, stored like Slicer stores it: a label value in one layer.

    Segments in different layers may overlap; segments in the same layer may not.
    """

    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] | None = None  # RGB in [0, 1]
    segment_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def identifier(self) -> str:
        return self.segment_id or self.name


def check_scalar_volume(array: np.ndarray, what: str = "image") -> None:
    """Raise ValueError unless ``array`` is a 3D scalar volume (KJI), naming the problem and the fix."""
    if array.ndim == 3:
        return
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        raise ValueError(
            f"The {what} has shape {array.shape}: an RGB{'A' if array.shape[-1] == 4 else ''} (vector) volume. "
            "Slices are ranked and propagated on scalar volumes; convert it first (e.g. Slicer's 'Vector to "
            "Scalar Volume' module, or take one colour channel)."
        )
    if array.ndim == 4:
        raise ValueError(
            f"The {what} has shape {array.shape}: a 4D volume (several channels or time points). "
            "Choose one 3D volume from it (e.g. one MRI sequence or one time frame) and pass that."
        )
    raise ValueError(f"The {what} has {array.ndim} dimension(s) (shape {array.shape}); a 3D volume is needed.")


def check_slice_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise ValueError(f"Slice axis must be 0, 1 or 2 (array axis in KJI order), got {axis!r}.")
    return int(axis)


def resolve_slice_axis(axis: int | str, geometry: Geometry) -> int:
    """An array axis from 0/1/2 or an anatomical plane name ("axial", "coronal", "sagittal") of ``geometry``."""
    if isinstance(axis, str) and not axis.isdigit():
        if axis not in ANATOMICAL_AXES:
            raise ValueError(f"Unknown slice axis {axis!r}: use 0, 1, 2, 'axial', 'coronal' or 'sagittal'.")
        return geometry.array_axis_for(axis)
    return check_slice_axis(int(axis))


def parse_slice_list(text: str) -> list[int]:
    """``"0,10,20"`` or with ranges ``"0-4,10"`` -> sorted unique slice indices (no range check).

    Raises:
        ValueError: a token that is not an index or a range, or a range written from high to low (``8-4``), which
            would otherwise select nothing silently.
    """
    slices: set[int] = set()
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        first, separator, last = token.partition("-") if "-" in token[1:] else (token, "", "")
        try:
            low, high = int(first), int(last) if separator else int(first)
        except ValueError:
            raise ValueError(f"{token!r} is not a slice index or range (write e.g. 0,10,20 or 0-5).") from None
        if high < low:
            raise ValueError(f"The range {token!r} runs backwards; write it low to high: {high}-{low}.")
        slices.update(range(low, high + 1))
    return sorted(slices)


def normalize_slice_indices(slices: Iterable[int], n_slices: int, what: str = "annotated slice") -> np.ndarray:
    """Sorted unique slice indices as an int array.

    ``slices`` is indices, or a boolean mask with one value per slice (True = selected).

    Raises:
        ValueError: an index outside ``[0, n_slices)``, a non-integer index, or a boolean mask of another length.
    """
    values = np.asarray(list(slices) if not isinstance(slices, np.ndarray) else slices)
    if values.dtype == bool:
        if values.shape != (n_slices,):
            raise ValueError(
                f"A boolean mask of {what}s needs one value per slice ({n_slices}), got shape {values.shape}; pass "
                "the indices instead (e.g. numpy.flatnonzero(mask))."
            )
        return np.flatnonzero(values).astype(np.int64)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{what.capitalize()} indices must be whole numbers, got {values.tolist()}.")
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.equal(np.mod(values, 1), 0)):
            raise ValueError(f"Slice indices must be whole numbers, got {values.tolist()}.")
        values = values.astype(np.int64)
    outside = values[(values < 0) | (values >= n_slices)]
    if outside.size:
        raise ValueError(
            f"{what.capitalize()} index {int(outside[0])} is out of range: the volume has {n_slices} slices along "
            f"the slice axis (valid indices 0 to {n_slices - 1})."
        )
    return np.unique(values.astype(np.int64))


@dataclass
class SliceStack:
    """A 3D scan cut into 2D slices along ``slice_axis``, with labels and per-slice state.

    Attributes:
        image: intensities, shape (K, J, I), or None for label-only data.
        label_layers: integer labels, shape (L, K, J, I): one label map per layer (L = 1 without overlaps).
        segments: the structures in ``label_layers``.
        geometry: voxel grid shared by ``image`` and ``label_layers``.
        slice_axis: array axis the slices are cut along (0 = K, usually axial).
        status: per-slice :class:`SliceStatus`, shape (n_slices,).
        confidence: per-slice confidence in [0, 1], shape (n_slices,): 1 for annotated slices, NaN for unlabeled.
    """

    image: np.ndarray | None
    label_layers: np.ndarray
    segments: tuple[Segment, ...]
    geometry: Geometry
    slice_axis: int = 0
    status: np.ndarray = field(default=None)  # type: ignore[assignment]
    confidence: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        self.slice_axis = check_slice_axis(self.slice_axis)
        if self.label_layers.ndim == 3:
            self.label_layers = self.label_layers[np.newaxis]
        if self.label_layers.ndim != 4:
            raise ValueError(f"label_layers must have shape (L, K, J, I), got {self.label_layers.shape}.")
        check_label_dtype(self.label_layers)
        if self.label_layers.shape[1:] != self.geometry.shape:
            raise GeometryMismatchError(
                f"The labels have size (KJI) {self.label_layers.shape[1:]} but the geometry says {self.geometry.shape}."
            )
        if self.image is not None:
            check_scalar_volume(self.image)
            if self.image.shape != self.geometry.shape:
                raise GeometryMismatchError(
                    f"The image has size (KJI) {self.image.shape} but the geometry says {self.geometry.shape}."
                )
        self.segments = tuple(self.segments)
        if self.status is None:
            self.status = np.full(self.n_slices, SliceStatus.UNLABELED, dtype=np.int8)
        if self.confidence is None:
            self.confidence = np.full(self.n_slices, np.nan, dtype=np.float32)
        if self.status.shape != (self.n_slices,) or self.confidence.shape != (self.n_slices,):
            raise ValueError(f"status and confidence need one value per slice ({self.n_slices}).")

    @classmethod
    def from_label_map(
        cls,
        labels: np.ndarray,
        image: np.ndarray | None = None,
        geometry: Geometry | None = None,
        segment_names: Mapping[int, str] | None = None,
        slice_axis: int = 0,
    ) -> SliceStack:
        """A stack from one (K, J, I) label map; one segment per non-zero label value present or named."""
        labels = np.asarray(labels)
        geometry = geometry or Geometry(labels.shape)
        values = set(np.unique(labels).tolist()) | set(segment_names or {})
        values.discard(0)
        segments = tuple(
            Segment(name=(segment_names or {}).get(value, f"Segment_{value}"), label_value=int(value))
            for value in sorted(values)
        )
        return cls(image, labels, segments, geometry, slice_axis)

    @property
    def n_slices(self) -> int:
        return self.geometry.shape[self.slice_axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        return tuple(n for axis, n in enumerate(self.geometry.shape) if axis != self.slice_axis)  # type: ignore

    def slices_with_status(self, status: SliceStatus) -> np.ndarray:
        return np.flatnonzero(self.status == status)

    @property
    def annotated_slices(self) -> np.ndarray:
        return self.slices_with_status(SliceStatus.ANNOTATED)

    @property
    def pseudo_labeled_slices(self) -> np.ndarray:
        return self.slices_with_status(SliceStatus.PSEUDO_LABELED)

    @property
    def unlabeled_slices(self) -> np.ndarray:
        return self.slices_with_status(SliceStatus.UNLABELED)

    def mark_annotated(self, slices: Iterable[int]) -> np.ndarray:
        """Record ``slices`` as annotated by a person (confidence 1); returns them sorted."""
        indices = normalize_slice_indices(slices, self.n_slices)
        self.status[indices] = SliceStatus.ANNOTATED
        self.confidence[indices] = 1.0
        return indices

    def mark_pseudo_labeled(self, slices: Iterable[int], confidence: Iterable[float]) -> None:
        """Record ``slices`` as holding pseudo-labels with the given confidence; annotated slices are refused."""
        indices = normalize_slice_indices(slices, self.n_slices, "pseudo-labeled slice")
        values = np.asarray(list(confidence), dtype=np.float32)
        if values.shape != indices.shape:
            raise ValueError(f"{indices.size} slices but {values.size} confidence values.")
        annotated = indices[self.status[indices] == SliceStatus.ANNOTATED]
        if annotated.size:
            raise ValueError(f"Slices {annotated.tolist()} are annotated; pseudo-labels never replace annotations.")
        self.status[indices] = SliceStatus.PSEUDO_LABELED
        self.confidence[indices] = values

    def segment_mask(self, segment: Segment) -> np.ndarray:
        """Boolean mask of one segment, shape (K, J, I)."""
        return self.label_layers[segment.layer] == segment.label_value

    def segment(self, name_or_id: str) -> Segment:
        for segment in self.segments:
            if name_or_id in (segment.name, segment.segment_id):
                return segment
        names = ", ".join(s.name for s in self.segments) or "none"
        raise KeyError(f"No segment named {name_or_id!r}; the segments are: {names}.")


def check_label_dtype(labels: np.ndarray) -> None:
    """Raise ValueError unless ``labels`` holds whole, non-negative label values."""
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.unsignedinteger):
        return
    if np.issubdtype(labels.dtype, np.integer):
        if labels.size and labels.min() < 0:
            raise ValueError("Label values must be non-negative (0 is background).")
        return
    if (
        np.issubdtype(labels.dtype, np.floating)
        and labels.size
        and np.all(np.mod(labels, 1) == 0)
        and labels.min() >= 0
    ):
        return
    raise ValueError(
        f"Labels must be a label map of whole non-negative numbers, got dtype {labels.dtype}. "
        "Pass a segmentation or label map, not an intensity image or probabilities."
    )


def zeros_in_small_pages(shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """A zero-filled array of ``shape`` in fresh anonymous memory that the kernel backs with its base pages (4 KiB).

    numpy asks Linux for transparent huge pages on large arrays (``madvise``). Their first write is usually faster,
    but not steady: on the virtual machine this was measured on, the first write of a fresh 78 MB array took 6 to
    184 ms in huge pages (the kernel counted no compaction stall) and 47 to 60 ms in base pages, and ``sdf`` on a
    300 x 512 x 512 label map took 0.08 to 0.13 s with numpy's output (16 runs on an idle machine; 0.31 s once beside
    other work) and 0.10 to 0.11 s with this one. Neither numpy nor the standard library offers a per-array switch
    besides an anonymous ``mmap``, so this allocates one (numpy's own switch, ``NUMPY_MADVISE_HUGEPAGE``, is
    process-wide). Like ``np.zeros``, pages never written are never backed.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size == 0:
        return np.zeros(shape, dtype)
    buffer = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux; elsewhere plain anonymous memory is already in base pages
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype).reshape(shape)
