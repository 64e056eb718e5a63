"""Nath et al.'s volume study end to end at the smoke scale: whole volumes queried, a proxy-ranked cold start that
initialises the model, the semi-supervised stage's noisy labels, an MSD Task03 folder, and bad requests refused
before any training."""

import json

import numpy as np
import pytest
import torch
from conftest import run_records, run_smoke_study, write_msd_folder


def run_study(data, output, *extra, protocol="nath"):
    return run_smoke_study(protocol, data, output, *extra)


def annotated_volumes(study, arm):
    from spatial_al.experiments.loop import SessionState, run_folder

    state = SessionState.load(run_folder(study, arm, 0) / "state.npz")
    return {name for name, slices in state.annotated.items() if slices}, state


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    output = tmp_path_factory.mktemp("nath") / "study"
    assert run_study("demo", output) == 0
    return output


def test_the_smoke_study_annotates_whole_volumes_k_per_round(demo_study):
    from spatial_al.experiments.cohort import Cohort

    records = run_records(demo_study)
    assert set(records) == {"Random", "Proxy+Entropy", "Variance+SS", "Full"}
    study = json.loads((demo_study / "study.json").read_text())
    cohort = Cohort(study["cache"])
    training = study["split"]["training"]
    for arm in ("Random", "Proxy+Entropy", "Variance+SS"):
        record = records[arm]
        assert record["model_config"]["spatial_dims"] == 3
        assert [r["labeled_volumes"] for r in record["rounds"]] == [1, 2]
        names, state = annotated_volumes(demo_study, arm)
        assert len(names) == 2 and names <= set(training)
        for name in names:  # every slice of an annotated volume, none of the others
            assert state.annotated[name] == list(range(cohort[name].n_slices))
        queried = record["rounds"][0]["queried"][0][0]
        assert queried in names and len(names - {queried}) == 1
        labeled = sum(cohort[name].n_slices for name in names)
        assert record["rounds"][1]["labeled_percent"] == pytest.approx(100 * labeled / record["pool_slices"])
    # the arms without a proxy start from the same random volume
    first = {
        arm: annotated_volumes(demo_study, arm)[0] - {records[arm]["rounds"][0]["queried"][0][0]}
        for arm in ("Random", "Variance+SS")
    }
    assert first["Random"] == first["Variance+SS"]
    assert records["Full"]["rounds"][0]["labeled_volumes"] == len(training)
    table = (demo_study / "report" / "table.md").read_text()
    assert "| strategy | 1 volume | 2 volumes | max(p) | S% |" in table


def test_the_proxy_arm_starts_from_the_volume_its_proxy_model_is_least_sure_of_and_from_its_weights(demo_study):
    from spatial_al.experiments.cohort import Cohort
    from spatial_al.experiments.loop import run_folder
    from spatial_al.models import ModelConfig, SegmentationModel
    from spatial_al.models.volume_inference import volume_uncertainty
    from spatial_al.training.checkpoint import load_model

    record = run_records(demo_study)["Proxy+Entropy"]
    folder = run_folder(demo_study, "Proxy+Entropy", 0)
    proxy, _ = load_model(folder / "proxy.pt", torch.device("cpu"))
    assert proxy.config.class_names == ("proxy",)
    study = json.loads((demo_study / "study.json").read_text())
    cohort = Cohort(study["cache"])
    config = record["config"]
    entropy = {
        name: volume_uncertainty(
            proxy, np.array(cohort[name].image)[None], config["training"]["patch_size"], torch.device("cpu"),
            passes=config["mc_samples"], seed=0, batch_size=config["batch_size"],
        ).mean_entropy
        for name in study["split"]["training"]
    }  # fmt: skip
    first = annotated_volumes(demo_study, "Proxy+Entropy")[0] - {record["rounds"][0]["queried"][0][0]}
    assert first == {max(entropy, key=entropy.get)}
    initialisation = record["encoder_initialisation"]
    assert initialisation["weights"] == "the proxy model (proxy.pt)"
    model = SegmentationModel(ModelConfig.from_json(json.dumps(record["model_config"])))
    mismatched = sorted(
        name for name, value in model.state_dict().items() if value.shape != proxy.state_dict()[name].shape
    )  # the output layers: 2 channels against 3 (background, two lungs)
    assert initialisation["not_copied"] == mismatched and all(n.startswith("backbone.head.") for n in mismatched)


