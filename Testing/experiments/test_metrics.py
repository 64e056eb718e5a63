"""Study metrics against references computed another way (MONAI, brute force)."""

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

from spatial_al.experiments.metrics import (
    percent_to_reach,
    pooled_dice,
    slice_dice,
    summarize,
    value_at,
    volume_metrics,
)


@pytest.fixture
def prediction_and_truth():
    rng = np.random.default_rng(3)
    truth = np.zeros((6, 2, 20, 20), np.uint8)
    truth[1:5, 0, 4:12, 4:12] = 1
    truth[2:6, 1, 10:18, 8:16] = 1
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:5, 5:12, 4:13] = 1
    labels[3:6, 11:18, 8:15] = 2
    labels[rng.random(labels.shape) < 0.02] = 2
    return labels, truth


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")
def test_volume_metrics_match_monai(prediction_and_truth):
    labels, truth = prediction_and_truth
    metrics = volume_metrics(labels, truth, spacing=(3.0, 0.5, 0.5))
    predicted = torch.as_tensor(np.stack([labels == 1, labels == 2])[None].astype(np.float32))  # (1, C, S, H, W)
    reference = torch.as_tensor(truth.transpose(1, 0, 2, 3)[None].astype(np.float32))
    np.testing.assert_allclose(
        metrics["dice_3d"], compute_dice(predicted, reference, include_background=True)[0].numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        metrics["iou_3d"], compute_iou(predicted, reference, include_background=True)[0].numpy(), rtol=1e-6
    )
    hd95 = compute_hausdorff_distance(predicted, reference, True, percentile=95, spacing=[3.0, 0.5, 0.5])[0].numpy()
    np.testing.assert_allclose(metrics["hd95_mm"], hd95, rtol=1e-5)


def test_slice_dice_counts_empty_slices_as_one_and_false_positives_as_zero():
    truth = np.zeros((3, 1, 4, 4), bool)
    prediction = np.zeros((3, 1, 4, 4), bool)
    truth[0, 0, :2] = prediction[0, 0, :2] = True  # perfect
    prediction[1, 0, 0, 0] = True  # false positive on an empty slice
    scores = slice_dice(prediction, truth)[:, 0]  # slice 2: empty and empty
    np.testing.assert_allclose(scores, [1.0, 0.0, 1.0], atol=1e-4)


def test_hd95_is_undefined_when_a_mask_is_empty_and_summarize_counts_the_defined_ones(prediction_and_truth):
    labels, truth = prediction_and_truth
    empty = np.zeros_like(labels)
    first, second = volume_metrics(labels, truth, (1, 1, 1)), volume_metrics(empty, truth, (1, 1, 1))
    assert second["hd95_mm"] == [None, None] and second["dice_3d"] == [0.0, 0.0]
    summary = summarize([first, second], ["a", "b"])
    assert summary["hd95_defined"] == 2
    assert summary["hd95_mm"] == pytest.approx(np.mean(first["hd95_mm"]))
    assert summary["dice_3d"] == pytest.approx(np.mean(first["dice_3d"] + second["dice_3d"]))
    assert summary["per_class"]["dice_2d"]["b"] == pytest.approx((first["dice_2d"][1] + second["dice_2d"][1]) / 2)
    assert summary["per_volume"]["dice_3d"] == pytest.approx([np.mean(first["dice_3d"]), 0.0])  # for paired tests


def test_pooled_dice_averages_the_classes_present():
    truth = [np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], np.uint8)]  # class 0 present, class 1 absent
    guess = [np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], np.uint8)]
    assert pooled_dice(guess, truth) == pytest.approx(2 * 1 / 3)  # class 1 absent from both: not counted
    assert pooled_dice([], []) is None


def test_s_percent_and_table_values_interpolate_on_the_curve():
    percents, values = [10.0, 15.0, 20.0], [0.5, 0.7, 0.9]
    assert percent_to_reach(percents, values, 0.8) == pytest.approx(17.5)
    assert percent_to_reach(percents, values, 0.4) == pytest.approx(10.0)
    assert percent_to_reach(percents, values, 0.95) is None
    assert value_at(percents, values, 12.5) == pytest.approx(0.6)
    assert value_at(percents, values, 25.0) is None
    # a nominal 9.9 % budget that whole slices put at 10 % reads the first round, not a gap
    assert value_at(percents, values, 9.9) is None and value_at(percents, values, 9.9, reach=0.2) == 0.5
    assert value_at(percents, values, 20.3, reach=0.2) is None


def test_batched_iou_pools_every_test_volume_as_monai_does_on_the_concatenated_volumes(prediction_and_truth):
    labels, truth = prediction_and_truth
    second_labels, second_truth = np.roll(labels, 3, axis=2), truth.copy()
    second_truth[:, 1] = 0  # class 2 absent from the second volume's truth
    per_volume = [
        volume_metrics(labels, truth, (1, 1, 1), False),
        volume_metrics(second_labels, second_truth, (1, 1, 1), False),
    ]
    summary = summarize(per_volume, ["a", "b"])
    # the reference: one volume made of both, scored once by MONAI (IoU and Dice per class, then their mean)
    joined_labels, joined_truth = np.concatenate([labels, second_labels]), np.concatenate([truth, second_truth])
    prediction = torch.stack([torch.as_tensor(joined_labels == c) for c in (1, 2)])[None].float()
    reference = torch.as_tensor(joined_truth).permute(1, 0, 2, 3)[None].float()
    iou = compute_iou(prediction, reference, include_background=True)[0].numpy()
    dice = compute_dice(prediction, reference, include_background=True)[0].numpy()
    assert summary["iou_batched"] == pytest.approx(float(iou.mean()))
    assert summary["dice_batched"] == pytest.approx(float(dice.mean()))
    assert summary["per_class"]["iou_batched"]["b"] == pytest.approx(float(iou[1]))
    # pooled, not averaged per volume: the two differ here
    assert summary["iou_batched"] != pytest.approx(summary["iou_3d"])


def test_average_batched_iou_is_the_mean_over_batches_of_consecutive_test_slices(prediction_and_truth):
    labels, truth = prediction_and_truth
    second_labels, second_truth = np.roll(labels, 2, axis=1), truth.copy()
    per_volume = [
        volume_metrics(labels, truth, (1, 1, 1), False),
        volume_metrics(second_labels, second_truth, (1, 1, 1), False),
    ]
    batch = 3
    summary = summarize(per_volume, ["a", "b"], batch_slices=batch)
    # the reference: MONAI's IoU over each batch of 3 slices of both volumes laid end to end (a batch may span
    # both), classes absent from a batch's prediction and truth left out, then the mean over batches
    joined_labels, joined_truth = np.concatenate([labels, second_labels]), np.concatenate([truth, second_truth])
    scores = []
    for start in range(0, len(joined_labels), batch):
        prediction = torch.stack([torch.as_tensor(joined_labels[start : start + batch] == c) for c in (1, 2)])
        reference = torch.as_tensor(joined_truth[start : start + batch]).permute(1, 0, 2, 3)
        iou = compute_iou(prediction[None].float(), reference[None].float(), include_background=True)[0].numpy()
        present = (prediction.flatten(1).any(1) | reference.flatten(1).bool().any(1)).numpy()
        scores.append(iou[present].mean() if present.any() else 1.0)
    assert summary["iou_batch_mean"] == pytest.approx(float(np.mean(scores)))
    assert summary["iou_batch_mean"] != pytest.approx(summary["iou_batched"])  # not the pooled one
    assert summary["per_class"]["iou_batch_mean"].keys() == {"a", "b"}
