"""The GPU checks of the robustness and speed issues, as one script: STAR training on CUDA in automatic precision on
the chest CT (every 3rd slice annotated, the defaults), sli2vol on a 200 x 256 x 256 volume annotated every 10th
slice, and the ranking, training and propagation benchmarks on CUDA. Prints one JSON line per check and writes
them to $OUT/gpu_checks.json (the benchmarks also write their own JSON there).

Run from the repository root on a machine with a CUDA GPU and the project's dependencies:
    OUT=folder python docs/results/benchmarks/gpu_checks.py [star] [sli2vol] [ranking] [training] [propagation]
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


CHECKS = {
    "star": star_training,
    "sli2vol": sli2vol_speed,
    "ranking": lambda: cli("ranking", "--slices", "300", "--size", "256"),
    "training": lambda: cli("training"),
    "propagation": lambda: cli("propagation", "--methods", "sdf,sli2vol,auto", "--no-frog", "--no-speed"),
}

for check in sys.argv[1:] or list(CHECKS):
    try:
        CHECKS[check]()
    except Exception as error:  # one failing check must not cost the others
        traceback.print_exc()
        record(f"{check}_error", repr(error))
