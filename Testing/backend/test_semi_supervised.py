"""Nath et al.'s semi-supervised stage: noisy labels, region-of-interest patches seen as two views, the consistency
loss, and the stage in the trainer."""

import numpy as np
import pytest
import torch

from spatial_al.models import SegmentationModel, preset_config
from spatial_al.training import Trainer, TrainingConfig, VolumeExamples
from spatial_al.training.semi_supervised import (
    ConsistencyDataset,
    SemiSupervisedExamples,
    noisy_label,
    predicted_target,
)


def test_noisy_labels_keep_the_classes_whose_probability_reaches_tau():
    probabilities = np.zeros((3, 1, 2, 2), np.float32)  # background, class 1, class 2
    probabilities[:, 0, 0, 0] = [0.05, 0.95, 0.0]  # class 1, sure
    probabilities[:, 0, 0, 1] = [0.15, 0.85, 0.0]  # class 1, below tau
    probabilities[:, 0, 1, 0] = [0.0, 0.1, 0.9]  # class 2 at tau
    probabilities[:, 0, 1, 1] = [0.95, 0.05, 0.0]  # background
    labels = noisy_label(probabilities, "softmax", 0.9)
    assert labels.shape == (2, 1, 2, 2) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[0, 0], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(labels[1, 0], [[0, 0], [1, 0]])
    sigmoid = noisy_label(probabilities[1:], "sigmoid", 0.9)
    np.testing.assert_array_equal(sigmoid, labels)
    with pytest.raises(ValueError, match=r"tau is a probability in \(0, 1\]"):
        noisy_label(probabilities, "softmax", 1.5)


def test_predicted_targets_are_the_likeliest_classes_as_multi_hot_channels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, -1.0]])[None, :, :, None]  # (1, 3 classes, 2, 1)
    np.testing.assert_array_equal(predicted_target(logits, "softmax")[0, :, :, 0].numpy(), [[0, 1], [0, 0]])
    np.testing.assert_array_equal(predicted_target(logits[:, 1:], "sigmoid")[0, :, :, 0].numpy(), [[0, 1], [1, 0]])


def cube_volumes(shape=(16, 32, 32)):
    """A labeled volume (a bright cube) and a noisy-labeled one whose image is its small noisy label."""
    labeled = VolumeExamples()
    image = np.zeros(shape, np.float32)
    image[4:12, 8:24, 8:24] = 1.0
    labeled.append(image[None], (image > 0)[None].astype(np.uint8), name="labeled")
    noisy = VolumeExamples()
    spot = np.zeros(shape, np.uint8)
    spot[6:9, 2:5, 26:29] = 1  # 27 of 16,384 voxels
    noisy.append(spot[None].astype(np.float32), spot[None], name="noisy")
    return SemiSupervisedExamples(labeled, noisy)


def test_region_of_interest_patches_come_as_a_plain_and_an_augmented_view():
    examples = cube_volumes()
    patch = (8, 16, 16)
    around = ConsistencyDataset(examples, patch, roi_odds=(1.0, 0.0), seed=0)
    anywhere = ConsistencyDataset(examples, patch, roi_odds=(0.0, 1.0), seed=0)
    around.reseed(3)
    anywhere.reseed(3)
    samples = [around[0] for _ in range(12)]
    for sample in samples:
        assert sample["view"].shape == sample["augmented_view"].shape == (1, *patch)
        assert sample["image"].shape == sample["target"].shape == (1, *patch)
        assert sample["view"].max() == 1.0  # centred on the noisy label: the spot is in every patch
        assert not torch.equal(sample["view"], sample["augmented_view"])  # two different views ...
        assert np.corrcoef(sample["view"].ravel(), sample["augmented_view"].ravel())[0, 1] > 0.5  # ... of one patch
    assert any(anywhere[0]["view"].max() == 0.0 for _ in range(12))  # anywhere: the spot is mostly missed
    around.reseed(3)
    assert torch.equal(around[0]["augmented_view"], samples[0]["augmented_view"])  # seeded


def small_3d_model(dropout=0.0):
    torch.manual_seed(0)
    config = preset_config("unet3d-small", class_names=("cube",), dropout=dropout)
    return SegmentationModel(config)


def test_the_stage_loss_is_alpha_supervised_plus_beta_consistency_between_the_views():
    from spatial_al.training.losses import segmentation_loss, weighted_mean

    examples = cube_volumes()
    config = TrainingConfig(patch_size=(16, 32, 32), consistency_weights=(0.7, 0.3), augment=False)
    trainer = Trainer(small_3d_model(), config, torch.device("cpu"))
    dataset = ConsistencyDataset(examples, config.patch_size, seed=0)
    batch = {key: value[None] for key, value in dataset[0].items()}
    loss = segmentation_loss("dice_ce", "softmax", 2.0)
    model = trainer.model.eval()  # no dropout, no normalisation statistics to update: both ways see the same net
    with torch.no_grad():
        supervised = weighted_mean(loss(model(batch["image"]), batch["target"], batch["mask"]), batch["weight"])
        plain_labels = predicted_target(model(batch["view"]), "softmax")
        everywhere = torch.ones_like(batch["view"])
        consistency = loss(model(batch["augmented_view"]), plain_labels, everywhere).mean()
        total = trainer._loss(batch, "semi_supervised")
    assert float(total) == pytest.approx(0.7 * float(supervised) + 0.3 * float(consistency), rel=1e-5)
    same_views = {**batch, "augmented_view": batch["view"]}
    with torch.no_grad():
        own = loss(model(batch["view"]), plain_labels, everywhere).mean()
        assert float(trainer._consistency_loss(same_views)) == pytest.approx(float(own), rel=1e-5)
        assert float(own) != pytest.approx(float(consistency), rel=1e-3)  # the augmented view changes the loss
    validation_batch = {key: batch[key] for key in ("image", "target", "mask", "weight")}
    with torch.no_grad():
        assert float(trainer._loss(validation_batch, "semi_supervised")) == pytest.approx(float(supervised), rel=1e-5)


def test_the_semi_supervised_stage_follows_the_supervised_one_and_trains_the_whole_network():
    examples = cube_volumes()
    config = TrainingConfig(
        patch_size=(16, 32, 32), batch_size=1, max_epochs=2, iterations_per_epoch=2, validation_fraction=0.0,
        augment=False, consistency_weights=(1.0, 1.0),
    )  # fmt: skip
    trainer = Trainer(small_3d_model(dropout=0.2), config, torch.device("cpu"))
    trainer.train_round(examples.labeled)
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    trainer.train_semi_supervised(examples)
    stages = [(epoch["stage"], epoch["epoch"]) for epoch in trainer.state.history]
    assert stages == [("segmentation", 1), ("segmentation", 2), ("semi_supervised", 1), ("semi_supervised", 2)]
    assert trainer.state.stage == "semi_supervised" and trainer.state.finished
    changed = [name for name, value in trainer.model.state_dict().items() if not torch.equal(value, before[name])]
    assert any("encoder" in name or "down" in name or "conv_0" in name for name in changed)
    assert any(name.startswith("backbone.head") for name in changed)
    trainer.train_semi_supervised(examples)  # a finished stage is not trained again
    assert len(trainer.state.history) == 4
    with pytest.raises(ValueError, match="at least one noisy-labeled volume"):
        ConsistencyDataset(SemiSupervisedExamples(examples.labeled, VolumeExamples()), (16, 32, 32))
