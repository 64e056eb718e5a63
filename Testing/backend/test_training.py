"""Trainer, losses, checkpoints and the train/predict session on small synthetic stacks (CPU)."""

import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

from spatial_al.io.segmentation import Segmentation
from spatial_al.learning import predict_segmentation, train_on_stack
from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.inference import SlicePredictor
from spatial_al.progress import OperationCancelled, RecordingProgress
from spatial_al.training import (
    Trainer,
    TrainingConfig,
    load_model,
    read_checkpoint,
    resume_trainer,
    save_checkpoint,
)
from spatial_al.training.data import annotated_neighbour_groups, distance_targets, normalize_intensities
from spatial_al.training.losses import focal_loss, segmentation_loss, weighted_mean
from spatial_al.volume import Segment

# epochs of one pass over the slices, a checkpoint after each: what these tests count
QUICK = TrainingConfig(
    max_epochs=2, iterations_per_epoch=None, batch_size=4, validation_fraction=0.0, augment=False, checkpoint_every=1
)


def tiny(preset="unet-small", **changes):
    """The preset's architecture with narrow layers (the presets' widths are for real images)."""
    return preset_config(preset, features=TINY_UNET, **changes)


def train(stack, annotated=(0, 3, 6, 9), training=QUICK, preset="unet-small", **options):
    return train_on_stack(stack, annotated, preset=tiny(preset), training=training, device="cpu", **options)


