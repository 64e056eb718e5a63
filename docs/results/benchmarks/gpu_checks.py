"""The GPU checks of the robustness and speed issues, as one script: STAR training on CUDA in automatic precision on
the chest CT (every 3rd slice annotated, the defaults), sli2vol on a 200 x 256 x 256 volume annotated every 10th
slice, the ranking, training and propagation benchmarks on CUDA, and one paper-scale iteration of the `nath` protocol
at 96^3 (timed on 200 of its 2,000 steps and one volume's MC dropout, then scaled). Prints one JSON line per check
and writes them to $OUT/gpu_checks.json (the benchmarks also write their own JSON there).

Run from the repository root on a machine with a CUDA GPU and the project's dependencies:
    OUT=folder python docs/results/benchmarks/gpu_checks.py [star] [sli2vol] [ranking] [training] [propagation] [nath]
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

OUT = Path(os.environ.get("OUT", "."))
results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
print(json.dumps(results), flush=True)


def record(name, value):
    results[name] = value
    print(json.dumps({name: value}), flush=True)
    from spatial_al.files import write_text_atomic

    write_text_atomic(OUT / "gpu_checks.json", json.dumps(results, indent=1))


def star_training():
    from spatial_al.data import chest_ct_files
    from spatial_al.io import load_stack
    from spatial_al.learning import predict_segmentation, train_on_stack
    from spatial_al.metrics import dice

    stack = load_stack(*chest_ct_files())
    annotated = np.arange(0, stack.n_slices, 3)
    other = np.setdiff1d(np.arange(stack.n_slices), annotated)
    started = time.perf_counter()
    outcome = train_on_stack(stack, annotated, preset="star", device="cuda")
    seconds = time.perf_counter() - started
    predicted = predict_segmentation(outcome.model, stack, device="cuda")
    found = {segment.name: segment for segment in predicted.segments}
    lungs = {}
    for segment in stack.segments:
        if segment.name.endswith("lung"):
            mask = predicted.label_layers[found[segment.name].layer] == found[segment.name].label_value
            lungs[segment.name] = round(float(dice(mask[other], stack.segment_mask(segment)[other])), 4)
    losses = [epoch["train_loss"] for epoch in outcome.history]
    record(
        "star_train_cuda",
        {
            "precision": str(outcome.trainer.amp_dtype),
            "seconds": round(seconds, 1),
            "steps": outcome.trainer.steps_taken,
            "all_losses_finite": all(loss is not None and np.isfinite(loss) for loss in losses),
            "first_last_loss": [losses[0], losses[-1]],
            "skipped_steps_at_end": outcome.trainer.non_finite_steps,
            "lung_dice_other_slices": lungs,
            "phase_seconds": {k: round(v, 2) for k, v in outcome.trainer.phase_seconds.items()},
        },
    )


def sli2vol_speed():
    import spatial_al
    from spatial_al.benchmarks.ranking import synthetic_volume

    small_image, small_labels = synthetic_volume(20, 64)
    spatial_al.propagate(small_labels, [2, 12], "sli2vol", image=small_image, device="cuda", steps=5)  # CUDA warm-up
    image, labels = synthetic_volume(200, 256)
    annotated = list(range(5, 200, 10))
    sparse = np.zeros_like(labels)
    sparse[annotated] = labels[annotated]
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = spatial_al.propagate(sparse, annotated, "sli2vol", image=image, device="cuda")
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    spatial_al.propagate(sparse, annotated[::2], "sli2vol", image=image, device="cuda")
    reused = time.perf_counter() - started
    evaluated = [k for k in range(annotated[0], annotated[-1]) if k not in annotated]
    found, truth = np.asarray(result.labels)[evaluated] == 1, labels[evaluated] == 1
    record(
        "sli2vol_200x256x256_every_10th_cuda",
        {
            "seconds": round(seconds, 2),
            "seconds_again_network_reused": round(reused, 2),
            "dice": round(float(2 * (found & truth).sum() / (found.sum() + truth.sum())), 4),
        },
    )


def cli(name, *arguments):
    from spatial_al.cli import main

    started = time.perf_counter()
    output = str(OUT / f"benchmark-{name}-cuda.json")
    status = main(["benchmark", name, *arguments, "--device", "cuda", "--quiet", "--output", output])
    record(f"benchmark_{name}_cuda", {"status": status, "seconds": round(time.perf_counter() - started, 1)})


def nath_iteration(steps=200, paper_steps=2000, pool=100, semi_supervised_volumes=5):
    """One `nath` round at the paper's scale on CUDA: the 3D U-Net (unet3d) on random 96^3 patches of 256 x 256 x 128
    volumes (batch 2, DiceCE, Adam 1e-4, automatic precision), the semi-supervised stage's steps, and 10 MC-dropout
    passes by sliding window over one volume; the round's time scaled from them (2,000 steps of each stage, a pool
    of ``pool`` unannotated volumes to rank)."""
    from spatial_al.models import SegmentationModel, preset_config
    from spatial_al.models.volume_inference import volume_uncertainty
    from spatial_al.training import Trainer, TrainingConfig, VolumeExamples
    from spatial_al.training.semi_supervised import SemiSupervisedExamples

    rng = np.random.default_rng(0)
    shape = (128, 256, 256)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]

    def volume():
        centre = np.array(shape) / 2 + rng.uniform(-20, 20, 3)
        organ = ((z - centre[0]) / 40) ** 2 + ((y - centre[1]) / 70) ** 2 + ((x - centre[2]) / 60) ** 2 <= 1
        image = (organ * 0.6 + rng.normal(0, 0.1, shape)).astype(np.float32)
        return image[None], organ[None].astype(np.uint8)

    labeled, noisy = VolumeExamples(), VolumeExamples()
    for index in range(4):
        labeled.append(*volume(), name=f"labeled {index}")
        noisy.append(*volume(), name=f"noisy {index}")
    config = TrainingConfig(
        learning_rate=1e-4, batch_size=2, max_epochs=1, iterations_per_epoch=steps, validation_fraction=0.0,
        patch_size=(96, 96, 96), augment=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = SegmentationModel(preset_config("unet3d", class_names=("organ",)))
    trainer = Trainer(model, config, torch.device("cuda"))
    torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train_round(labeled)
    torch.cuda.synchronize()
    supervised = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train_semi_supervised(SemiSupervisedExamples(labeled, noisy))
    torch.cuda.synchronize()
    semi_supervised = time.perf_counter() - started
    started = time.perf_counter()
    statistics = volume_uncertainty(
        model, labeled.images[0], (96, 96, 96), torch.device("cuda"), passes=10, batch_size=4
    )
    torch.cuda.synchronize()
    mc_dropout = time.perf_counter() - started
    scale = paper_steps / steps
    record(
        "nath_paper_iteration_cuda",
        {
            "volume": list(shape),
            "precision": str(trainer.amp_dtype),
            "supervised_steps_per_second": round(steps / supervised, 2),
            "semi_supervised_steps_per_second": round(steps / semi_supervised, 2),
            "mc_dropout_10_passes_one_volume_s": round(mc_dropout, 2),
            "mean_variance": statistics.mean_variance,
            "round_without_semi_supervised_s": round(supervised * scale + pool * mc_dropout, 1),
            "round_with_semi_supervised_s": round(
                (supervised + semi_supervised) * scale + pool * mc_dropout + semi_supervised_volumes * mc_dropout / 10,
                1,
            ),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        },
    )


CHECKS = {
    "star": star_training,
    "sli2vol": sli2vol_speed,
    "ranking": lambda: cli("ranking", "--slices", "300", "--size", "256"),
    "training": lambda: cli("training"),
    "propagation": lambda: cli("propagation", "--methods", "sdf,sli2vol,auto", "--no-frog", "--no-speed"),
    "nath": nath_iteration,
}

for check in sys.argv[1:] or list(CHECKS):
    try:
        CHECKS[check]()
    except Exception as error:  # one failing check must not cost the others
        traceback.print_exc()
        record(f"{check}_error", repr(error))
