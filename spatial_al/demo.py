"""The built-in demo: a short annotation session on a real chest CT, written as files a person can open.

Steps: load the chest CT and its Slicer segmentation (shipped in ``slicerio``); pick slices with a cold-start
strategy; take the ground truth of those slices as the radiologist's annotation; propagate it to every other slice;
write the segmentation, the queried slices, an overview montage, a Slicer scene and a report with Dice per segment
on the slices nobody annotated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .annotation_record import SliceRecord
from .data import CHEST_CT_LICENSE, chest_ct_files
from .io import load_stack, write_segmentation
from .io.segmentation import Segmentation, segment_color
from .metrics import dice
from .overview import render_overview
from .progress import ProgressReporter
from .provenance import Timer, run_record, write_json
from .selection import RankingResult, rank
from .session import SegmentationPropagation, annotation_only, propagate_segmentation
from .volume import SliceStack


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo session (written resolved into report.json)."""

    strategy: str = "fixed_interval"
    strategy_options: dict[str, Any] = field(default_factory=lambda: {"interval": 3})
    method: str = "sdf"
    reference_method: str | None = "contour"  # Slicer's "Fill between slices", for comparison
    slice_axis: str = "axial"
    seed: int = 0


@dataclass
class DemoSession:
    """Everything the demo computed, for the files and for a scene writer."""

    stack: SliceStack
    ranking: RankingResult
    propagation: SegmentationPropagation
    colors: list[tuple[float, float, float]]
    output: Path
    files: dict[str, Path] = field(default_factory=dict)


# Writes a Slicer scene of the session into the given path; provided by the Slicer layer
# (SpatialALSlicerLib.SessionScene.writeSessionScene) so this package never imports Slicer.
SceneWriter = Callable[[DemoSession, Path], Path]


def budget_for_interval(n_slices: int, interval: int) -> int:
    """Slices a grid of step ``interval`` places in ``n_slices`` (what fixed_interval picks with that step)."""
    return math.ceil(n_slices / interval)


def per_segment_dice(stack: SliceStack, segmentation: Segmentation, evaluated: np.ndarray) -> dict[str, float | None]:
    """Dice of each segment on the ``evaluated`` slices, against the stack's labels (the ground truth)."""
    scores = {}
    for truth_segment, segment in zip(stack.segments, segmentation.segments, strict=True):
        truth = np.take(stack.segment_mask(truth_segment), evaluated, axis=stack.slice_axis)
        found = np.take(segmentation.label_layers[segment.layer] == segment.label_value, evaluated, stack.slice_axis)
        scores[segment.name] = round(dice(found, truth), 4) if truth.any() or found.any() else None
    return scores


def starting_segmentation(annotated: Sequence[int] = (0, 11, 22, 33), slice_axis: str = "axial") -> Segmentation:
    """The chest CT's segmentation as an annotation session starts (the browser app's demo): the ground truth on the
    ``annotated`` slices, each segment recording them as annotated, and nothing on the other slices."""
    stack = load_stack(*chest_ct_files(), slice_axis=slice_axis)
    record = SliceRecord(slice_axis=stack.slice_axis, annotated=tuple(sorted(annotated))).to_tags()
    truth = Segmentation(stack.label_layers, stack.segments, stack.geometry)
    start = annotation_only(truth, annotated, stack.slice_axis)
    segments = tuple(replace(segment, tags={**segment.tags, **record}) for segment in start.segments)
    return Segmentation(start.label_layers, segments, start.geometry)


def run_demo(
    output: str | Path = "demo-output",
    config: DemoConfig | None = None,
    scene_writer: SceneWriter | None = None,
    progress: ProgressReporter | None = None,
) -> dict[str, Any]:
    """Run the demo session and write its files into ``output``; returns the report (also in report.json).

    Args:
        output: folder for segmentation.seg.nrrd, queried_slices.csv, overview.png, scene.mrb, report.json.
        config: session settings.
        scene_writer: writes scene.mrb; None skips the scene (the report says so).
        progress: receives progress of the propagations and can cancel them.
    """
    config = config or DemoConfig()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    image_path, segmentation_path = chest_ct_files()
    with timer("load"):
        stack = load_stack(image_path, segmentation_path, slice_axis=config.slice_axis)
    axis = stack.slice_axis
    options = dict(config.strategy_options)
    budget = budget_for_interval(stack.n_slices, options.get("interval", 10))
    with timer("rank"):
        ranking = rank(stack.image, config.strategy, budget, axis=axis, seed=config.seed, **options)
    annotated = stack.mark_annotated(ranking.slices)
    # The radiologist's annotation: the ground truth on the queried slices, nothing elsewhere.
    annotation = annotation_only(Segmentation(stack.label_layers, stack.segments, stack.geometry), annotated, axis)
    with timer("propagate"):
        propagation = propagate_segmentation(
            annotation, annotated, config.method, stack.image, axis=axis, progress=progress
        )
    stack.mark_pseudo_labeled(propagation.propagated, propagation.confidence[propagation.propagated])
    evaluated = np.setdiff1d(np.arange(stack.n_slices), annotated)
    dice_by_method = {config.method: per_segment_dice(stack, propagation.segmentation, evaluated)}
    if config.reference_method:
        with timer(f"propagate_{config.reference_method}"):
            reference = propagate_segmentation(
                annotation, annotated, config.reference_method, stack.image, axis=axis, progress=progress
            )
        dice_by_method[config.reference_method] = per_segment_dice(stack, reference.segmentation, evaluated)

    colors = [segment_color(stack.segments, i) for i in range(len(stack.segments))]
    session = DemoSession(stack, ranking, propagation, colors, output)
    with timer("write_files"):
        session.files["segmentation"] = write_segmentation(output / "segmentation.seg.nrrd", propagation.segmentation)
        session.files["queried_slices"] = ranking.write_csv(output / "queried_slices.csv", with_strategy=True)
        session.files["overview"] = render_overview(
            output / "overview.png",
            stack.image,
            propagation.segmentation.label_layers,
            propagation.segmentation.segments,
            colors,
            stack.geometry,
            axis,
            annotated=annotated,
            propagated=propagation.propagated,
            confidence=propagation.confidence,
            queried=ranking.slices,
            title=f"Chest CT: {annotated.size} of {stack.n_slices} slices annotated ({config.strategy}), "
            f"the rest propagated ({config.method})",
        )
    scene_note = "not written: no scene writer (install slicer-core)"
    if scene_writer is not None:
        with timer("write_scene"):
            session.files["scene"] = scene_writer(session, output / "scene.mrb")
        scene_note = "written"

    results = {
        "data": {"image": str(image_path), "segmentation": str(segmentation_path), "license": CHEST_CT_LICENSE},
        "slice_axis": axis,
        "n_slices": stack.n_slices,
        "queried_slices": ranking.slices,
        "annotated_slices": annotated,
        "propagated_slices": propagation.propagated,
        "unreached_slices": np.setdiff1d(evaluated, propagation.propagated),
        "slice_confidence": [None if np.isnan(c) else round(float(c), 4) for c in propagation.confidence],
        "dice_on_non_annotated_slices": dice_by_method,
        "dice_note": "Dice per segment over all non-annotated slices, against the slicerio ground truth; "
        "null where the segment is absent from both.",
        "scene": scene_note,
        "files": {name: path.name for name, path in session.files.items()},
    }
    configuration = {**asdict(config), "budget": budget, "output": str(output)}
    report = run_record("spatial-al demo", configuration, results, timer)
    write_json(output / "report.json", report)
    return report
