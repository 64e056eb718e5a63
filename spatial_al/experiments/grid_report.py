"""The report of a design study (a protocol with a ``grid``, ``curve_axis="grid"``: the MIDL 2025 slice-configuration
study), rebuilt from its run records. Each run trains once on the slices its grid point annotates: annotation
density rho (percent of each annotated volume's slices) x volume fraction s, per slice-selection arm, with or without
mask interpolation.

- ``table.md`` / ``table.csv``: the metric per arm (rows) and density (columns), one block per volume fraction, the
  fully supervised reference last (the layout of the paper's Table 4); the CSV holds every metric.
- ``budget_by_density.png`` and ``budget_by_volumes.png``: the metric against the labeled percent of the training
  slices (the annotation budget), one line per density through the volume fractions, and one per volume fraction
  through the densities (the paper's Fig. 1-2: at one budget, many volumes sparsely or few densely?).
- ``selection.png``: the metric against density per selection arm at the largest volume fraction (Fig. 3).
- ``interpolation.png``: each selection with and without mask interpolation, against density (Fig. 4).
- ``selection_disparity.png``: per selection arm, a box over the grid points of its mean minus the mean of every
  selection arm's runs at that point (Fig. 5: a better selection sits above 0).
- ``interpolated_masks.md``: IoU and Dice of the interpolated masks against the hidden truth per density (the
  paper's Appendix E).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_text_atomic
from .loop import REFERENCE_ARM
from .report import arm_colors, csv_text, markdown_table, mean_std, save_figure

METRIC_NAMES = {
    "iou_batch_mean": "average batched IoU",
    "dice_batch_mean": "average batched Dice",
    "iou_batched": "IoU pooled over the test set",
    "dice_batched": "Dice pooled over the test set",
    "dice_3d": "Dice (3D, per volume)",
}
TABLE_METRICS = ("iou_batch_mean", "dice_batch_mean", "iou_batched", "dice_batched", "dice_3d", "iou_3d")
PERCENT_TICKS = (1, 2, 5, 10, 20, 40, 80, 100)


def grid_points(runs: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, float, float], list[dict[str, Any]]]:
    """(arm group, density, volume fraction) -> the round-0 records of its seeds (with the run's seed)."""
    points: dict[tuple[str, float, float], list[dict[str, Any]]] = defaultdict(list)
    for arm, records in runs.items():
        for record in records:
            config = record["arm_config"]
            if arm == REFERENCE_ARM or not config.get("group"):
                continue
            initial = config["initial"]
            points[config["group"], float(initial["density"]), float(initial.get("volume_fraction", 1.0))].append(
                {**record["rounds"][0], "seed": record["seed"]}
            )
    return dict(points)


def values_of(records: list[dict[str, Any]], metric: str) -> list[float | None]:
    """Each record's ``metric``: a summary metric (the mean over classes), or "name[class]" for one class's."""
    name, _, structure = metric.removesuffix("]").partition("[")
    if structure:
        return [record["metrics"]["per_class"][name].get(structure) for record in records]
    return [record["metrics"].get(name) for record in records]


def metric_label(metric: str) -> str:
    name, _, structure = metric.removesuffix("]").partition("[")
    return METRIC_NAMES.get(name, name) + (f" of {structure}" if structure else "")


def defined_values(records: list[dict[str, Any]], metric: str) -> list[float]:
    return [value for value in values_of(records, metric) if value is not None]


def write_grid_report(runs: dict[str, list[dict[str, Any]]], config: dict[str, Any], folder: Path, title: str) -> None:
    """Write the design study's tables and figures (module docstring) into ``folder``; ``config`` is the study's
    resolved configuration (its arms give the row order)."""
    report = config["report"]
    metric = report["metric"] + (f"[{report['structure']}]" if report.get("structure") else "")
    points = grid_points(runs)
    present = {group for group, _, _ in points}
    groups = [g for g in dict.fromkeys(arm.get("group") for arm in config["arms"].values()) if g in present]
    densities = sorted({density for _, density, _ in points})
    fractions = sorted({fraction for _, _, fraction in points})
    header = ["arm", *(f"ρ {density:g} %" for density in densities)]
    text = [f"# {title}\n\n{metric_label(metric)} on the test subjects, mean ± std over seeds.\n"]
    for fraction in fractions:
        rows = [
            [group, *(mean_std(values_of(points.get((group, d, fraction), []), metric)) for d in densities)]
            for group in groups
        ]
        heading = f"\n## s = {fraction:g} (fraction of training volumes annotated)\n\n"
        text.append(heading + markdown_table(header, rows))
    if REFERENCE_ARM in runs:
        full = values_of([record["rounds"][-1] for record in runs[REFERENCE_ARM]], metric)
        text.append(f"\n{REFERENCE_ARM} (every training slice): {mean_std(full)}\n")
    write_text_atomic(folder / "table.md", "".join(text))
    csv_rows = [
        [group, density, fraction, metric_name, *summary(values_of(records, metric_name)), labeled_percent(records)]
        for (group, density, fraction), records in sorted(points.items())
        for metric_name in dict.fromkeys([*TABLE_METRICS, metric])
    ]
    write_text_atomic(
        folder / "table.csv",
        csv_text(["arm", "density", "volume_fraction", "metric", "mean", "std", "runs", "labeled_percent"], csv_rows),
    )
    write_interpolated_masks(points, groups, densities, fractions, folder)
    budget = report.get("budget_arm") if report.get("budget_arm") in present else groups[0]  # a study of some arms
    plot_budget(points, budget, densities, fractions, metric, folder)
    largest = fractions[-1]
    selection = [g for g in report.get("selection_arms") or groups if g in present]
    if selection:  # a study of interpolation arms alone has no selection to compare
        plot_against_density(points, selection, densities, largest, metric, folder / "selection.png")
        plot_selection_disparity(points, selection, metric, folder / "selection_disparity.png")
    pairs = {
        masked: interpolated
        for masked, interpolated in (report.get("interpolation_pairs") or {}).items()
        if masked in present and interpolated in present
    }
    if pairs:
        paired = [group for pair in pairs.items() for group in pair]
        plot_against_density(points, paired, densities, largest, metric, folder / "interpolation.png", paired=True)


def summary(values: list[float | None]) -> tuple[float | str, float | str, int]:
    defined = [v for v in values if v is not None]
    if not defined:
        return "", "", 0
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0
    return round(float(np.mean(defined)), 6), round(std, 6), len(defined)


def labeled_percent(records: list[dict[str, Any]]) -> float:
    return round(float(np.mean([record["labeled_percent"] for record in records])), 4)


def write_interpolated_masks(points, groups, densities, fractions, folder: Path) -> None:
    """``interpolated_masks.md``: IoU (Dice) of the interpolated masks per arm with interpolation, volume fraction
    and density; nothing when no arm interpolates."""
    rows = []
    for group in groups:
        for fraction in fractions:
            cells = []
            for density in densities:
                filled = [(r.get("pseudo_label_dice") or {}) for r in points.get((group, density, fraction), [])]
                iou, dice = [f.get("held_iou") for f in filled], [f.get("held") for f in filled]
                cells.append(f"{mean_std(iou)} ({mean_std(dice)})" if any(v is not None for v in iou) else "–")
            if any(cell != "–" for cell in cells):
                rows.append([group, f"{fraction:g}", *cells])
    if rows:
        write_text_atomic(
            folder / "interpolated_masks.md",
            "# Interpolated masks against the hidden truth: IoU (Dice), pooled over the filled slices\n\n"
            + markdown_table(["arm", "s", *(f"ρ {d:g} %" for d in densities)], rows),
        )


def plot_budget(points, group: str, densities, fractions, metric: str, folder: Path) -> None:
    """The metric against the labeled percent: one line per density (through the fractions) and one per fraction
    (through the densities), mean over seeds with ±1 std bars."""
    for by_density in (True, False):
        lines, others = (densities, fractions) if by_density else (fractions, densities)
        figure, axes = pyplot().subplots(figsize=(7, 4.5))
        for value, color in zip(lines, arm_colors(len(lines)), strict=True):
            keys = [(group, value, other) if by_density else (group, other, value) for other in others]
            keys = [key for key in keys if key in points]
            values = [defined_values(points[key], metric) for key in keys]
            axes.errorbar(
                [labeled_percent(points[key]) for key in keys], [np.mean(v) for v in values],
                yerr=[np.std(v) for v in values], marker="o", capsize=3, color=color,
                label=f"ρ {value:g} %" if by_density else f"s = {value:g}",
            )  # fmt: skip
        axes.set_xlabel("labeled training slices (% of the training set)")
        axes.set_ylabel(metric_label(metric) + f" (test), {group}")
        budgets = [labeled_percent(records) for key, records in points.items() if key[0] == group]
        logarithmic_percent_axis(axes, [t for t in PERCENT_TICKS if min(budgets) / 1.5 <= t <= max(budgets) * 1.5])
        axes.legend(fontsize=8)
        save_figure(figure, folder / ("budget_by_density.png" if by_density else "budget_by_volumes.png"))


def plot_against_density(points, groups, densities, fraction, metric, path: Path, paired: bool = False) -> None:
    """The metric against density at one volume fraction, one line per arm group; ``paired``: the groups come as
    (masked loss, with mask interpolation) pairs, which share a colour, the interpolated one dashed."""
    figure, axes = pyplot().subplots(figsize=(7, 4.5))
    colors = arm_colors(len(groups) // 2 if paired else len(groups))
    for index, group in enumerate(groups):
        present = [d for d in densities if (group, d, fraction) in points]
        values = [defined_values(points[group, d, fraction], metric) for d in present]
        axes.errorbar(
            present, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], marker="o", capsize=3,
            label=group, color=colors[index // 2 if paired else index], linestyle="--" if paired and index % 2 else "-",
        )  # fmt: skip
    axes.set_xlabel(f"annotation density ρ (% of each annotated volume's slices), s = {fraction:g}")
    axes.set_ylabel(metric_label(metric) + " (test)")
    logarithmic_percent_axis(axes, densities)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def selection_disparities(points, groups, metric) -> dict[str, list[float]]:
    """Per group, at every (density, volume fraction) that all ``groups`` ran: the mean of its runs minus the mean
    of every run of ``groups`` there (the paper's Fig. 5 disparity from the overall mean)."""
    configurations = sorted({(d, f) for g, d, f in points if g in groups})
    disparities: dict[str, list[float]] = {group: [] for group in groups}
    for density, fraction in configurations:
        runs = {g: defined_values(points.get((g, density, fraction), []), metric) for g in groups}
        if not all(runs.values()):
            continue
        overall = np.mean([value for values in runs.values() for value in values])
        for group, values in runs.items():
            disparities[group].append(float(np.mean(values) - overall))
    return disparities


def plot_selection_disparity(points, groups, metric: str, path: Path) -> None:
    """The paper's Fig. 5: a box per selection group of its :func:`selection_disparities`, a line at 0."""
    disparities = selection_disparities(points, groups, metric)
    figure, axes = pyplot().subplots(figsize=(7, 4.5))
    axes.boxplot([disparities[g] for g in groups], tick_labels=list(groups))
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_ylabel(f"{metric_label(metric)}: arm mean - mean of all selections")
    axes.set_title("slice selection against the mean of every selection, per grid point (Fig. 5)", fontsize=9)
    axes.grid(alpha=0.3, axis="y")
    save_figure(figure, path)


def logarithmic_percent_axis(axes, ticks=None) -> None:
    """A log-scaled x axis labelled in plain numbers (at ``ticks`` when given), with a grid."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axes.set_xscale("log")
    if ticks is not None:
        axes.set_xticks(list(ticks))
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.grid(alpha=0.3)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