def weights(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def stack_examples(stack, slices):
    """Training examples of ``slices`` of ``stack`` (classes: its segments), slice axis 0."""
    from spatial_al.training.data import slice_examples

    classes = tuple(segment.name for segment in stack.segments)
    return slice_examples(normalize_intensities(stack.image), stack.label_layers, stack.segments, classes, slices, 0)


def same_weights(first, second):
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# -- learning ------------------------------------------------------------------------------------------------------


def test_a_tiny_model_overfits_a_small_synthetic_set(labeled_stack):
    config = replace(QUICK, max_epochs=40, learning_rate=1e-2, loss="focal")
    outcome = train(labeled_stack, training=config)
    losses = [epoch["train_loss"] for epoch in outcome.history]
    assert losses[-1] < losses[0] / 5, losses  # the loss falls by at least a factor of 5
    predicted = predict_segmentation(outcome.model, labeled_stack, device="cpu")
    truth = labeled_stack.label_layers[0][[0, 3, 6, 9]]
    assert (predicted.label_layers[0][[0, 3, 6, 9]] == truth).mean() > 0.95


def test_loader_workers_augment_reproducibly_and_differently_from_the_training_process(labeled_stack):
    from spatial_al.training import Trainer

    in_process = replace(QUICK, augment=True, loader_workers=0)
    workers = replace(in_process, loader_workers=2)
    first = train(labeled_stack, training=workers)
    second = train(labeled_stack, training=workers)
    assert first.trainer.loader_workers == 2 and same_weights(weights(first.model), weights(second.model))
    assert not same_weights(weights(first.model), weights(train(labeled_stack, training=in_process).model))
    assert first.trainer.phase_seconds["augmentation"] == 0  # augmented in the workers, beside the step
    assert train(labeled_stack).trainer.loader_workers == 0  # the default on CPU: the training process
    trainer = Trainer(SegmentationModel(tiny(class_names=("a",))), QUICK, torch.device("cpu"))
    trainer.device = torch.device("cuda")  # what the default depends on (no GPU needed to read it)
    assert trainer.workers_for(25) == trainer.loader_workers == min(4, (os.cpu_count() or 1) // 2)
    assert trainer.workers_for(4) == 0  # a short epoch is not worth starting processes for
    assert Trainer(trainer.model, replace(QUICK, loader_workers=3), torch.device("cpu")).workers_for(4) == 3


def test_the_same_seed_gives_the_same_weights_and_another_seed_other_weights(labeled_stack):
    augmented = replace(QUICK, augment=True)
    first = weights(train(labeled_stack, training=augmented).model)
    second = weights(train(labeled_stack, training=augmented).model)
    other = weights(train(labeled_stack, training=replace(augmented, seed=1)).model)
    assert same_weights(first, second)
    assert not same_weights(first, other)


def test_cancel_stops_within_one_batch(labeled_stack):
    steps = []
    progress = RecordingProgress(cancel_after=3)
    model = SegmentationModel(tiny(class_names=("disc", "square")))
    model.register_forward_hook(lambda module, inputs, output: steps.append(module.training))
    from spatial_al.training import Trainer

    examples = stack_examples(labeled_stack, range(10))
    trainer = Trainer(model, replace(QUICK, batch_size=1), torch.device("cpu"), progress=progress)
    with pytest.raises(OperationCancelled):
        trainer.fit(examples)
    assert len(progress.reports) == 3
    assert steps == [True, True, True]  # exactly three training batches ran


def test_the_default_budget_is_steps_however_few_slices_are_annotated(labeled_stack):
    defaults = TrainingConfig()
    assert defaults.max_epochs * defaults.iterations_per_epoch == 500
    progress = RecordingProgress()
    config = replace(defaults, max_epochs=2, iterations_per_epoch=6, validation_fraction=0.0, augment=False)
    for annotated in ((0, 9), (0, 2, 4, 6, 8, 9)):  # two slices or six: the same number of optimizer steps
        progress.reports.clear()
        train(labeled_stack, annotated=annotated, training=config, progress=progress)
        steps = [done for done, total, message in progress.reports if "epoch" in message]
        assert steps == list(range(1, 13)) and progress.reports[-1][1] == 12


def checkpointed_epochs(stack, config, validation_losses=None) -> list[int]:
    """The epochs after which a trainer asks for a checkpoint; ``validation_losses`` replace the real ones."""
    from spatial_al.training import Trainer

    written = []
    model = SegmentationModel(tiny(class_names=("disc", "square")))
    trainer = Trainer(model, config, torch.device("cpu"), on_checkpoint=lambda t: written.append(t.state.epoch))
    examples = stack_examples(stack, [0, 3, 6, 9])
    if validation_losses is not None:
        losses = iter(validation_losses)
        trainer.evaluate = lambda loader, stage: next(losses)
    trainer.fit(examples, examples if validation_losses is not None else None)
    return written


def test_checkpoints_follow_improvement_every_n_epochs_and_the_end(labeled_stack):
    no_validation = replace(QUICK, max_epochs=7, checkpoint_every=3)
    assert checkpointed_epochs(labeled_stack, no_validation) == [3, 6, 7]  # every 3 epochs and the last
    validated = replace(QUICK, max_epochs=8, checkpoint_every=4, patience=8)
    losses = [0.9, 0.8, 0.85, 0.86, 0.87, 0.7, 0.75, 0.76]
    assert checkpointed_epochs(labeled_stack, validated, losses) == [1, 2, 4, 6, 8]  # and each improvement
    early_stop = replace(QUICK, max_epochs=8, checkpoint_every=4, patience=2)
    assert checkpointed_epochs(labeled_stack, early_stop, losses) == [1, 2, 4]  # stopped at epoch 4


def rates_per_step(stack, config) -> tuple[list[float], list[float]]:
    """The learning rate of every optimizer step of one stage, and the one its history records for each epoch."""
    from spatial_al.training import Trainer

    trainer = Trainer(SegmentationModel(tiny(class_names=("disc", "square"))), config, torch.device("cpu"))
    seen, step = [], trainer.train_step

    def recorded_step(batch, stage, optimizer, *extra_loss):
        seen.append(optimizer.param_groups[0]["lr"])
        return step(batch, stage, optimizer, *extra_loss)

    trainer.train_step = recorded_step
    trainer.fit(stack_examples(stack, [0, 3, 6, 9]))
    return seen, [epoch["learning_rate"] for epoch in trainer.state.history]


def test_learning_rate_schedules_per_epoch_and_per_step(labeled_stack):
    shape = {"step_every": 2, "step_gamma": 0.5, "poly_power": 0.8}
    rates = {
        schedule: rates_per_step(
            labeled_stack,
            replace(QUICK, max_epochs=4, iterations_per_epoch=3, schedule=schedule, optimizer="adamw", **shape),
        )
        for schedule in ("poly", "step", "cosine")
    }
    poly_steps, poly_epochs = rates["poly"]
    expected = [1e-3 * (1 - epoch / 4) ** 0.8 for epoch in range(4)]  # the MIDL 2025 study's power
    np.testing.assert_allclose(poly_epochs, expected, rtol=1e-6)  # one rate an epoch, recorded as it was used
    np.testing.assert_allclose(poly_steps, np.repeat(expected, 3), rtol=1e-6)
    step_steps, step_epochs = rates["step"]
    np.testing.assert_allclose(step_steps, [1e-3 * 0.5 ** (i // 2) for i in range(12)], rtol=1e-6)  # SBC-AL's form
    np.testing.assert_allclose(step_epochs, step_steps[::3], rtol=1e-6)
    cosine_steps, _ = rates["cosine"]  # by step over the 12 steps of the round, as torch's CosineAnnealingLR
    scheduled = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(scheduled, T_max=12)
    reference = []
    for _ in range(12):
        reference.append(scheduled.param_groups[0]["lr"])
        scheduled.step()
        annealing.step()
    np.testing.assert_allclose(cosine_steps, reference, rtol=1e-6)
    with pytest.raises(ValueError, match="use one of constant, poly, step, cosine"):
        TrainingConfig(schedule="linear")


@pytest.mark.parametrize(("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_and_adamw_are_torchs_with_the_configured_weight_decay(name, kind):
    from spatial_al.training import Trainer

    config = replace(QUICK, optimizer=name, weight_decay=1e-2)
    trainer = Trainer(SegmentationModel(tiny(class_names=("disc",))), config, torch.device("cpu"))
    optimizer = trainer._optimizer("segmentation")
    assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 1e-2


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(labeled_stack, tmp_path):
    config = replace(QUICK, max_epochs=4, augment=True, schedule="step", step_every=3, step_gamma=0.5)
    uninterrupted = weights(train(labeled_stack, training=config).model)

    checkpoint = tmp_path / "model.pt"
    cancel_in_epoch_three = RecordingProgress(cancel_after=5)  # one batch per epoch of 4 slices
    with pytest.raises(OperationCancelled):
        train(
            labeled_stack,
            training=config,
            progress=cancel_in_epoch_three,
            checkpoint_path=checkpoint,
            annotated=(0, 3, 6, 9, 1, 2, 4, 5),
        )
    state = read_checkpoint(checkpoint).trainer_state
    assert (state.epoch, state.finished) == (2, False)
    uninterrupted = weights(train(labeled_stack, training=config, annotated=(0, 3, 6, 9, 1, 2, 4, 5)).model)
    resumed = train(labeled_stack, training=None, resume=checkpoint, annotated=(0, 3, 6, 9, 1, 2, 4, 5))
    assert resumed.trainer.state.round_index == 0
    assert same_weights(weights(resumed.model), uninterrupted)


def test_a_finished_round_resumes_as_fine_tuning_at_the_lower_rate_with_lighter_pseudo_labels(labeled_stack, tmp_path):
    checkpoint = tmp_path / "round0.pt"
    train(labeled_stack, checkpoint_path=checkpoint)
    pseudo = Segmentation(labeled_stack.label_layers, labeled_stack.segments, labeled_stack.geometry)
    outcome = train(
        labeled_stack,
        annotated=(0, 3, 6, 9, 5),
        training=None,
        resume=checkpoint,
        pseudo_labels=pseudo,
        pseudo_slices=[1, 2, 5],
    )
    assert outcome.trainer.state.round_index == 1
    assert {epoch["learning_rate"] for epoch in outcome.history if epoch["round"] == 1} == {
        QUICK.fine_tune_learning_rate
    }
    assert outcome.pseudo_labeled_slices == [1, 2]  # slice 5 is annotated now: never a pseudo-label
    assert QUICK.pseudo_weight(1) == QUICK.pseudo_label_weight * QUICK.pseudo_label_decay


def test_early_stopping_keeps_the_best_weights_of_the_validation_loss(labeled_stack):
    config = replace(QUICK, max_epochs=30, patience=2, validation_fraction=0.3, learning_rate=0.3, optimizer="sgd")
    outcome = train(labeled_stack, annotated=range(10), training=config)
    history = outcome.history
    best = min(epoch["validation_loss"] for epoch in history)
    assert len(history) < 30 and history[-1]["validation_loss"] > best  # stopped after failing to improve
    assert len(outcome.validation_slices) == 3
    examples = stack_examples(labeled_stack, outcome.validation_slices)
    validation = outcome.trainer.data_loader(examples, "segmentation", shuffle=False)
    assert outcome.trainer.evaluate(validation, "segmentation") == pytest.approx(best, rel=1e-5)


def test_star_round_trains_stage_one_then_only_the_propagation_modules(labeled_stack):
    model_config = tiny("star-small", class_names=("disc", "square"))
    outcome = train_on_stack(labeled_stack, (0, 3, 6, 9), preset=model_config, training=QUICK, device="cpu")
    assert [e["stage"] for e in outcome.history] == ["segmentation"] * 2 + ["star_propagation"] * 2
    assert bool(outcome.model.star.labeled_encoder_trained)

    # stage 2 again, from a snapshot: f_U must not move, f_L, key/value, decoder and head must
    from spatial_al.training import Trainer

    model = outcome.model
    examples = stack_examples(labeled_stack, (0, 3, 6, 9))
    snapshot = weights(model)
    model.zero_grad(set_to_none=True)
    trainer = Trainer(model, QUICK, torch.device("cpu"))
    trainer.fit(examples, stage="star_propagation")
    after = weights(model)
    moved = {name for name in snapshot if not torch.equal(snapshot[name], after[name])}
    assert not any(name.startswith("backbone.encoder.") for name in moved)
    for prefix in ("star.labeled_encoder.", "star.key.", "star.value.", "backbone.decoder.", "backbone.head."):
        assert any(name.startswith(prefix) for name in moved), prefix
    assert all(p.grad is None for p in model.backbone.encoder.parameters())

    snapshot = weights(model)
    Trainer(model, QUICK, torch.device("cpu")).fit(examples, stage="segmentation")
    moved = {name for name in snapshot if not torch.equal(snapshot[name], weights(model)[name])}
    assert moved and not any(name.startswith("star.") for name in moved)


def test_stage_two_groups_each_annotated_slice_with_its_nearest_annotated_neighbours_on_each_side():
    sources = [(0, 10), (0, 0), (0, 14), (1, 5), (1, 9), (2, 3)]
    groups = annotated_neighbour_groups(sources)
    # volume 0: slice 10 sits between 0 and 14, the ends have one neighbour; volume 2 has one annotated slice: none
    assert groups == [(0, (1, 2)), (1, (0,)), (2, (0,)), (3, (4,)), (4, (3,))]
    # the paper's "pairs every two closest labeled slices": one sample per neighbour
    pairs = annotated_neighbour_groups(sources, form="closest")
    assert pairs == [(0, (1,)), (0, (2,)), (1, (0,)), (2, (0,)), (3, (4,)), (4, (3,))]
    with pytest.raises(ValueError, match="bounding, closest"):
        annotated_neighbour_groups(sources, form="pairs")


def test_sbc_model_learns_the_distance_maps(labeled_stack):
    outcome = train(labeled_stack, preset="sbc-small", training=replace(QUICK, max_epochs=15, learning_rate=3e-3))
    assert outcome.history[-1]["train_loss"] < outcome.history[0]["train_loss"]
    outputs = SlicePredictor(outcome.model, torch.device("cpu")).structure(
        normalize_intensities(labeled_stack.image)[[3], None]
    )
    assert outputs["distance"].shape == (1, 2, 32, 32) and outputs["refined"].shape == (1, 3, 32, 32)


def test_sbc_optimizer_has_the_papers_learning_rate_groups_and_step_decay():
    from spatial_al.training.trainer import Trainer, advance

    torch.manual_seed(0)
    model = SegmentationModel(preset_config("sbc-small", class_names=("a", "b"), features=TINY_UNET))
    config = TrainingConfig(
        optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4, learning_rate=0.01,
        schedule="step", step_every=500, step_gamma=0.9,
    )  # fmt: skip
    trainer = Trainer(model, config, torch.device("cpu"))
    optimizer = trainer._optimizer("segmentation")
    assert isinstance(optimizer, torch.optim.SGD)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert set(groups) == {"backbone", "structure", "refinement"}
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    sfp = [model.structure.blocks, model.structure.regressor]
    assert {id(p) for p in groups["structure"]["params"]} == {id(p) for m in sfp for p in m.parameters()}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["structure"]["lr"] == pytest.approx(1e-4)
    assert groups["refinement"]["lr"] == pytest.approx(0.01)  # ASR's classifier gives the segmentation
    for group in groups.values():
        assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, False, 1e-4)
    scheduler = trainer._scheduler(optimizer, batches_per_epoch=25)
    rates = []
    for _ in range(1001):
        rates.append((groups["backbone"]["lr"], groups["structure"]["lr"]))
        advance(scheduler)
    assert rates[499] == pytest.approx((0.01, 1e-4)) and rates[500] == pytest.approx((0.009, 9e-5))
    assert rates[1000] == pytest.approx((0.01 * 0.81, 1e-4 * 0.81))


def test_distance_targets_peak_at_the_centre_of_each_structure():
    rows, columns = np.mgrid[:21, :21]
    disc = ((rows - 10) ** 2 + (columns - 10) ** 2 <= 36).astype(np.uint8)
    maps = distance_targets(np.stack([disc, np.zeros_like(disc)]))
    background = np.argwhere(disc == 0)
    brute_force = np.zeros(disc.shape)
    for row, column in np.argwhere(disc):
        brute_force[row, column] = np.sqrt(((background - (row, column)) ** 2).sum(1)).min()
    np.testing.assert_allclose(maps[0], brute_force / brute_force.max(), atol=1e-6)
    assert maps[0, 10, 10] == 1.0
    assert maps[1].max() == 0
    pixels = distance_targets(np.stack([disc, np.zeros_like(disc)]), "pixels")  # the paper's D_i: raw distances
    np.testing.assert_allclose(pixels[0], brute_force, atol=1e-5)
    assert pixels[0, 10, 10] == pytest.approx(np.sqrt(37)) and pixels[1].max() == 0  # nearest outside: (16, 11)


def test_sfp_in_pixels_regresses_raw_distances_non_negative_and_unbounded(labeled_stack):
    architecture = tiny("sbc-small", distance_scale="pixels")
    training = replace(QUICK, max_epochs=4, learning_rate=3e-3)
    outcome = train_on_stack(labeled_stack, (0, 3, 6, 9), preset=architecture, training=training, device="cpu")
    outputs = SlicePredictor(outcome.model, torch.device("cpu")).structure(
        normalize_intensities(labeled_stack.image)[[3], None]
    )
    assert outcome.model.config.distance_scale == "pixels"
    assert outputs["distance"].min() >= 0 and outputs["distance"].max() > 1.0  # softplus: beyond a sigmoid's range


# -- losses --------------------------------------------------------------------------------------------------------


def test_masked_losses_equal_the_loss_on_the_supervised_pixels_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.zeros(2, 2, 8, 8)
    target[:, 0, 2:5, 2:5] = 1
    target[:, 1, 6:, 6:] = 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :, :4] = 1  # the left half is supervised
    for name in ("focal", "ce", "dice_ce"):
        loss = segmentation_loss(name, "softmax", focal_gamma=2.0)
        cropped = loss(logits[..., :4].contiguous(), target[..., :4].contiguous(), torch.ones(2, 1, 8, 4))
        assert torch.allclose(loss(logits, target, mask), cropped, atol=1e-5), name
    reference = torch.nn.functional.cross_entropy(logits, torch.cat([1 - target.sum(1, True), target], 1).argmax(1))
    assert torch.allclose(
        segmentation_loss("ce", "softmax", 2.0)(logits, target, torch.ones(2, 1, 8, 8)).mean(), reference
    )


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_weights_scale_samples():
    torch.manual_seed(1)
    logits = torch.randn(3, 3, 4, 4)
    target = torch.nn.functional.one_hot(torch.randint(0, 3, (3, 4, 4)), 3).permute(0, 3, 1, 2)[:, 1:].float()
    mask = torch.ones(3, 1, 4, 4)
    focal = focal_loss(logits, target, mask, head="softmax", gamma=0.0)
    assert torch.allclose(focal, segmentation_loss("ce", "softmax", 2.0)(logits, target, mask), atol=1e-5)
    assert torch.allclose(weighted_mean(focal, torch.tensor([1.0, 0.0, 0.0])), focal[0])


def test_dice_focal_loss_on_volumes_is_monais_soft_dice_plus_focal_loss_summed_over_the_classes():
    from monai.losses import DiceLoss, FocalLoss

    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 6, 6)  # (B, background + 2 classes, D, H, W): a 3D patch
    dense = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 4, 6, 6)), 3).permute(0, 4, 1, 2, 3).float()
    loss = segmentation_loss("dice_focal", "softmax", 3.0)(logits, dense[:, 1:], torch.ones(2, 1, 4, 6, 6))
    dice = DiceLoss(include_background=False, softmax=True, reduction="none")(logits, dense).flatten(1).mean(1)
    focal = FocalLoss(gamma=3.0, use_softmax=True, reduction="none")(logits, dense).sum(1).flatten(1).mean(1)
    assert torch.allclose(loss, dice + focal, atol=1e-5)


def test_class_weighted_cross_entropy_is_torchs_weighted_mean_over_the_supervised_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.zeros(2, 2, 5, 5)
    target[:, 0, :2] = 1  # liver
    target[:, 1, 3:, 3:] = 1  # tumour
    mask = torch.ones(2, 1, 5, 5)
    mask[1, 0, :, :2] = 0  # part of the second slice unsupervised
    weights = (0.04, 0.25, 1.4)
    loss = segmentation_loss("ce", "softmax", 2.0, weights)(logits, target, mask)
    classes = torch.zeros(2, 5, 5, dtype=torch.long)
    classes[target[:, 0] > 0], classes[target[:, 1] > 0] = 1, 2
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights))
    assert float(loss[0]) == pytest.approx(float(reference(logits[:1], classes[:1])), rel=1e-5)
    kept = mask[1, 0].bool()
    second = reference(logits[1].permute(1, 2, 0)[kept], classes[1][kept])  # the supervised pixels alone
    assert float(loss[1]) == pytest.approx(float(second), rel=1e-5)
    with pytest.raises(ValueError, match="class_weights weigh the ce loss"):
        segmentation_loss("dice_ce", "softmax", 2.0, weights)
    with pytest.raises(ValueError, match="one weight per output channel, background first"):
        model = SegmentationModel(tiny(class_names=("a",)))  # 2 output channels
        Trainer(model, replace(QUICK, loss="ce", class_weights=weights), torch.device("cpu"))


