"""The MIDL 2025 study's 3D half: a protocol that extends the 2D one, the paper's model per dataset, sparse slices
(and interpolated ones) as the 3D model's loss mask, end to end at the smoke scale, bad settings refused."""

import json

import numpy as np
import pytest
from conftest import run_records, run_smoke_study

from spatial_al.experiments.config import ConfigError
from spatial_al.experiments.loop import SessionState, arm_model_config, run_folder
from spatial_al.experiments.protocols import load_protocol, resolve_config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("slice_config_3d") / "study"
    assert run_smoke_study("slice_config_3d", "demo", output) == 0
    return output, run_records(output)


def test_the_3d_half_is_the_2d_study_with_3d_models_as_the_paper_pairs_them_with_its_datasets():
    two_d, three_d = load_protocol("slice_config").content, load_protocol("slice_config_3d").content
    assert three_d["config"]["arms"] == two_d["config"]["arms"] and three_d["config"]["grid"] == two_d["config"]["grid"]
    assert three_d["paper_results"]["tables"] == two_d["paper_results"]["tables"]  # Table 5, inherited
    assert three_d["paper_results"]["differences"] != two_d["paper_results"]["differences"]
    config, _ = resolve_config("slice_config_3d", "demo", "smoke")
    assert (config.unit, config.rounds) == ("sparse_volume", 0)
    assert list(config.arms) == list(resolve_config("slice_config", "demo", "smoke")[0].arms)
    models = {}
    for dataset in ("LiTS", "ATLAS", "DBC"):
        config, _ = resolve_config("slice_config_3d", dataset, "paper")
        arm = config.arms["Fixed d10 s1"]
        models[dataset] = arm_model_config(config, arm, ("liver", "tumour"))
        training = config.training_config(0)
        assert training.patch_size == (96, 96, 96)
    assert [models[d].architecture for d in ("LiTS", "DBC", "ATLAS")] == ["unet", "segresnet", "unetr"]
    assert all(model.spatial_dims == 3 for model in models.values())
    assert models["ATLAS"].input_size == (96, 96, 96)  # UNETR is built for the training patch
    lits, _ = resolve_config("slice_config_3d", "LiTS", "paper")
    assert lits.training_config(0).class_weights == (0.04, 0.2, 1.0)  # Appendix G's 3D weights, not the 2D ones
    assert lits.training_config(0).optimizer == "sgd"
    data = lits.data  # Table 1: resampled to 1 x 1 x 1 mm, 384 x 384 slices
    assert (data.slice_thickness, data.pixel_spacing, data.image_size) == (1.0, 1.0, 384)
    atlas, _ = resolve_config("slice_config_3d", "ATLAS", "paper")
    assert (atlas.training_config(0).loss, atlas.training_config(0).batch_size) == ("dice_focal", 54)


def test_the_3d_model_trains_on_the_annotated_and_interpolated_slices_alone(study, tmp_path):
    from spatial_al.experiments.runner import StudyRequest, prepare_study
    from spatial_al.experiments.volume_loop import SparseVolumeSession

    output, _ = study
    arm = "Fixed + M.I. d40 s0.5"
    cache = output / "cache"  # the study's cohort
    request = StudyRequest("slice_config_3d", "demo", tmp_path / "s", "smoke", None, [arm], 1, "cpu", cache=cache)
    spec = next(run for run in prepare_study(request).runs if run.arm == arm)
    session = SparseVolumeSession(spec)
    state = SessionState.load(run_folder(output, arm, 0) / "state.npz")
    examples = session.training_examples(state)
    assert sorted(examples.names) == sorted(name for name, picks in state.annotated.items() if picks)
    for name, stack, trained in zip(examples.names, examples.targets, examples.annotated, strict=True):
        target = np.asarray(stack)  # the slice stack as the dense volume it stands for
        subject, filled = session.cohort[name], state.pseudo.get(name, {})
        assert np.flatnonzero(trained).tolist() == sorted({*state.annotated[name], *filled})
        truth = np.moveaxis(np.asarray(subject.targets), 1, 0)
        np.testing.assert_array_equal(target[:, state.annotated[name]], truth[:, state.annotated[name]])
        for index, mask in filled.items():
            np.testing.assert_array_equal(target[:, index], mask)
        assert not target[:, ~trained].any()  # no truth of an unannotated slice reaches the training data
    assert any(state.pseudo.values())


def test_the_smoke_study_trains_3d_models_and_reports_the_grid(study):
    output, records = study
    assert set(records) >= {"Fixed d10 s0.5", "Fixed + M.I. d40 s1", "Full"}
    for record in records.values():
        assert record["model_config"]["spatial_dims"] == 3 and len(record["rounds"]) == 1
        assert 0.0 <= record["rounds"][0]["metrics"]["iou_batch_mean"] <= 1.0
    plain = records["Fixed d40 s1"]["rounds"][0]
    assert plain["pseudo_labeled_slices"] == 0 and plain["labeled_volumes"] == len(records["Full"]["split"]["training"])
    interpolated = records["Fixed + M.I. d40 s1"]["rounds"][0]
    assert interpolated["pseudo_labeled_slices"] > 0 and 0 < interpolated["pseudo_label_dice"]["held"] <= 1
    assert "| arm | ρ 10 % | ρ 40 % |" in (output / "report" / "table.md").read_text()
    assert "Tables 2 and 4's 3D columns" in (output / "report" / "paper.md").read_text()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rounds": 2}, "rounds 0"),
        ({"preset": "unet-small"}, "is 2D"),
        ({"training": {"patch_size": [32, 32]}}, r"training.patch_size to \[D, H, W\]"),
        ({"training": {"pseudo_label_weight": 0.5}}, "pseudo_label_weight to 1"),
        ({"arms": {"Fixed": {"pseudo_labels": "star"}}}, "pseudo_labels 'star'"),
    ],
)
def test_settings_a_sparse_volume_study_cannot_run_are_refused_before_any_training(tmp_path, changes, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(changes))
    with pytest.raises(ConfigError, match=message):
        from spatial_al.experiments.runner import StudyRequest, prepare_study

        prepare_study(StudyRequest("slice_config_3d", "demo", tmp_path / "s", "smoke", config, None, 1, "cpu"))
