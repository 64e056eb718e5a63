"""A study's report, rebuilt from its run folders alone (``runs/*/seed-*/run.json``): tables laid out like the
paper's (mean ± sample std over seeds) as Markdown and CSV, learning curves and the protocol's extra figures as PNG.

- ``table.md`` / ``table.csv``: one row per strategy; columns at the protocol's labeled percents (each run's curve
  interpolated there) or rounds, then max(p) (the best test Dice a run reaches over its rounds) and S% (the labeled
  percent at which a run first reaches the fully supervised Dice of its seed, interpolated between rounds), and the
  fully supervised reference as the last row (100 %).
- ``ablation.md``: the protocol's ablation rows with their pseudo-label Dice.
- ``wilcoxon.md``: every pair of arms compared by the Wilcoxon signed-rank test on the test volumes' Dice.
- ``pseudo_labels.md`` (and ``pseudo_labels_by_block.md`` for strided blocks): pseudo-label Dice against the hidden
  truth, the mean over rounds of each round's new pseudo-labels and the final Dice of every held one.
- ``curves.png``: the table's metric against percent labeled (or round), one line per strategy, ±1 std band;
  ``pseudo_labels.png``: pseudo-label Dice per round of the strategies that make them (STAR's Fig. 3b).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path, write_text_atomic
from .loop import REFERENCE_ARM
from .metrics import percent_to_reach, value_at

FOREGROUND_KEYS = ("new_foreground_predicted", "new_foreground_truth", "new_foreground_dice")
METRIC_NAMES = {"dice_2d": "Dice (mean of 2D slice Dice)", "dice_3d": "Dice (3D, per volume)", "iou_3d": "IoU (3D)"}


def read_runs(study: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Finished run records of a study by arm (seeds in order); unfinished runs are left out."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(Path(study).glob("runs/*/seed-*/run.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "finished":
            runs[record["arm"]].append(record)
    for records in runs.values():
        records.sort(key=lambda record: record["seed"])
    return dict(runs)


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation over seeds with Bessel's correction (as "Less Is More"'s tables), 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_std(values: Sequence[float | None], digits: int = 3) -> str:
    """Mean ± :func:`sample_std` over the defined values; "–" without any; "(k/n)" when some are missing."""
    defined = [v for v in values if v is not None]
    if not defined:
        return "–"
    text = f"{np.mean(defined):.{digits}f} ± {sample_std(defined):.{digits}f}"
    return text if len(defined) == len(values) else f"{text} ({len(defined)}/{len(values)})"


def curve(record: dict[str, Any], metric: str, structure: str | None = None) -> tuple[list[float], list[float]]:
    """(labeled percent, metric) of each round of a run; of one class (``structure``) instead of the mean."""
    return (
        [r["labeled_percent"] for r in record["rounds"]],
        [
            r["metrics"][metric] if structure is None else r["metrics"]["per_class"][metric][structure]
            for r in record["rounds"]
        ],
    )


def run_value(record: dict[str, Any], source: dict[str, Any], metric: str, reference: float | None) -> float | None:
    """One value of a run: ``source`` is {"percent": P} (the metric at P % labeled, interpolated between rounds; the
    end value up to half a slice beyond an end), {"round": R}, {"column": "max(p)"} (the best over its rounds) or
    {"column": "S%"} (the percent that first reaches ``reference``), {"column": "reference"} (the fully supervised
    value of its seed); None where the run has none (a percent outside its curve, a round it did not reach, no
    reference, S% never reached). With a "class" key (a class name) the percent, round and max(p) values are that
    class's (a paper's per-structure columns)."""
    structure = source.get("class")
    if structure is not None and structure not in record["classes"]:
        return None  # a paper's structure that this cohort does not have
    percents, values = curve(record, metric, structure)
    if "percent" in source:
        first = record["rounds"][0]
        half_slice = 0.5 * first["labeled_percent"] / first["labeled_slices"] if first["labeled_slices"] else 0.0
        return value_at(percents, values, source["percent"], reach=half_slice)
    if "round" in source:
        return {r["round"]: value for r, value in zip(record["rounds"], values, strict=True)}.get(source["round"])
    if source.get("column") == "max(p)":
        return float(max(values))
    if source.get("column") == "S%":
        return percent_to_reach(percents, values, reference) if reference is not None else None
    if source.get("column") == "reference":
        return reference
    raise ValueError(f"Unknown value {source!r} of a run; use percent, round, or column max(p), S% or reference.")


def run_columns(record: dict[str, Any], report: dict[str, Any], reference: float | None) -> dict[str, float | None]:
    """One run's values of the main table's columns."""
    metric = report["metric"]
    columns: dict[str, float | None] = {}
    if report["curve_axis"] == "percent":
        for percent in report["percents"]:
            columns[f"{percent:g} %"] = run_value(record, {"percent": percent}, metric, reference)
    elif report["curve_axis"] == "volumes":
        by_round = {r["round"]: r for r in record["rounds"]}
        for round_index in report["rounds"]:
            if round_index in by_round:
                count = by_round[round_index]["labeled_volumes"]
                columns[f"{count} volume{'' if count == 1 else 's'}"] = by_round[round_index]["metrics"][metric]
    else:
        for round_index in report["rounds"]:
            columns[f"round {round_index}"] = run_value(record, {"round": round_index}, metric, reference)
    for column in ("max(p)", "S%"):
        columns[column] = run_value(record, {"column": column}, metric, reference)
    return columns


def table_rows(runs: dict[str, list[dict[str, Any]]], report: dict[str, Any], order: Sequence[str]):
    """(arm, description, {column: values over seeds}) rows of the main table, in ``order``, the reference last."""
    metric = report["metric"]
    reference_by_seed = {
        record["seed"]: record["rounds"][-1]["metrics"][metric] for record in runs.get(REFERENCE_ARM, [])
    }
    rows = []
    for arm in [*(a for a in order if a in runs), *(a for a in runs if a not in order and a != REFERENCE_ARM)]:
        columns: dict[str, list[float | None]] = defaultdict(list)
        for record in runs[arm]:
            for name, value in run_columns(record, report, reference_by_seed.get(record["seed"])).items():
                columns[name].append(value)
        rows.append((arm, runs[arm][0]["arm_config"].get("description", ""), dict(columns)))
    return rows, reference_by_seed


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def pseudo_label_values(record: dict[str, Any]) -> tuple[float | None, float | None]:
    """(mean over rounds of each round's new pseudo-label Dice, the Dice of every pseudo-label held at the end)."""
    rounds = [r for r in record["rounds"] if r.get("pseudo_label_dice")]
    held = rounds[-1]["pseudo_label_dice"]["held"] if rounds else None
    return round_mean(record, "new"), held


def round_mean(record: dict[str, Any], key: str) -> float | None:
    """The mean over a run's rounds of one value of their new pseudo-labels (``pseudo_label_dice[key]``), over the
    rounds where it is defined; None where it never is (or the record predates the value)."""
    values = [r["pseudo_label_dice"].get(key) for r in record["rounds"] if r.get("pseudo_label_dice")]
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def main_table(runs, report, order, title: str) -> tuple[str, str]:
    """The main table as Markdown (mean ± std per cell; the reference row last) and as CSV (one row per strategy and
    column: mean, std, runs)."""
    rows, reference = table_rows(runs, report, order)
    columns = list(rows[0][2]) if rows else []
    header = ["strategy", *columns]
    markdown_rows = [[arm, *(mean_std(values[c], 1 if c == "S%" else 3) for c in columns)] for arm, _, values in rows]
    if reference:
        values = list(reference.values())
        fill = ["–"] * (len(columns) - 2)
        markdown_rows.append([f"{REFERENCE_ARM} (100 % labeled)", *fill, mean_std(values), "100"])
    csv_rows = []
    for arm, description, values in rows:
        for column in columns:
            defined = [v for v in values[column] if v is not None]
            statistics = [np.mean(defined), sample_std(defined)] if defined else ["", ""]
            csv_rows.append([arm, description, column, *statistics, len(defined)])
    if reference:
        values = list(reference.values())
        csv_rows.append([REFERENCE_ARM, "fully supervised", "100 %", np.mean(values), sample_std(values), len(values)])
    metric = METRIC_NAMES.get(report["metric"], report["metric"])
    text = f"# {title}\n\n{metric} on the test subjects, mean ± std over seeds.\n\n" + markdown_table(
        header, markdown_rows
    )
    return text, csv_text(["strategy", "description", "column", "mean", "std", "runs"], csv_rows)


def write_curve_report(runs: dict[str, list[dict[str, Any]]], config: dict[str, Any], folder: Path, title: str) -> None:
    """The report of a study with learning curves (``curve_axis`` percent, round or volumes) into ``folder``: the
    main table, the pseudo-label tables, the ablation and the figures."""
    report = config["report"]
    order = list(config["arms"])
    table, table_csv = main_table(runs, report, order, title)
    write_text_atomic(folder / "table.md", table)
    write_text_atomic(folder / "table.csv", table_csv)
    write_pseudo_label_tables(runs, order, folder)
    if report.get("ablation"):
        write_ablation(runs, report, folder)
    write_paired_tests(runs, order, folder)
    plot_curves(runs, report, order, folder / "curves.png")
    plot_pseudo_labels(runs, order, folder / "pseudo_labels.png")


def last_round_volume_dice(record: dict[str, Any]) -> dict[tuple[int, int], float]:
    """Each test volume's 3D Dice after the run's last round, keyed by (seed, test volume index); empty for a record
    written before per-volume values were kept."""
    values = record["rounds"][-1]["metrics"].get("per_volume", {}).get("dice_3d", [])
    return {(record["seed"], index): value for index, value in enumerate(values) if value is not None}


def wilcoxon_p(first: dict, second: dict) -> tuple[float | None, float, int]:
    """(two-sided p of the Wilcoxon signed-rank test, median difference first - second, pairs) over the keys both
    share; p is None with fewer than 2 pairs or no difference at all."""
    from scipy.stats import wilcoxon

    keys = sorted(set(first) & set(second))
    differences = np.array([first[k] - second[k] for k in keys])
    if len(keys) < 2 or not np.any(differences):
        return None, float(np.median(differences)) if keys else 0.0, len(keys)
    return float(wilcoxon(differences).pvalue), float(np.median(differences)), len(keys)


def write_paired_tests(runs: dict[str, list[dict[str, Any]]], order: Sequence[str], folder: Path) -> None:
    """``wilcoxon.md``: every pair of arms compared by the Wilcoxon signed-rank test on their test volumes' 3D Dice
    after the last round, paired by seed and volume (Nath et al.'s test, between all settings)."""
    arms = [a for a in order if a in runs]
    scores = {arm: {k: v for record in runs[arm] for k, v in last_round_volume_dice(record).items()} for arm in arms}
    arms = [arm for arm in arms if scores[arm]]
    if len(arms) < 2:
        return
    rows = []
    for arm in arms:
        cells = []
        for other in arms:
            if other == arm:
                cells.append("–")
                continue
            p_value, median, pairs = wilcoxon_p(scores[arm], scores[other])
            sign = "+" if median > 0 else "-" if median < 0 else "="
            cells.append(f"{sign} (n={pairs})" if p_value is None else f"{p_value:.3g} {sign}")
        rows.append([arm, *cells])
    text = (
        "# Paired tests between arms\n\nTwo-sided p of the Wilcoxon signed-rank test on the test volumes' 3D Dice "
        "after each run's last round, paired by seed and volume (scipy.stats.wilcoxon); + / -: the row's median "
        "difference to the column is above / below 0. No correction for the number of pairs.\n\n"
    )
    write_text_atomic(folder / "wilcoxon.md", text + markdown_table(["row vs column", *arms], rows))


def write_pseudo_label_tables(runs, order, folder: Path) -> None:
    """``pseudo_labels.md`` for the strategies that make pseudo-labels, and for interpolated strided blocks
    ``pseudo_labels_by_block.md`` ("Less Is More"'s Table 10 layout: method and block order by block size)."""
    rows, by_block = [], defaultdict(dict)
    for arm in [a for a in order if a in runs]:
        arm_config = runs[arm][0]["arm_config"]
        if arm_config["pseudo_labels"] == "none":
            continue
        values = [pseudo_label_values(record) for record in runs[arm]]
        new, held = mean_std([v[0] for v in values]), mean_std([v[1] for v in values])
        rule = arm_config["pseudo_labels"] + (
            f" ({arm_config['propagation']})" if arm_config["pseudo_labels"] == "interpolation" else ""
        )
        foreground = [mean_std([round_mean(r, key) for r in runs[arm]], 2) for key in FOREGROUND_KEYS]
        rows.append([arm, rule, new, held, *foreground])
        if arm_config["strategy"] == "strided_blocks" and arm_config["pseudo_labels"] == "interpolation":
            order_name = arm_config["options"].get("blocks", "random")
            by_block[(arm_config["propagation"], order_name)][arm_config["options"].get("block_size", 5)] = held
    if not rows:
        return
    text = (
        "# Pseudo-label Dice against the hidden ground truth\n\n"
        "`new`: mean over rounds of the Dice of the pseudo-labels made that round; `held`: the Dice of every "
        "pseudo-label held at the end of the run (pooled over slices, mean over classes; 1 when all are empty in "
        "both); then, for the new ones, the share holding foreground in the pseudo-label and in the truth, and their "
        "Dice over the slices where either holds foreground (a rule that pseudo-labels empty slices scores 1 on `new` "
        "and says nothing); each a mean over rounds, then mean ± std over seeds.\n\n"
    )
    header = ["strategy", "rule", "new", "held", "with foreground (pseudo-label)", "(truth)", "new, foreground slices"]
    write_text_atomic(folder / "pseudo_labels.md", text + markdown_table(header, rows))
    write_pseudo_labels_by_round(runs, [row[0] for row in rows], folder)
    if by_block:
        sizes = sorted({size for values in by_block.values() for size in values})
        block_rows = [
            [method, block_order, *(values.get(size, "–") for size in sizes)]
            for (method, block_order), values in sorted(by_block.items())
        ]
        write_text_atomic(
            folder / "pseudo_labels_by_block.md",
            "# Interpolated pseudo-label Dice by method and block size (held at the end of the run)\n\n"
            + markdown_table(["method", "block order", *(f"block {size}" for size in sizes)], block_rows),
        )


def write_pseudo_labels_by_round(runs, arms: Sequence[str], folder: Path) -> None:
    """``pseudo_labels_by_round.md``: for each pseudo-labelling arm and round, the new pseudo-labels' Dice, the share
    holding foreground in the pseudo-label and in the truth, and their Dice on those slices (mean ± std over seeds):
    a rule that only pseudo-labels empty slices shows here round by round."""
    rows = []
    for arm in arms:
        for index, first in enumerate(runs[arm][0]["rounds"]):
            per_seed = [r["rounds"][index].get("pseudo_label_dice") for r in runs[arm] if index < len(r["rounds"])]
            if not any(per_seed):
                continue
            cells = [
                mean_std([values.get(key) if values else None for values in per_seed], digits)
                for key, digits in (("new", 3), *((key, 2) for key in FOREGROUND_KEYS))
            ]
            rows.append([arm, str(first["round"]), f"{first['labeled_percent']:.1f}", *cells])
    header = ["strategy", "round", "% labeled", "new", "with foreground (pseudo-label)", "(truth)", "foreground Dice"]
    write_text_atomic(
        folder / "pseudo_labels_by_round.md",
        "# New pseudo-labels round by round\n\nAs `pseudo_labels.md`, before the mean over rounds.\n\n"
        + markdown_table(header, rows),
    )


def write_ablation(runs, report, folder: Path) -> None:
    """``ablation.md``: the protocol's ablation rows (components -> strategy) with the table's percent columns, max(p)
    and the mean Dice of each round's new pseudo-labels; with ``ablation_per_class`` ({"percent": P} or
    {"round": R}), also each class's value there (a paper's per-structure ablation, SBC-AL's Table 3)."""
    percent_columns = [f"{p:g} %" for p in report["percents"]] if report["curve_axis"] == "percent" else []
    rows, _ = table_rows(runs, report, list(report["ablation"].values()))
    by_arm = {arm: values for arm, _, values in rows}
    at = report.get("ablation_per_class")
    classes = next(iter(runs.values()))[0]["classes"] if at is not None else []
    lines = []
    for title, arm in report["ablation"].items():
        if arm not in by_arm:
            continue
        pseudo = mean_std([pseudo_label_values(record)[0] for record in runs[arm]])
        per_class = [
            mean_std([run_value(r, {**at, "class": name}, report["metric"], None) for r in runs[arm]])
            for name in classes
        ]
        percents = [mean_std(by_arm[arm][column]) for column in percent_columns]
        lines.append([title, arm, *percents, mean_std(by_arm[arm]["max(p)"]), pseudo, *per_class])
    if lines:
        header = ["components", "strategy", *percent_columns, "max(p)", "pseudo-label Dice (new)"]
        if at is not None:
            point = f"at {at['percent']:g} %" if "percent" in at else f"after round {at['round']:g}"
            header += [f"{name} {point}" for name in classes]
        write_text_atomic(folder / "ablation.md", "# Ablation\n\n" + markdown_table(header, lines))


def save_figure(figure, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, bbox_inches="tight")
    plt.close(figure)


def averaged_by_round(
    records, value, x_key: str = "labeled_percent"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(round, mean x, mean y, std y) over the seeds of one arm, round by round (rounds all seeds reached); x is
    each round's ``x_key`` (labeled percent, or labeled volumes)."""
    rounds = min(len(record["rounds"]) for record in records)
    x = np.array([[r[x_key] for r in record["rounds"][:rounds]] for record in records])
    y = np.array([[np.nan if value(r) is None else value(r) for r in record["rounds"][:rounds]] for record in records])
    with warnings.catch_warnings():  # rounds without a value (e.g. no pseudo-labels in the last round) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.arange(rounds), x.mean(0), np.nanmean(y, 0), np.nanstd(y, 0, ddof=1 if len(records) > 1 else 0)


def arm_colors(count: int) -> list:
    """``count`` distinct colours: matplotlib's tab10, or tab20 beyond ten strategies."""
    import matplotlib

    palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def plot_curves(runs, report, order, path: Path) -> None:
    """The learning curves: the table's metric per round against percent labeled (or round), mean ± std band per
    strategy, the fully supervised Dice as a dashed line, the legend to the right of the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = report["metric"]
    figure, axes = plt.subplots(figsize=(8, 5))
    arms = [a for a in order if a in runs]
    for arm, color in zip(arms, arm_colors(len(arms)), strict=True):
        by_volumes = report["curve_axis"] == "volumes"
        x_key = "labeled_volumes" if by_volumes else "labeled_percent"
        rounds, x, mean, std = averaged_by_round(runs[arm], lambda r: r["metrics"][metric], x_key)
        axis = x if report["curve_axis"] in ("percent", "volumes") else rounds
        axes.plot(axis, mean, marker="o", markersize=3, label=arm, color=color)
        axes.fill_between(axis, mean - std, mean + std, alpha=0.12, color=color)
    if REFERENCE_ARM in runs:
        full = [record["rounds"][-1]["metrics"][metric] for record in runs[REFERENCE_ARM]]
        axes.axhline(float(np.mean(full)), color="black", linestyle="--", linewidth=1, label=f"{REFERENCE_ARM} (100 %)")
    axis_labels = {"percent": "labeled training slices (%)", "volumes": "labeled training volumes"}
    axes.set_xlabel(axis_labels.get(report["curve_axis"], "round"))
    axes.set_ylabel(METRIC_NAMES.get(metric, metric) + " (test)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside: never over a curve
    save_figure(figure, path)


def plot_pseudo_labels(runs, order, path: Path) -> None:
    """Dice of each round's new pseudo-labels, per strategy that makes them (STAR's Fig. 3b); nothing without any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in order if a in runs and runs[a][0]["arm_config"]["pseudo_labels"] != "none"]
    if not arms:
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))

    def new_dice(r):
        return (r.get("pseudo_label_dice") or {}).get("new")

    for arm, color in zip(arms, arm_colors(len(arms)), strict=True):
        rounds, _, mean, std = averaged_by_round(runs[arm], new_dice)
        axes.plot(rounds, mean, marker="o", markersize=3, label=arm, color=color)
        axes.fill_between(rounds, mean - std, mean + std, alpha=0.12, color=color)
    axes.set_xlabel("round")
    axes.set_ylabel("Dice of the round's new pseudo-labels")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)
