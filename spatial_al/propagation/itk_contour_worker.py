"""Worker process for ``contour`` propagation: runs ITK's MorphologicalContourInterpolator on slabs.

Run as ``python itk_contour_worker.py SLABS.npz RESULTS.npz``: reads arrays ``slab_0``, ``slab_1``, ... (slice-first
(S, H, W), end slices labelled) and ``options`` (use_distance_transform, use_ball_structuring_element), prints the
index of each slab when done (one line each, for progress), and writes ``result_0``, ``result_1``, ... .

It imports only numpy and ITK, so it runs by file path from any interpreter that has them, without this package
on ``sys.path`` and without re-importing the caller's script.
"""

import os
import sys

import numpy as np


def interpolate_slab(slab, use_distance_transform, use_ball_structuring_element):
    """Interpolated label slab, same shape as ``slab`` (S, H, W)."""
    import itk

    interpolator = itk.MorphologicalContourInterpolator.New(itk.image_from_array(np.ascontiguousarray(slab)))
    interpolator.SetAxis(2)  # ITK index order: axis 2 is the array's first (slice) axis
    interpolator.SetUseDistanceTransform(bool(use_distance_transform))
    interpolator.SetUseBallStructuringElement(bool(use_ball_structuring_element))
    interpolator.Update()
    return np.asarray(itk.array_from_image(interpolator.GetOutput()))


def main(arguments):
    source, destination = arguments
    with np.load(source) as inputs:
        use_distance_transform, use_ball = inputs["options"].tolist()
        count = sum(1 for name in inputs.files if name.startswith("slab_"))
        results = {}
        for index in range(count):
            results[f"result_{index}"] = interpolate_slab(inputs[f"slab_{index}"], use_distance_transform, use_ball)
            print(index, flush=True)
    np.savez(destination, **results)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    # Skip the interpreter's teardown: ITK 5.4's static destructors corrupt the heap at exit now and then
    # ("malloc_consolidate(): unaligned fastbin chunk detected", about 1 run in 5 here) after the results are saved.
    os._exit(0)
