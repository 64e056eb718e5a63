"""Batched inference: probabilities, labels, MC-dropout, test-time augmentation, features, STAR groups."""

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.inference import SlicePredictor, enable_dropout, most_likely_class, pixel_entropy

CPU = torch.device("cpu")


def predictor(preset="unet-small", batch_size=3, **changes):
    torch.manual_seed(0)
    config = preset_config(preset, class_names=("a", "b"), features=TINY_UNET, **changes)
    return SlicePredictor(SegmentationModel(config), CPU, batch_size=batch_size)


SLICES = torch.randn(7, 1, 30, 37, generator=torch.Generator().manual_seed(0))  # not multiples of 16


@pytest.mark.parametrize("dim", [0, 1, 3])
def test_most_likely_class_is_argmax_with_its_ties_and_nan(dim):
    scores = torch.rand(4, 3, 6, 5, generator=torch.Generator().manual_seed(dim))
    scores[0, :, 1] = 0.5  # ties: the first index wins
    scores[2, 1, 3, 2] = float("nan")  # NaN counts as the largest, as in argmax
    assert torch.equal(most_likely_class(scores, dim), scores.argmax(dim))
    assert int(most_likely_class(torch.ones(2, 4, 3), 1).max()) == 0


def test_probabilities_are_cropped_back_batched_and_sum_to_one():
    probabilities = predictor().probabilities(SLICES)
    assert probabilities.shape == (7, 3, 30, 37)
    assert torch.allclose(probabilities.sum(1), torch.ones(7, 30, 37), atol=1e-5)
    one_batch = predictor(batch_size=7).probabilities(SLICES)
    assert torch.allclose(probabilities, one_batch, atol=1e-5)  # batching does not change the result


def test_labels_are_the_argmax_or_the_thresholded_sigmoid():
    softmax = predictor()
    assert torch.equal(softmax.labels(SLICES), softmax.probabilities(SLICES).argmax(1).to(torch.uint8))
    sigmoid = predictor(head="sigmoid")
    assert torch.equal(sigmoid.labels(SLICES), (sigmoid.probabilities(SLICES) > 0.5).to(torch.uint8))


def direct_dropout_draws(model, slices, samples, seed, padding):
    """``samples`` passes of the whole network over the slices, one after the other (as on a CPU), dropout on:
    (T, N, C, H, W)."""
    torch.manual_seed(seed)
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.train()
    padded = torch.nn.functional.pad(slices, padding)
    with torch.no_grad():
        draws = torch.stack([model(padded).softmax(1)[..., :30, :37] for _ in range(samples)])
    model.eval()
    return draws


def test_mc_dropout_statistics_against_a_direct_computation():
    runner = predictor(dropout=0.3)
    statistics = runner.mc_dropout(SLICES[:2], samples=5, seed=4)
    draws = direct_dropout_draws(runner.model, SLICES[:2], 5, 4, (0, 11, 0, 2))
    assert torch.allclose(statistics.mean, draws.mean(0), atol=1e-5)
    assert torch.allclose(statistics.variance, draws.var(0, unbiased=False), atol=1e-6)
    bald = pixel_entropy(draws.mean(0), "softmax") - torch.stack([pixel_entropy(d, "softmax") for d in draws]).mean(0)
    assert torch.allclose(statistics.mutual_information, bald.clamp(min=0), atol=1e-5)
    assert float(statistics.mutual_information.max()) > 0
    assert not runner.model.training and not any(m.training for m in runner.model.modules())


def test_mc_dropout_passes_grouped_into_one_forward_pass_as_on_a_gpu_give_the_same_statistics():
    runner = predictor(dropout=0.3)
    runner.mc_pixels_per_forward = 2 * 5 * 32 * 48  # two slices, padded to 32 x 48, five passes: one forward pass
    statistics = runner.mc_dropout(SLICES[:2], samples=5, seed=4)
    torch.manual_seed(4)
    enable_dropout(runner.model)
    with torch.no_grad():
        repeated = torch.nn.functional.pad(SLICES[:2], (0, 11, 0, 2)).repeat(5, 1, 1, 1)
        draws = runner.model(repeated).softmax(1)[..., :30, :37].unflatten(0, (5, 2))
    runner.model.eval()
    assert torch.allclose(statistics.mean, draws.mean(0), atol=1e-5)
    assert torch.allclose(statistics.variance, draws.var(0, unbiased=False), atol=1e-6)