def test_a_loss_that_does_not_fit_the_head_is_refused():
    with pytest.raises(ValueError, match="use bce"):
        segmentation_loss("ce", "sigmoid", 2.0)
    with pytest.raises(ValueError, match="Did you mean 'focal'"):
        segmentation_loss("focl", "softmax", 2.0)


# -- checkpoints and prediction ------------------------------------------------------------------------------------


def test_checkpoints_round_trip_bit_identically(labeled_stack, tmp_path):
    outcome = train(labeled_stack, preset="star-small")
    path = save_checkpoint(tmp_path / "model.pt", outcome.model, outcome.trainer)
    model, checkpoint = load_model(path, torch.device("cpu"))
    assert same_weights(weights(model), weights(outcome.model))
    assert checkpoint.model_config == outcome.model.config
    assert checkpoint.trainer_state == outcome.trainer.state
    slices = normalize_intensities(labeled_stack.image)[:, None]
    outcome.model.eval()
    assert torch.equal(
        SlicePredictor(model, torch.device("cpu")).probabilities(slices),
        SlicePredictor(outcome.model, torch.device("cpu")).probabilities(slices),
    )
    assert "model_state" in torch.load(path, weights_only=True)  # plain tensors and strings, no pickled objects


def test_prediction_writes_the_trained_segments_on_the_image_grid(labeled_stack):
    outcome = train(labeled_stack)
    segmentation = predict_segmentation(outcome.model, labeled_stack, device="cpu")
    assert [s.name for s in segmentation.segments] == ["disc", "square"]
    assert [s.color for s in segmentation.segments] == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
    assert segmentation.label_layers.shape == (1, 10, 32, 32)
    assert segmentation.geometry == labeled_stack.geometry
    assert set(np.unique(segmentation.label_layers)) <= {0, 1, 2}


