"""The spatial-al command line: its contract, outputs read back independently, and its error messages."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import nibabel
import numpy as np
import pytest
import slicerio

from spatial_al.cli import command_line_warning, main
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


def draw_on_slice(path, output, segment_name, slice_index, erase=False):
    """Copy a segmentation file with a 3 x 3 stroke of one segment drawn (or the segment erased) on one K slice, where
    no other segment is, the way any editor would; returns the stroke's (j, i) slices."""
    from spatial_al.io import read_segmentation, write_segmentation
    from spatial_al.io.segmentation import Segmentation

    segmentation = read_segmentation(path)
    segment = next(s for s in segmentation.segments if s.name == segment_name)
    layers = segmentation.label_layers.copy()
    layer = layers[segment.layer, slice_index]
    if erase:
        layer[layer == segment.label_value] = 0
        stroke = None
    else:
        free = np.argwhere((layers[:, slice_index] == 0).all(axis=0))[len(layer) // 2 :]
        j, i = next((j, i) for j, i in free if (layers[:, slice_index, j : j + 3, i : i + 3] == 0).all())
        stroke = (slice(j, j + 3), slice(i, i + 3))
        layer[stroke] = segment.label_value
    write_segmentation(output, Segmentation(layers, segmentation.segments, segmentation.geometry))
    return stroke


def segment_voxels(path, name):
    """(K, J, I) bool voxels of one segment of a .seg.nrrd, read with slicerio (an independent reader), and its tags."""
    read = slicerio.read_segmentation(str(path))
    segment = next(s for s in read["segments"] if s["name"] == name)
    voxels = read["voxels"] if read["voxels"].ndim == 3 else read["voxels"][..., segment["layer"]]
    return np.transpose(voxels == segment["labelValue"], (2, 1, 0)), segment["tags"]


def test_a_pseudo_label_a_person_edited_survives_the_next_propagation(chest_files, tmp_path, capsys):
    image, truth = chest_files
    first, edited, second = tmp_path / "o.seg.nrrd", tmp_path / "o_edit.seg.nrrd", tmp_path / "o2.seg.nrrd"
    main(["propagate", str(image), str(truth), "--annotated", "0,10,20,30", "--output", str(first), "--quiet"])
    stroke = draw_on_slice(first, edited, "right lung", 5)
    capsys.readouterr()
    assert main(["propagate", str(image), str(edited), "--output", str(second), "--quiet"]) == 0
    assert "'right lung': 1 slices hold a person's edits" in capsys.readouterr().err
    before, _ = segment_voxels(edited, "right lung")
    after, tags = segment_voxels(second, "right lung")
    assert after[5][stroke].all()
    np.testing.assert_array_equal(after[5], before[5])
    assert tags["SpatialAL.EditedSlices"] == "5"
    assert "5" not in tags["SpatialAL.PropagatedSlices"].split(",")
    results = json.loads((tmp_path / "o2.seg.nrrd.run.json").read_text())["results"]
    assert results["kept_edited_slices"] == {"right lung": [5]}
    # an untouched pseudo-label of the same segment is rewritten, and the other segments' slice 5 too
    rewritten, _ = segment_voxels(first, "right lung")
    np.testing.assert_array_equal(after[6], rewritten[6])
    np.testing.assert_array_equal(segment_voxels(second, "left lung")[0][5], segment_voxels(first, "left lung")[0][5])

    accepted = tmp_path / "o3.seg.nrrd"
    assert main(["propagate", str(image), str(second), "--output", str(accepted), "--accept-edits", "--quiet"]) == 0
    voxels, tags = segment_voxels(accepted, "right lung")
    np.testing.assert_array_equal(voxels[5], before[5])
    assert tags["SpatialAL.AnnotatedSlices"] == "0,5,10,20,30"
    assert tags["SpatialAL.EditedSlices"] == ""
    annotated = json.loads((tmp_path / "o3.seg.nrrd.run.json").read_text())["results"]["annotated_slices"]
    assert annotated == [0, 5, 10, 20, 30]


def test_an_erased_pseudo_label_stays_erased_through_two_round_trips(chest_files, tmp_path):
    image, truth = chest_files
    first, erased = tmp_path / "o.seg.nrrd", tmp_path / "erased.seg.nrrd"
    main(["propagate", str(image), str(truth), "--annotated", "0,10,20,30", "--output", str(first), "--quiet"])
    assert segment_voxels(first, "right lung")[0][15].any()
    draw_on_slice(first, erased, "right lung", 15, erase=True)
    source = erased
    for run in ("o2", "o3"):
        output = tmp_path / f"{run}.seg.nrrd"
        assert main(["propagate", str(image), str(source), "--output", str(output), "--quiet"]) == 0
        voxels, tags = segment_voxels(output, "right lung")
        assert not voxels[15].any()
        assert voxels[14].any() and voxels[16].any()
        assert tags["SpatialAL.EditedSlices"] == "15"
        source = output


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
    return write_small_files(labeled_stack, tmp_path)


def write_small_files(stack, folder):
    from spatial_al.io import write_segmentation, write_volume
    from spatial_al.io.segmentation import Segmentation

    image = write_volume(folder / "image.nrrd", stack.image.astype(np.float32), stack.geometry)
    segmentation = Segmentation(stack.label_layers, stack.segments, stack.geometry)
    return str(image), str(write_segmentation(folder / "labels.seg.nrrd", segmentation))


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


def test_train_with_rank_hands_back_the_ranking_by_the_model_just_trained(small_files, tmp_path, capsys):
    image, labels = small_files
    model, queried = tmp_path / "model.pt", tmp_path / "model.queried.csv"
    common = ["--annotated", "0,4,8", "--max-epochs", "1", "--option", "augment=False", "--device", "cpu"]
    train = ["train", image, labels, *common, "--output", str(model)]
    assert main([*train, "--rank", "entropyy"]) == 2  # refused before any training
    assert "Did you mean 'entropy'" in capsys.readouterr().err and not model.exists()
    assert main([*train, "--rank", "entropy", "--budget", "8"]) == 2
    assert "larger than the 7 slices left" in capsys.readouterr().err and not model.exists()

    assert main([*train, "--rank", "entropy", "--budget", "3"]) == 0
    captured = capsys.readouterr()
    assert "entropy: under a second on cpu" in captured.err and "to annotate next (entropy)" in captured.out
    with queried.open() as handle:
        rows = list(csv.DictReader(handle))
    slices = [int(row["slice"]) for row in rows]
    assert len(slices) == 3 and not {0, 4, 8} & set(slices)
    record = json.loads((tmp_path / "model.queried.csv.run.json").read_text())
    assert record["results"]["ranking"]["slices"] == slices and "rank" in record["seconds"]

    again = tmp_path / "again.csv"
    ranked = ["rank", image, "--labels", labels, "--annotated", "0,4,8", "--strategy", "entropy", "--budget", "3"]
    assert main([*ranked, "--device", "cpu", "--output", str(again)]) == 2  # no model: refused, no cost said
    assert "entropy: " not in (refused := capsys.readouterr().err) and "needs a trained model" in refused
    assert main([*ranked, "--model", str(model), "--device", "cpu", "--output", str(again)]) == 0
    assert "entropy: under a second on cpu" in capsys.readouterr().err
    with again.open() as handle:
        assert [int(row["slice"]) for row in csv.DictReader(handle)] == slices  # the checkpoint ranks the same


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


def test_benchmark_files_writes_reads_back_and_compares_every_file(tmp_path, capsys):
    output = tmp_path / "files.json"
    assert main(["benchmark", "files", "--shape", "12x40x48", "--output", str(output), "--quiet"]) == 0
    record = json.loads(output.read_text())
    rows = record["results"]["rows"]
    kinds = ("organs", "prediction")
    assert [(r["label_map"], r["file"]) for r in rows] == [
        (k, f) for k in kinds for f in (".seg.nrrd", ".nii.gz", ".mrb")
    ]
    assert all(r["read_equals_written"] and r["megabytes"] > 0 and r["write_s"] > 0 for r in rows)
    assert all(("slicerio_read_s" in r) == (r["file"] == ".seg.nrrd") for r in rows)
    assert record["configuration"]["shape"] == [12, 40, 48] and "device" not in record["configuration"]
    assert "prediction         .mrb" in capsys.readouterr().out
    assert main(["benchmark", "files", "--label-maps", "organ", "--no-scene", "--output", str(output)]) == 2
    assert "use one of organs, prediction" in capsys.readouterr().err


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


# --- bad input found by fuzzing the command line (the Slicer robustness review) --------------------------------------


def test_label_values_above_65535_keep_their_voxels_in_a_seg_nrrd(tmp_path, capsys):
    import SimpleITK as sitk

    labels = np.zeros((12, 16, 16), np.int64)
    labels[[2, 9], 2:7, 2:7] = 70000
    labels[[2, 9], 9:14, 9:14] = 140000
    for array, name in ((labels.astype(np.float32) / 1000, "image.nrrd"), (labels, "labels.nrrd")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
    output = tmp_path / "propagated.seg.nrrd"
    arguments = ["propagate", str(tmp_path / "image.nrrd"), str(tmp_path / "labels.nrrd"), "--annotated", "2,9"]
    assert main([*arguments, "--output", str(output), "--quiet"]) == 0
    written = slicerio.read_segmentation(str(output))  # read by an independent reader, IJK
    assert written["voxels"].dtype == np.uint32
    for segment in written["segments"]:
        value = segment["labelValue"]
        assert value in (70000, 140000)
        annotated = (labels[[2, 9]] == value).transpose(2, 1, 0)  # KJI -> slicerio's IJK
        np.testing.assert_array_equal(written["voxels"][..., [2, 9]] == value, annotated)
        assert (written["voxels"][..., 3:9] == value).any()  # and pseudo-labels between them


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Layer", "5", r"Segment0_Layer is '5', where a layer index from 0 to 0 \(the file holds 1\)"),
        ("LabelValue", "abc", "Segment0_LabelValue is 'abc', where a whole number of at least 1"),
        ("Color", "red", "Segment0_Color is 'red', where three numbers"),
        ("Extent", "0 1 2", "Segment0_Extent is '0 1 2', where six whole numbers"),
    ],
)
def test_a_damaged_seg_nrrd_header_is_named_field_by_field(chest_files, tmp_path, capsys, field, value, message):
    import nrrd

    image, truth = chest_files
    voxels, header = nrrd.read(str(truth))
    header[f"Segment0_{field}"] = value
    damaged = tmp_path / "damaged.seg.nrrd"
    nrrd.write(str(damaged), voxels, header)
    output = tmp_path / "out.seg.nrrd"
    assert main(["propagate", str(image), str(damaged), "--annotated", "0,9", "--output", str(output), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and "save it again" in error and not output.exists()


@pytest.fixture(scope="module")
def trained_files(tmp_path_factory):
    """(image, segmentation, model): :func:`write_small_files` and a model trained one epoch on them, made once for
    the tests that only read them."""
    from conftest import make_labeled_stack

    folder = tmp_path_factory.mktemp("trained")
    image, labels = write_small_files(make_labeled_stack(), folder)
    model = folder / "model.pt"
    train = ["train", image, labels, "--annotated", "0,4,9", "--max-epochs", "1", "--option", "augment=False"]
    assert main([*train, "--device", "cpu", "--output", str(model), "--quiet"]) == 0
    return image, labels, model


def test_bad_truncated_and_foreign_checkpoints_are_refused_naming_the_file(trained_files, tmp_path, capsys):
    import torch

    image, labels, trained_model = trained_files
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained_model.read_bytes()[: trained_model.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"weight": torch.zeros(3)}}, foreign)
    for checkpoint, message in (
        (truncated, "truncated.pt"),
        (text, "notes.pt"),
        (foreign, "not a SpatialActiveLearning"),
    ):
        assert main(["predict", image, "--model", str(checkpoint), "--output", str(tmp_path / "p.seg.nrrd")]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error
    resume = ["train", image, labels, "--annotated", "0,4,9", "--resume", str(trained_model), "--quiet"]
    assert main([*resume, "--preset", "unet", "--output", str(tmp_path / "other-preset.pt")]) == 2
    assert "holds a unet[16, 32, 64, 128, 256, 16] model, not the unet[32, 64" in capsys.readouterr().err
    assert main([*resume, "--segments", "disc", "--output", str(tmp_path / "other-classes.pt")]) == 2
    assert "lacks the model's classes square" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("p.seg.nrrd", "other-preset.pt", "other-classes.pt"))


