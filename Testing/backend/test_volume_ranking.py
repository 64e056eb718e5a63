"""Volume-level ranking: which scans of a folder to annotate first."""

import csv

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

import spatial_al
from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.inference import SlicePredictor, pixel_entropy
from spatial_al.selection.volumes import volume_uncertainty
from spatial_al.training.data import normalize_intensities


def scans(count=3, seed=0):
    """CT-like volumes (8, 24, 24) in HU: air around a soft-tissue block holding a brighter one, sizes varying."""
    rng = np.random.default_rng(seed)
    volumes = []
    for index in range(count):
        volume = np.full((8, 24, 24), -1000.0, np.float32)
        volume[1:7, 4 : 16 + 2 * index, 4:20] = 40.0
        volume[2:6, 8:12, 8:12] = 150.0
        volumes.append(volume + rng.normal(0, 10, volume.shape).astype(np.float32))
    return volumes


def dropout_model():
    torch.manual_seed(0)
    return SegmentationModel(preset_config("unet-small", class_names=("organ",), features=TINY_UNET, dropout=0.3))


def test_volume_uncertainty_is_the_voxel_mean_of_mc_dropout_statistics():
    volume, model = scans(1)[0], dropout_model()
    scores = volume_uncertainty(volume, model, axis=0, samples=4, seed=7, device="cpu")
    statistics = SlicePredictor(model, torch.device("cpu")).mc_dropout(
        normalize_intensities(volume)[:, None], samples=4, seed=7
    )
    assert scores["variance"] == pytest.approx(float(statistics.variance.mean()), rel=1e-5)
    assert scores["entropy"] == pytest.approx(float(pixel_entropy(statistics.mean, "softmax").mean()), rel=1e-5)
    assert scores["variance"] > 0


def test_volumes_rank_by_the_models_uncertainty_random_priority_or_a_proxy_model():
    volumes, model = scans(), dropout_model()
    names = ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    ranking = spatial_al.rank_volumes(volumes, "variance", 2, model, names=names, samples=3, device="cpu")
    direct = [volume_uncertainty(v, model, samples=3, device="cpu")["variance"] for v in volumes]
    np.testing.assert_allclose(ranking.scores, direct, rtol=1e-6)
    assert ranking.top(2) == [names[i] for i in np.argsort(direct)[::-1][:2]]
    first = spatial_al.rank_volumes(volumes, "random", 1, seed=4).order
    np.testing.assert_array_equal(first, spatial_al.rank_volumes(volumes, "random", 1, seed=4).order)
    proxy = spatial_al.rank_volumes(
        volumes, "proxy_entropy", 1, samples=2, training_slices=4, max_epochs=1, window=(0, 100), device="cpu"
    )
    assert proxy.scores.shape == (3,) and np.all(proxy.scores > 0) and sorted(proxy.order) == [0, 1, 2]


def test_a_3d_proxy_model_ranks_volumes_by_sliding_window_mc_dropout():
    volumes = [np.pad(volume, ((4, 4), (4, 4), (4, 4)), constant_values=-1000.0) for volume in scans()]  # 16 x 32 x 32
    ranking = spatial_al.rank_volumes(
        volumes, "proxy_variance", 2, samples=2, max_epochs=1, window=(0, 100), device="cpu", patch_size=(16, 32, 32)
    )
    assert ranking.scores.shape == (3,) and np.all(ranking.scores > 0) and sorted(ranking.order) == [0, 1, 2]
    torch.manual_seed(0)
    model = SegmentationModel(preset_config("unet3d-small", class_names=("organ",), features=(4, 8, 8, 16, 16, 4)))
    scores = volume_uncertainty(volumes[0], model, samples=3, seed=1, device="cpu", patch_size=(16, 32, 32))
    from spatial_al.models.volume_inference import volume_uncertainty as sliding

    direct = sliding(
        model, normalize_intensities(volumes[0])[None], (16, 32, 32), torch.device("cpu"), passes=3, seed=1
    )
    assert scores == {"variance": pytest.approx(direct.mean_variance), "entropy": pytest.approx(direct.mean_entropy)}


@pytest.mark.parametrize(
    ("strategy", "k", "message"),
    [
        ("variances", 1, "choose one of random, variance, entropy, proxy_variance, proxy_entropy"),
        ("random", 4, "between 1 and the number of volumes \\(3\\)"),
        ("entropy", 1, "pass model=, or use proxy_entropy"),
    ],
)
def test_volume_ranking_explains_bad_requests(strategy, k, message):
    with pytest.raises(ValueError, match=message):
        spatial_al.rank_volumes(scans(), strategy, k)


def test_rank_volumes_command_ranks_a_folder_of_scans(tmp_path, capsys):
    import SimpleITK as sitk

    from spatial_al.cli import main

    for index, volume in enumerate(scans()):
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / f"scan{index}.nii.gz"))
    (tmp_path / "notes.txt").write_text("not a scan")
    output = tmp_path / "ranking.csv"
    assert main(["rank-volumes", str(tmp_path), "--strategy", "random", "-k", "2", "--output", str(output)]) == 0
    rows = list(csv.DictReader(output.open()))
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert sorted(row["volume"] for row in rows) == ["scan0.nii.gz", "scan1.nii.gz", "scan2.nii.gz"]
    assert "Annotate first (random): " in capsys.readouterr().out
    assert (tmp_path / "ranking.csv.run.json").is_file()