def test_overlapping_segments_train_a_sigmoid_model_predicted_into_layers(labeled_stack):
    layers = np.stack([(labeled_stack.label_layers[0] == 1).astype(np.uint8), (labeled_stack.label_layers[0] > 0)])
    overlapping = replace(
        labeled_stack,
        label_layers=layers.astype(np.uint8),
        segments=(Segment("disc", 1, layer=0), Segment("anything", 1, layer=1)),
    )
    outcome = train(overlapping, training=replace(QUICK, loss="bce"))
    assert outcome.model.config.head == "sigmoid"
    segmentation = predict_segmentation(outcome.model, overlapping, device="cpu")
    assert [s.name for s in segmentation.segments] == ["disc", "anything"]


# -- bad input -----------------------------------------------------------------------------------------------------


def test_bad_input_gets_errors_that_name_the_fix(labeled_stack, tmp_path):
    with pytest.raises(ValueError, match="No annotated slice"):
        train(labeled_stack, annotated=[])
    nan_image = labeled_stack.image.copy()
    nan_image[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite voxels"):
        train(replace(labeled_stack, image=nan_image))

    checkpoint = tmp_path / "model.pt"
    train(labeled_stack, checkpoint_path=checkpoint)
    with pytest.raises(ValueError, match=r"holds a unet\[8, .*not the unet\[8, .* with star asked for"):
        train(labeled_stack, preset="star-small", resume=checkpoint, training=None)
    more = replace(labeled_stack, segments=(*labeled_stack.segments, Segment("tumour", 3)))
    with pytest.raises(ValueError, match="unknown: tumour"):
        train(more, resume=checkpoint, training=None)
    with pytest.raises(ValueError, match=r"axis 0, this run cuts along axis 1; pass --axis 0"):
        train(replace(labeled_stack, slice_axis=1, status=None, confidence=None), resume=checkpoint, training=None)
    renamed = Segmentation(
        labeled_stack.label_layers, (Segment("liver", 1), Segment("square", 2)), labeled_stack.geometry
    )
    with pytest.raises(ValueError, match="no segment named 'disc'; their segments are liver, square"):
        train(labeled_stack, pseudo_labels=renamed)

    pickled = tmp_path / "pickled.pt"
    torch.save(SegmentationModel(tiny(class_names=("a",))), pickled)
    with pytest.raises(ValueError, match="not a checkpoint this tool can read safely"):
        read_checkpoint(pickled)
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps({"weights": 1}))
    with pytest.raises(ValueError, match="not a"):
        read_checkpoint(foreign)
    contents = torch.load(checkpoint, weights_only=True)
    contents["model_state"].pop("backbone.head.weight")
    torch.save(contents, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="1 missing"):
        load_model(tmp_path / "edited.pt", torch.device("cpu"))
    with pytest.raises(ValueError, match="Did you mean 'max_epochs'"):
        TrainingConfig().with_options(max_epoch=3)
    assert resume_trainer  # the public resume entry point is the one train_on_stack uses


