"""The papers' tables in the protocols and ``report/paper.md``: every transcribed table is well formed and names
real arms; a run's value for a paper column matches a hand computation; paper.md lays ours out as the paper's."""

import numpy as np
import pytest

from spatial_al.experiments.paper_report import paper_results, write_paper_comparison
from spatial_al.experiments.protocols import PROTOCOLS, load_protocol
from spatial_al.experiments.report import run_value
from spatial_al.experiments.units import REPORT_LAYOUTS, SESSIONS


@pytest.mark.parametrize("protocol", PROTOCOLS.names())
def test_every_protocol_transcribes_its_papers_tables_with_one_value_per_column_and_real_arms(protocol):
    results = paper_results(protocol)
    arms = set(load_protocol(protocol).content["config"]["arms"])
    assert results["tables"] and results["differences"]
    for table in results["tables"]:
        assert table["table"] and table["dataset"] and table["metric"] and table["columns"]
        assert len(table["ours"]) == len(table["columns"])
        for source in table["ours"]:
            assert source is None or set(source) <= {"percent", "round", "column", "class"}
            assert source is None or source.get("column", "S%") in ("max(p)", "S%", "reference")
            assert source is None or (0 < source.get("percent", 1) <= 100 and source.get("round", 0) >= 0)
        for row in table["rows"]:
            assert len(row["values"]) == len(table["columns"]), (table["table"], row["method"])
            assert row["arm"] is None or row["arm"] in arms, row["arm"]
            assert all(value or table["unreadable"] for value in row["values"])  # an empty cell is explained


def run(seed, percents, dice, labeled_slices=(10, 20, 30)):
    rounds = [
        {"round": index, "labeled_percent": p, "labeled_slices": s, "metrics": {"dice_3d": d}}
        for index, (p, s, d) in enumerate(zip(percents, labeled_slices, dice, strict=True))
    ]
    return {"seed": seed, "rounds": rounds, "arm_config": {"description": ""}}


def test_a_runs_value_for_a_paper_column_is_the_interpolated_curve_round_best_and_crossing():
    record = run(0, [10.0, 20.0, 30.0], [0.5, 0.6, 0.8])
    assert run_value(record, {"percent": 25}, "dice_3d", None) == pytest.approx(0.7)  # halfway from 0.6 to 0.8
    assert run_value(record, {"percent": 30.4}, "dice_3d", None) == pytest.approx(0.8)  # within half a slice (0.5 %)
    assert run_value(record, {"percent": 31}, "dice_3d", None) is None
    assert run_value(record, {"round": 1}, "dice_3d", None) == 0.6
    assert run_value(record, {"round": 3}, "dice_3d", None) is None
    assert run_value(record, {"column": "max(p)"}, "dice_3d", None) == 0.8
    assert run_value(record, {"column": "S%"}, "dice_3d", 0.7) == pytest.approx(25.0)
    assert run_value(record, {"column": "S%"}, "dice_3d", 0.9) is None
    assert run_value(record, {"column": "reference"}, "dice_3d", 0.9) == 0.9
    with pytest.raises(ValueError, match="percent, round"):
        run_value(record, {"volumes": 3}, "dice_3d", None)


def test_a_papers_per_structure_column_reads_that_class_of_ours_and_nothing_where_the_cohort_lacks_it():
    record = run(0, [10.0, 20.0, 30.0], [0.5, 0.6, 0.8])
    record["classes"] = ["myocardium", "left ventricle"]
    for r, (myocardium, ventricle) in zip(record["rounds"], [(0.4, 0.6), (0.5, 0.7), (0.7, 0.9)], strict=True):
        r["metrics"]["per_class"] = {"dice_3d": {"myocardium": myocardium, "left ventricle": ventricle}}
    assert run_value(record, {"percent": 15, "class": "myocardium"}, "dice_3d", None) == pytest.approx(0.45)
    assert run_value(record, {"round": 2, "class": "left ventricle"}, "dice_3d", None) == 0.9
    assert run_value(record, {"column": "max(p)", "class": "myocardium"}, "dice_3d", None) == 0.7
    assert run_value(record, {"percent": 15, "class": "right ventricle"}, "dice_3d", None) is None