def test_mc_dropout_runs_a_dropout_free_encoder_once_with_the_same_result():
    torch.manual_seed(0)
    config = preset_config("resnet50-unet", class_names=("a", "b"), backbone="resnet10", dropout=0.3)
    runner = SlicePredictor(SegmentationModel(config), CPU, batch_size=3)
    assert not runner.model.encoder_has_dropout and predictor().model.encoder_has_dropout
    calls = []
    runner.model.backbone.encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    statistics = runner.mc_dropout(SLICES[:3], samples=4, seed=2)
    assert calls == [3]  # one encoder pass over the batch, not one per sample
    draws = direct_dropout_draws(runner.model, SLICES[:3], 4, 2, (0, 27, 0, 2))
    assert torch.allclose(statistics.mean, draws.mean(0), atol=1e-5)
    assert torch.allclose(statistics.variance, draws.var(0, unbiased=False), atol=1e-6)
    assert float(statistics.variance.max()) > 0


def test_last_layer_mc_dropout_is_the_whole_network_with_only_its_last_dropout_layer_sampled():
    runner = predictor(dropout=0.3)
    encoder_calls = []
    runner.model.backbone.encoder.register_forward_hook(lambda module, inputs, output: encoder_calls.append(1))
    statistics = runner.mc_dropout(SLICES[:2], samples=6, seed=4, layers="last")
    assert encoder_calls == [1]  # the network before the head runs once for all six passes
    last = [m for m in runner.model.backbone.decoder.modules() if isinstance(m, torch.nn.Dropout)][-1]
    torch.manual_seed(4)
    last.train()  # every other dropout layer stays off
    with torch.no_grad():
        padded = torch.nn.functional.pad(SLICES[:2], (0, 11, 0, 2))
        draws = torch.stack([runner.model(padded).softmax(1)[..., :30, :37] for _ in range(6)])
    last.eval()
    assert torch.allclose(statistics.mean, draws.mean(0), atol=1e-5)
    assert torch.allclose(statistics.variance, draws.var(0, unbiased=False), atol=1e-6)
    assert float(statistics.variance.max()) > 0
    assert not any(m.training for m in runner.model.modules())
    full = runner.mc_dropout(SLICES[:2], samples=6, seed=4)
    assert not torch.allclose(full.variance, statistics.variance, atol=1e-4)  # a different (smaller) source
    with pytest.raises(ValueError, match="all, last"):
        runner.mc_dropout(SLICES[:2], samples=6, layers="decoder")


def test_tta_divergence_is_the_jensen_shannon_divergence_of_the_transformed_predictions():
    runner = predictor(dropout=0.0)
    transforms = ("identity", "flip_rows", "rotate_90")
    predictions = runner.tta_probabilities(SLICES, transforms)  # (T, N, C, H, W)
    mean_entropy = torch.stack([pixel_entropy(p, "softmax") for p in predictions]).mean(0)
    expected = (pixel_entropy(predictions.mean(0), "softmax") - mean_entropy).clamp(min=0)
    divergence = runner.tta_divergence(SLICES, transforms)
    assert divergence.shape == (7, 30, 37) and float(divergence.max()) > 0
    assert torch.allclose(divergence, expected, atol=1e-6)
    with pytest.raises(ValueError, match="valid: identity"):
        runner.tta_divergence(SLICES, ("identity", "flip"))


def test_mc_dropout_needs_a_model_with_dropout():
    with pytest.raises(ValueError, match="no dropout"):
        predictor(dropout=0.0).mc_dropout(SLICES, samples=3)


def test_test_time_augmentation_maps_each_prediction_back_to_the_original_frame():
    runner = predictor()
    outputs = runner.tta_probabilities(SLICES, transforms=("identity", "flip_columns", "rotate_90"))
    assert outputs.shape == (3, 7, 3, 30, 37)
    assert torch.allclose(outputs[0], runner.probabilities(SLICES), atol=1e-6)
    flipped = runner.probabilities(SLICES.flip(-1)).flip(-1)
    assert torch.allclose(outputs[1], flipped, atol=1e-6)
    rotated = runner.probabilities(SLICES.rot90(1, (-2, -1))).rot90(-1, (-2, -1))
    assert torch.allclose(outputs[2], rotated, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown test-time transforms"):
        runner.tta_probabilities(SLICES, transforms=("mirror",))


def test_features_are_the_bottleneck_of_the_padded_slices():
    features = predictor().features(SLICES)
    assert features.shape == (7, TINY_UNET[4], 2, 3)  # 30x37 padded to 32x48, divided by 16


def test_star_group_propagation_attends_over_all_labeled_slices():
    runner = predictor("star-small")
    labels = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 30, 37)), 3).permute(0, 3, 1, 2).float()
    probabilities, attention = runner.propagate(SLICES[2:7], SLICES[[0, 1]], labels)
    assert probabilities.shape == (5, 3, 30, 37)
    assert attention.shape == (5, 6, 2, 2, 3)
    assert torch.allclose(attention.sum(dim=(2, 3, 4)), torch.ones(5, 6), atol=1e-5)


def test_bad_slices_are_refused():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        predictor().probabilities(np.zeros((4, 30, 30), np.float32))
    bad = SLICES.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        predictor().probabilities(bad)