def test_star_stage_two_pairs_only_annotated_slices_and_copes_with_one_held_out_slice(labeled_stack):
    from spatial_al.training.data import slice_examples

    pseudo = Segmentation(labeled_stack.label_layers, labeled_stack.segments, labeled_stack.geometry)
    config = replace(QUICK, validation_fraction=0.2)  # 5 annotated slices: 1 held out, nothing to pair it with
    model_config = tiny("star-small", class_names=("disc", "square"))
    outcome = train_on_stack(
        labeled_stack,
        (0, 3, 6, 7, 9),
        preset=model_config,
        training=config,
        device="cpu",
        pseudo_labels=pseudo,
        pseudo_slices=[1, 2],
    )
    stage_two = [epoch for epoch in outcome.history if epoch["stage"] == "star_propagation"]
    assert len(stage_two) == 2 and all(epoch["validation_loss"] is None for epoch in stage_two)

    image = normalize_intensities(labeled_stack.image)
    examples = slice_examples(image, pseudo.label_layers, pseudo.segments, ("disc", "square"), (0, 6), 0)
    pseudo_examples = slice_examples(
        image, pseudo.label_layers, pseudo.segments, ("disc", "square"), (2, 3), 0, weight=1.0, annotated=False
    )
    examples.extend(pseudo_examples)  # weighted as labels, still never a STAR group member
    dataset = outcome.trainer.data_loader(examples, "star_propagation", shuffle=True).dataset
    assert dataset.groups == [(0, (1,)), (1, (0,))]  # slices 0 and 6 group; the pseudo-labeled 2 and 3 never do
    sample = dataset[0]
    assert sample["labeled_image"].shape == (2, 1, 32, 32) and sample["labeled_mask"].tolist() == [True, False]


