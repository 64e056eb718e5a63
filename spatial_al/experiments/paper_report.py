"""``report/paper.md``: the paper's own tables beside the study's, in the paper's layout.

A protocol's ``paper_results`` holds the paper's results tables as printed (``tables``: table number, dataset,
metric, columns, one row per method with the values as strings and the arm of ours that implements it) and what
differs between the paper's setting and the project's (``differences``). For each table, ``paper.md`` prints the
paper's rows, then the study's values for the same rows and columns: each paper column names the value of ours
that fills it (our metric at a labeled percent, after a round, our table's max(p) / S%, or the fully supervised
reference of the run's seed), "–" where we have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import write_text_atomic
from .loop import REFERENCE_ARM
from .protocols import load_protocol
from .report import METRIC_NAMES, markdown_table, mean_std, run_value

INTERPOLATED = (
    "A value of ours at a labeled percent between two of our rounds is interpolated linearly between them, as in "
    "table.md; '–': no value of ours (a percent outside our curve, an arm not run or not in the protocol)."
)


def paper_results(protocol: str) -> dict[str, Any]:
    """The protocol's ``paper_results`` block (``tables`` and ``differences``); empty when it has none."""
    return load_protocol(protocol).content.get("paper_results", {})


def our_cell(records: Sequence[dict[str, Any]], source, metric, references, times_hundred: bool) -> str:
    """Mean ± std over seeds of the value ``source`` names, x100 when the paper prints percents; "–" without."""
    if source is None or not records:
        return "–"
    values = [run_value(record, source, metric, references.get(record["seed"])) for record in records]
    if source.get("column") == "S%":
        return mean_std(values, 1)
    if times_hundred:
        return mean_std([None if v is None else 100.0 * v for v in values], 1)
    return mean_std(values)


def comparison(table: dict[str, Any], runs: dict[str, list[dict[str, Any]]], metric: str) -> str:
    """One paper table as printed, then the study's values in its layout (Markdown)."""
    heading = f"## {table['table']}: {table['dataset']}\n\n{table['caption']}\n\n"
    paper_rows = [[row["method"], *(value or "?" for value in row["values"])] for row in table["rows"]]
    text = heading + f"**Paper** ({table['metric']}, as printed):\n\n"
    text += markdown_table(["method", *table["columns"]], paper_rows)
    if table.get("unreadable"):
        text += f"\nNot readable in the paper's extracted text: {table['unreadable']}\n"
    sources = table["ours"]
    references = {r["seed"]: r["rounds"][-1]["metrics"][metric] for r in runs.get(REFERENCE_ARM, [])}
    our_rows = []
    for row in table["rows"]:
        records = runs.get(row["arm"] or "", [])
        label = f"{row['method']} ({row['arm']})" if row["arm"] and row["arm"] != row["method"] else row["method"]
        if not row["arm"]:
            label += ", not in the protocol"
        elif not records:
            label += ", not run"
        times_hundred = table.get("percent_values", False)
        our_rows.append([label, *(our_cell(records, s, metric, references, times_hundred) for s in sources)])
    pairs = zip(table["columns"], sources, strict=True)
    mapping = ", ".join(f"{column} = {describe(source)}" for column, source in pairs)
    text += f"\n**Ours** ({METRIC_NAMES.get(metric, metric)}, mean ± std over seeds; {mapping}):\n\n"
    text += markdown_table(["method (our arm)", *table["columns"]], our_rows)
    if table.get("notes"):
        text += f"\n{table['notes']}\n"
    return text


def describe(source: dict[str, Any] | None) -> str:
    """How a paper column is filled from ours, in words."""
    if source is None:
        return "none of ours"
    if "class" in source:
        return f"{describe({k: v for k, v in source.items() if k != 'class'})}, {source['class']} only"
    if "percent" in source:
        return f"ours at {source['percent']:g} % labeled"
    if "round" in source:
        return f"ours after round {source['round']}"
    if source["column"] == "reference":
        return "our fully supervised reference (Full, every training slice)"
    return f"our {source['column']}"


def write_paper_comparison(
    runs: dict[str, list[dict[str, Any]]], config: dict[str, Any], provenance: dict[str, Any], path: Path
) -> None:
    """Write ``paper.md`` for a study whose protocol transcribes its paper's tables; nothing for one without."""
    results = paper_results(config["protocol"])
    if not results.get("tables"):
        return
    metric = config["report"]["metric"]
    paper = provenance.get("paper", config["protocol"])
    setting = f"{provenance.get('source', '?')}, scale {provenance.get('scale', '?')}" if provenance else "?"
    text = f"# The paper's tables beside this study's\n\n{paper}.\n\nThis study: {setting}. {INTERPOLATED}\n\n"
    if results.get("differences"):
        text += "What differs from the paper's setting:\n\n" + "".join(f"- {d}\n" for d in results["differences"])
    text += "\n" + "\n".join(comparison(table, runs, metric) for table in results["tables"])
    write_text_atomic(path, text)
