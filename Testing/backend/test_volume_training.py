"""The 3D engine on tiny volumes (CPU): the 2D trainer trains a 3D U-Net on patches, from sparse slices with the rest
masked out of the loss, resumes bit-identically; patches are read from memory-mapped volumes without copying them
and equal the crop of the padded volume; sliding-window prediction and MC-dropout statistics against direct
computations; resampling and CT windowing round-trip to the input grid; bad input named."""

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
import torch

from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.volume_inference import predict_volume, volume_labels, volume_uncertainty, window_count
from spatial_al.preprocessing import VolumePreprocessing
from spatial_al.progress import OperationCancelled, RecordingProgress
from spatial_al.training import TrainingConfig, VolumeExamples, read_checkpoint, resume_trainer, save_checkpoint
from spatial_al.training.trainer import Trainer
from spatial_al.training.volumes import PatchDataset, SliceStack

CPU = torch.device("cpu")
TINY_3D = (4, 8, 8, 16, 16, 4)
QUICK_3D = TrainingConfig(
    patch_size=(16, 32, 32), batch_size=2, max_epochs=6, iterations_per_epoch=10, learning_rate=1e-2,
    validation_fraction=0.0, augment=False, precision="fp32",
)  # fmt: skip


def ball_volume(seed=0, shape=(24, 32, 32)):
    """(image (1, D, H, W), target (1, D, H, W)): a bright ball on a noisy background."""
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    ball = ((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) <= 7**2
    image = (ball * 2.0 + rng.normal(0, 0.3, shape)).astype(np.float32)
    return image[None], ball[None].astype(np.uint8)


def tiny_3d_model(seed=0):
    torch.manual_seed(seed)
    return SegmentationModel(preset_config("unet3d-small", class_names=("ball",), features=TINY_3D))


def dice(labels, truth):
    return 2 * np.logical_and(labels, truth).sum() / (labels.sum() + truth.sum())


def examples_of(*volumes, annotated=None):
    examples = VolumeExamples()
    for index, (image, target) in enumerate(volumes):
        examples.append(image, target, annotated, name=f"ball-{index}")
    return examples


def test_the_2d_trainer_trains_a_3d_unet_on_patches_and_it_segments_the_ball():
    image, target = ball_volume()
    model = tiny_3d_model()
    trainer = Trainer(model, QUICK_3D, CPU)
    trainer.fit(examples_of((image, target)))
    assert trainer.state.history[-1]["train_loss"] < trainer.state.history[0]["train_loss"]
    model.eval()
    labels = volume_labels(predict_volume(model, image, (16, 32, 32), CPU), "softmax")
    assert labels.shape == target.shape[1:] and dice(labels == 1, target[0] == 1) > 0.9


def test_unannotated_slices_are_masked_out_of_the_loss():
    image, target = ball_volume()
    annotated = [4, 12, 20]
    corrupted = target.copy()
    corrupted[:, [k for k in range(24) if k not in annotated]] = (
        1 - corrupted[:, [k for k in range(24) if k not in annotated]]
    )
    trained = []
    for labels in (target, corrupted):
        model = tiny_3d_model()
        Trainer(model, replace(QUICK_3D, max_epochs=2), CPU).fit(examples_of((image, labels), annotated=annotated))
        trained.append({name: value.clone() for name, value in model.state_dict().items()})
    assert all(torch.equal(trained[0][name], trained[1][name]) for name in trained[0])  # labels off them never count


def test_patches_centre_on_annotated_foreground_at_the_configured_odds_and_small_volumes_are_padded():
    image, target = ball_volume(shape=(12, 40, 40))
    dataset = PatchDataset(examples_of((image, target), annotated=[6]), (16, 16, 16), positive=1, negative=0)
    assert dataset.padded == ["ball-0"]  # 12 slices < 16: padded, and said so
    for seed in range(5):
        dataset.reseed(seed)
        patch = dataset[0]
        assert patch["image"].shape == (1, 16, 16, 16) and patch["mask"].shape == (1, 16, 16, 16)
        assert (patch["target"] * patch["mask"]).sum() > 0  # foreground of the annotated slice in every patch
        assert set(patch["mask"].unique().tolist()) <= {0.0, 1.0}
        assert patch["mask"].sum(dim=(0, 2, 3)).count_nonzero() == 1  # one annotated slice, the padding unmasked
    with pytest.raises(ValueError, match="no annotated slice"):
        examples_of((image, target), annotated=[])


def memory_mapped(folder, name, array):
    np.save(folder / f"{name}.npy", array)
    return np.load(folder / f"{name}.npy", mmap_mode="r")


def test_patches_of_memory_mapped_volumes_are_the_padded_volume_cropped_and_the_volume_is_never_copied(tmp_path):
    shape = (10, 320, 320)  # fewer slices than the patch: padded along D, 3 slices before and 3 after
    voxels = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(1, *shape)  # each voxel's value names it
    image = memory_mapped(tmp_path, "image", voxels)
    target = memory_mapped(tmp_path, "target", (np.random.default_rng(0).random((2, *shape)) > 0.99).astype(np.uint8))
    annotated = [2, 3, 7]
    patch_size = (16, 32, 32)
    PatchDataset(examples_of(ball_volume()), patch_size)[0]  # imports MONAI's transforms before memory is traced
    tracemalloc.start()
    dataset = PatchDataset(examples_of((image, target), annotated=annotated), patch_size, positive=1, negative=1)
    patches = []
    for seed in range(6):
        dataset.reseed(seed)
        patches.append({key: value.numpy() for key, value in dataset[0].items()})
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # what the dataset and its patches hold: the patch-centre samples (0.8 MB) and six patches, no copy of the 4 MB
    # volume (a study holding every training volume in memory would need tens of GB for LiTS)
    assert held < image.nbytes / 2
    mask = np.zeros((1, *shape), np.uint8)
    mask[:, annotated] = 1
    widths = [(0, 0), (3, 3), (0, 0), (0, 0)]
    padded = {key: np.pad(np.asarray(a), widths) for key, a in (("image", image), ("target", target), ("mask", mask))}
    for patch in patches:
        k, i, j = np.argwhere(patch["image"][0] > 0)[0]  # a voxel of the volume in the patch, and where it lies
        d, h, w = np.unravel_index(int(patch["image"][0, k, i, j]) - 1, shape)
        window = (slice(None), *(slice(c, c + n) for c, n in zip((d + 3 - k, h - i, w - j), patch_size, strict=True)))
        for key in ("image", "target", "mask"):
            assert np.array_equal(patch[key], padded[key][window]), key


def test_a_slice_stack_reads_every_window_as_the_dense_target_it_stands_for():
    rng = np.random.default_rng(1)
    dense = np.zeros((2, 12, 9, 10), np.uint8)
    held = {0: None, 5: None, 11: None}
    for index in held:
        held[index] = dense[:, index] = (rng.random((2, 9, 10)) > 0.5).astype(np.uint8)
    stack = SliceStack(dense.shape, held)
    assert np.array_equal(np.asarray(stack), dense)
    for window in [
        (slice(None), slice(3, 12), slice(2, 8), slice(0, 10)),
        (slice(1, 2), slice(0, 5), slice(None), slice(4, 9)),
    ]:
        assert np.array_equal(stack[window], dense[window])
    with pytest.raises(ValueError, match="Slice 12 of a target"):
        SliceStack(dense.shape, {12: held[0]})


def test_a_resumed_3d_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    image, target = ball_volume()
    config = replace(QUICK_3D, max_epochs=3, iterations_per_epoch=3, augment=True, checkpoint_every=1)
    uninterrupted = tiny_3d_model()
    Trainer(uninterrupted, config, CPU).fit(examples_of((image, target)))

    path = tmp_path / "model.pt"
    model = tiny_3d_model()
    progress = RecordingProgress(cancel_after=5)
    trainer = Trainer(model, config, CPU, progress, on_checkpoint=lambda t: save_checkpoint(path, t.model, t))
    with pytest.raises(OperationCancelled):
        trainer.fit(examples_of((image, target)))
    checkpoint = read_checkpoint(path)
    assert checkpoint.model_config.spatial_dims == 3 and checkpoint.trainer_state.epoch == 1
    resumed_model = SegmentationModel(checkpoint.model_config)
    resumed_model.load_state_dict(checkpoint.model_state)
    resume_trainer(checkpoint, resumed_model, CPU).fit(examples_of((image, target)))
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


def test_the_sliding_window_equals_one_forward_pass_where_one_window_covers_the_volume():
    image, _ = ball_volume(shape=(16, 32, 32))
    model = tiny_3d_model().eval()
    progress = RecordingProgress()
    whole = predict_volume(model, image, (16, 32, 32), CPU, progress=progress)
    with torch.no_grad():
        direct = model(torch.as_tensor(image)[None]).softmax(1)[0]
    assert torch.allclose(whole, direct, atol=1e-5)
    longer, _ = ball_volume(shape=(16, 64, 32))
    tiled = predict_volume(model, longer, (16, 32, 32), CPU, overlap=0.5, progress=progress)
    assert tiled.shape == (2, 16, 64, 32) and torch.allclose(tiled.sum(0), torch.ones(16, 64, 32), atol=1e-5)
    assert window_count((16, 64, 32), (16, 32, 32), 0.5) == 3 and progress.reports[-1][:2] == (3, 3)


def test_mc_dropout_statistics_match_a_direct_computation_over_the_passes():
    image, _ = ball_volume(shape=(16, 32, 32))
    model = tiny_3d_model()
    result = volume_uncertainty(model, image, (16, 32, 32), CPU, passes=4, seed=3)
    assert not model.training  # dropout off again afterwards
    samples = []
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model.eval()
        for module in model.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.train()
        with torch.no_grad():
            for _ in range(4):
                samples.append(model(torch.as_tensor(image)[None]).softmax(1)[0])
    stacked = torch.stack(samples)
    assert not torch.allclose(stacked[0], stacked[1])  # dropout is on
    assert torch.allclose(result.mean, stacked.mean(0), atol=1e-5)
    assert torch.allclose(result.variance, stacked.var(0, unbiased=True).mean(0), atol=1e-6)
    mean = stacked.mean(0)
    assert torch.allclose(result.entropy, -(mean * mean.clamp(min=1e-12).log()).sum(0), atol=1e-5)
    assert result.mean_variance == pytest.approx(float(result.variance.mean()))
    with pytest.raises(ValueError, match="at least 2 passes"):
        volume_uncertainty(model, image, (16, 32, 32), CPU, passes=1)


def test_resampling_to_a_target_spacing_round_trips_the_grid_and_windows_ct():
    rng = np.random.default_rng(0)
    labels = (rng.random((10, 20, 24)) < 0.3).astype(np.uint8) * 2
    spacing = (3.0, 0.8, 0.8)
    finer = VolumePreprocessing(target_spacing=(1.5, 0.4, 0.4))
    assert finer.grid_shape(labels.shape, spacing) == (20, 40, 48)
    resampled = finer.labels(labels, spacing)
    assert resampled.shape == (20, 40, 48) and resampled.dtype == np.uint8
    one_hot = np.stack([resampled == 0, resampled == 2]).astype(np.float32)
    back = finer.restore(one_hot, labels.shape).argmax(0).numpy() * 2
    np.testing.assert_array_equal(back, labels)  # every voxel lands where it came from
    ct = VolumePreprocessing(window=(-100.0, 200.0))
    image = ct.image(np.array([[[-500.0, -100.0, 50.0, 200.0, 900.0]]]), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(image[0, 0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"low < high, got \(200.0, -100.0\); swap the bounds"):
        VolumePreprocessing(window=(200.0, -100.0))


def test_3d_training_needs_a_3d_patch_and_a_3d_model():
    image, target = ball_volume()
    for patch in ((20, 32, 32), (16, 16, 16)):  # not a multiple of 16; a bottleneck of one voxel
        with pytest.raises(ValueError, match="set patch_size to \\(D, H, W\\), each a multiple of 16"):
            Trainer(tiny_3d_model(), replace(QUICK_3D, patch_size=patch), CPU).fit(examples_of((image, target)))
    two_d = SegmentationModel(preset_config("unet-small", class_names=("ball",)))
    with pytest.raises(ValueError, match="Volumes train a 3D model"):
        Trainer(two_d, QUICK_3D, CPU).fit(examples_of((image, target)))
    short = VolumeExamples()
    short.append(*ball_volume(shape=(12, 32, 32)), name="short scan")
    with pytest.warns(
        UserWarning, match="short scan is smaller than the patch \\(16, 32, 32\\) along an axis and padded"
    ):
        Trainer(tiny_3d_model(), replace(QUICK_3D, max_epochs=1, iterations_per_epoch=1), CPU).fit(short)
    with pytest.raises(ValueError, match="A 3D model is a plain unet"):
        preset_config("sbc-small", spatial_dims=3)


def test_train_and_predict_on_a_scan_with_a_3d_preset_learn_from_every_third_slice(moving_stack):
    from spatial_al.learning import predict_segmentation, train_on_stack

    config = replace(QUICK_3D, patch_size=None, max_epochs=8, iterations_per_epoch=10)  # the whole (19, 48, 48)
    preset = preset_config("unet3d-small", features=TINY_3D)
    outcome = train_on_stack(moving_stack, range(0, 19, 3), preset=preset, training=config, device="cpu")
    assert outcome.model.config.spatial_dims == 3 and outcome.validation_slices == []
    predicted = predict_segmentation(outcome.model, moving_stack, device="cpu").label_layers[0]
    truth = moving_stack.label_layers[0]
    unannotated = [k for k in range(19) if k % 3]
    for label in (1, 2):
        assert dice(predicted[unannotated] == label, truth[unannotated] == label) > 0.8
    with pytest.raises(ValueError, match="pseudo-labels train 2D models"):
        train_on_stack(moving_stack, [0, 9], preset=preset, training=config, pseudo_labels=object(), device="cpu")
