"""Protocol files resolve to checked configurations; a wrong key or type fails naming it and the fix."""

import json

import pytest

from spatial_al.experiments.config import DataConfig, ExperimentConfig, deep_merge
from spatial_al.experiments.protocols import PROTOCOLS, load_protocol, resolve_config
from spatial_al.registry import UnknownNameError
from spatial_al.typed import ConfigError, build


@pytest.mark.parametrize("name", PROTOCOLS.names())
@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_every_protocol_resolves_at_every_scale_and_names_its_paper(name, scale):
    config, provenance = resolve_config(name, "demo", scale)
    assert config.protocol == name and provenance["scale"] == scale and provenance["paper"]
    assert set(config.default_arms) <= set(config.arms)
    config.training_config(seed=3)  # every training key is a TrainingConfig field


def test_scales_shrink_the_study_but_keep_its_arms_and_rules():
    paper, _ = resolve_config("star", "demo", "paper")
    smoke, _ = resolve_config("star", "demo", "smoke")
    assert smoke.rounds < paper.rounds and smoke.data.image_size < paper.data.image_size
    assert smoke.arms == paper.arms and smoke.initial == paper.initial
    assert paper.training["learning_rate"] == 1e-4 and paper.training["fine_tune_learning_rate"] == 1e-5
    assert paper.arms["STAR"].pseudo_labels == "star" and paper.arms["STAR"].strategy == "star_similarity"


def test_dataset_entries_follow_the_msd_task_folder(tmp_path):
    folder = tmp_path / "Task09_Spleen"
    folder.mkdir()
    config, provenance = resolve_config("star", folder, "paper")
    assert provenance["dataset_entry"] == "Spleen" and config.data.labels == {"spleen": [1]}
    assert config.data.intensity == "window" and config.training["batch_size"] == 16 and config.query_size == 50
    brats, _ = resolve_config("star", tmp_path / "Task01_BrainTumour", "paper")
    assert brats.data.labels == {"tumour core": [2, 3]} and brats.data.channel == 0


@pytest.mark.parametrize(
    ("task", "image_size", "batch_size"),
    [("Task02_Heart", 256, 16), ("Task04_Hippocampus", 64, 264), ("Task05_Prostate", 256, 16), (None, 128, 64)],
)
def test_less_is_more_sizes_its_batches_by_image_size_per_dataset_and_the_cpu_scale_overrides_them(
    tmp_path, task, image_size, batch_size
):
    data = tmp_path / task if task else "demo"
    if task:
        data.mkdir()
    paper, _ = resolve_config("less_is_more", data, "paper")
    assert paper.data.image_size == image_size
    assert paper.training_config(seed=0).batch_size == batch_size  # the paper's "between 16 and 264"
    cpu, _ = resolve_config("less_is_more", data, "cpu")
    assert cpu.training_config(seed=0).batch_size == 8 and cpu.data.image_size == 64


def test_a_config_file_overrides_any_value_and_merges_mappings(tmp_path):
    override = tmp_path / "override.json"
    override.write_text(
        json.dumps({"query_size": 7, "training": {"max_epochs": 3}, "arms": {"Rand": {"per_volume": 2}}})
    )
    config, _ = resolve_config("star", "demo", "cpu", override)
    assert config.query_size == 7 and config.training["max_epochs"] == 3
    assert config.training["loss"] == "focal"  # the rest of the mapping is kept
    assert config.arms["Rand"].per_volume == 2 and config.arms["Rand"].strategy == "random"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"query_sise": 7}, r"Unknown configuration key query_sise\. Did you mean query_size\?"),
        ({"data": {"image_sze": 64}}, r"Unknown configuration key data\.image_sze\. Did you mean data\.image_size\?"),
        ({"query_size": "many"}, r"query_size must be int, got 'many'"),
        ({"rounds": 2.5}, r"rounds must be int, got 2\.5"),
        ({"data": {"split": "0.8"}}, r"data\.split must be a list"),
        (
            {"training": {"learning_rat": 0.1}},
            r"training: Unknown training option 'learning_rat'\. Did you mean 'learning_rate'",
        ),
        ({"arms": {"Rand": {"pseudo_labels": "ceel"}}}, r"Unknown pseudo-label rule 'ceel'; did you mean 'ceal'"),
        ({"budget_percent": 300}, r"budget_percent must be in \(0, 100\]"),
        ({"data": {"split": [0.5, 0.1, 0.1]}}, r"fractions summing to 1"),
        (
            {"report": {"ablation_per_class": {"percnt": 20}}},
            r'report\.ablation_per_class must be \{"percent": P\} or \{"round": R\}',
        ),
    ],
)
def test_bad_overrides_name_the_key_and_the_fix(tmp_path, override, message):
    path = tmp_path / "override.json"
    path.write_text(json.dumps(override))
    with pytest.raises(ConfigError, match=message):
        resolve_config("star", "demo", "cpu", path)


def test_unknown_protocol_and_scale_name_the_valid_ones():
    with pytest.raises(UnknownNameError, match="Did you mean 'star'"):
        load_protocol("stars")
    with pytest.raises(ConfigError, match="smoke, cpu, paper"):
        resolve_config("star", "demo", "huge")


def test_build_checks_nested_types_and_deep_merge_keeps_siblings():
    data = build(DataConfig, {"labels": {"a": [1, 2]}, "window": [0, 1], "intensity": "window"})
    assert data.labels == {"a": [1, 2]} and data.window == [0.0, 1.0]
    with pytest.raises(ConfigError, match=r"data\.labels\.a\[0\] must be int"):
        build(DataConfig, {"labels": {"a": ["x"]}}, "data")
    with pytest.raises(ConfigError, match="protocol is required"):
        build(ExperimentConfig, {})
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