def test_ranking_with_a_model_copes_with_constant_integer_and_double_images(trained_files, tmp_path):
    from spatial_al.io import read_volume, write_volume

    image, labels, trained_model = trained_files
    intensities, geometry = read_volume(image)
    rankings = {}
    for name, array in (
        ("float32", intensities.astype(np.float32)),
        ("float64", intensities.astype(np.float64)),
        ("int16", np.round(intensities).astype(np.int16)),
        ("constant", np.zeros_like(intensities, np.float32)),
    ):
        path = write_volume(tmp_path / f"{name}.nrrd", array, geometry)
        output = tmp_path / f"{name}.csv"
        arguments = ["rank", str(path), "--labels", labels, "--annotated", "0,9", "--strategy", "entropy"]
        assert (
            main([*arguments, "--budget", "3", "--model", str(trained_model), "--output", str(output), "--quiet"]) == 0
        )
        with output.open() as file:
            rankings[name] = [(int(row["slice"]), float(row["score"])) for row in csv.DictReader(file)]
    assert [s for s, _ in rankings["float64"]] == [s for s, _ in rankings["float32"]]
    np.testing.assert_allclose([v for _, v in rankings["float64"]], [v for _, v in rankings["float32"]], atol=1e-4)
    assert [s for s, _ in rankings["int16"]] == [s for s, _ in rankings["float32"]]
    scores = [score for _, score in rankings["constant"]]
    assert len(set(scores)) == 1 and [s for s, _ in rankings["constant"]] == [1, 2, 3]  # ties: lowest slices first


