"""Studies end to end at the smoke scale through the command line: tables, curves and JSON; the same seed gives the
same table; a study killed mid-run resumes without losing or repeating a run; Ray gives the serial table; the Slicer
batch script runs a study; bad requests fail before any training, naming the fix."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from conftest import REPOSITORY, write_msd_folder

from spatial_al.cli import main

SMOKE = ["--scale", "smoke", "--device", "cpu", "--quiet"]


def run(protocol, output, cache, *extra):
    return main(
        [
            "experiment",
            "run",
            protocol,
            "--data",
            "demo",
            "--output",
            str(output),
            "--cache",
            str(cache),
            *SMOKE,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def star_study(tmp_path_factory, cache):
    output = tmp_path_factory.mktemp("star") / "study"
    assert run("star", output, cache) == 0
    return output


def records(study):
    return {
        (path.parent.parent.name, path.parent.name): json.loads(path.read_text())
        for path in sorted(Path(study).glob("runs/*/seed-*/run.json"))
    }


def test_the_star_smoke_study_writes_tables_curves_and_run_records(star_study):
    report = star_study / "report"
    table = (report / "table.md").read_text()
    for row in ("| Rand |", "| STAR |", "| Sim+CEAL |", "| Rand (STAR network) |", "| Full (100 % labeled) |"):
        assert row in table
    assert "| strategy | 12 % | 15 % | max(p) | S% |" in table
    assert {"table.csv", "ablation.md", "pseudo_labels.md", "curves.png", "pseudo_labels.png"} <= {
        p.name for p in report.iterdir()
    }
    assert plt.imread(report / "curves.png").ndim == 3

    study = json.loads((star_study / "study.json").read_text())
    slices = study["slices"]
    runs = records(star_study)
    star = runs[("STAR", "seed-0")]
    assert star["status"] == "finished" and star["device"] == "cpu" and star["environment"]["versions"]["torch"]
    assert star["model_config"]["star"] and not runs[("Rand", "seed-0")]["model_config"]["star"]
    control = runs[("Rand_(STAR_network)", "seed-0")]  # the STAR network without its queries and pseudo-labels
    assert control["model_config"] == star["model_config"]
    assert all(r["pseudo_labeled_slices"] == 0 for r in control["rounds"])
    assert control["rounds"][0]["metrics"] == star["rounds"][0]["metrics"]  # same slices, network and seed
    assert star["training_config"]["reinitialize_labeled_encoder"] and star["split"] == study["split"]
    pool = sum(slices[name] for name in study["split"]["training"])
    first = sum(-(-slices[name] // 10) for name in study["split"]["training"])  # every 10th slice of each volume
    rounds = star["rounds"]
    assert [r["labeled_slices"] for r in rounds] == [first + 6 * r for r in range(3)]  # q = 6 per round
    assert rounds[1]["labeled_percent"] == pytest.approx(100 * (first + 6) / pool)
    assert all(len(r["queried"]) == 6 and r["pseudo_label_dice"]["new"] is not None for r in rounds[:-1])
    assert rounds[1]["pseudo_labeled_slices"] == 6  # STAR's top-q pseudo-labels, chosen afresh every round
    for made in (r["pseudo_label_dice"] for r in rounds[:-1]):
        assert 0 <= made["new_foreground_predicted"] <= 1 and 0 <= made["new_foreground_truth"] <= 1
        if made["new_foreground_dice"] is None:  # every new pseudo-label empty, in the truth too: Dice 1, says nothing
            assert made["new"] == 1.0 and made["new_foreground_predicted"] == made["new_foreground_truth"] == 0
        else:  # slices empty in both add nothing to a pooled Dice
            assert made["new_foreground_dice"] == pytest.approx(made["new"])
    by_round = (report / "pseudo_labels_by_round.md").read_text()  # one seed at the smoke scale: std 0
    for r in rounds[:-1]:
        made = r["pseudo_label_dice"]
        share = f"{made['new_foreground_predicted']:.2f} ± 0.00 | {made['new_foreground_truth']:.2f} ± 0.00"
        assert f"| STAR | {r['round']} | {r['labeled_percent']:.1f} | {made['new']:.3f} ± 0.000 | {share} |" in by_round
    assert "| Rand |" not in by_round  # no pseudo-labels, no rows
    for r in rounds:
        assert set(r["metrics"]) >= {"dice_2d", "dice_3d", "iou_3d", "hd95_mm", "per_class"}
        assert set(r["seconds"]) >= {"train", "evaluate"}
        saved = json.loads((star_study / "runs/STAR/seed-0/rounds" / f"round-{r['round']:03d}.json").read_text())
        assert saved == r
    assert runs[("Full", "seed-0")]["rounds"][0]["labeled_percent"] == 100.0


def test_taal_trains_on_the_unannotated_slices_of_the_pool_too(cache, tmp_path):
    overrides = tmp_path / "no_reference.json"
    overrides.write_text(json.dumps({"supervised_reference": False}))
    assert run("star", tmp_path / "taal", cache, "--strategies", "TAAL", "--config", str(overrides)) == 0
    taal = records(tmp_path / "taal")[("TAAL", "seed-0")]
    assert taal["arm_config"]["unlabeled_consistency"] and taal["status"] == "finished"
    pool = taal["pool_slices"]
    for r in taal["rounds"]:  # every slice not annotated, fewer each round
        assert r["training"]["unlabeled_slices"] == pool - r["labeled_slices"]


def test_the_same_seed_gives_the_same_table_and_the_report_rebuilds_from_run_folders_alone(star_study, cache, tmp_path):
    again = tmp_path / "again"
    assert run("star", again, cache) == 0
    assert (again / "report" / "table.md").read_text() == (star_study / "report" / "table.md").read_text()

    copy = tmp_path / "copy"
    for path in star_study.glob("runs/*/seed-*/run.json"):
        target = copy / path.relative_to(star_study)
        target.parent.mkdir(parents=True)
        target.write_text(path.read_text())
    assert main(["experiment", "report", str(copy)]) == 0
    for name in ("table.md", "table.csv", "ablation.md", "pseudo_labels.md"):
        assert (copy / "report" / name).read_text() == (star_study / "report" / name).read_text()


def test_a_study_killed_mid_run_resumes_without_losing_or_repeating_runs(star_study, cache, tmp_path, capsys):
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "spatial_al.cli", "experiment", "run", "star", "--data", "demo"]
    process = subprocess.Popen([*command, "--output", str(output), "--cache", str(cache), *SMOKE])
    star = output / "runs" / "STAR" / "seed-0"
    deadline = time.time() + 120
    while not (star / "model.pt").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (star / "run.json").is_file(), "the study finished before it could be killed"
    finished = output / "runs" / "Rand" / "seed-0" / "run.json"
    stamp, content = finished.stat().st_mtime_ns, finished.read_text()
    kept_rounds = (
        {p.name: p.read_text() for p in (star / "rounds").glob("*.json")} if (star / "rounds").is_dir() else {}
    )

    assert run("star", output, cache) == 2  # an existing study needs --resume
    state = (star / "state.npz").read_bytes()
    another = tmp_path / "another.json"  # the killed run alone, resumed under another setting: refused, state kept
    another.write_text(json.dumps({"supervised_reference": False, "training": {"max_epochs": 3}}))
    assert run("star", output, cache, "--resume", "--strategies", "STAR", "--config", str(another)) == 2
    assert "this run was started under another setting" in capsys.readouterr().err
    assert (star / "state.npz").read_bytes() == state
    assert run("star", output, cache, "--resume") == 0
    assert finished.stat().st_mtime_ns == stamp and finished.read_text() == content  # not repeated
    for name, text in kept_rounds.items():
        assert (star / "rounds" / name).read_text() == text  # finished rounds kept as they were
    assert (output / "report" / "table.md").read_text() == (star_study / "report" / "table.md").read_text()
    assert not list(output.rglob(".*.partial")) and not list(output.rglob("*.partial"))


def test_a_resume_refuses_finished_runs_of_another_setting_and_keeps_runs_split_over_processes(
    star_study, cache, tmp_path, capsys
):
    resumed = tmp_path / "resumed"
    for path in star_study.glob("runs/*/seed-*/run.json"):
        target = resumed / path.relative_to(star_study)
        target.parent.mkdir(parents=True)
        target.write_text(path.read_text())
    records_before = {path: path.read_text() for path in resumed.rglob("run.json")}
    longer = tmp_path / "longer.json"
    longer.write_text(json.dumps({"training": {"max_epochs": 3}, "query_size": 5}))

    assert run("star", resumed, cache, "--resume", "--config", str(longer)) == 2
    error = capsys.readouterr().err
    assert "this run finished under another setting" in error and "query_size, training.max_epochs differ" in error
    assert {path: path.read_text() for path in resumed.rglob("run.json")} == records_before
    assert not (resumed / "report").exists()

    without_reference = tmp_path / "without-reference.json"  # how a second process of a split study is started
    without_reference.write_text(json.dumps({"supervised_reference": False}))
    assert run("star", resumed, cache, "--resume", "--strategies", "Rand", "--config", str(without_reference)) == 0
    assert {path: path.read_text() for path in resumed.rglob("run.json")} == records_before


def test_the_less_is_more_smoke_study_fills_blocks_by_interpolation(cache, tmp_path):
    output = tmp_path / "lim"
    assert run("less_is_more", output, cache) == 0
    table = (output / "report" / "table.md").read_text()
    assert "| strategy | round 1 | round 2 | max(p) | S% |" in table and "| Blocks5-random-SDF |" in table
    assert "| sdf | random |" in (output / "report" / "pseudo_labels_by_block.md").read_text()
    blocks = records(output)[("Blocks5-random-SDF", "seed-0")]["rounds"]
    assert blocks[1]["labeled_slices"] == 6 + 4 and blocks[1]["pseudo_labeled_slices"] == 3 * 2  # 2 blocks of 5
    assert blocks[2]["pseudo_labeled_slices"] == 3 * 4  # interpolated slices are kept across rounds
    assert records(output)[("Blocks5-entropy-none", "seed-0")]["rounds"][1]["pseudo_labeled_slices"] == 0


def test_ray_mode_gives_the_serial_table(cache, tmp_path):
    ray = pytest.importorskip("ray")
    serial, parallel = tmp_path / "serial", tmp_path / "ray"
    limit = ["--strategies", "RandS,Blocks5-random-SDF", "--threads", "1"]
    assert run("less_is_more", serial, cache, *limit) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run("less_is_more", parallel, cache, *limit, "--ray", "auto") == 0
    finally:
        ray.shutdown()
    assert (parallel / "report" / "table.md").read_text() == (serial / "report" / "table.md").read_text()
    assert json.loads((parallel / "study.json").read_text())["ray"] == "auto"


def test_the_slicer_batch_script_runs_a_study_as_slicer_calls_it(cache, tmp_path):
    script = REPOSITORY / "SpatialALSlicerLib" / "BatchCommand.py"
    output = tmp_path / "batch"
    arguments = ["experiment", "run", "less_is_more", "--data", "demo", "--output", str(output), "--cache", str(cache)]
    completed = subprocess.run(
        [sys.executable, str(script), "--", *arguments, *SMOKE, "--strategies", "RandS", "--seeds", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| RandS |" in (output / "report" / "table.md").read_text()
    failed = subprocess.run(
        [
            sys.executable,
            str(script),
            "--",
            "experiment",
            "run",
            "nope",
            "--data",
            "demo",
            "--output",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2 and "Unknown protocol 'nope'" in failed.stderr


@pytest.mark.parametrize(
    ("protocol", "extra", "config", "message"),
    [
        ("stars", [], None, "Unknown protocol 'stars'. Did you mean 'star'?"),
        ("star", ["--strategies", "STARR"], None, "Unknown strategy 'STARR' for protocol 'star'. Did you mean 'STAR'?"),
        ("star", [], {"query_sise": 4}, "Unknown configuration key query_sise. Did you mean query_size?"),
        ("star", [], {"rounds": "two"}, "rounds must be int, got 'two'"),
        ("star", [], {"budget_percent": 5}, "budget_percent 5.0 is below the initial selection"),
        ("less_is_more", [], {"initial": {"budget": 100000}}, "initial.budget 100000 is larger than the"),
        (
            "star",
            [],
            {"arms": {"Rand": {"options": {"interval": 3}}}},
            "arms.Rand: The strategy 'random' has no option",
        ),
        ("star", [], {"initial": {"strategy": "entropy"}}, "needs a trained model, and round 0 has none"),
        ("star", [], {"data": {"demo_subjects": 2}}, "data.demo_subjects must be at least 3 (one per split)"),
    ],
)
def test_bad_requests_fail_before_any_training_naming_the_fix(tmp_path, capsys, protocol, extra, config, message):
    output = tmp_path / "study"
    options = list(extra)
    if config is not None:
        (tmp_path / "override.json").write_text(json.dumps(config))
        options += ["--config", str(tmp_path / "override.json")]
    status = main(["experiment", "run", protocol, "--data", "demo", "--output", str(output), *SMOKE, *options])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (output / "runs").exists()


def test_bad_data_folders_fail_before_any_training(tmp_path, capsys):
    few = write_msd_folder(tmp_path / "Task09_Spleen", cases=2)
    assert main(["experiment", "run", "star", "--data", str(few), "--output", str(tmp_path / "a"), *SMOKE]) == 2
    assert "has 2 subjects but the split [0.6, 0.2, 0.2] needs at least 3" in capsys.readouterr().err
    broken = write_msd_folder(tmp_path / "Task02_Heart", cases=3, missing_label="case_002")
    assert (
        main(["experiment", "run", "less_is_more", "--data", str(broken), "--output", str(tmp_path / "b"), *SMOKE]) == 2
    )
    error = capsys.readouterr().err
    assert "labelsTr/case_002.nii.gz" in error and "does not exist" in error
    (tmp_path / "file").write_text("")
    assert main(["experiment", "run", "star", "--data", "demo", "--output", str(tmp_path / "file"), *SMOKE]) == 2
    assert "is a file" in capsys.readouterr().err