@pytest.mark.parametrize("reinitialize", [True, False])
def test_labeled_encoder_is_copied_from_the_unlabeled_encoder_at_every_round_only_when_asked(
    labeled_stack, reinitialize
):
    from spatial_al.models import SegmentationModel
    from spatial_al.training import Trainer

    config = replace(QUICK, reinitialize_labeled_encoder=reinitialize, learning_rate=1e-2, fine_tune_learning_rate=0.0)
    model = SegmentationModel(tiny("star-small", class_names=("disc", "square")))
    trainer = Trainer(model, config, torch.device("cpu"))
    examples = stack_examples(labeled_stack, (0, 3, 6, 9))
    trainer.train_round(examples)  # round 0 trains f_U and, after copying it, f_L
    after_first = weights(model.star.labeled_encoder)
    encoder = dict(model.backbone.encoder.named_parameters())
    first_convolution = "blocks.0.conv_0.conv.weight"
    assert not torch.equal(after_first[first_convolution][:, :1], encoder[first_convolution])  # f_L moved on
    trainer.next_round()
    trainer.train_round(examples)  # round 1 learns at rate 0: only the copy can change f_L
    labeled = dict(model.star.labeled_encoder.named_parameters())
    if reinitialize:
        for name, tensor in encoder.items():
            copied = labeled[name][:, :1] if labeled[name].shape != tensor.shape else labeled[name]
            assert torch.equal(copied, tensor), name
        assert not labeled[first_convolution][:, 1:].any()  # label weights start at zero
    else:
        assert same_weights(weights(model.star.labeled_encoder), after_first)