def test_prediction_refuses_an_image_with_nan_voxels_and_says_how_many(trained_files, tmp_path, capsys):
    from spatial_al.io import read_volume, write_volume

    image, _, trained_model = trained_files
    intensities, geometry = read_volume(image)
    intensities[3, 5:9, 5:9] = np.nan
    image = write_volume(tmp_path / "nan.nrrd", intensities.astype(np.float32), geometry)
    output = tmp_path / "predicted.seg.nrrd"
    assert main(["predict", str(image), "--model", str(trained_model), "--output", str(output), "--quiet"]) == 2
    assert "16 NaN or infinite voxels" in capsys.readouterr().err and not output.exists()


def test_train_resumes_after_an_interrupt_to_the_same_round(small_files, tmp_path):
    image, labels = small_files
    model = tmp_path / "model.pt"
    train = ["train", image, labels, "--annotated", "0,4,9", "--option", "augment=False", "--device", "cpu"]
    train += ["--option", "iterations_per_epoch=2"]
    command = [sys.executable, "-m", "spatial_al.cli", *train, "--max-epochs", "12", "--output", str(model)]
    # Ctrl+C as a terminal sends it: a test run started in the background (`make test &`) ignores SIGINT, and its
    # children would inherit that and train to the end
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not model.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130, process.stdout.read()
    from spatial_al.training import read_checkpoint

    interrupted = read_checkpoint(model).trainer_state
    assert not interrupted.finished and interrupted.round_index == 0
    resumed = tmp_path / "resumed.pt"
    assert main([*train, "--resume", str(model), "--output", str(resumed), "--quiet"]) == 0
    state = read_checkpoint(resumed).trainer_state
    assert state.finished and state.round_index == 0 and state.epoch > interrupted.epoch  # the same round, ended