def test_paper_md_prints_the_papers_rows_then_ours_in_the_same_layout(tmp_path, monkeypatch):
    table = {
        "table": "Table 9",
        "dataset": "a cohort",
        "caption": "Dice by percent.",
        "metric": "Dice (%)",
        "percent_values": True,
        "columns": ["25%", "max", "S%", "HD95"],
        "ours": [{"percent": 25}, {"column": "max(p)"}, {"column": "S%"}, None],
        "rows": [
            {"method": "Random", "arm": "Rand", "values": ["61.0", "70.1", "-", "9.9"]},
            {"method": "Ours", "arm": "Mine", "values": ["72.5", "80.0", "20%", "5.1"]},
            {"method": "Theirs", "arm": None, "values": ["", "", "", ""]},
        ],
        "unreadable": "the row Theirs is garbled",
        "notes": "A note.",
    }
    monkeypatch.setattr(
        "spatial_al.experiments.paper_report.paper_results",
        lambda protocol: {"tables": [table], "differences": ["A smaller cohort."]},
    )
    runs = {
        "Rand": [run(0, [10.0, 20.0, 30.0], [0.5, 0.6, 0.8]), run(1, [10.0, 20.0, 30.0], [0.5, 0.6, 0.6])],
        "Full": [run(0, [100.0], [0.7], (30,)), run(1, [100.0], [0.7], (30,))],
    }
    config = {"protocol": "star", "report": {"metric": "dice_3d"}}
    path = tmp_path / "paper.md"
    write_paper_comparison(runs, config, {"paper": "A paper", "source": "demo", "scale": "cpu"}, path)
    text = path.read_text()
    assert "- A smaller cohort." in text and "A note." in text and "the row Theirs is garbled" in text
    assert "| Random | 61.0 | 70.1 | - | 9.9 |" in text and "| Theirs | ? | ? | ? | ? |" in text
    # x100 like the paper: 25 % is 70.0 and 60.0 over the two seeds; S% reaches 0.7 at 25 % in seed 0 only
    assert "| Random (Rand) | 65.0 ± 7.1 | 70.0 ± 14.1 | 25.0 ± 0.0 (1/2) | – |" in text
    assert "| Ours (Mine), not run | – | – | – | – |" in text
    assert "| Theirs, not in the protocol | – | – | – | – |" in text


def test_each_query_unit_and_curve_axis_has_its_session_and_report_layout():
    from spatial_al.experiments.config import CURVE_AXES, QUERY_UNITS

    assert sorted(SESSIONS.names()) == sorted(QUERY_UNITS)
    assert sorted(REPORT_LAYOUTS.names()) == sorted(CURVE_AXES)


def test_paired_tests_compare_arms_volume_by_volume_as_scipys_wilcoxon_on_the_differences(tmp_path):
    from scipy.stats import wilcoxon

    from spatial_al.experiments.report import write_paired_tests

    def record(seed, dice):
        return {"seed": seed, "rounds": [{"metrics": {"per_volume": {"dice_3d": dice}}}]}

    better = [0.9, 0.8, 0.85, 0.7]
    worse = [0.5, 0.75, 0.6, 0.71]
    runs = {
        "A": [record(0, better[:2]), record(1, better[2:])],
        "B": [record(0, worse[:2]), record(1, worse[2:])],
        "C": [record(0, better[:2]), record(1, better[2:])],
        "Old": [{"seed": 0, "rounds": [{"metrics": {}}]}],  # written before per-volume values were kept
    }
    write_paired_tests(runs, ["A", "B", "C", "Old"], tmp_path)
    text = (tmp_path / "wilcoxon.md").read_text()
    expected = wilcoxon(np.subtract(better, worse)).pvalue
    assert f"| A | – | {expected:.3g} + | = (n=4) |" in text
    assert f"| B | {expected:.3g} - | – | {expected:.3g} - |" in text
    assert "Old" not in text
