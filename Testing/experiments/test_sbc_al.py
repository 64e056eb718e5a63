"""The SBC-AL protocol end to end at the smoke scale: on the demo cohort and on folders in the ACDC and KiTS19
layouts; the same random initial slices for every arm of a seed, percent budgets, the paper's ablation models, and
bad requests refused before any training."""

import json

import pytest
from conftest import run_records, run_smoke_study, write_challenge_folder


def run_study(data, output, *extra):
    return run_smoke_study("sbc_al", data, output, *extra)


def initial_slices(study, record):
    """The run's round-0 slices: everything annotated at its end but the slices its rounds queried."""
    from spatial_al.experiments.loop import SessionState, run_folder

    state = SessionState.load(run_folder(study, record["arm"], 0) / "state.npz")
    queried = {tuple(pick) for round_record in record["rounds"] for pick in round_record.get("queried", [])}
    return {(name, index) for name, slices in state.annotated.items() for index in slices} - queried


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    output = tmp_path_factory.mktemp("sbc") / "study"
    assert run_study("demo", output) == 0
    return output


def test_the_smoke_study_queries_percent_budgets_from_one_random_start_with_the_papers_models(demo_study):
    records = run_records(demo_study)
    assert set(records) == {"Random", "SBC-AL", "SBC-AL w/o SFP", "SBC-AL ASR (C)", "Full"}
    pool = records["Random"]["pool_slices"]
    arms = [arm for arm in records if arm != "Full"]
    assert {records[arm]["rounds"][0]["labeled_slices"] for arm in arms} == {round(0.10 * pool)}
    first = [initial_slices(demo_study, records[arm]) for arm in arms]
    assert len(first[0]) == round(0.10 * pool) and all(picks == first[0] for picks in first)  # one random start
    for arm in ("Random", "SBC-AL"):
        assert records[arm]["rounds"][1]["labeled_slices"] == 2 * round(0.10 * pool)
    models = {arm: record["model_config"] for arm, record in records.items()}
    assert not models["Random"]["structure_heads"] and models["SBC-AL"]["structure_heads"]
    assert models["SBC-AL"]["structure_prediction"] and models["SBC-AL"]["attentional_refinement"]
    assert not models["SBC-AL w/o SFP"]["structure_prediction"] and models["SBC-AL w/o SFP"]["attentional_refinement"]
    assert models["SBC-AL ASR (C)"]["refinement_fusion"] == "concatenation"
    training = records["SBC-AL"]["config"]["training"]
    assert (training["optimizer"], training["nesterov"], training["structure_learning_rate_factor"]) == (
        "sgd",
        False,
        0.01,
    )

    table = (demo_study / "report" / "table.md").read_text()
    assert "| strategy | 10 % | 20 % | max(p) | S% |" in table and "| SBC-AL w/o SFP |" in table
    first_column = [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| SBC-AL |")]
    assert first_column and first_column[0] != "–"  # the first round sits at the nominal 10 % within half a slice
    ablation = (demo_study / "report" / "ablation.md").read_text()
    assert "| SFP ✗, ASR ✓ (ours, not in Table 3) | SBC-AL w/o SFP |" in ablation
    assert "| SFP ✓, ASR ✓ (SBC-AL) | SBC-AL |" in ablation
    classes = records["SBC-AL"]["classes"]  # Table 3's layout: each structure after the last round
    assert "| " + " | ".join(f"{name} after round 1" for name in classes) + " |" in ablation.splitlines()[2]
    row = next(line for line in ablation.splitlines() if "| SBC-AL ASR (C) |" in line)
    final = records["SBC-AL ASR (C)"]["rounds"][-1]["metrics"]["per_class"]["dice_3d"]
    assert row.split("|")[-len(classes) - 1 : -1] == [f" {final[name]:.3f} ± 0.000 " for name in classes]


@pytest.mark.parametrize("layout", ["ACDC", "KiTS19"])
def test_the_study_reads_acdc_and_kits19_folders_with_their_protocol_entries(tmp_path, layout):
    folder = write_challenge_folder(tmp_path / "downloads", layout, cases=4)
    output = tmp_path / "study"
    assert run_study(folder, output, "--strategies", "SBC-AL") == 0
    study = json.loads((output / "study.json").read_text())
    assert study["dataset_entry"] == layout
    # ACDC keeps the reader's classes; KiTS19 merges the tumour into the kidney
    expected = ["right ventricle", "myocardium", "left ventricle"] if layout == "ACDC" else ["kidney"]
    assert study["classes"] == expected
    record = run_records(output)["SBC-AL"]
    assert record["status"] == "finished" and len(record["rounds"]) == 2
    assert record["config"]["data"]["intensity"] == ("window" if layout == "KiTS19" else "zscore")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"arms": {"SBC-AL": {"model": {"architecture": "unet_plusplus"}}}}, "did you mean 'unet_plus_plus'"),
        ({"arms": {"SBC-AL": {"model": {"backbone_name": "x"}}}}, "unknown fields ['backbone_name']"),
        ({"query_percent": 0}, "query_percent must be in (0, 100]"),
        ({"initial": {"percent": 150}}, "initial.percent must be a percent in (0, 100]"),
        (
            {"arms": {"SBC-AL": {"model": {"structure_prediction": False, "attentional_refinement": False}}}},
            "use a plain preset",
        ),
    ],
)
def test_bad_sbc_requests_fail_before_any_training(tmp_path, capsys, config, message):
    (tmp_path / "override.json").write_text(json.dumps(config))
    output = tmp_path / "study"
    status = run_study("demo", output, "--config", str(tmp_path / "override.json"))
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (output / "runs").exists()


def test_the_ablation_gives_each_structure_at_a_labeled_percent(demo_study, tmp_path):
    from spatial_al.experiments.report import write_ablation

    records = run_records(demo_study)
    report = json.loads((demo_study / "study.json").read_text())["config"]["report"]
    report["ablation_per_class"] = {"percent": 10}
    write_ablation({arm: [record] for arm, record in records.items()}, report, tmp_path)
    lines = (tmp_path / "ablation.md").read_text().splitlines()
    classes = records["SBC-AL"]["classes"]
    assert "| " + " | ".join(f"{name} at 10 %" for name in classes) + " |" in lines[2]
    row = next(line for line in lines if "| SBC-AL ASR (C) |" in line)
    at_10_percent = records["SBC-AL ASR (C)"]["rounds"][0]["metrics"]["per_class"]["dice_3d"]  # round 0 is 10 %
    assert row.split("|")[-len(classes) - 1 : -1] == [f" {at_10_percent[name]:.3f} ± 0.000 " for name in classes]


def test_the_report_follows_the_study_config_not_its_first_runs(demo_study, tmp_path):
    """A report section changed after the runs finished (the protocol as the study last ran) lays out the report."""
    import shutil

    from spatial_al.experiments.units import write_report

    study = tmp_path / "study"
    shutil.copytree(demo_study / "runs", study / "runs")
    record = json.loads((demo_study / "study.json").read_text())
    record["config"]["report"]["ablation_per_class"] = {"percent": 10}
    (study / "study.json").write_text(json.dumps(record))
    lines = (write_report(study) / "ablation.md").read_text().splitlines()
    assert all(f"{name} at 10 %" in lines[2] for name in run_records(demo_study)["SBC-AL"]["classes"])
    assert "after round" not in lines[2]