def test_intensities_near_the_float32_limit_normalise_as_ordinary_ones(chest_ct):
    image = chest_ct.image.astype(np.float32)
    ordinary = normalize_intensities(image)
    for scale in (1e35, 1e-30):
        scaled = normalize_intensities(image * np.float32(scale))
        assert np.isfinite(scaled).all()
        np.testing.assert_allclose(scaled, ordinary, atol=1e-3)
    huge = normalize_intensities(image.astype(np.float64) * 1e300)  # beyond float32 altogether
    np.testing.assert_allclose(huge, ordinary, atol=1e-3)


def test_a_proxy_models_weights_start_a_new_model_with_a_fresh_output_layer(labeled_stack, tmp_path):
    from spatial_al.training import initialize_from

    torch.manual_seed(5)
    proxy = SegmentationModel(preset_config("unet-small", class_names=("proxy",), features=TINY_UNET))
    path = save_checkpoint(tmp_path / "proxy.pt", proxy)
    config = replace(QUICK, max_epochs=1, learning_rate=0.0)  # no update: the weights stay as initialised
    outcome = train(labeled_stack, training=config, initial_weights=path)
    started, source = outcome.model.state_dict(), proxy.state_dict()
    fresh = [name for name in started if started[name].shape != source[name].shape]
    assert fresh and all(name.startswith("backbone.head") for name in fresh)  # 2 classes + background vs 1 + 1
    assert all(torch.equal(started[name], source[name]) for name in started if name not in fresh)
    other = SegmentationModel(preset_config("unet", class_names=("a",)))
    with pytest.raises(ValueError, match="the architectures differ"):
        initialize_from(other, proxy)
    with pytest.raises(ValueError, match="give --resume or --init, not both"):
        train(labeled_stack, training=config, initial_weights=path, resume=path)


# -- TAAL's cross-augmentation consistency -------------------------------------------------------------------------


