"""Mixed precision on the CPU (torch autocasts to bfloat16 there): every preset trains to a finite loss, STAR's
attention matches float32, non-finite steps are skipped until they persist."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

from spatial_al.models import PRESETS, SegmentationModel, preset_config
from spatial_al.precision import autocast, autocast_dtype, cpu_bfloat16_conv3d_weight_gradients_are_wrong
from spatial_al.training import Trainer, TrainingConfig, VolumeExamples
from spatial_al.training.data import SliceExamples

SMALL_RESNET = {"decoder_channels": (32, 16, 16, 8, 8)}


def volume_examples():
    """One volume (1, 32, 64, 64) with two nested cubes, every slice annotated (big enough that instance norm at
    the bottleneck averages over 32 voxels: over 4, bfloat16's rounding can make a variance negative)."""
    target = np.zeros((2, 32, 64, 64), np.uint8)
    target[0, 8:24, 16:48, 16:48] = 1
    target[1, 12:20, 24:40, 24:40] = 1
    image = (target[:1] * 2.0 + np.random.default_rng(0).normal(0, 0.5, (1, 32, 64, 64))).astype(np.float32)
    data = VolumeExamples()
    data.append(image, target)
    return data


def small(preset):
    """The preset, narrower where it is wide, seeded (bfloat16 rounding makes a run's finiteness depend on the weights);
    a UNETR built for the 32 x 64 x 64 patches of :func:`volume_examples`."""
    config = PRESETS.get(preset)
    tiny = TINY_UNET if config.spatial_dims == 2 else (4, 8, 8, 16, 16, 4)
    changes = {"features": tiny} if config.architecture == "unet" else SMALL_RESNET
    if config.architecture == "unetr":
        changes = {"input_size": (32, 64, 64), "transformer": (32, 64, 4)}
    torch.manual_seed(0)
    return SegmentationModel(preset_config(preset, class_names=("organ", "core"), **changes))


def examples(count=4, size=32):
    rng = np.random.default_rng(0)
    data = SliceExamples()
    for index in range(count):
        target = np.zeros((2, size, size), np.uint8)
        target[0, 8:24, 8:24] = 1
        target[1, 12:20, 12:20] = 1
        image = (target[:1] * 2.0 + rng.normal(0, 0.5, (1, size, size))).astype(np.float32)
        data.append(image, target, 1.0, (0, 3 * index), True)
    return data


@pytest.mark.parametrize("preset", PRESETS.names())
def test_every_preset_trains_an_epoch_in_bfloat16_to_a_finite_loss(preset):
    config = TrainingConfig(
        precision="bf16", max_epochs=1, iterations_per_epoch=None, batch_size=2, augment=False, learning_rate=1e-3
    )
    model = small(preset)
    training_data = examples()
    if model.config.spatial_dims == 3:  # a 3D model trains on patches of volumes
        config = config.with_options(patch_size=(32, 64, 64), iterations_per_epoch=2)
        training_data = volume_examples()
        if cpu_bfloat16_conv3d_weight_gradients_are_wrong():  # this torch's oneDNN: see the test below
            with pytest.raises(ValueError, match=r"wrong bfloat16 weight gradients .*--option precision=fp32"):
                Trainer(model, config, torch.device("cpu"))
            return
    trainer = Trainer(model, config, torch.device("cpu"))
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    trainer.train_round(training_data)
    assert all(math.isfinite(epoch["train_loss"]) for epoch in trainer.state.history)
    assert trainer.non_finite_steps == 0


def test_the_bfloat16_conv3d_probe_agrees_with_a_bottleneck_of_a_3d_unet():
    """The probe's verdict holds for a layer it did not measure: the 256-channel bottleneck convolution of a 3D U-Net
    on 32-slice patches (feature maps 2 x 4 x 4), whose bfloat16 weight gradient is compared with float32's."""
    torch.manual_seed(3)
    convolution = torch.nn.Conv3d(256, 256, 3, padding=1)
    features, upstream = torch.randn(2, 256, 2, 4, 4), torch.randn(2, 256, 2, 4, 4)
    convolution(features).backward(upstream)
    reference = convolution.weight.grad.clone()
    errors = []
    for _ in range(3):
        convolution.zero_grad()
        with autocast(torch.device("cpu"), torch.bfloat16):
            output = convolution(features)
        output.backward(upstream.bfloat16())
        errors.append(float((convolution.weight.grad - reference).abs().max() / reference.abs().max()))
    assert cpu_bfloat16_conv3d_weight_gradients_are_wrong() == (not all(error < 0.05 for error in errors))


def test_star_attention_in_bfloat16_matches_float32():
    model = small("star-small").eval()
    rng = np.random.default_rng(1)
    unlabeled = torch.as_tensor(rng.normal(size=(2, 1, 32, 32)), dtype=torch.float32)
    labeled = torch.as_tensor(rng.normal(size=(2, 2, 1, 32, 32)), dtype=torch.float32)
    labels = torch.zeros(2, 2, 3, 32, 32)
    labels[:, :, 0] = 1
    with torch.no_grad():
        exact = model.propagate(unlabeled, labeled, labels)
        with autocast(torch.device("cpu"), torch.bfloat16):
            mixed = model.propagate(unlabeled, labeled, labels)
    assert mixed.attention.dtype == torch.float32  # logits and softmax are computed in float32
    torch.testing.assert_close(mixed.attention, exact.attention, atol=0.02, rtol=0.05)
    torch.testing.assert_close(mixed.logits.float().softmax(1), exact.logits.softmax(1), atol=0.05, rtol=0.1)


def test_non_finite_steps_are_skipped_until_they_persist(monkeypatch):
    config = TrainingConfig(max_epochs=1, batch_size=1, augment=False)
    trainer = Trainer(small("unet-small"), config, torch.device("cpu"))
    before = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    real_loss = trainer._loss
    calls = iter(range(100))

    def sometimes_nan(batch, stage):
        value = real_loss(batch, stage)
        return value * float("nan") if next(calls) < 2 else value  # two transient non-finite steps

    monkeypatch.setattr(trainer, "_loss", sometimes_nan)
    trainer.train_round(examples(count=4))
    assert trainer.non_finite_steps == 0 and math.isfinite(trainer.state.history[0]["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())

    monkeypatch.setattr(trainer, "_loss", lambda batch, stage: real_loss(batch, stage) * float("inf"))
    trainer.next_round()
    with pytest.raises(FloatingPointError, match=r"not finite for 5 steps in a row .*--option precision=fp32"):
        trainer.train_round(examples(count=6))


def test_precision_resolves_per_device_and_old_checkpoints_keep_their_setting():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", cpu) == torch.float16 and autocast_dtype("fp32", cpu) is None
    with pytest.raises(ValueError, match="Unknown precision 'half'"):
        TrainingConfig(precision="half")
    assert TrainingConfig.from_json('{"mixed_precision": false}').precision == "fp32"
    assert TrainingConfig.from_json('{"mixed_precision": true}').precision == "auto"
