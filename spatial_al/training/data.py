"""Training examples from slice stacks: normalised image slices, class targets, ignore masks and sample weights.

Array conventions: volumes are (K, J, I); a slice cut along ``axis`` is the 2D array left when that axis is
indexed, kept in array order; an example image is (C, H, W), its target (S, H, W) multi-hot over the model's S
classes, its mask (1, H, W) with 1 on supervised pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..volume import Segment, normalize_slice_indices
from .config import STAR_PAIR_FORMS

PERCENTILES = (0.5, 99.5)
# Intensity ranges outside these magnitudes are rescaled before the float32 statistics: sums overflow near float32's
# largest value (3.4e38), and a standard deviation below the 1e-6 floor would flatten the image. Z-scoring removes
# the scale, so the result is the same as for ordinary intensities.
SAFE_INTENSITY_RANGE = (1e-20, 1e30)


def normalize_intensities(image: np.ndarray) -> np.ndarray:
    """Clip to the 0.5 and 99.5 percentiles, then z-score (one volume; robust to CT and MR alike) -> float32.

    Raises:
        ValueError: the image has NaN or infinite values.
    """
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise ValueError(
            f"The image has {bad} NaN or infinite voxels; replace them (e.g. with the background intensity) "
            "before training or predicting."
        )
    low, high = (float(value) for value in np.percentile(image, PERCENTILES))
    peak = max(abs(low), abs(high))
    if not SAFE_INTENSITY_RANGE[0] <= peak <= SAFE_INTENSITY_RANGE[1] and peak > 0:
        image, low, high = np.asarray(image, dtype=np.float64) / peak, low / peak, high / peak
    clipped = np.clip(image.astype(np.float32), low, high)
    return ((clipped - clipped.mean()) / max(float(clipped.std()), 1e-6)).astype(np.float32, copy=False)


def take_slice(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """Slice ``index`` of a (..., K, J, I) array along KJI ``axis`` (leading axes kept)."""
    return np.take(volume, index, axis=volume.ndim - 3 + axis)


def match_classes(segments: Sequence[Segment], class_names: Sequence[str]) -> list[Segment]:
    """The segment of each class name, in class order.

    Raises:
        ValueError: a class has no segment, or the segmentation has segments the model does not know.
    """
    by_name = {segment.name: segment for segment in segments}
    missing = [name for name in class_names if name not in by_name]
    extra = [segment.name for segment in segments if segment.name not in class_names]
    if extra:
        raise ValueError(
            f"The segmentation has {len(segments)} segments but the model knows {len(class_names)} classes "
            f"({', '.join(class_names)}); unknown: {', '.join(extra)}. Train a new model (no --resume), or "
            "select only the model's segments."
        )
    if missing:
        raise ValueError(
            f"The segmentation lacks the model's classes {', '.join(missing)}; its segments are "
            f"{', '.join(by_name) or 'none'}. Segment names must match the names the model was trained on."
        )
    return [by_name[name] for name in class_names]


@dataclass
class SliceExamples:
    """Training slices, one entry per slice in every list.

    Attributes:
        images: (C, H, W) float32, intensities normalised per volume.
        targets: (S, H, W) uint8 multi-hot over the classes.
        masks: (1, H, W) uint8, 1 where the pixel is supervised.
        weights: loss weight of each slice (1 for annotated, lower for pseudo-labels unless a protocol weighs them
            as labels).
        sources: (volume index, slice index) of each slice.
        annotated: whether each slice was annotated by a person (False: pseudo-labeled); only annotated slices are
            held out for validation and serve as STAR's labeled slices in its stage 2.
    """

    images: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    sources: list[tuple[int, int]] = field(default_factory=list)
    annotated: list[bool] = field(default_factory=list)

    FIELDS = ("images", "targets", "masks", "weights", "sources", "annotated")

    def __len__(self) -> int:
        return len(self.images)

    def append(
        self, image: np.ndarray, target: np.ndarray, weight: float, source: tuple[int, int], annotated: bool
    ) -> None:
        """Add one slice: image (C, H, W) float32 and target (S, H, W) uint8, every pixel supervised."""
        self.images.append(image)
        self.targets.append(target)
        self.masks.append(np.ones((1, *target.shape[1:]), dtype=np.uint8))
        self.weights.append(float(weight))
        self.sources.append(source)
        self.annotated.append(bool(annotated))

    def extend(self, other: SliceExamples) -> None:
        for name in self.FIELDS:
            getattr(self, name).extend(getattr(other, name))

    def subset(self, indices: Sequence[int]) -> SliceExamples:
        return SliceExamples(*([getattr(self, name)[i] for i in indices] for name in self.FIELDS))

    @property
    def annotated_indices(self) -> list[int]:
        return [index for index, annotated in enumerate(self.annotated) if annotated]

    def largest_slice_shape(self) -> tuple[int, int]:
        return tuple(int(max(image.shape[axis] for image in self.images)) for axis in (1, 2))  # type: ignore


def slice_examples(
    normalized_image: np.ndarray,
    label_layers: np.ndarray,
    segments: Sequence[Segment],
    class_names: Sequence[str],
    slices: Sequence[int],
    axis: int,
    weight: float = 1.0,
    volume_index: int = 0,
    annotated: bool = True,
) -> SliceExamples:
    """Examples for ``slices`` of one volume.

    Args:
        normalized_image: (K, J, I) float32, see :func:`normalize_intensities`.
        label_layers: (L, K, J, I) label values of ``segments``.
        segments: the segmentation's segments, matched to ``class_names`` by name.
        class_names: the model's classes, in output order.
        slices: slice indices along ``axis`` to take.
        axis: KJI slice axis.
        weight: loss weight of these slices.
        volume_index: recorded in ``sources``.
        annotated: the slices were annotated by a person (False for pseudo-labels).
    """
    classes = match_classes(segments, class_names)
    indices = normalize_slice_indices(slices, normalized_image.shape[axis], "training slice")
    examples = SliceExamples()
    for index in indices.tolist():
        layers = take_slice(label_layers, index, axis)  # (L, H, W)
        target = np.stack([layers[segment.layer] == segment.label_value for segment in classes]).astype(np.uint8)
        image = take_slice(normalized_image, index, axis)[np.newaxis].astype(np.float32)
        examples.append(image, target, weight, (volume_index, index), annotated)
    return examples


def volume_examples(
    normalized_image: np.ndarray,
    label_layers: np.ndarray,
    segments: Sequence[Segment],
    class_names: Sequence[str],
    annotated: Sequence[int],
    axis: int,
    name: str = "",
):
    """One volume as 3D training data (:class:`~spatial_al.training.volumes.VolumeExamples`): the image (1, D, H, W)
    and the multi-hot target (S, D, H, W) with the slices along ``axis`` first; the ``annotated`` slices supervise,
    the others are masked out of the loss. Arguments as :func:`slice_examples`."""
    from .volumes import VolumeExamples

    classes = match_classes(segments, class_names)
    layers = np.moveaxis(label_layers, axis + 1, 1)  # (L, D, H, W)
    target = np.stack([layers[segment.layer] == segment.label_value for segment in classes]).astype(np.uint8)
    examples = VolumeExamples()
    image = np.moveaxis(normalized_image, axis, 0)[np.newaxis].astype(np.float32)
    examples.append(image, target, normalize_slice_indices(annotated, image.shape[1], "training slice"), name=name)
    return examples


def annotated_neighbour_groups(
    sources: Sequence[tuple[int, int]], form: str = "bounding"
) -> list[tuple[int, tuple[int, ...]]]:
    """STAR stage 2 samples ({x', y'}, x'') -> y'': each example with the nearest other example below and above it
    in its volume.

    Args:
        sources: (volume index, slice index) per example.
        form: "closest" (the paper's "pairs every two closest labeled slices"): one sample per neighbour, the
            example predicted from that one slice; "bounding": one sample per example, predicted from both
            neighbours at once, as the aggregation attends over a group's annotated slices at inference.

    Returns:
        (target example, labeled examples, the lower slice first) per sample, in example order. Volumes with a
        single annotated slice give none.
    """
    if form not in STAR_PAIR_FORMS:
        raise ValueError(f"Unknown STAR stage-2 form {form!r}; use one of {', '.join(STAR_PAIR_FORMS)}.")
    groups = []
    for target, (volume, index) in enumerate(sources):
        below = [(index - i, o) for o, (v, i) in enumerate(sources) if v == volume and i < index]
        above = [(i - index, o) for o, (v, i) in enumerate(sources) if v == volume and i > index]
        neighbours = tuple(min(side)[1] for side in (below, above) if side)
        if form == "closest":
            groups.extend((target, (neighbour,)) for neighbour in neighbours)
        elif neighbours:
            groups.append((target, neighbours))
    return groups


def padded_size(shape: Sequence[int], divisor: int) -> tuple[int, int]:
    """``shape`` (H, W) rounded up to multiples of ``divisor``."""
    return tuple(int(math.ceil(n / divisor) * divisor) for n in shape)  # type: ignore[return-value]


@dataclass
class UnlabeledSlices:
    """Slices without labels, for TAAL's cross-augmentation consistency.

    Attributes:
        volumes: per volume, its normalised intensities (S, H, W) (an experiment's memory-mapped cache is read, not
            copied).
        slices: per volume, the indices of its unlabeled slices.
    """

    volumes: list[np.ndarray]
    slices: list[np.ndarray]

    def __len__(self) -> int:
        return sum(int(np.size(indices)) for indices in self.slices)

    def draw(self, rng: np.random.Generator, count: int, divisor: int) -> np.ndarray:
        """``count`` slices drawn uniformly with replacement, (count, 1, H, W) float32, zero-padded at the end of
        both axes to the largest slice size rounded up to ``divisor`` (the network's)."""
        owners = np.repeat(np.arange(len(self.slices)), [np.size(indices) for indices in self.slices])
        positions = np.concatenate([np.asarray(indices, dtype=np.int64) for indices in self.slices])
        picks = rng.integers(positions.size, size=count)
        images = [np.asarray(self.volumes[owners[i]][positions[i]], dtype=np.float32) for i in picks]
        height, width = padded_size(np.max([image.shape for image in images], axis=0), divisor)
        batch = np.zeros((count, 1, height, width), dtype=np.float32)
        for row, image in enumerate(images):
            batch[row, 0, : image.shape[0], : image.shape[1]] = image
        return batch


def split_validation(examples: SliceExamples, fraction: float, seed: int) -> tuple[SliceExamples, SliceExamples | None]:
    """Hold out ``fraction`` of the annotated slices for early stopping; None when fewer than 2 would remain to
    train on or none would be held out."""
    annotated = examples.annotated_indices
    held_out_count = int(np.floor(fraction * len(annotated)))
    if held_out_count == 0 or len(annotated) - held_out_count < 1:
        return examples, None
    held_out = set(np.random.default_rng(seed).choice(annotated, size=held_out_count, replace=False).tolist())
    training = [i for i in range(len(examples)) if i not in held_out]
    return examples.subset(training), examples.subset(sorted(held_out))


def distance_targets(target: np.ndarray, scale: str = "normalized") -> np.ndarray:
    """SBC-AL's distance-transformed segmentation D_i: per class, the Euclidean distance in pixels to the background
    inside the structure, 0 outside (``scale="pixels"``, the paper's), or that divided by its maximum (``"normalized"``:
    1 at the structure's centre). (S, H, W) -> (S, H, W) float32."""
    from scipy.ndimage import distance_transform_edt

    maps = np.zeros(target.shape, dtype=np.float32)
    for channel, mask in enumerate(target.astype(bool)):
        if mask.any():
            distance = distance_transform_edt(mask)
            maps[channel] = distance if scale == "pixels" else distance / distance.max()
    return maps