def test_cross_augmentation_consistency_is_the_weighted_jensen_shannon_divergence_of_the_mapped_back_predictions():
    from scipy.spatial.distance import jensenshannon

    from spatial_al.training.losses import cross_augmentation_consistency

    torch.manual_seed(0)
    images = torch.randn(2, 1, 6, 6)
    kernel = torch.zeros(2, 1, 3, 3)
    kernel[0, 0, 0, 1], kernel[1, 0, 2, 2] = 2.0, -1.5  # taps off the centre: flips and turns change the output

    def forward(x):
        return torch.nn.functional.conv2d(x, kernel, padding=1)

    draws = torch.Generator().manual_seed(1)
    loss = cross_augmentation_consistency(
        forward, images, "softmax", augmentations=1, alpha=0.5, noise_std=0.0, generator=draws
    )
    draws = torch.Generator().manual_seed(1)  # the first two draws chose the flip and the turns
    flip, turns = bool(torch.randint(2, (1,), generator=draws)), int(torch.randint(4, (1,), generator=draws))
    augmented = (images.flip(-2) if flip else images).rot90(turns, (-2, -1))
    back = forward(augmented).rot90(-turns, (-2, -1))
    plain = forward(images).softmax(1).permute(0, 2, 3, 1).reshape(-1, 2).numpy()
    mapped = (back.flip(-2) if flip else back).softmax(1).permute(0, 2, 3, 1).reshape(-1, 2).numpy()
    # alpha = 0.5 with two predictions: half the Jensen-Shannon divergence (scipy gives its square root, in nats)
    expected = 0.5 * np.mean([jensenshannon(p, q) ** 2 for p, q in zip(plain, mapped, strict=True)])
    assert (flip, turns) != (False, 0) and float(loss) == pytest.approx(expected, rel=1e-4)

    def equivariant(x):  # a 1 x 1 convolution commutes with flips and turns: nothing to disagree on
        return torch.nn.functional.conv2d(x, kernel[:, :, 1:2, 1:2] + 1.0)

    agreement = cross_augmentation_consistency(
        equivariant, images, "softmax", augmentations=3, alpha=0.5, noise_std=0.0, generator=torch.Generator()
    )
    assert abs(float(agreement)) < 1e-6


def test_unlabeled_slices_are_drawn_from_their_volumes_and_padded_to_the_divisor():
    from spatial_al.training.data import UnlabeledSlices

    first = np.arange(3 * 5 * 6, dtype=np.float32).reshape(3, 5, 6)
    second = -np.ones((4, 7, 3), dtype=np.float32)
    unlabeled = UnlabeledSlices([first, second], [np.array([1]), np.array([0, 2])])
    assert len(unlabeled) == 3
    batch = unlabeled.draw(np.random.default_rng(0), 20, divisor=4)
    assert batch.shape == (20, 1, 8, 8)
    for image in batch[:, 0]:
        from_first = np.array_equal(image[:5, :6], first[1]) and not image[5:].any() and not image[:, 6:].any()
        from_second = np.array_equal(image[:7, :3], second[0]) and not image[7:].any() and not image[:, 3:].any()
        assert from_first or from_second
    assert {float(image[0, 0]) for image in batch[:, 0]} == {first[1, 0, 0], -1.0}  # both volumes are drawn


def test_taal_training_adds_the_ramped_up_consistency_on_unlabeled_slices(labeled_stack):
    from spatial_al.training import Trainer
    from spatial_al.training.data import UnlabeledSlices

    config = replace(QUICK, taal_rampup_epochs=4)
    assert config.taal_weight_at(0) == pytest.approx(np.exp(-5.0))
    assert config.taal_weight_at(2) == pytest.approx(np.exp(-5.0 * 0.25)) and config.taal_weight_at(9) == 1.0

    image = normalize_intensities(labeled_stack.image)
    examples = stack_examples(labeled_stack, (0, 3, 6, 9))
    unlabeled = UnlabeledSlices([image], [np.array([1, 2, 4, 5, 7, 8])])

    def trained(with_unlabeled):
        torch.manual_seed(0)
        model = SegmentationModel(tiny(class_names=("disc", "square")))
        trainer = Trainer(model, config, torch.device("cpu"))
        trainer.train_round(examples, unlabeled=unlabeled if with_unlabeled else None)
        return trainer

    plain, taal = trained(False), trained(True)
    plain_losses = [epoch["train_loss"] for epoch in plain.state.history]
    taal_losses = [epoch["train_loss"] for epoch in taal.state.history]
    assert np.isfinite(taal_losses).all() and taal_losses != plain_losses  # the consistency term is in the loss
    assert not same_weights(weights(plain.model), weights(taal.model))
    assert same_weights(weights(taal.model), weights(trained(True).model))  # the draws are seeded
