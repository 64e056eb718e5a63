"""Offline: decision rules for ``auto`` scored on the data sets of ``auto_choice.py``, from one run of each.

Per data set and interval: ``auto``'s held-out scores (captured from its own run), and the full ``sdf`` and
``sli2vol`` fills; each rule's choices assemble a volume from the two fills exactly as ``auto`` does, scored by the
benchmark's mean Dice. The rules: "local" (each gap by its two end slices: ``choice="gap"``), "global" (one method for
the scan: ``auto``'s default since this study), the local difference shrunk towards the global one with k
pseudo-slices, and the global choice unless a gap's own difference opposes it by more than a margin. Prints one JSON
line per setting and writes them all.

Usage: ``python docs/results/benchmarks/auto_rules.py --output docs/results/benchmarks/auto-rules-cpu.json``
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import spatial_al.propagation.auto as auto
from spatial_al.benchmarks.propagation import annotated_grid, mean_dice
from spatial_al.files import write_text_atomic
from spatial_al.io.segmentation import Segmentation
from spatial_al.propagation import propagate
from spatial_al.propagation.base import gaps
from spatial_al.propagation.sli2vol import forget_trained_networks
from spatial_al.session import annotation_only
from spatial_al.threads import use_threads
from spatial_al.volume import SliceStack

sys.path.insert(0, str(Path(__file__).parent))
from auto_choice import datasets  # the benchmark beside this file

captured_scores: dict[str, dict[int, float]] = {}
choose_per_gap = auto.choose_per_gap


def capturing_choose(task, scores, *rule):
    """``auto``'s own choice, after keeping the held-out scores it was given."""
    captured_scores.clear()
    captured_scores.update({method: dict(values) for method, values in scores.items()})
    return choose_per_gap(task, scores, *rule)


def rule_choices(annotated, scores, k: float = 0.0, margin: float = 0.0) -> dict[tuple[int, int], str]:
    """Per gap: sli2vol where the decision value (sli2vol's held-out Dice minus sdf's) is positive. The value is the
    mean over the gap's scored end slices, shrunk towards the mean over every scored slice with ``k`` pseudo-slices
    (k = 0: the local rule; very large: the global one); with ``margin``, the global value unless the local one
    opposes it by more than ``margin``."""
    difference = {index: scores["sli2vol"][index] - scores["sdf"][index] for index in scores["sdf"]}
    overall = float(np.mean(list(difference.values())))
    choices = {}
    for a, b in gaps(annotated):
        local = [difference[index] for index in (a, b) if index in difference]
        value = (np.sum(local) + k * overall) / (len(local) + k) if local else overall
        if margin and local and np.sign(np.mean(local)) != np.sign(overall) and abs(np.mean(local)) <= margin:
            value = overall
        choices[(a, b)] = "sli2vol" if value > 0 else "sdf"
    return choices


RULES = {
    "local": {},
    "global": {"k": 1e9},
    "shrink k=1": {"k": 1},
    "shrink k=2": {"k": 2},
    "shrink k=4": {"k": 4},
    "margin 0.02": {"margin": 0.02},
    "margin 0.05": {"margin": 0.05},
}


def fill(stack: SliceStack, annotated: np.ndarray, method: str) -> np.ndarray:
    """The label layers ``method`` propagates from the truth on the ``annotated`` slices."""
    truth = Segmentation(stack.label_layers, stack.segments, stack.geometry)
    annotation = annotation_only(truth, annotated, stack.slice_axis)
    return propagate(
        annotation.label_layers, annotated, method, stack.image, stack.geometry.array_spacing,
        stack.slice_axis, segments=stack.segments,
    ).labels  # fmt: skip


def dice_of(stack: SliceStack, labels: np.ndarray, evaluated: np.ndarray) -> float:
    masks = {segment.identifier: labels[segment.layer] == segment.label_value for segment in stack.segments}
    return mean_dice(stack, masks, evaluated)


def assembled(stack: SliceStack, fills: dict[str, np.ndarray], choices: dict[tuple[int, int], str]) -> np.ndarray:
    """sdf's fill with the gaps chosen for sli2vol taken from sli2vol's."""
    labels = fills["sdf"].copy()
    for (a, b), method in choices.items():
        if method == "sli2vol":
            index = [slice(None)] * labels.ndim
            index[1 + stack.slice_axis] = slice(a + 1, b)
            labels[tuple(index)] = fills["sli2vol"][tuple(index)]
    return labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    use_threads(1)
    auto.choose_per_gap = capturing_choose
    rows = []
    for name, stack in datasets():
        for interval in (2, 3, 5, 10):
            annotated = annotated_grid(stack.n_slices, interval)
            evaluated = np.setdiff1d(np.arange(annotated[0], annotated[-1] + 1), annotated)
            forget_trained_networks()
            fills = {"auto": fill(stack, annotated, "auto")}
            scores = {method: dict(values) for method, values in captured_scores.items()}
            for method in ("sdf", "sli2vol"):
                fills[method] = fill(stack, annotated, method)
            row = {"dataset": name, "interval": interval}
            row |= {method: dice_of(stack, labels, evaluated) for method, labels in fills.items()}
            for rule, parameters in RULES.items():
                choices = rule_choices(annotated, scores, **parameters)
                row[rule] = dice_of(stack, assembled(stack, fills, choices), evaluated)
                row[rule + " gaps to sdf"] = sum(1 for method in choices.values() if method == "sdf")
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_text_atomic(args.output, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
