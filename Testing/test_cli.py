"""The spatial-al command line: its contract, outputs read back independently, and its error messages."""

import csv
import json
import shutil
import subprocess
import sys

import nibabel
import numpy as np
import pytest
import slicerio

from spatial_al.cli import main
from spatial_al.data import chest_ct_files


@pytest.fixture
def chest_files(tmp_path):
    image, segmentation = chest_ct_files()
    return shutil.copy(image, tmp_path / "ct.nrrd"), shutil.copy(segmentation, tmp_path / "truth.seg.nrrd")


def test_console_script_answers_help():
    done = subprocess.run([sys.executable, "-m", "spatial_al.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("demo", "rank", "propagate", "strategies", "methods"):
        assert command in done.stdout


def test_listings_have_one_line_per_name(capsys):
    assert main(["strategies"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert {line.split()[0] for line in lines} >= {"random", "fixed_interval", "stratified"}
    assert main(["methods"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.strip().splitlines()} >= {"sdf", "contour"}


def test_rank_writes_the_csv_and_a_run_record(chest_files, tmp_path):
    image, _ = chest_files
    output = tmp_path / "ranking.csv"
    assert (
        main(
            [
                "rank",
                str(image),
                "--strategy",
                "fixed_interval",
                "--budget",
                "4",
                "--annotated",
                "0,33",
                "--option",
                "interval=10",
                "--output",
                str(output),
                "--quiet",
            ]
        )
        == 0
    )
    with output.open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["rank", "slice", "score"]
    assert [int(r["slice"]) for r in rows] == [1, 11, 21, 31]
    record = json.loads((tmp_path / "ranking.csv.run.json").read_text())
    assert record["configuration"]["options"] == {"interval": 10}
    assert record["environment"]["versions"]["numpy"] == np.__version__


def test_rank_reads_annotated_slices_recorded_in_the_segmentation(chest_files, tmp_path):
    image, truth = chest_files
    propagated = tmp_path / "propagated.seg.nrrd"
    assert (
        main(["propagate", str(image), str(truth), "--annotated", "0,10,20,30", "--output", str(propagated), "--quiet"])
        == 0
    )
    output = tmp_path / "next.csv"
    assert (
        main(
            [
                "rank",
                str(image),
                "--labels",
                str(propagated),
                "--strategy",
                "random",
                "--budget",
                "30",
                "--output",
                str(output),
                "--quiet",
            ]
        )
        == 0
    )
    with output.open() as file:
        picked = {int(row["slice"]) for row in csv.DictReader(file)}
    assert picked == set(range(34)) - {0, 10, 20, 30}


def test_propagate_to_seg_nrrd_keeps_annotated_slices_and_segments(chest_files, tmp_path):
    image, truth = chest_files
    output = tmp_path / "out.seg.nrrd"
    assert (
        main(
            [
                "propagate",
                str(image),
                str(truth),
                "--annotated",
                "0,3,6,9,12,15,18,21,24,27,30,33",
                "--method",
                "sdf",
                "--output",
                str(output),
                "--quiet",
            ]
        )
        == 0
    )
    written, reference = slicerio.read_segmentation(str(output)), slicerio.read_segmentation(str(truth))
    assert [s["name"] for s in written["segments"]] == [s["name"] for s in reference["segments"]]
    np.testing.assert_allclose(written["ijkToLPS"], reference["ijkToLPS"], atol=1e-6)
    annotated = list(range(0, 34, 3))
    np.testing.assert_array_equal(written["voxels"][..., annotated], reference["voxels"][..., annotated])
    tags = written["segments"][4]["tags"]
    assert tags["SpatialAL.AnnotatedSlices"] == ",".join(map(str, annotated))
    assert tags["SpatialAL.PropagationMethod"] == "sdf"
    record = json.loads((tmp_path / "out.seg.nrrd.run.json").read_text())
    assert record["results"]["propagated_slices"] == [k for k in range(34) if k % 3]


def test_propagate_only_the_named_segments_and_write_the_others_as_read(chest_files, tmp_path, capsys):
    image, truth = chest_files
    output = tmp_path / "lung.seg.nrrd"
    arguments = ["propagate", str(image), str(truth), "--annotated", "10,20", "--output", str(output), "--quiet"]
    assert main([*arguments, "--segments", "right lung"]) == 0
    written, reference = slicerio.read_segmentation(str(output)), slicerio.read_segmentation(str(truth))

    def mask(segmentation, name):  # (I, J, K) boolean mask of one segment, read by slicerio
        return slicerio.extract_segments(segmentation, [(name, 1)])["voxels"] == 1

    np.testing.assert_array_equal(mask(written, "ribs"), mask(reference, "ribs"))  # every slice, as read
    lung, lung_truth = mask(written, "right lung"), mask(reference, "right lung")
    np.testing.assert_array_equal(lung[..., [10, 20]], lung_truth[..., [10, 20]])
    assert not lung[..., :10].any() and lung[..., 11:20].any()
    assert main([*arguments, "--segments", "right lungs"]) == 2
    assert "No segment named 'right lungs'" in capsys.readouterr().err


def test_propagate_to_a_nifti_label_map_keeps_label_values(chest_files, tmp_path):
    image, truth = chest_files
    output = tmp_path / "out.nii.gz"
    assert main(["propagate", str(image), str(truth), "--annotated", "5-8,20", "--output", str(output), "--quiet"]) == 0
    voxels = np.asarray(nibabel.load(str(output)).dataobj)
    reference = slicerio.read_segmentation(str(truth))["voxels"]
    assert set(np.unique(voxels)) <= set(np.unique(reference))
    np.testing.assert_array_equal(voxels[..., [5, 6, 7, 8, 20]], reference[..., [5, 6, 7, 8, 20]])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["rank", "{image}", "--strategy", "randon", "--budget", "3", "--output", "{out}/r.csv"],
            "Did you mean 'random'",
        ),
        (["rank", "{image}", "--strategy", "random", "--budget", "40", "--output", "{out}/r.csv"], "at most 34"),
        (
            [
                "rank",
                "{image}",
                "--strategy",
                "random",
                "--budget",
                "3",
                "--annotated",
                "1,x",
                "--output",
                "{out}/r.csv",
            ],
            "'x' is not a slice index",
        ),
        (["propagate", "{image}", "{truth}", "--output", "{out}/p.seg.nrrd"], "No annotated slice"),
        (["propagate", "{image}", "{truth}", "--annotated", "0,11,8-4", "--output", "{out}/p.nrrd"], "write it low to"),
        (["propagate", "{image}", "{truth}", "--annotated", "-1,6", "--output", "{out}/p.nrrd"], "index -1 is out of"),
        (
            [
                "propagate",
                "{image}",
                "{truth}",
                "--annotated",
                "0,9",
                "--option",
                "tip_fraction=abc",
                "--output",
                "{out}/p.nrrd",
            ],
            "option tip_fraction must be float, got 'abc'",
        ),
        (
            [
                "rank",
                "{image}",
                "--strategy",
                "fixed_interval",
                "--budget",
                "3",
                "--option",
                "interval=2.5",
                "--output",
                "{out}/r.csv",
            ],
            "option interval must be int, got 2.5",
        ),
        (
            [
                "train",
                "{image}",
                "{truth}",
                "--annotated",
                "0,9",
                "--option",
                "learning_rate=fast",
                "--output",
                "{out}/m.pt",
            ],
            "training option learning_rate must be float, got 'fast'",
        ),
        (["propagate", "{image}", "{truth}", "--annotated", "0,34", "--output", "{out}/p.seg.nrrd"], "index 34"),
        (["propagate", "{image}", "{truth}", "--annotated", "0,9", "--output", "{truth}"], "is an input file"),
        (["rank", "{image}", "--strategy", "random", "--budget", "3", "--output", "{truth}/r.csv"], "is a file, not a"),
        (["rank", "{image}", "--strategy", "random", "--budget", "3", "--output", "{out}"], "is a folder; give a file"),
        (["demo", "--output", "{truth}"], "is a file; give a folder"),
        (
            ["propagate", "{image}", "{out}/missing.seg.nrrd", "--annotated", "0", "--output", "{out}/p.seg.nrrd"],
            "does not exist",
        ),
        (
            [
                "propagate",
                "{image}",
                "{truth}",
                "--annotated",
                "0,9",
                "--method",
                "sfd",
                "--output",
                "{out}/p.seg.nrrd",
            ],
            "Did you mean 'sdf'",
        ),
    ],
)
def test_errors_name_the_problem_and_leave_inputs_alone(chest_files, tmp_path, capsys, arguments, message):
    image, truth = chest_files
    before = truth.read_bytes()
    filled = [a.format(image=image, truth=truth, out=tmp_path) for a in arguments]
    assert main([*filled, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert truth.read_bytes() == before


@pytest.fixture
def small_files(labeled_stack, tmp_path):
    """The synthetic labeled stack as an image .nrrd and a .seg.nrrd."""
    from spatial_al.io import write_segmentation, write_volume
    from spatial_al.io.segmentation import Segmentation

    image = write_volume(tmp_path / "image.nrrd", labeled_stack.image.astype(np.float32), labeled_stack.geometry)
    segmentation = Segmentation(labeled_stack.label_layers, labeled_stack.segments, labeled_stack.geometry)
    return str(image), str(write_segmentation(tmp_path / "labels.seg.nrrd", segmentation))


def test_train_then_fine_tune_then_predict_round_trip(small_files, tmp_path, capsys):
    image, labels = small_files
    model = tmp_path / "model.pt"
    common = ["--max-epochs", "2", "--option", "augment=False", "--device", "cpu", "--quiet"]
    assert main(["train", image, labels, "--annotated", "0,4,8", "--output", str(model), *common]) == 0
    record = json.loads((tmp_path / "model.pt.run.json").read_text())
    assert record["results"]["round"] == 0 and len(record["results"]["history"]) == 2
    assert record["configuration"]["annotated"] == [0, 4, 8] and "versions" in json.dumps(record)

    tuned = tmp_path / "tuned.pt"
    arguments = ["train", image, labels, "--annotated", "0,4,8,9", "--resume", str(model), "--output", str(tuned)]
    kept = model.read_bytes()
    assert main([*arguments[:-1], str(model), *common]) == 2  # the previous round's checkpoint is an input
    assert "is an input file" in capsys.readouterr().err and model.read_bytes() == kept
    assert main([*arguments, *common]) == 0
    assert "round 1" in capsys.readouterr().out

    predicted = tmp_path / "predicted.seg.nrrd"
    assert main(["predict", image, "--model", str(tuned), "--output", str(predicted), "--quiet"]) == 0
    segmentation = slicerio.read_segmentation(str(predicted))
    assert [s["name"] for s in segmentation["segments"]] == ["disc", "square"]
    assert segmentation["voxels"].shape == (32, 32, 10)  # slicerio reads IJK
    label_map = tmp_path / "predicted.nii.gz"
    assert main(["predict", image, "--model", str(tuned), "--output", str(label_map), "--quiet"]) == 0
    assert set(np.unique(np.asarray(nibabel.load(label_map).dataobj)).tolist()) <= {0, 1, 2}


def test_train_and_predict_errors_name_the_fix(small_files, tmp_path, capsys):
    image, labels = small_files
    model = tmp_path / "model.pt"
    assert main(["train", image, labels, "--annotated", "0,4", "--output", str(tmp_path / "model.pth")]) == 2
    assert ".pt file" in capsys.readouterr().err
    assert main(["train", image, labels, "--output", str(model), "--quiet"]) == 2
    assert "No annotated slice" in capsys.readouterr().err
    assert main(["train", image, labels, "--annotated", "0", "--preset", "unet-smal", "--output", str(model)]) == 2
    assert "Did you mean 'unet-small'" in capsys.readouterr().err
    assert main(["predict", image, "--model", str(tmp_path / "none.pt"), "--output", str(tmp_path / "p.nrrd")]) == 2
    assert "No model checkpoint" in capsys.readouterr().err
    assert not model.exists()


def test_rank_with_a_trained_model_and_without_one(small_files, tmp_path, capsys):
    image, labels = small_files
    model = tmp_path / "model.pt"
    common = ["--device", "cpu", "--quiet"]
    train = ["train", image, labels, "--annotated", "0,9", "--max-epochs", "1", "--output", str(model)]
    assert main([*train, "--option", "augment=False", *common]) == 0
    ranking = tmp_path / "ranking.csv"
    arguments = ["rank", image, "--labels", labels, "--annotated", "0,9", "--budget", "3", "--output", str(ranking)]
    assert main([*arguments, "--strategy", "entropy", "--model", str(model), "--min-spacing", "2", *common]) == 0
    with ranking.open() as file:
        picked = [int(row["slice"]) for row in csv.DictReader(file)]
    assert len(picked) == 3 and not {0, 9} & set(picked) and np.diff(sorted(picked)).min() >= 2
    record = json.loads((tmp_path / "ranking.csv.run.json").read_text())
    assert record["configuration"]["model_config"]["class_names"] == ["disc", "square"]
    assert main([*arguments, "--strategy", "entropy"]) == 2
    assert "--model CKPT" in capsys.readouterr().err
    assert main([*arguments, "--strategy", "entropy", "--model", str(model), "--segments", "disc"]) == 2
    assert "does not match the segmentation" in capsys.readouterr().err


def test_propagate_with_a_star_model_keeps_the_most_confident_slices(small_files, tmp_path, capsys):
    image, labels = small_files
    model = tmp_path / "star.pt"
    train = ["train", image, labels, "--annotated", "0,4,9", "--max-epochs", "1", "--preset", "star-small"]
    assert main([*train, "--option", "augment=False", "--device", "cpu", "--output", str(model), "--quiet"]) == 0
    output, confidence = tmp_path / "star.seg.nrrd", tmp_path / "star.csv"
    arguments = ["propagate", image, labels, "--annotated", "0,4,9", "--method", "star", "--output", str(output)]
    extra = ["--model", str(model), "--most-confident", "3", "--confidence-output", str(confidence), "--quiet"]
    assert main([*arguments, *extra]) == 0
    with confidence.open() as file:
        rows = list(csv.DictReader(file))
    kept = [int(r["slice"]) for r in rows if r["status"] == "propagated"]
    dropped = [r for r in rows if r["status"] == "not_kept"]
    assert len(kept) == 3 and len(dropped) == 4 and all(r["confidence"] for r in dropped)
    lowest_kept = min(float(r["confidence"]) for r in rows if r["status"] == "propagated")
    assert all(float(r["confidence"]) <= lowest_kept for r in dropped)
    segmentation = slicerio.read_segmentation(str(output))  # IJK: slices are the last axis
    for slice_index in (int(r["slice"]) for r in dropped):
        assert not segmentation["voxels"][..., slice_index].any()
    record = json.loads((tmp_path / "star.seg.nrrd.run.json").read_text())
    assert record["configuration"]["model_config"]["star"] and record["results"]["propagated_slices"] == kept
    assert main([*arguments, "--quiet"]) == 2
    assert "needs a trained model" in capsys.readouterr().err


def test_benchmark_ranking_times_each_strategy_and_writes_json(tmp_path, capsys):
    output = tmp_path / "ranking.json"
    arguments = ["benchmark", "ranking", "--strategies", "random,entropy,strided_blocks", "--slices", "20"]
    assert main([*arguments, "--size", "32", "--device", "cpu", "--output", str(output), "--quiet"]) == 0
    rows = json.loads(output.read_text())["results"]["rows"]
    assert [r["strategy"] for r in rows] == ["random", "entropy", "strided_blocks"]
    assert [r["model"] for r in rows] == [None, "unet-small", None]
    annotated = set(range(5, 20, 10))
    assert [len(r["picked"]) for r in rows[:2]] == [10, 10] and len(rows[2]["picked"]) <= 10  # blocks may leave gaps
    assert not any(annotated & set(r["picked"]) for r in rows)
    assert "strided_blocks" in capsys.readouterr().out
    assert main(["benchmark", "ranking", "--strategies", "entropyy", "--output", str(output)]) == 2
    assert "Did you mean 'entropy'" in capsys.readouterr().err


def test_benchmark_ranking_passes_each_strategy_its_options(tmp_path, capsys):
    output = tmp_path / "ranking.json"
    arguments = ["benchmark", "ranking", "--strategies", "mc_dropout", "--slices", "20", "--size", "32"]
    last = ["--option", "mc_dropout.layers=last", "--option", "mc_dropout.samples=3"]
    assert main([*arguments, *last, "--device", "cpu", "--output", str(output), "--quiet"]) == 0
    (row,) = json.loads(output.read_text())["results"]["rows"]
    assert row["options"] == {"layers": "last", "samples": 3} and len(row["picked"]) == 10
    assert "mc_dropout (layers=last, samples=3)" in capsys.readouterr().out
    assert main([*arguments, "--option", "mc_dropout.layers=first", "--output", str(output), "--quiet"]) == 2
    assert "Unknown MC-dropout layers 'first'" in capsys.readouterr().err
    assert main([*arguments, "--option", "layers=last", "--output", str(output), "--quiet"]) == 2
    assert "STRATEGY.KEY=VALUE" in capsys.readouterr().err
    assert main([*arguments, "--option", "entropy.samples=3", "--output", str(output), "--quiet"]) == 2
    assert "entropy, which is not measured" in capsys.readouterr().err


def test_propagate_writes_the_slice_confidence_csv(chest_files, tmp_path, capsys):
    image, truth = chest_files
    output, confidence = tmp_path / "out.seg.nrrd", tmp_path / "confidence.csv"
    arguments = ["propagate", str(image), str(truth), "--annotated", "5,15,25", "--output", str(output), "--quiet"]
    assert main([*arguments, "--confidence-output", str(confidence)]) == 0
    with confidence.open() as file:
        rows = list(csv.DictReader(file))
    assert [int(r["slice"]) for r in rows] == list(range(34))
    status = {int(r["slice"]): r["status"] for r in rows}
    assert [k for k, s in status.items() if s == "annotated"] == [5, 15, 25]
    assert [k for k, s in status.items() if s == "unreached"] == [*range(5), *range(26, 34)]
    record = json.loads((tmp_path / "out.seg.nrrd.run.json").read_text())["results"]["slice_confidence"]
    for row in rows:  # the CSV and the run record agree
        expected = record[int(row["slice"])]
        assert (
            (row["confidence"] == "")
            if expected is None
            else float(row["confidence"]) == pytest.approx(expected, abs=1e-4)
        )
    assert main([*arguments, "--confidence-output", str(tmp_path / "confidence.txt")]) == 2
    assert "is a .csv file" in capsys.readouterr().err


def test_benchmark_propagation_reports_time_and_dice_per_interval(tmp_path, capsys):
    output = tmp_path / "propagation.json"
    arguments = [
        "benchmark",
        "propagation",
        "--methods",
        "sdf",
        "--intervals",
        "5,10",
        "--speed-shape",
        "20x48x40",
        "--no-frog",
    ]
    assert main([*arguments, "--output", str(output), "--quiet"]) == 0
    rows = json.loads(output.read_text())["results"]["rows"]
    assert [(r["dataset"], r["interval"]) for r in rows] == [
        ("chest CT", 5),
        ("chest CT", 10),
        ("ellipsoids 20x48x40", 10),
    ]
    assert all(0 < r["dice"] <= 1 and r["seconds"] > 0 and r["speedup"] is None for r in rows)
    assert rows[0]["dice"] > rows[1]["dice"]  # sparser annotation, lower Dice
    assert "chest CT" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_status:
        main([*arguments[:4], "--speed-shape", "20x48", "--output", str(output)])
    assert exit_status.value.code == 2
    assert "write slices x rows x columns" in capsys.readouterr().err


def test_the_speed_volume_runs_the_image_methods_but_trains_no_model():
    from spatial_al.benchmarks.propagation import ellipsoid_stack, measure_stack, speedups

    stack = ellipsoid_stack((41, 48, 40))
    assert stack.image.shape == stack.label_layers.shape[1:] and stack.image.dtype == np.float32
    methods = ["sdf", "contour", "sli2vol", "star"]
    rows = speedups(measure_stack(stack, "ellipsoids", methods, (3,), with_models=False))
    speed = {r["method"]: r for r in rows}
    assert set(speed) == {"sdf", "contour", "sli2vol"}
    assert speed["sdf"]["speedup"] == round(speed["contour"]["seconds"] / speed["sdf"]["seconds"], 2)
    assert all(0.6 < r["dice"] <= 1 for r in speed.values()), {m: r["dice"] for m, r in speed.items()}


def test_benchmark_training_reports_steps_phases_and_dice_per_segment(tmp_path, capsys):
    from spatial_al.training.trainer import PHASES

    output = tmp_path / "training.json"
    arguments = ["benchmark", "training", "--max-epochs", "2", "--option", "iterations_per_epoch=3", "--interval", "3"]
    assert main([*arguments, "--output", str(output), "--quiet"]) == 0
    (row,) = json.loads(output.read_text())["results"]["rows"]
    assert (row["preset"], row["annotated_slices"], row["epochs"], row["steps"]) == ("unet-small", 12, 2, 6)
    assert set(row["phase_seconds"]) == {*PHASES, "other"} and min(row["phase_seconds"].values()) >= 0
    assert row["phase_seconds"]["augmentation"] > 0 and row["phase_seconds"]["checkpoint"] > 0
    assert sum(row["phase_seconds"].values()) == pytest.approx(row["seconds"], abs=0.01)
    assert row["steps_per_second"] == pytest.approx(6 / row["phase_seconds"]["forward_backward"], rel=0.01)
    assert set(row["dice"]) == {"ribs", "right lung", "left lung", "tissue"} | {
        f"{part} vertebral column" for part in ("cervical", "thoracic", "lumbar")
    }
    assert all(0 <= value <= 1 for value in row["dice"].values())
    assert "steps/s" in capsys.readouterr().out


def test_speedups_compare_each_row_with_contour_of_the_same_dataset_and_interval():
    from spatial_al.benchmarks.propagation import speedups

    rows = [
        {"dataset": "d", "interval": 5, "method": "contour", "seconds": 12.0, "process_seconds": 10.0, "dice": 0.5},
        {"dataset": "d", "interval": 5, "method": "sdf", "seconds": 0.5, "dice": 0.6},
        {"dataset": "d", "interval": 10, "method": "sdf", "seconds": 0.5, "dice": 0.4},
    ]
    compared = speedups(rows)
    assert (compared[1]["speedup"], compared[1]["speedup_in_process"], compared[1]["dice_gain"]) == (24.0, 4.0, 0.1)
    assert compared[2]["speedup"] is None and compared[2]["dice_gain"] is None


def test_a_batch_size_below_one_and_ctrl_c_get_messages_not_tracebacks(chest_files, tmp_path, capsys, monkeypatch):
    image, _ = chest_files
    arguments = ["rank", str(image), "--strategy", "random", "--budget", "3", "--output", str(tmp_path / "r.csv")]
    with pytest.raises(SystemExit) as exit_status:
        main([*arguments, "--batch-size", "0"])
    assert exit_status.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("spatial_al.selection.rank", interrupted)
    assert main([*arguments, "--quiet"]) == 130
    assert "Cancelled (Ctrl+C)" in capsys.readouterr().err and not (tmp_path / "r.csv").exists()
