"""``auto`` beside ``sdf`` and ``sli2vol`` on every data set the project ships, at narrow and wide annotation
intervals, with the method it gave each gap counted, and ``auto`` with ``sdf_gap_mm=7.5`` (gaps under 7.5 mm to
``sdf`` untested), run only where a gap is that narrow: elsewhere the two are the same computation, and its row
repeats ``auto``'s.

Data: the chest CT (34 slices of 10 mm), the first subject of the demo cohort made from it, the first subject of the
frog cohort (rendered MR-like image, slices of 3 to 6 mm), and five ellipsoids in smooth noise (120 x 192 x 192,
slices of 1.5 mm). Dice is the mean over segments on the slices between the first and last annotated ones, as in
``spatial-al benchmark propagation``.

Usage: ``python docs/results/benchmarks/auto_choice.py --output docs/results/benchmarks/auto-choice-cpu.json``
"""

import argparse
import json
import time
from collections import Counter

import numpy as np

from spatial_al.benchmarks.propagation import annotated_grid, ellipsoid_stack, mean_dice
from spatial_al.data import chest_ct_files
from spatial_al.data.cohort import chest_ct_cohort, frog_cohort
from spatial_al.files import write_text_atomic
from spatial_al.io import load_stack
from spatial_al.io.segmentation import Segmentation
from spatial_al.progress import RecordingProgress
from spatial_al.propagation import propagate
from spatial_al.propagation.auto import reported_choices
from spatial_al.propagation.sli2vol import forget_trained_networks
from spatial_al.provenance import Timer, run_record
from spatial_al.session import annotation_only
from spatial_al.threads import choose_threads, use_threads
from spatial_al.volume import Geometry, Segment, SliceStack

SDF_GAP_MM = 7.5  # the variant: below the 5 mm gaps sdf won and above the 10 mm ones sli2vol won on a brain MRI
ARMS = (("sdf", "sdf", {}), ("sli2vol", "sli2vol", {}), ("auto", "auto", {}))
ARMS += ((f"auto (sdf_gap_mm={SDF_GAP_MM:g})", "auto", {"sdf_gap_mm": SDF_GAP_MM}),)


def cohort_stack(subject) -> SliceStack:
    names = subject.label_names
    segments = tuple(Segment(names[value], value) for value in sorted(names) if (subject.labels == value).any())
    geometry = Geometry(subject.labels.shape, spacing=tuple(reversed(subject.spacing)))
    return SliceStack(subject.image, subject.labels, segments, geometry)


def datasets():
    yield "chest CT", load_stack(*chest_ct_files())
    yield "chest cohort subject 1", cohort_stack(chest_ct_cohort(1)[0])
    yield "frog cohort subject 1", cohort_stack(frog_cohort(1)[0])
    yield "ellipsoids 120x192x192", ellipsoid_stack((120, 192, 192))


def run(stack: SliceStack, annotated: np.ndarray, method: str, options: dict) -> tuple[float, dict, Counter]:
    forget_trained_networks()  # each run starts cold, as a user's first propagation of a scan does
    truth = Segmentation(stack.label_layers, stack.segments, stack.geometry)
    annotation = annotation_only(truth, annotated, stack.slice_axis)
    recorder = RecordingProgress()
    started = time.perf_counter()
    result = propagate(
        annotation.label_layers, annotated, method, stack.image, stack.geometry.array_spacing,
        stack.slice_axis, segments=stack.segments, progress=recorder, **options,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    masks = {s.identifier: result.labels[s.layer] == s.label_value for s in stack.segments}
    return seconds, masks, reported_choices(message for _, _, message in recorder.reports)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", default="2,3,5,10")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    use_threads(choose_threads())  # as the CLI does: every usable core, threads waiting passively
    intervals = [int(value) for value in args.intervals.split(",")]
    rows, timer = [], Timer()
    for name, stack in datasets():
        for interval in intervals:
            annotated = annotated_grid(stack.n_slices, interval)
            evaluated = np.setdiff1d(np.arange(annotated[0], annotated[-1] + 1), annotated)
            gap_mm = interval * float(stack.geometry.array_spacing[stack.slice_axis])
            for label, method, options in ARMS:
                if options and gap_mm >= options["sdf_gap_mm"]:
                    rows.append(rows[-1] | {"method": label})  # no gap that narrow: the same run by construction
                    continue
                with timer(name):
                    seconds, masks, choices = run(stack, annotated, method, options)
                rows.append(
                    {
                        "dataset": name,
                        "interval": interval,
                        "gap_mm": round(gap_mm, 2),
                        "method": label,
                        "seconds": round(seconds, 3),
                        "dice": round(mean_dice(stack, masks, evaluated), 4),
                        "choices": dict(choices),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    write_text_atomic(
        args.output, json.dumps(run_record("auto_choice.py", vars(args), {"rows": rows}, timer), indent=1)
    )
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