def test_a_second_study_in_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    from spatial_al.files import LOCK_FILE

    study = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FOLDER, str(study)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        arguments = ["experiment", "run", "star", "--data", "demo", "--output", str(study), "--scale", "smoke"]
        assert main([*arguments, "--device", "cpu", "--quiet"]) == 2
        error = capsys.readouterr().err
        assert f"being written by another study (process {holder.pid} on" in error and LOCK_FILE in error
        assert not (study / "study.json").exists()
    finally:
        holder.kill()
        holder.wait()
    from spatial_al.files import exclusive_folder

    with exclusive_folder(study):  # the killed writer's lock is stale: taken over
        assert json.loads((study / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert list(study.iterdir()) == []  # released, and nothing of the lock left behind


HOLD_FOLDER = """
import sys, time
from spatial_al.files import exclusive_folder
with exclusive_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_threads_default_to_the_usable_cores_and_are_recorded(chest_files, tmp_path):
    from spatial_al.threads import usable_cores

    image, _ = chest_files
    for threads, expected in ((None, usable_cores()), ("1", 1)):
        output = tmp_path / f"ranking-{threads}.csv"
        arguments = ["rank", str(image), "--strategy", "random", "--budget", "3", "--output", str(output), "--quiet"]
        assert main([*arguments, *(["--threads", threads] if threads else [])]) == 0
        record = json.loads((tmp_path / f"ranking-{threads}.csv.run.json").read_text())
        assert record["configuration"]["threads"] == expected
        assert record["environment"]["usable_cores"] == usable_cores()


def chest_with_record(tmp_path, tags):
    """The chest CT's segmentation with ``tags`` in the right lung's slice record, written to a .seg.nrrd."""
    from dataclasses import replace

    from spatial_al.io import read_segmentation, write_segmentation
    from spatial_al.io.segmentation import Segmentation

    truth = read_segmentation(chest_ct_files()[1])
    segments = tuple(replace(s, tags={**s.tags, **tags}) if s.name == "right lung" else s for s in truth.segments)
    return write_segmentation(
        tmp_path / "recorded.seg.nrrd", Segmentation(truth.label_layers, segments, truth.geometry)
    )


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"SpatialAL.SliceAxis": "", "SpatialAL.AnnotatedSlices": ""}, "tag SpatialAL.SliceAxis is ''"),
        ({"SpatialAL.SliceAxis": "7", "SpatialAL.AnnotatedSlices": "2,9"}, "tag SpatialAL.SliceAxis is '7'"),
        ({"SpatialAL.SliceAxis": "0"}, "tag SpatialAL.AnnotatedSlices is '(missing)'"),
        *(
            (
                {"SpatialAL.SliceAxis": "0", "SpatialAL.AnnotatedSlices": f"1,{item}"},
                f"is '1,{item}', where whole slice",
            )
            for item in ("a", "x", "2.0", "2-4", "-3")
        ),
        (
            {
                "SpatialAL.SliceAxis": "0",
                "SpatialAL.AnnotatedSlices": "2,9",
                "SpatialAL.PropagatedSlices": "5",
                "SpatialAL.PropagatedConfidence": "abc",
                "SpatialAL.PropagatedChecksums": "0badc0de",
            },
            "tag SpatialAL.PropagatedConfidence is 'abc', where one confidence from 0 to 1",
        ),
        (
            {
                "SpatialAL.SliceAxis": "0",
                "SpatialAL.AnnotatedSlices": "2,9",
                "SpatialAL.PropagatedSlices": "5,6",
                "SpatialAL.PropagatedConfidence": "0.5,0.5",
                "SpatialAL.PropagatedChecksums": "0badc0de",
            },
            "tag SpatialAL.PropagatedChecksums is '0badc0de', where one checksum per propagated slice (2)",
        ),
        ({"SpatialAL.SliceAxis": "0", "SpatialAL.AnnotatedSlices": "2,9,40"}, "lists slice 40 in SpatialAL.Annotated"),
        (
            {"SpatialAL.SliceAxis": "0", "SpatialAL.AnnotatedSlices": "2,9", "SpatialAL.EditedSlices": "4,x"},
            "tag SpatialAL.EditedSlices is '4,x', where whole slice",
        ),
        (
            {"SpatialAL.SliceAxis": "0", "SpatialAL.AnnotatedSlices": "2,9", "SpatialAL.EditedSlices": "9"},
            "neither annotated nor propagated (slice 9 is listed there)",
        ),
        (
            {"SpatialAL.SliceAxis": "0", "SpatialAL.AnnotatedSlices": "2,9", "SpatialAL.EditedSlices": "4,34"},
            "lists slice 34 in SpatialAL.EditedSlices",
        ),
    ],
)
def test_a_damaged_slice_record_is_named_by_segment_tag_and_value(tmp_path, capsys, tags, message):
    segmentation = chest_with_record(tmp_path, tags)
    image = chest_ct_files()[0]
    for command in (
        ["rank", str(image), "--labels", str(segmentation), "--strategy", "random", "--budget", "3"],
        ["propagate", str(image), str(segmentation)],
    ):
        output = tmp_path / ("ranking.csv" if command[0] == "rank" else "propagated.seg.nrrd")
        assert main([*command, "--output", str(output), "--quiet"]) == 2
        error = capsys.readouterr().err
        assert "Segment 'right lung'" in error and message in error and not output.exists()


def test_a_slice_record_along_another_axis_is_ignored_with_a_warning(tmp_path):
    segmentation = chest_with_record(tmp_path, {"SpatialAL.SliceAxis": "1", "SpatialAL.AnnotatedSlices": "3,60"})
    output = tmp_path / "ranking.csv"
    arguments = ["rank", str(chest_ct_files()[0]), "--labels", str(segmentation), "--strategy", "fixed_interval"]
    with pytest.warns(UserWarning, match=r"Segment 'right lung' records its slices along axis 1.*is ignored"):
        assert main([*arguments, "--budget", "3", "--axis", "0", "--output", str(output), "--quiet"]) == 0
    assert command_line_warning("a message", UserWarning, "cli.py", 1) == "spatial-al: warning: a message\n"
    record = json.loads((tmp_path / "ranking.csv.run.json").read_text())
    assert record["configuration"]["annotated"] == []  # slice 3 of axis 1 is not slice 3 of axis 0
