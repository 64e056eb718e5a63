"""Memory a 3D study's training data holds: volumes stored as a cohort cache stores them (``image.npy`` (S, H, W)
float32, ``targets.npy`` (S, C, H, W) uint8), memory-mapped, served as random patches by
:class:`~spatial_al.training.volumes.PatchDataset`, densely annotated (a ``nath`` study) and sparsely, every tenth
slice in a :class:`~spatial_al.training.volumes.SliceStack` (a ``slice_config_3d`` study).

What it measures is the process's anonymous resident memory (``RssAnon``: what it allocated, not the file pages the
kernel can drop) held once the examples and the dataset are built and a number of patches drawn, against the cohort's
size on disk.

Usage: ``python docs/results/benchmarks/volume_memory.py --output docs/results/benchmarks/volume-memory-cpu.json``
"""

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from spatial_al.provenance import Timer, run_record, write_json
from spatial_al.training import VolumeExamples
from spatial_al.training.volumes import PatchDataset, SliceStack

MB = 2**20


def anonymous_resident_bytes() -> int:
    """This process's RssAnon (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("No RssAnon in /proc/self/status: this benchmark reads Linux's process status.")


def write_cohort(folder: Path, volumes: int, shape: tuple[int, int, int], classes: int) -> int:
    """``volumes`` folders of a smooth image and nested boxes as targets, written slice block by slice block so the
    writer itself holds little; returns the bytes on disk."""
    rng = np.random.default_rng(0)
    for index in range(volumes):
        subject = folder / f"volume-{index:03d}"
        subject.mkdir()
        image = np.lib.format.open_memmap(subject / "image.npy", "w+", np.float32, shape)
        targets = np.lib.format.open_memmap(subject / "targets.npy", "w+", np.uint8, (shape[0], classes, *shape[1:]))
        for first in range(0, shape[0], 16):
            block = slice(first, first + 16)
            image[block] = rng.normal(0, 1, image[block].shape)
            for c in range(classes):
                margin = [(n * (c + 1)) // (2 * classes + 2) for n in shape]
                inside = (slice(max(first, margin[0]), min(first + 16, shape[0] - margin[0])),)
                inside += tuple(slice(m, n - m) for m, n in zip(margin[1:], shape[1:], strict=True))
                targets[inside[0], c, inside[1], inside[2]] = 1
        image.flush(), targets.flush()
        del image, targets
    return sum(f.stat().st_size for f in folder.rglob("*.npy"))


def examples_of(folder: Path, sparse: bool) -> VolumeExamples:
    """The examples a study builds from the cache: every slice annotated, or every tenth held in a SliceStack."""
    examples = VolumeExamples()
    for subject in sorted(folder.iterdir()):
        image = np.load(subject / "image.npy", mmap_mode="r")
        targets = np.load(subject / "targets.npy", mmap_mode="r")
        if sparse:
            annotated = list(range(5, image.shape[0], 10))
            shape = (targets.shape[1], *image.shape)
            examples.append(image[None], SliceStack(shape, {i: targets[i] for i in annotated}), annotated=annotated)
        else:
            examples.append(image[None], np.moveaxis(targets, 1, 0))
    return examples


def measure(folder: Path, sparse: bool, patch: tuple[int, int, int], patches: int) -> dict:
    """One row, measured in a fresh process (see ``main``)."""
    warm_up = VolumeExamples()
    warm_up.append(np.zeros((1, *patch), np.float32), np.ones((1, *patch), np.uint8))
    PatchDataset(warm_up, patch)[0]  # MONAI's transforms imported before anything is measured
    before = anonymous_resident_bytes()
    timer = Timer()
    with timer("build"):
        dataset = PatchDataset(examples_of(folder, sparse), patch, positive=1, negative=2)
    with timer("patches"):
        for index in range(patches):
            dataset[index % len(dataset)]
    held = anonymous_resident_bytes() - before
    return {"annotation": "every 10th slice" if sparse else "dense", "held_mb": held / MB, "seconds": timer.seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--shape", default="200x256x256", help="slices x rows x columns of each volume")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--patch", default="96x96x96")
    parser.add_argument("--patches", type=int, default=32, help="patches drawn after building (and let go)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    patch = tuple(int(n) for n in args.patch.split("x"))
    timer = Timer()
    with tempfile.TemporaryDirectory(dir=args.output.parent) as folder:
        with timer("write cohort"):
            cohort_bytes = write_cohort(Path(folder), args.volumes, shape, args.classes)
        rows = []
        for sparse in (False, True):  # each in a process of its own: memory freed by one row is not reused by the next
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as process:
                rows.append(process.submit(measure, Path(folder), sparse, patch, args.patches).result())
    print(
        f"cohort on disk: {cohort_bytes / MB:.0f} MB ({args.volumes} volumes of {args.shape}, {args.classes} classes)"
    )
    print("| annotation | held (MB) | build (s) | patches (s) |\n|---|---|---|---|")
    for row in rows:
        seconds = row["seconds"]
        print(f"| {row['annotation']} | {row['held_mb']:.0f} | {seconds['build']:.1f} | {seconds['patches']:.1f} |")
    results = {"cohort_mb": cohort_bytes / MB, "rows": rows}
    write_json(args.output, run_record("volume_memory.py", vars(args), results, timer))


if __name__ == "__main__":
    main()
