"""Learned propagation (star, sli2vol, model) on a small synthetic stack, against copying the nearest annotated slice
and against the same computation done directly with the model; top-N selection and the input checks."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

import spatial_al
from spatial_al.learning import predict_segmentation, train_on_stack
from spatial_al.metrics import mean_label_dice
from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.inference import SlicePredictor
from spatial_al.progress import OperationCancelled, RecordingProgress
from spatial_al.propagation import sli2vol
from spatial_al.propagation.sli2vol import forget_trained_networks, local_affinity, transfer
from spatial_al.selection import select_pseudo_labels
from spatial_al.training import TrainingConfig
from spatial_al.training.data import normalize_intensities
from spatial_al.volume import Segment

ANNOTATED = [0, 6, 12, 18]
QUICK_SLI2VOL = {"steps": 20, "device": "cpu"}


def mean_dice_off_annotation(filled, truth, annotated=ANNOTATED):
    evaluated = [k for k in range(truth.shape[0]) if k not in annotated]
    return np.mean([mean_label_dice(filled[k], truth[k]) for k in evaluated])


def nearest_copy(labels, annotated=ANNOTATED):
    """Reference baseline: every slice copies the nearest annotated slice (the lower one on ties)."""
    return labels[[min(annotated, key=lambda a: (abs(a - k), a)) for k in range(labels.shape[0])]]


@pytest.fixture(scope="module")
def star_model(moving_stack):
    """A tiny STAR model trained on the annotated slices of the moving stack (both STAR stages)."""
    training = TrainingConfig(
        max_epochs=10, batch_size=4, validation_fraction=0.0, augment=False, learning_rate=1e-2, iterations_per_epoch=4
    )
    config = preset_config("star-small", features=TINY_UNET)
    return train_on_stack(moving_stack, ANNOTATED, preset=config, training=training, device="cpu").model


def star_pseudo_labels(model, image, labels, annotated, **options):
    """STAR's top-N pseudo-label selection on one volume with the moving stack's segments."""
    segments = (Segment("disc", 1), Segment("blob", 2))
    return select_pseudo_labels(
        image, "star_entropy", model, labels=labels, segments=segments, annotated=annotated, device="cpu", **options
    )


def learned(stack, method, model=None, **options):
    return spatial_al.propagate(
        stack.label_layers[0], ANNOTATED, method, stack.image, model=model, segments=stack.segments, **options
    )


def test_sli2vol_beats_copying_the_nearest_annotated_slice(moving_stack):
    truth = moving_stack.label_layers[0]
    result = learned(moving_stack, "sli2vol", **QUICK_SLI2VOL)
    assert mean_dice_off_annotation(result.labels, truth) > mean_dice_off_annotation(nearest_copy(truth), truth) + 0.1
    np.testing.assert_array_equal(result.labels[ANNOTATED], truth[ANNOTATED])
    assert set(np.unique(result.labels)) == {0, 1, 2}  # the label values travel as they are
    np.testing.assert_array_equal(result.propagated, [k for k in range(19) if k not in ANNOTATED])
    assert np.all((result.confidence > 0) & (result.confidence <= 1))


def test_sli2vol_as_published_learns_from_edge_profiles_and_beats_copying(moving_stack):
    truth = moving_stack.label_layers[0]
    published = {"edge_profile": True, "sequence_length": 1, "scheduled_sampling": 0.0}
    result = learned(moving_stack, "sli2vol", **QUICK_SLI2VOL, **published)
    assert mean_dice_off_annotation(result.labels, truth) > mean_dice_off_annotation(nearest_copy(truth), truth) + 0.1
    np.testing.assert_array_equal(result.labels[ANNOTATED], truth[ANNOTATED])


def test_sli2vol_as_the_midl_study_made_it_learns_on_a_resnet18_across_random_gaps_and_beats_copying(moving_stack):
    truth = moving_stack.label_layers[0]
    study = {"encoder": "resnet18", "run_slices": "random", "sequence_length": 3, "scheduled_sampling": 0.5}
    result = learned(moving_stack, "sli2vol", **QUICK_SLI2VOL, **study)
    assert mean_dice_off_annotation(result.labels, truth) > mean_dice_off_annotation(nearest_copy(truth), truth) + 0.1
    np.testing.assert_array_equal(result.labels[ANNOTATED], truth[ANNOTATED])
    network = sli2vol.correspondence_network(encoder="resnet18")
    assert any("resnet" in type(module).__name__.lower() for module in network.modules())
    features = sli2vol.unit_features(network.eval(), torch.randn(2, 1, 40, 36))  # padded to 64 x 64 and cropped
    assert features.shape == (2, sli2vol.FEATURE_CHANNELS, 40, 36)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2, 40, 36))
    with pytest.raises(ValueError, match="encoder must be one of unet, resnet18"):
        learned(moving_stack, "sli2vol", **QUICK_SLI2VOL, encoder="resnet50")


def test_training_runs_are_adjacent_slices_or_sorted_random_ones_in_either_direction():
    generator = np.random.default_rng(0)
    adjacent = [sli2vol.training_run(generator, 30, 3, "adjacent") for _ in range(50)]
    drawn = [sli2vol.training_run(generator, 30, 3, "random") for _ in range(50)]
    for run in adjacent + drawn:
        steps = np.diff(run)
        assert len(run) == 4 and run.min() >= 0 and run.max() < 30 and len(set(run)) == 4
        assert np.all(steps > 0) or np.all(steps < 0)  # sorted, in one direction or the other
    assert all(np.all(np.abs(np.diff(run)) == 1) for run in adjacent)
    assert any(np.abs(np.diff(run)).max() > 1 for run in drawn)  # gaps to bridge
    assert {run[0] < run[-1] for run in drawn} == {True, False}


def test_edge_profiles_are_sobel_derivatives_scaled_to_the_largest_gradient():
    from scipy.ndimage import sobel

    slices = torch.as_tensor(np.random.default_rng(0).normal(size=(2, 1, 12, 10)), dtype=torch.float32)
    profile = sli2vol.edge_profile(slices).numpy()
    assert profile.shape == (2, 2, 12, 10)
    inner = (slice(1, -1), slice(1, -1))  # the libraries pad the border differently
    for b in range(2):
        for axis in (0, 1):
            reference = sobel(slices[b, 0].numpy().astype(float), axis=axis)[inner]
            mine = profile[b, axis][inner]
            scale = float((mine * reference).sum() / (reference * reference).sum())  # one factor per slice
            assert scale > 0
            np.testing.assert_allclose(mine, scale * reference, atol=1e-5)
        assert np.hypot(*profile[b]).max() == pytest.approx(1.0)


@pytest.fixture(autouse=True)
def no_reused_sli2vol_networks():
    forget_trained_networks()
    yield
    forget_trained_networks()


def test_sli2vol_is_reproducible_and_extrapolates_from_a_single_slice(moving_stack):
    labels = moving_stack.label_layers[0]
    first = spatial_al.propagate(labels, [9], "sli2vol", moving_stack.image, extrapolate=True, **QUICK_SLI2VOL)
    forget_trained_networks()
    again = spatial_al.propagate(labels, [9], "sli2vol", moving_stack.image, extrapolate=True, **QUICK_SLI2VOL)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.propagated, np.delete(np.arange(19), 9))
    assert mean_label_dice(first.labels[8], labels[8]) > 0.8  # the neighbours of the annotated slice follow it


def test_sli2vol_reuses_the_network_it_learned_on_the_same_volume(moving_stack, monkeypatch):
    trainings = []
    train = sli2vol.train_correspondence
    monkeypatch.setattr(sli2vol, "train_correspondence", lambda *a, **k: trainings.append(1) or train(*a, **k))
    labels = moving_stack.label_layers[0]
    fresh = spatial_al.propagate(labels, [3, 15], "sli2vol", moving_stack.image, **QUICK_SLI2VOL)
    more_annotated = spatial_al.propagate(labels, [3, 9, 15], "sli2vol", moving_stack.image, **QUICK_SLI2VOL)
    reused = spatial_al.propagate(labels, [3, 15], "sli2vol", moving_stack.image, **QUICK_SLI2VOL)
    assert len(trainings) == 1  # learned once: the labels changed, the volume did not
    np.testing.assert_array_equal(reused.labels, fresh.labels)
    assert not np.array_equal(more_annotated.labels, fresh.labels)
    spatial_al.propagate(labels, [3, 15], "sli2vol", moving_stack.image[::-1].copy(), **QUICK_SLI2VOL)
    spatial_al.propagate(labels, [3, 15], "sli2vol", moving_stack.image, **{**QUICK_SLI2VOL, "radius": 2})
    assert len(trainings) == 3  # another volume, or other training options, learn again


def test_sli2vol_network_store_lets_another_process_load_the_network_instead_of_learning_it(
    moving_stack, monkeypatch, tmp_path
):
    trainings = []
    train = sli2vol.train_correspondence
    monkeypatch.setattr(sli2vol, "train_correspondence", lambda *a, **k: trainings.append(1) or train(*a, **k))
    labels, store = moving_stack.label_layers[0], tmp_path / "networks"
    options = {**QUICK_SLI2VOL, "encoder": "resnet18", "network_store": str(store)}
    learned_here = spatial_al.propagate(labels, [3, 15], "sli2vol", moving_stack.image, **options)
    assert len(list(store.glob("*.pt"))) == 1 and not list(store.glob(".*"))  # saved whole, no temporary left
    forget_trained_networks()  # what a new process holds
    loaded = spatial_al.propagate(labels, [3, 9, 15], "sli2vol", moving_stack.image, **options)
    forget_trained_networks()
    learned_again = spatial_al.propagate(
        labels, [3, 9, 15], "sli2vol", moving_stack.image, **QUICK_SLI2VOL | {"encoder": "resnet18"}
    )
    assert len(trainings) == 2  # the second propagation loaded the first one's network
    np.testing.assert_array_equal(loaded.labels, learned_again.labels)
    assert not np.array_equal(loaded.labels, learned_here.labels)


def test_transfer_through_a_one_offset_affinity_shifts_the_values():
    radius, (dy, dx) = 2, (1, -2)
    values = torch.rand(1, 3, 12, 10)
    affinity = torch.zeros(1, (2 * radius + 1) ** 2, 12, 10)
    affinity[:, (dy + radius) * (2 * radius + 1) + (dx + radius)] = 1.0
    moved = transfer(affinity, values, radius)
    padded = np.pad(values.numpy(), ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="edge")
    expected = padded[..., radius + dy : radius + dy + 12, radius + dx : radius + dx + 10]
    np.testing.assert_allclose(moved.numpy(), expected)


def test_affinity_of_matching_features_points_at_the_matching_pixel():
    features = torch.nn.functional.normalize(torch.randn(1, 16, 9, 9), dim=1)
    source = features.roll(shifts=(1, 1), dims=(2, 3))  # the target pixel (y, x) sits at (y + 1, x + 1) in the source
    affinity = local_affinity(features, source, radius=2)
    assert torch.allclose(affinity.sum(1), torch.ones(1, 9, 9))
    inner = affinity[0, :, 2:-2, 2:-2].argmax(0)
    assert (inner == (1 + 2) * 5 + (1 + 2)).all()


def test_star_beats_copying_the_nearest_annotated_slice(moving_stack, star_model):
    truth = moving_stack.label_layers[0]
    result = learned(moving_stack, "star", star_model, device="cpu")
    assert mean_dice_off_annotation(result.labels, truth) > mean_dice_off_annotation(nearest_copy(truth), truth) + 0.1
    np.testing.assert_array_equal(result.labels[ANNOTATED], truth[ANNOTATED])
    assert np.isnan(result.confidence).sum() == 0 and result.unreached_slices.size == 0


def test_star_attends_over_both_annotated_slices_of_a_gap_as_star_entropy_does(moving_stack, star_model):
    predictor = SlicePredictor(star_model, torch.device("cpu"))
    inputs = normalize_intensities(moving_stack.image)[:, None]
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(moving_stack.label_layers[0]).long(), 3)
    label_inputs = one_hot.permute(0, 3, 1, 2).float()  # background, disc, blob
    gap = np.arange(7, 12)
    probabilities, attention = predictor.propagate(inputs[gap], inputs[[6, 12]], label_inputs[[6, 12]])  # eq. 2
    assert attention.shape[2] == 2 and torch.allclose(attention.sum((2, 3, 4)), torch.ones(1))
    result = learned(moving_stack, "star", star_model, device="cpu")
    np.testing.assert_array_equal(result.labels[gap], probabilities.argmax(1).numpy())

    # the top-N pseudo-label selector computes the same aggregation, hence the same confidence
    selection = star_pseudo_labels(star_model, moving_stack.image, moving_stack.label_layers, ANNOTATED, count=3)
    np.testing.assert_allclose(selection.confidence, result.confidence[selection.slices], rtol=1e-5)
    inside = result.propagated
    assert selection.slices.tolist() == inside[np.argsort(-result.confidence[inside], kind="stable")][:3].tolist()


def test_model_method_is_the_models_prediction_on_every_slice_not_annotated(moving_stack, star_model):
    result = learned(moving_stack, "model", star_model, device="cpu")
    predicted = predict_segmentation(star_model, moving_stack, device="cpu").label_layers[0]
    not_annotated = np.delete(np.arange(19), ANNOTATED)
    np.testing.assert_array_equal(result.labels[not_annotated], predicted[not_annotated])
    np.testing.assert_array_equal(result.propagated, not_annotated)


def test_most_confident_keeps_the_top_n_slices_and_empties_the_rest(moving_stack, star_model):
    everything = learned(moving_stack, "model", star_model, device="cpu")
    top = learned(moving_stack, "model", star_model, device="cpu", most_confident=4)
    candidates = np.delete(np.arange(19), ANNOTATED)
    expected = np.sort(candidates[np.argsort(-everything.confidence[candidates], kind="stable")[:4]])
    np.testing.assert_array_equal(top.propagated, expected)
    np.testing.assert_array_equal(top.labels[expected], everything.labels[expected])
    np.testing.assert_array_equal(top.dropped_slices, np.setdiff1d(candidates, expected))
    assert not top.labels[top.dropped_slices].any()
    threshold = float(np.median(everything.confidence[candidates]))
    cut = learned(moving_stack, "model", star_model, device="cpu", min_confidence=threshold)
    np.testing.assert_array_equal(cut.propagated, candidates[everything.confidence[candidates] >= threshold])


def test_learned_methods_check_their_model(moving_stack, star_model):
    plain = SegmentationModel(preset_config("unet-small", features=TINY_UNET, class_names=("disc", "blob")))
    with pytest.raises(ValueError, match="STAR model"):
        learned(moving_stack, "star", plain)
    with pytest.raises(ValueError, match=r"needs a trained model.*--model CKPT"):
        learned(moving_stack, "model")
    renamed = replace(moving_stack, segments=tuple(replace(s, name=s.name.upper()) for s in moving_stack.segments))
    with pytest.raises(ValueError, match="does not match the segmentation"):
        learned(renamed, "star", star_model)
    with pytest.raises(ValueError, match="slices along array axis 0"):
        spatial_al.propagate(
            np.moveaxis(moving_stack.label_layers[0], 0, 2),
            ANNOTATED,
            "model",
            np.moveaxis(moving_stack.image, 0, 2),
            axis=2,
            model=star_model,
            segments=moving_stack.segments,
        )
    with pytest.raises(ValueError, match="has no option 'weighting'"):
        learned(moving_stack, "star", star_model, weighting="uniform")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 0}, "steps >= 1"),
        ({"scheduled_sampling": 1.5}, r"probability in \[0, 1\]"),
        ({"radius": 0}, "radius >= 1"),
        ({"weighting": "nearest"}, "weighting must be one of distance, uniform"),
    ],
)
def test_sli2vol_explains_bad_options(moving_stack, options, message):
    with pytest.raises(ValueError, match=message):
        learned(moving_stack, "sli2vol", **options)


def test_sli2vol_reports_progress_and_can_be_cancelled(moving_stack):
    recorder = RecordingProgress()
    learned(moving_stack, "sli2vol", progress=recorder, **QUICK_SLI2VOL)
    messages = [message for _, _, message in recorder.reports]
    assert "learning slice correspondences" in messages and "done" in messages
    with pytest.raises(OperationCancelled):
        learned(moving_stack, "sli2vol", progress=RecordingProgress(cancel_after=5), **QUICK_SLI2VOL)


def test_cohort_pseudo_labels_are_the_most_confident_slices_of_the_whole_pool(moving_stack, star_model):
    from spatial_al.selection import RankingVolume
    from spatial_al.selection.pseudo_labels import select_cohort_pseudo_labels

    flipped = moving_stack.image[:, :, ::-1].copy(), moving_stack.label_layers[:, :, :, ::-1].copy()
    volumes = [
        RankingVolume(moving_stack.image, moving_stack.label_layers, moving_stack.segments, ANNOTATED, name="a"),
        RankingVolume(flipped[0], flipped[1], moving_stack.segments, [0, 9, 18], name="b"),
    ]
    every = [star_pseudo_labels(star_model, v.image, v.label_layers, v.annotated, min_confidence=0.0) for v in volumes]
    pool = sorted(
        (
            (-c, index, s)
            for index, selection in enumerate(every)
            for s, c in zip(selection.slices, selection.confidence, strict=True)
        ),
    )[:5]
    chosen = select_cohort_pseudo_labels(volumes, "star_entropy", star_model, count=5, device="cpu")
    assert list(zip(chosen.volumes.tolist(), chosen.slices.tolist(), strict=True)) == [(v, s) for _, v, s in pool]
    assert not set(chosen.slices[chosen.volumes == 0].tolist()) & set(ANNOTATED)
    result = learned(moving_stack, "star", star_model, device="cpu")
    for volume, index, mask in zip(chosen.volumes, chosen.slices, chosen.labels, strict=True):
        if volume == 0:  # the pseudo-label is the star method's propagation of that slice
            np.testing.assert_array_equal(mask, [result.labels[index] == value for value in (1, 2)])


# -- auto: per gap, the better of sdf and sli2vol on the scan's own hidden annotated slices --------------------------


def test_auto_scores_each_method_on_hidden_annotated_slices_as_a_direct_propagation_does(moving_stack):
    from spatial_al.propagation.auto import held_out_scores
    from spatial_al.propagation.base import PropagationTask

    labels = moving_stack.label_layers
    task = PropagationTask(
        labels, moving_stack.segments, np.array([0, 4, 8, 12, 16]), np.array([2.0, 1.0, 1.0]), moving_stack.image
    )
    scores = held_out_scores(task, {"sdf": {}, "sli2vol": {"steps": 20}})
    assert set(scores["sdf"]) == set(scores["sli2vol"]) == {4, 8, 12}  # 0 and 16 are outside what is kept when hidden
    for kept, hidden in (([0, 8, 16], [4, 12]), ([4, 12], [8])):
        for method, options in (("sdf", {}), ("sli2vol", QUICK_SLI2VOL)):
            filled = spatial_al.propagate(labels[0], kept, method, moving_stack.image, spacing=(2, 1, 1), **options)
            for k in hidden:
                assert scores[method][k] == pytest.approx(mean_label_dice(filled.labels[k], labels[0, k]))


def test_auto_picks_one_method_for_the_scan_or_per_gap_from_the_scores_at_its_ends_then_anywhere_then_by_width():
    from spatial_al.propagation.auto import choose_per_gap
    from spatial_al.propagation.base import PropagationTask

    layers = np.zeros((1, 40, 4, 4), np.uint8)
    task = PropagationTask(layers, (), np.array([0, 10, 20, 30, 39]), np.array([1.0, 1.0, 1.0]))
    scores = {"sdf": {10: 0.9, 20: 0.5, 30: 0.8}, "sli2vol": {10: 0.7, 20: 0.9, 30: 0.8}}
    # over every scored slice: sdf 2.2 / 3, sli2vol 2.4 / 3
    assert choose_per_gap(task, scores) == dict.fromkeys([(0, 10), (10, 20), (20, 30), (30, 39)], "sli2vol")
    choices = choose_per_gap(task, scores, choice="gap")
    # 0-10: only 10 scored (sdf); 10-20: 0.7 vs 0.8 (sli2vol); 20-30: 0.65 vs 0.85; 30-39: a tie at 30 goes to sdf
    assert choices == {(0, 10): "sdf", (10, 20): "sli2vol", (20, 30): "sli2vol", (30, 39): "sdf"}
    tied = {"sdf": {10: 0.9, 20: 0.5}, "sli2vol": {10: 0.5, 20: 0.9}}
    assert set(choose_per_gap(task, tied).values()) == {"sdf"}
    unscored = PropagationTask(layers, (), np.array([0, 5, 20]), np.array([1.0, 1.0, 1.0]))
    for choice in ("volume", "gap"):
        assert choose_per_gap(unscored, {"sdf": {}, "sli2vol": {}}, choice) == {(0, 5): "sdf", (5, 20): "sli2vol"}
    narrow = PropagationTask(layers, (), np.array([0, 7, 14, 30]), np.array([1.0, 1.0, 1.0]))  # 7 mm, 7 mm, 16 mm
    favouring_sli2vol = {"sdf": {7: 0.5, 14: 0.5}, "sli2vol": {7: 0.9, 14: 0.9}}
    assert choose_per_gap(narrow, favouring_sli2vol) == {(0, 7): "sli2vol", (7, 14): "sli2vol", (14, 30): "sli2vol"}
    chosen = choose_per_gap(narrow, favouring_sli2vol, sdf_gap_mm=7.5)
    assert chosen == {(0, 7): "sdf", (7, 14): "sdf", (14, 30): "sli2vol"}


def test_auto_runs_sdf_alone_and_untested_when_every_gap_is_below_sdf_gap_mm(moving_stack, monkeypatch):
    from spatial_al.propagation import auto

    def no_test(*arguments):
        raise AssertionError("the held-out test ran")

    monkeypatch.setattr(auto, "held_out_scores", no_test)
    labels, annotated = moving_stack.label_layers[0], [0, 3, 6, 9, 12]
    for spacing, threshold in (((2.5, 1, 1), 7.5), ((2.0, 1, 1), 0.0)):  # 7.5 mm gaps, or every gap, are judged
        with pytest.raises(AssertionError, match="held-out test ran"):
            spatial_al.propagate(labels, annotated, "auto", moving_stack.image, spacing, sdf_gap_mm=threshold)
    reports = RecordingProgress()
    narrow = spatial_al.propagate(
        labels, annotated, "auto", moving_stack.image, (2.0, 1, 1), progress=reports, sdf_gap_mm=7.5
    )  # 6 mm gaps
    sdf = spatial_al.propagate(labels, annotated, "sdf", moving_stack.image, spacing=(2.0, 1, 1))
    messages = [message for _, _, message in reports.reports]
    assert "auto chose 0-3: sdf, 3-6: sdf, 6-9: sdf, 9-12: sdf" in messages
    assert auto.reported_choices(messages) == {"sdf": 4}
    assert auto.reported_choices([auto.choice_report({(0, 4): "sli2vol", (4, 9): "sdf"}), "other"]) == {
        "sli2vol": 1,
        "sdf": 1,
    }
    np.testing.assert_array_equal(narrow.labels, sdf.labels)
    np.testing.assert_array_equal(narrow.confidence, sdf.confidence)


def test_auto_fills_each_gap_with_the_chosen_methods_result(moving_stack, monkeypatch):
    from spatial_al.propagation import auto

    labels, annotated = moving_stack.label_layers[0], [0, 6, 12, 18]
    monkeypatch.setattr(
        auto, "choose_per_gap", lambda task, scores, *rule: {(0, 6): "sli2vol", (6, 12): "sdf", (12, 18): "sdf"}
    )
    result = spatial_al.propagate(labels, annotated, "auto", moving_stack.image, sli2vol_options={"steps": 20})
    sdf = spatial_al.propagate(labels, annotated, "sdf", moving_stack.image)
    learned_result = spatial_al.propagate(labels, annotated, "sli2vol", moving_stack.image, **QUICK_SLI2VOL)
    np.testing.assert_array_equal(result.labels[1:6], learned_result.labels[1:6])
    np.testing.assert_array_equal(result.labels[7:18], sdf.labels[7:18])
    np.testing.assert_allclose(result.confidence[1:6], learned_result.confidence[1:6])
    np.testing.assert_array_equal(result.labels[annotated], labels[annotated])
    without_image = spatial_al.propagate(labels, annotated, "auto")
    np.testing.assert_array_equal(without_image.labels, sdf.labels)  # sli2vol needs the image: sdf alone
    with pytest.raises(ValueError, match="'sli2vol' has no option 'step'; its options are: steps"):
        spatial_al.propagate(labels, annotated, "auto", moving_stack.image, sli2vol_options={"step": 20})
    with pytest.raises(ValueError, match=r"auto's choice must be 'volume' .* or 'gap', not 'gaps'"):
        spatial_al.propagate(labels, annotated, "auto", moving_stack.image, choice="gaps")
