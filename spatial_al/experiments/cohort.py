"""Cohorts for studies: sources (dataset folders: MSD, ACDC, KiTS19, LiTS, ATLAS, DBC; the offline demo), preprocessing
into a slice cache on disk, and the subject-wise split.

A cohort is preprocessed once into a cache folder and then memory-mapped: each subject is ``image.npy`` (S, H, W)
float32, intensities normalised, and ``targets.npy`` (S, C, H, W) uint8, one multi-hot mask per class; slices are
cut along the protocol's slice axis (axis 0 of both arrays) and resized to a common square size. Runs read slices
from these files as they need them, so a cohort larger than memory (MSD BraTS, 484 volumes) streams from disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..data.cohort import CohortVolume
from ..files import write_text_atomic
from ..progress import ProgressReporter, report
from .config import ConfigError, DataConfig

CACHE_VERSION = 1
DEMO_SEED = 0


class CohortSource:
    """Where subjects come from. ``volumes()`` yields :class:`CohortVolume` objects (KJI arrays, slices along the
    configured slice axis moved to axis 0 by the cache); ``names`` lists the subjects without reading them."""

    description: str
    names: list[str]
    label_names: dict[int, str]

    def volumes(self) -> Iterator[CohortVolume]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        return self.description


DEMO_SOURCES = {
    "demo": ("chest", "the slicerio chest CT", "DEMO_STRUCTURES", "chest_ct_cohort"),
    "demo-frog": ("frog", "pyvista's frog tissue map with rendered intensities", "FROG_STRUCTURES", "frog_cohort"),
}


class DemoSource(CohortSource):
    """An offline cohort made from a real scan shipped in a package: ``demo`` (the chest CT,
    :func:`~spatial_al.data.cohort.chest_ct_cohort`) or ``demo-frog`` (:func:`~spatial_al.data.cohort.frog_cohort`)."""

    def __init__(self, kind: str, subjects: int):
        from ..data import cohort

        prefix, what, structures, self.generator = DEMO_SOURCES[kind]
        self.subjects = subjects
        self.description = f"{kind}: {subjects} seeded variations of {what} (seed {DEMO_SEED})"
        self.names = [f"{prefix}-{index:03d}" for index in range(1, subjects + 1)]
        self.label_names = {value: name for value, (name, _) in getattr(cohort, structures).items()}

    def volumes(self) -> Iterator[CohortVolume]:
        from ..data import cohort

        yield from getattr(cohort, self.generator)(self.subjects, DEMO_SEED)


class FolderSource(CohortSource):
    """A dataset folder: an MSD task, ACDC, KiTS19, LiTS, ATLAS, DBC or DICOM studies with their SEGs, or a DICOMweb
    server (:func:`~spatial_al.io.open_dataset`); every case is found, and every listed file checked to exist, when the
    source is opened, before any work."""

    def __init__(self, root: str | Path, data: DataConfig):
        from ..io import open_dataset
        from ..io.dicomweb import is_dicomweb

        self.dataset = open_dataset(root)
        self.data = data
        self.description = f"{self.dataset.name} at {root if is_dicomweb(root) else Path(root).resolve()}"
        cases = self.dataset.training_cases
        if data.subjects is not None:
            known = {case.case_id for case in cases}
            unknown = [name for name in data.subjects if name not in known]
            if unknown:
                raise ConfigError(
                    f"data.subjects names cases {self.dataset.name} lacks: {', '.join(unknown[:5])}"
                    f"{' ...' if len(unknown) > 5 else ''}; its cases are named like {', '.join(sorted(known)[:3])}."
                )
            cases = [case for case in cases if case.case_id in set(data.subjects)]
        if data.max_subjects is not None:
            cases = cases[: data.max_subjects]
        self.names = [case.case_id for case in cases]
        self.label_names = self.dataset.label_names

    def fingerprint(self) -> str:
        return f"{self.description} {self.dataset.fingerprint(self.names)}"

    def volumes(self) -> Iterator[CohortVolume]:
        from ..volume import resolve_slice_axis

        for name in self.names:
            stack = self.dataset.load(name, channel=self.data.channel)
            axis = resolve_slice_axis(self.data.slice_axis, stack.geometry)
            if stack.label_layers.shape[0] != 1:
                raise ValueError(f"{name}: the label map has overlapping layers; a dataset's labels are one label map.")
            image = np.moveaxis(stack.image, axis, 0)
            labels = np.moveaxis(stack.label_layers[0], axis, 0)
            spacing = np.asarray(stack.geometry.array_spacing)
            order = [axis, *[a for a in range(3) if a != axis]]
            yield CohortVolume(name, image.astype(np.float32), labels, tuple(spacing[order]), self.label_names)


def open_source(data: str | Path, config: DataConfig) -> CohortSource:
    """The source ``data`` names: "demo" or "demo-frog" (:data:`DEMO_SOURCES`), a dataset folder (MSD, ACDC,
    KiTS19, LiTS, ATLAS, DBC, DICOM studies with SEGs) or ``dicomweb:URL`` (the series its SEGs reference).

    Raises:
        FileNotFoundError: no such folder, a folder of no known layout, or a listed image or label file missing.
        ValueError: a malformed dataset.json.
    """
    from ..io.dicomweb import is_dicomweb

    if str(data) in DEMO_SOURCES:
        return DemoSource(str(data), config.demo_subjects)
    if is_dicomweb(str(data)):
        return FolderSource(str(data), config)
    if not Path(data).is_dir():
        raise FileNotFoundError(
            f"--data {str(data)!r} is neither {' nor '.join(map(repr, DEMO_SOURCES))} nor a folder; give a dataset "
            "folder (an MSD task, ACDC, KiTS19, LiTS, ATLAS, DBC or DICOM studies with SEGs) or dicomweb:URL."
        )
    return FolderSource(data, config)


def resolve_classes(source: CohortSource, data: DataConfig) -> dict[str, list[int]]:
    """Class name -> source label values merged into it, checked against the source's labels.

    Raises:
        ConfigError: a label value the source does not have, or no class.
    """
    classes = data.labels if data.labels is not None else {name: [value] for value, name in source.label_names.items()}
    known = set(source.label_names)
    for name, values in classes.items():
        unknown = sorted(set(values) - known)
        if unknown or not values:
            raise ConfigError(
                f"data.labels: class {name!r} takes label values {values}, but the source's labels are "
                f"{ {v: source.label_names[v] for v in sorted(known)} }; choose among those."
            )
    if not classes:
        raise ConfigError("data.labels names no class; give at least one class and its label values.")
    return classes


def normalized(image: np.ndarray, data: DataConfig) -> np.ndarray:
    """Intensities as the networks see them: z-scored after percentile clipping, or a CT window scaled to [0, 1]."""
    from ..training.data import normalize_intensities

    if data.intensity == "window":
        low, high = data.window
        return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)
    return normalize_intensities(image)


def resized(volume: CohortVolume, data: DataConfig, classes: dict[str, list[int]]):
    """(image (S, N, N) float32, targets (S, C, N, N) uint8, spacing (3,)) of one subject, N = ``data.image_size``:
    resampled along the slice axis to ``data.slice_thickness`` when set (linear, anti-aliased when thinned out; labels
    nearest), slices scaled so the longer side is N, or resampled to ``data.pixel_spacing`` (bilinear with
    anti-aliasing; labels nearest), then padded with the lowest intensity (or, resampled, cropped) to N x N about
    their centre."""
    from skimage.transform import resize

    image = normalized(volume.image, data)
    depth, height, width = image.shape
    thickness = volume.spacing[0]
    if data.slice_thickness is not None:
        depth = max(1, round(depth * thickness / data.slice_thickness))
        thickness = volume.spacing[0] * image.shape[0] / depth
    size = data.image_size
    if data.pixel_spacing is None:
        factors = (size / max(height, width),) * 2
    else:
        factors = (volume.spacing[1] / data.pixel_spacing, volume.spacing[2] / data.pixel_spacing)
    shape = (depth, max(1, round(height * factors[0])), max(1, round(width * factors[1])))
    anti_aliasing = min(factors) < 1 or depth < image.shape[0]
    image = resize(image, shape, order=1, anti_aliasing=anti_aliasing, preserve_range=True).astype(np.float32)
    labels = resize(volume.labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(volume.labels.dtype)
    targets = np.stack([np.isin(labels, values) for values in classes.values()], axis=1).astype(np.uint8)
    centred = data.pixel_spacing is not None  # a scaled slice fits on its longer side and is padded at the end
    image = square(image, size, float(image.min()), centred)
    targets = np.moveaxis(square(np.moveaxis(targets, 1, 0), size, 0, centred), 0, 1)
    spacing = (thickness, volume.spacing[1] / factors[0], volume.spacing[2] / factors[1])
    return image, targets, spacing


def square(stack: np.ndarray, size: int, fill: float, centred: bool) -> np.ndarray:
    """(..., H, W) to (..., size, size): cropped about the centre where larger, padded with ``fill`` where smaller
    (about the centre when ``centred``, else at the end); the odd pixel goes to the end."""
    for axis in (-2, -1):
        excess = stack.shape[axis] - size
        if excess > 0:
            stack = np.take(stack, np.arange(excess // 2, excess // 2 + size), axis=axis)
        elif excess < 0:
            before = -excess // 2 if centred else 0
            widths = [(0, 0)] * stack.ndim
            widths[axis] = (before, -excess - before)
            stack = np.pad(stack, widths, constant_values=fill)
    return stack


@dataclass(frozen=True)
class Subject:
    """One preprocessed subject, memory-mapped from the cache.

    Attributes:
        name: subject name.
        image: (S, H, W) float32, normalised.
        targets: (S, C, H, W) uint8 multi-hot ground truth (the oracle; runs reveal it slice by slice).
        spacing: (3,) mm, slice thickness first.
    """

    name: str
    image: np.ndarray
    targets: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])


class Cohort:
    """A preprocessed cohort in a cache folder (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.description = json.loads((self.folder / "cohort.json").read_text())
        self.class_names: list[str] = list(self.description["classes"])
        self.names: list[str] = [entry["name"] for entry in self.description["subjects"]]

    @cached_property
    def subjects(self) -> dict[str, Subject]:
        loaded = {}
        for entry in self.description["subjects"]:
            folder = self.folder / entry["name"]
            loaded[entry["name"]] = Subject(
                entry["name"],
                np.load(folder / "image.npy", mmap_mode="r"),
                np.load(folder / "targets.npy", mmap_mode="r"),
                tuple(entry["spacing"]),
            )
        return loaded

    def __getitem__(self, name: str) -> Subject:
        return self.subjects[name]

    def slice_counts(self) -> dict[str, int]:
        return {entry["name"]: entry["n_slices"] for entry in self.description["subjects"]}


def cache_key(source: CohortSource, data: DataConfig) -> str:
    content = json.dumps(
        {"source": source.fingerprint(), "data": asdict(data), "version": CACHE_VERSION}, sort_keys=True
    )
    return hashlib.sha1(content.encode()).hexdigest()[:12]


def build_cohort(
    source: CohortSource, data: DataConfig, cache: str | Path, progress: ProgressReporter | None = None
) -> Cohort:
    """The cohort of ``source`` preprocessed with ``data``, built into ``cache/<key>`` once and reused afterwards.

    The folder is written under a temporary name and renamed when complete, so an interrupted build leaves nothing
    that a later run would take for a cohort.
    """
    classes = resolve_classes(source, data)
    folder = Path(cache) / cache_key(source, data)
    if (folder / "cohort.json").is_file():
        return Cohort(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries = []
        for done, volume in enumerate(source.volumes(), start=1):
            image, targets, spacing = resized(volume, data, classes)
            (partial / volume.name).mkdir()
            np.save(partial / volume.name / "image.npy", image)
            np.save(partial / volume.name / "targets.npy", targets)
            entries.append({"name": volume.name, "n_slices": int(image.shape[0]), "spacing": list(spacing)})
            report(progress, done, len(source.names), f"preprocessing {volume.name}")
        description = {
            "source": source.description,
            "classes": list(classes),
            "class_label_values": classes,
            "data": asdict(data),
            "subjects": entries,
            "version": CACHE_VERSION,
        }
        write_text_atomic(partial / "cohort.json", json.dumps(description, indent=2) + "\n")
        try:
            os.replace(partial, folder)
        except OSError:  # another process finished the same cohort first
            if not (folder / "cohort.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Cohort(folder)


@dataclass(frozen=True)
class Split:
    """Subject names of each part of a subject-wise split."""

    training: list[str]
    validation: list[str]
    test: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def split_subjects(
    names: list[str], fractions: list[float], seed: int, slice_counts: dict[str, int] | None = None
) -> Split:
    """A seeded subject-wise split of ``names`` into training, validation and test by ``fractions``.

    Without ``slice_counts`` the fractions share out subjects: counts are rounded to the nearest whole subject with
    the remainder going to training. With them (subject -> slices) they share out slices: the subjects, in the
    seeded order, each join the part furthest below its share of the slices. Every part with a non-zero fraction
    gets at least one subject.

    Raises:
        ConfigError: fewer subjects than the split needs.
    """
    needed = sum(1 for fraction in fractions if fraction > 0)
    if len(names) < needed:
        raise ConfigError(
            f"The cohort has {len(names)} subjects but the split {fractions} needs at least {needed} (one per part); "
            "add subjects or set the validation fraction to 0."
        )
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    if slice_counts is not None:
        return split_by_slices(order, fractions, slice_counts)
    validation = max(int(fractions[1] > 0), round(fractions[1] * len(names)))
    test = max(int(fractions[2] > 0), round(fractions[2] * len(names)))
    training = len(names) - validation - test
    if training < 1:
        raise ConfigError(f"The split {fractions} of {len(names)} subjects leaves none for training; add subjects.")
    return Split(
        sorted(order[:training]),
        sorted(order[training : training + validation]),
        sorted(order[training + validation :]),
    )


def split_by_slices(order: list[str], fractions: list[float], slice_counts: dict[str, int]) -> Split:
    """:func:`split_subjects` by shares of the slices: the first subject of ``order`` for each part with a non-zero
    fraction, then each next one to the part whose slices fall furthest short of its share of the total."""
    targets = np.asarray(fractions, dtype=float) * sum(slice_counts[name] for name in order)
    parts: list[list[str]] = [[], [], []]
    remaining = list(order)
    for part in np.flatnonzero(np.asarray(fractions) > 0):
        parts[part].append(remaining.pop(0))
    for name in remaining:
        slices = np.array([sum(slice_counts[n] for n in members) for members in parts])
        deficit = np.where(np.asarray(fractions) > 0, targets - slices, -np.inf)
        parts[int(np.argmax(deficit))].append(name)
    return Split(*(sorted(members) for members in parts))