def test_the_semi_supervised_arm_trains_a_second_stage_on_noisy_labels_of_unannotated_volumes(demo_study):
    from spatial_al.experiments.loop import run_folder
    from spatial_al.training import read_checkpoint

    record = run_records(demo_study)["Variance+SS"]
    folder = run_folder(demo_study, "Variance+SS", 0)
    first = annotated_volumes(demo_study, "Variance+SS")[0] - {record["rounds"][0]["queried"][0][0]}
    with np.load(folder / "noisy" / "round-000.npz") as saved:
        names = json.loads(str(saved["names"]))
        assert len(names) == 1 and not set(names) & first  # as many as annotated, none of them annotated
        assert saved[names[0]].dtype == np.uint8 and saved[names[0]].shape[0] == len(record["classes"])
    assert record["rounds"][0]["training"]["noisy_labels"]["volumes"] == names
    stages = {(epoch["round"], epoch["stage"]) for epoch in read_checkpoint(folder / "model.pt").trainer_state.history}
    assert stages == {(r, s) for r in (0, 1) for s in ("segmentation", "semi_supervised")}
    plain = read_checkpoint(run_folder(demo_study, "Random", 0) / "model.pt").trainer_state.history
    assert {epoch["stage"] for epoch in plain} == {"segmentation"}


def test_the_study_reads_an_msd_task03_folder_with_its_protocol_entry(tmp_path):
    folder = write_msd_folder(tmp_path / "Task03_Liver", cases=5, shape=(16, 24, 20))
    (tmp_path / "proxy.json").write_text(json.dumps({"proxy": {"window": [30, 50]}}))  # the synthetic organ is 40
    output = tmp_path / "study"
    assert run_study(folder, output, "--strategies", "Proxy+Variance", "--config", str(tmp_path / "proxy.json")) == 0
    study = json.loads((output / "study.json").read_text())
    assert study["dataset_entry"] == "Liver" and study["classes"] == ["liver", "tumour"]
    record = run_records(output)["Proxy+Variance"]
    assert record["status"] == "finished" and [r["labeled_volumes"] for r in record["rounds"]] == [1, 2]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"query_volumes": 9}, "is larger than the 3 training volumes of the unlabeled pool; lower it to at most 3"),
        ({"preset": "unet-small", "model": {"features": [4, 8, 16, 32, 32, 4]}}, "is 2D; set preset to a 3D one"),
        ({"arms": {"Random": {"strategy": "entropie"}}}, "Did you mean 'entropy'?"),
        ({"proxy": {"window": [100, 1500]}}, "reaches outside data.window [-1000.0, 1000.0]"),
        ({"proxy": {"window": [150, 100]}}, "swap the bounds"),
        ({"data": {"intensity": "zscore"}}, "set data.intensity to 'window'"),
        ({"training": {"patch_size": [32, 32]}}, "set training.patch_size to [D, H, W]"),
    ],
)
def test_bad_volume_study_requests_fail_before_any_training(tmp_path, capsys, config, message):
    (tmp_path / "override.json").write_text(json.dumps(config))
    output = tmp_path / "study"
    status = run_study("demo", output, "--config", str(tmp_path / "override.json"))
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (output / "runs").exists()


def test_a_slice_study_refuses_the_semi_supervised_stage(tmp_path, capsys):
    (tmp_path / "override.json").write_text(json.dumps({"arms": {"Random": {"semi_supervised": True}}}))
    status = run_study("demo", tmp_path / "study", "--config", str(tmp_path / "override.json"), protocol="sbc_al")
    assert status == 2
    assert "which volume studies do (unit 'volume'" in capsys.readouterr().err


def test_a_run_cancelled_in_its_semi_supervised_stage_resumes_to_the_same_result(tmp_path):
    from spatial_al.experiments.runner import StudyRequest, prepare_study
    from spatial_al.experiments.units import run_session
    from spatial_al.progress import OperationCancelled

    (tmp_path / "longer.json").write_text(json.dumps({"training": {"max_epochs": 2, "checkpoint_every": 1}}))

    def spec(name):
        request = StudyRequest(
            "nath", "demo", tmp_path / name, "smoke", tmp_path / "longer.json", ["Variance+SS"], 1, "cpu",
            cache=tmp_path / "cache",
        )  # fmt: skip
        return next(run for run in prepare_study(request).runs if run.arm == "Variance+SS")

    class CancelInSecondEpoch:
        def __init__(self):
            self.seen = False

        def progress(self, done, total, message=""):
            self.seen = self.seen or "semi_supervised epoch 2" in message

        def should_cancel(self):
            return self.seen

    whole = run_session(spec("whole"))
    interrupted = spec("interrupted")
    with pytest.raises(OperationCancelled):
        run_session(interrupted, CancelInSecondEpoch())
    assert (interrupted.folder / "noisy" / "round-000.npz").is_file() and not (interrupted.folder / "run.json").exists()
    resumed = run_session(interrupted)
    assert resumed["rounds"][0]["training"]["epochs_this_process"] == 1  # only the cancelled epoch was trained again
    for mine, theirs in zip(resumed["rounds"], whole["rounds"], strict=True):
        assert mine["metrics"] == theirs["metrics"] and mine.get("queried") == theirs.get("queried")
        assert mine["training"]["noisy_labels"] == theirs["training"]["noisy_labels"]


