"""The MIDL 2025 slice-configuration protocol at the smoke scale: the density x volume grid, the per-volume and
dataset-level selections, mask interpolation before training, batched IoU, the design-study report, the LiTS and
ATLAS readers end to end, and bad grids refused before any training."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_records, run_smoke_study, write_challenge_folder, write_dbc_folder

from spatial_al.experiments.loop import SessionState, run_folder
from spatial_al.experiments.protocols import resolve_config
from spatial_al.experiments.units import write_report


def run_study(data, output, *extra):
    return run_smoke_study("slice_config", data, output, *extra)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("slice_config") / "study"
    assert run_study("demo", output) == 0
    return output, run_records(output)


def final_state(output, record) -> SessionState:
    return SessionState.load(run_folder(output, record["arm"], record["seed"]) / "state.npz")


def test_the_grid_makes_one_arm_per_density_and_volume_fraction():
    config, _ = resolve_config("slice_config", "demo", "smoke")
    assert config.rounds == 0
    assert list(config.arms)[:4] == ["Fixed d10 s0.5", "Fixed d10 s1", "Fixed d40 s0.5", "Fixed d40 s1"]
    arm = config.arms["UAL (dataset) d40 s0.5"]
    assert (arm.group, arm.strategy) == ("UAL (dataset)", "ual")
    assert arm.initial == {"scope": "dataset", "density": 40, "volume_fraction": 0.5}
    initial = config.initial_for(arm)  # the protocol's "arm" strategy stands for the arm's own
    assert (initial.strategy, initial.density, initial.volume_fraction, initial.scope) == ("ual", 40, 0.5, "dataset")
    assert initial.options == {"epochs": 1}
    groups = ("Fixed", "UAL (dataset)", "Fixed + M.I.")
    assert config.default_arms == [f"{group} d{d} s{s}" for group in groups for d in (10, 40) for s in ("0.5", "1")]


def test_each_run_annotates_rho_percent_of_s_times_n_volumes_the_same_volumes_for_every_arm(study):
    output, records = study
    volumes_by_fraction = {}
    for arm, record in records.items():
        if arm == "Full":
            continue
        initial = record["arm_config"]["initial"]
        slices = json.loads((output / "study.json").read_text())["slices"]
        annotated = {name: picks for name, picks in final_state(output, record).annotated.items() if picks}
        training = record["split"]["training"]
        assert len(annotated) == max(1, round(initial["volume_fraction"] * len(training)))
        volumes_by_fraction.setdefault(initial["volume_fraction"], set()).add(tuple(sorted(annotated)))
        budgets = {name: max(1, round(initial["density"] / 100 * slices[name])) for name in annotated}
        if record["arm_config"]["group"] == "UAL (dataset)":  # the same total, spread as the selection likes
            assert sum(map(len, annotated.values())) == sum(budgets.values())
        else:
            assert {name: len(picks) for name, picks in annotated.items()} == budgets
        if record["arm_config"]["group"] == "Fixed":  # an even grid: gaps differ by at most one slice
            for picks in annotated.values():
                if len(picks) > 2:
                    assert np.ptp(np.diff(picks)) <= 1
        assert record["rounds"][0]["labeled_slices"] == sum(map(len, annotated.values())) and len(record["rounds"]) == 1
    assert all(len(choices) == 1 for choices in volumes_by_fraction.values())  # same volumes across arms of a seed
    half, everything = volumes_by_fraction[0.5].pop(), volumes_by_fraction[1.0].pop()
    assert set(half) < set(everything)


def test_mask_interpolation_fills_the_slices_between_annotated_ones_before_training(study):
    output, records = study
    for arm in ("Fixed + M.I. d10 s0.5", "Fixed + M.I. d40 s1"):
        record = records[arm]
        state = final_state(output, record)
        expected = {
            (name, index)
            for name, picks in state.annotated.items()
            if picks
            for index in range(picks[0] + 1, picks[-1])
            if index not in picks
        }
        filled = {(name, index) for name, masks in state.pseudo.items() for index in masks}
        assert filled == expected and filled
        first = record["rounds"][0]
        assert first["pseudo_labeled_slices"] == len(filled)
        overlap = first["pseudo_label_dice"]
        assert 0 < overlap["held_iou"] <= overlap["held"] <= 1  # IoU never exceeds Dice
        assert 0 < first["interpolation_seconds"] < record["seconds_this_process"]  # the run's time counts it
    interpolated = {
        name
        for arm in ("Fixed + M.I. d10 s0.5", "Fixed + M.I. d40 s1")
        for name in final_state(output, records[arm]).pseudo
    }
    networks = list(output.glob("cache/**/sli2vol-networks/*.pt"))
    assert len(networks) == len(interpolated)  # one per volume and seed, kept in the cohort cache
    plain = records["Fixed d40 s1"]
    assert not final_state(output, plain).pseudo and plain["rounds"][0]["pseudo_labeled_slices"] == 0


def test_the_report_lays_out_table_4_and_draws_the_papers_figures(study):
    output, records = study
    report = output / "report"
    table = (report / "table.md").read_text()
    assert "## s = 0.5" in table and "## s = 1" in table and "| arm | ρ 10 % | ρ 40 % |" in table
    assert table.index("| Fixed |") < table.index("| UAL (dataset) |") < table.index("| Fixed + M.I. |")
    value = records["Fixed d40 s1"]["rounds"][0]["metrics"]["iou_batch_mean"]
    assert f"{value:.3f} ± 0.000" in table
    for figure in ("budget_by_density", "budget_by_volumes", "selection", "interpolation", "selection_disparity"):
        assert (report / f"{figure}.png").stat().st_size > 10_000
    masks = (report / "interpolated_masks.md").read_text()
    assert "| Fixed + M.I. | 1 |" in masks and "| Fixed |" not in masks
    rows = (report / "table.csv").read_text().splitlines()
    assert rows[0] == "arm,density,volume_fraction,metric,mean,std,runs,labeled_percent"
    assert any(row.startswith("Fixed,40.0,1.0,iou_batched,") for row in rows)  # the pooled IoU, kept
    assert any(row.startswith("Fixed,40.0,1.0,iou_batch_mean,") for row in rows)


def test_a_study_without_the_budget_arm_still_writes_its_report(study, tmp_path):
    output, _ = study
    subset = tmp_path / "study"
    shutil.copytree(output, subset, ignore=shutil.ignore_patterns("Fixed_d*", "report", "cache"))
    write_report(subset)  # the budget figures fall back on the first arm run
    table = (subset / "report" / "table.md").read_text()
    assert "| Fixed |" not in table and "| UAL (dataset) |" in table
    assert (subset / "report" / "budget_by_density.png").stat().st_size > 0


def test_selection_disparity_is_each_arms_mean_against_the_mean_of_all_selections_at_each_grid_point():
    from spatial_al.experiments.grid_report import selection_disparities

    def runs(*values):
        return [{"metrics": {"iou_batch_mean": v}} for v in values]

    points = {
        ("Fixed", 10.0, 1.0): runs(0.5, 0.7),  # arm means 0.6 and 0.3, the mean of all four runs 0.45
        ("Random", 10.0, 1.0): runs(0.2, 0.4),
        ("Fixed", 40.0, 1.0): runs(0.8),  # Random did not run here: no disparity
        ("Fixed", 20.0, 1.0): runs(0.9, 0.9, 0.9),  # three runs against one: the mean of the four is 0.825
        ("Random", 20.0, 1.0): runs(0.6),
    }
    disparities = selection_disparities(points, ["Fixed", "Random"], "iou_batch_mean")
    assert disparities["Fixed"] == pytest.approx([0.15, 0.075])
    assert disparities["Random"] == pytest.approx([-0.15, -0.225])


def test_a_study_of_an_interpolation_arm_alone_writes_its_report_without_selection_figures(tmp_path):
    output = tmp_path / "study"
    assert run_study("demo", output, "--strategies", "Fixed + Sli2Vol d40 s1") == 0
    report = {path.name for path in (output / "report").iterdir()}
    assert {"table.md", "interpolated_masks.md", "budget_by_density.png"} <= report
    assert not {"selection.png", "selection_disparity.png"} & report


@pytest.mark.parametrize("layout", ["LiTS", "ATLAS"])
def test_lits_and_atlas_folders_run_with_their_protocol_entries(tmp_path, layout):
    folder = write_challenge_folder(tmp_path / "downloads", layout, cases=5)
    output = tmp_path / "study"
    assert run_study(folder, output, "--strategies", "Fixed d40 s1") == 0
    study_record = json.loads((output / "study.json").read_text())
    assert study_record["dataset_entry"] == layout
    assert study_record["classes"] == (["liver", "tumour"] if layout == "LiTS" else ["lesion"])
    records = [json.loads(path.read_text()) for path in Path(output).glob("runs/*/seed-0/run.json")]
    assert sorted(record["arm"] for record in records) == ["Fixed d40 s1", "Full"]
    if layout == "LiTS":  # the paper's weighted cross-entropy, and the tumour reported
        training = records[0]["training_config"]
        assert (training["loss"], training["class_weights"]) == ("ce", [0.04, 0.25, 1.4])
        table = (output / "report" / "table.md").read_text()
        assert "average batched IoU of tumour on the test subjects" in table
        fixed = next(r for r in records if r["arm"] == "Fixed d40 s1")
        tumour = fixed["rounds"][0]["metrics"]["per_class"]["iou_batch_mean"]["tumour"]
        assert f"| {tumour:.3f} ± 0.000 |" in table


def test_a_dbc_folder_runs_the_breast_task_with_its_protocol_entry(tmp_path):
    folder = write_dbc_folder(tmp_path / "downloads", patients=5)
    output = tmp_path / "study"
    assert run_study(folder, output, "--strategies", "Fixed d40 s1") == 0
    study_record = json.loads((output / "study.json").read_text())
    assert (study_record["dataset_entry"], study_record["classes"]) == ("DBC", ["breast"])
    fixed = json.loads((run_folder(output, "Fixed d40 s1", 0) / "run.json").read_text())
    assert fixed["training_config"]["loss"] == "ce"  # the paper's cross-entropy for DBC
    assert 0 <= fixed["rounds"][0]["metrics"]["iou_batch_mean"] <= 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"grid": {"density": [0, 10]}}, "initial.density must be a percent in (0, 100]"),
        ({"grid": {"volume_fraction": [1.5]}}, "initial.volume_fraction (s) must be in (0, 1]"),
        ({"grid": {"densities": [10]}}, "grid must map density and volume_fraction"),
        ({"initial": {"scope": "cohort"}}, "initial.scope must be one of volume, dataset"),
    ],
)
def test_bad_grids_fail_before_any_training(tmp_path, capsys, config, message):
    (tmp_path / "override.json").write_text(json.dumps(config))
    status = run_study("demo", tmp_path / "study", "--config", str(tmp_path / "override.json"))
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study" / "runs").exists()