def smoke_spec(tmp_path, arm, config=None):
    from spatial_al.experiments.runner import StudyRequest, prepare_study

    request = StudyRequest("nath", "demo", tmp_path / "study", "smoke", config, [arm], 1, "cpu", cache=tmp_path / "c")
    return next(run for run in prepare_study(request).runs if run.arm == arm)


@pytest.mark.parametrize(("round_weights", "restarts"), [("initial", True), ("fine_tune", False)])
def test_each_round_trains_from_the_runs_first_weights_as_algorithm_1_line_7_says(tmp_path, round_weights, restarts):
    from spatial_al.experiments.volume_loop import VolumeSession
    from spatial_al.training import save_checkpoint

    (tmp_path / "weights.json").write_text(json.dumps({"round_weights": round_weights}))
    spec = smoke_spec(tmp_path, "Proxy+Variance", tmp_path / "weights.json")
    session = VolumeSession(spec)
    state = session.initial_selection()  # trains the proxy model, M_p
    session.restore_trainer(state)
    first = {name: value.clone() for name, value in session.model.state_dict().items()}
    assert session.encoder_init["weights"] == "the proxy model (proxy.pt)"
    with torch.no_grad():  # round 0's supervised training, M_s, moves every weight
        for parameter in session.model.parameters():
            parameter.add_(0.5)
    session.trainer.state.finished = True
    save_checkpoint(spec.folder / "model.pt", session.model, session.trainer)
    state.round_index = 1
    later = VolumeSession(spec)
    assert later.restore_trainer(state) is False
    weights = later.model.state_dict()
    same = [torch.equal(weights[name], first[name]) for name in first if first[name].is_floating_point()]
    assert all(same) if restarts else not any(same)
    assert later.trainer.state.round_index == 1


def test_the_proxy_rank_arm_annotates_volumes_in_the_proxy_models_order_every_round(tmp_path):
    from spatial_al.experiments.units import run_session

    spec = smoke_spec(tmp_path, "ProxyRank")
    record = run_session(spec)
    scores = json.loads((spec.folder / "proxy_ranking.json").read_text())
    assert set(scores) == set(spec.split.training)
    order = sorted(scores, key=lambda name: (-scores[name], name))
    names, _ = annotated_volumes(tmp_path / "study", "ProxyRank")
    assert names == set(order[:2])  # round 0 took the first, round 1 the second, in the proxy model's order
    assert record["rounds"][0]["queried"] == [[order[1], round(scores[order[1]], 8)]]
    assert spec.config.proxy.measure == "variance" and record["config"]["round_weights"] == "initial"


def test_the_proxy_model_keeps_its_epoch_of_lowest_loss_on_the_held_out_proxy_labels(monkeypatch):
    from spatial_al.models import ModelConfig
    from spatial_al.selection import volumes
    from spatial_al.training import Trainer, TrainingConfig

    rounds = []
    fit = Trainer.fit

    def recorded_fit(trainer, training, validation=None, stage="segmentation", **options):
        state = fit(trainer, training, validation, stage, **options)
        rounds.append((validation, list(state.history), trainer.best_model_state))
        return state

    monkeypatch.setattr(Trainer, "fit", recorded_fit)
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 32), dtype=np.float32) for _ in range(3)]
    labels = [image > 0.6 for image in images]
    architecture = ModelConfig(class_names=("proxy",), features=(4, 4, 8, 8, 8, 4), spatial_dims=3)
    training = TrainingConfig(
        max_epochs=4, patience=4, iterations_per_epoch=2, batch_size=1, patch_size=(32, 32, 32), augment=False
    )
    model = volumes.train_volume_proxy(
        images[:2], labels[:2], architecture, training, torch.device("cpu"), validation=([images[2]], [labels[2]])
    )
    validation, history, best = rounds[-1]
    assert validation is not None and len(history) == 4  # every epoch runs
    losses = [epoch["validation_loss"] for epoch in history]
    assert all(loss is not None for loss in losses)
    # the weights of the best validation epoch (the trainer's selection, tested in test_training)
    assert best is not None and all(torch.equal(model.state_dict()[name], best[name]) for name in best)
