"""``spatial-al``: the command line, a thin layer over the backend functions.

Slice indices and ``--axis`` refer to the volume array as read through SimpleITK, in KJI order: axis 0 runs along
the third image index (K), which is the axial direction for most CT and MRI. ``--axis axial|coronal|sagittal`` picks
the array axis closest to that direction from the file's geometry (the default is ``axial``).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .annotation_record import recorded_annotated_slices, recorded_slices
from .io import (
    DicomSeries,
    file_suffix,
    image_source,
    load_stack,
    segmentation_on_image,
    write_segmentation,
)
from .io.dicomweb import is_dicomweb
from .io.segmentation import SEGMENTATION_SUFFIXES, Segmentation
from .progress import OperationCancelled, TqdmProgress
from .provenance import Timer, run_record, write_json
from .threads import choose_threads, use_threads, wait_passively
from .volume import GeometryMismatchError, parse_slice_list

AXIS_CHOICES = ["0", "1", "2", "axial", "coronal", "sagittal"]


class CommandLineError(ValueError):
    """A problem with what was asked on the command line."""


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["interval=10", "tip_fraction=0.4"]`` -> ``{"interval": 10, "tip_fraction": 0.4}``."""
    options = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise CommandLineError(f"--option {pair!r}: write it as KEY=VALUE, e.g. --option interval=10.")
        try:
            options[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key.strip()] = value
    return options


def strategy_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["mc_dropout.layers=last"]`` -> ``{"mc_dropout": {"layers": "last"}}``."""
    options: dict[str, dict[str, Any]] = {}
    for qualified, value in parse_options(pairs).items():
        strategy, separator, key = qualified.partition(".")
        if not separator or not strategy or not key:
            raise CommandLineError(
                f"--option {qualified}={value!r}: name the strategy, as STRATEGY.KEY=VALUE "
                "(e.g. --option mc_dropout.layers=last)."
            )
        options.setdefault(strategy, {})[key] = value
    return options


def run_record_path(output: Path) -> Path:
    """``case1.seg.nrrd`` -> ``case1.seg.nrrd.run.json``: the record of the run that wrote ``output``, named after
    the whole file name so outputs that share a stem (``case1.csv``, ``case1.seg.nrrd``) keep their own records."""
    return output.with_name(output.name + ".run.json")


def writable_output(path: str | Path, folder: bool = False) -> Path:
    """``path`` checked before any work: a file (or with ``folder`` a folder) that can be written there.

    Raises:
        CommandLineError: the path is a folder where a file is asked (or the reverse), or its folder cannot be
            created or written; the message says which and what to do.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        wanted = "a folder" if folder else "a file name"
        raise CommandLineError(f"--output {str(path)!r} is {'a file' if folder else 'a folder'}; give {wanted}.")
    parent = path if folder else path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise CommandLineError(f"--output {str(path)!r} cannot be written: {str(existing)!r} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandLineError(f"--output {str(path)!r} cannot be written: the folder {str(existing)!r} is read-only.")
    return path


def volume_shape(text: str) -> tuple[int, int, int]:
    """argparse type: slices x rows x columns, as ``300x512x512``."""
    parts = text.lower().split("x")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a volume shape; write slices x rows x columns, as 300x512x512"
        )
    return shape


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def refuse_overwriting_inputs(output: Path, inputs: Sequence[str | Path | None]) -> None:
    for path in inputs:
        if path is not None and Path(path).exists() and output.resolve() == Path(path).resolve():
            raise CommandLineError(f"--output {str(output)!r} is an input file; choose another path so it is kept.")


def require_segmentation_suffix(output: Path, source: Path | DicomSeries) -> None:
    """Refuse, before any work, an output a segmentation cannot be written to (a DICOM-SEG needs a DICOM image)."""
    suffix = file_suffix(output)
    if suffix == ".dcm" and not isinstance(source, DicomSeries):
        raise CommandLineError(
            f"--output {str(output)!r}: a DICOM-SEG references the DICOM series it segments, and the image "
            f"{str(source)!r} is not one. Give the image as its DICOM folder, or write .seg.nrrd."
        )
    if suffix not in (*SEGMENTATION_SUFFIXES, ".dcm"):
        raise CommandLineError(f"--output {str(output)!r}: use {', '.join(SEGMENTATION_SUFFIXES)} or .dcm (DICOM-SEG).")


def dicom_source(source: Path | DicomSeries) -> DicomSeries | None:
    return source if isinstance(source, DicomSeries) else None


def source_of_image(args: argparse.Namespace) -> Path | DicomSeries:
    """The image argument resolved: a file, or a DICOM series (from a folder or a dicomweb: server)."""
    return image_source(args.image, args.series, args.study, qido_filters(args))


def qido_filters(args: argparse.Namespace) -> dict[str, str]:
    """``--qido KEY=VALUE`` arguments as QIDO-RS search filters."""
    filters = {}
    for pair in args.qido:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise CommandLineError(f"--qido {pair!r}: write it as KEYWORD=VALUE, e.g. --qido Modality=CT.")
        filters[key.strip()] = value.strip()
    return filters


def require_storable(args: argparse.Namespace, output: Path) -> None:
    """--store sends a DICOM-SEG back to the dicomweb: server the image came from; refuse anything else up front."""
    if args.store and not (is_dicomweb(args.image) and file_suffix(output) == ".dcm"):
        raise CommandLineError(
            "--store sends the DICOM-SEG back to the DICOMweb server the image came from: give the image as "
            "dicomweb:URL and --output NAME.dcm."
        )


def store_output(args: argparse.Namespace, output: Path) -> str | None:
    """STOW-RS the written output when --store asks; returns its SOPInstanceUID."""
    if not args.store:
        return None
    from .io.dicomweb import DicomWebServer

    uid = DicomWebServer.from_argument(args.image).store(output)
    print(f"Stored {output.name} on {args.image[len('dicomweb:') :]} (SOPInstanceUID {uid})")
    return uid


def resolve_annotated(args: argparse.Namespace, segmentation: Segmentation | None, axis: int) -> list[int]:
    if args.annotated is not None:
        try:
            return parse_slice_list(args.annotated)
        except ValueError as error:
            raise CommandLineError(f"--annotated: {error}") from None
    recorded = None
    if segmentation is not None:
        named_tags = {segment.name: segment.tags for segment in segmentation.segments}
        recorded = recorded_annotated_slices(named_tags, axis, segmentation.label_layers.shape[1 + axis])
    if recorded is not None:
        print(f"Annotated slices recorded in the segmentation: {recorded}", file=sys.stderr)
        return recorded
    return []


def load_model_argument(args: argparse.Namespace):
    """(model, device) of ``--model`` and ``--device``, or (None, None) without ``--model``."""
    if not args.model:
        return None, None
    from .device import resolve_device
    from .training import load_model

    device = resolve_device(args.device)
    model, _ = load_model(args.model, device)
    return model, device


def command_rank_volumes(args: argparse.Namespace) -> None:
    from .io import read_volume, scans_in
    from .selection.volumes import rank_volumes
    from .volume import resolve_slice_axis

    output = writable_output(args.output)
    scans = scans_in(args.folder, qido_filters(args))
    refuse_overwriting_inputs(output, [*(source for _, source in scans if isinstance(source, Path)), args.model])
    timer = Timer()
    with timer("load"):
        volumes, axes = [], set()
        for _, source in scans:
            image, geometry = read_volume(source, channel=args.channel)
            volumes.append(image)
            axes.add(resolve_slice_axis(args.axis, geometry))
        model, device = load_model_argument(args)
    if len(axes) > 1:
        raise ValueError(
            f"The volumes' {args.axis} planes lie along different array axes {sorted(axes)}; pass --axis 0, 1 or 2."
        )
    options = parse_options(args.option)
    with timer("rank"), TqdmProgress("ranking volumes", disable=args.quiet) as bar:
        ranking = rank_volumes(
            volumes,
            args.strategy,
            args.k,
            model,
            names=[name for name, _ in scans],
            axis=axes.pop(),
            seed=args.seed,
            device=device or args.device,
            batch_size=args.batch_size,
            patch_size=tuple(args.patch_size) if args.patch_size else None,
            progress=bar,
            **options,
        )
    ranking.write_csv(output)
    configuration = {**vars(args), "scans": [name for name, _ in scans], "options": options}
    configuration.pop("handler")
    results = {"top": ranking.top(args.k), "scores": dict(zip(ranking.names, ranking.scores.tolist(), strict=True))}
    write_json(run_record_path(output), run_record("spatial-al rank-volumes", configuration, results, timer))
    if not args.quiet:
        print(f"Annotate first ({args.strategy}): {', '.join(ranking.top(args.k))}")
    print(f"Wrote {output}")


def command_rank(args: argparse.Namespace) -> None:
    from .learning import select_segments
    from .selection import STRATEGIES, rank, strategy_info
    from .selection.costs import cost_note

    output = writable_output(args.output)
    refuse_overwriting_inputs(output, [args.image, args.labels, args.model])
    timer = Timer()
    with timer("load"):
        source = source_of_image(args)
        stack = load_stack(source, args.labels, slice_axis=args.axis, channel=args.channel)
        model, device = load_model_argument(args)
    segmentation = Segmentation(stack.label_layers, stack.segments, stack.geometry) if args.labels else None
    annotated = resolve_annotated(args, segmentation, stack.slice_axis)
    segments = ()
    pseudo_labeled: list[int] = []
    if segmentation is not None:
        names = [name.strip() for name in args.segments.split(",")] if args.segments else None
        segments = select_segments(stack.segments, names) if stack.segments else ()
        named_tags = {segment.name: segment.tags for segment in segments}
        pseudo_labeled = recorded_slices(named_tags, stack.slice_axis, "propagated", stack.n_slices) or []
    options = parse_options(args.option)
    info = strategy_info(STRATEGIES.get(args.strategy))
    if not args.quiet and (model is not None or info.model is None or info.model_optional):  # else refused below
        device_kind = device.type if device is not None else "cpu"
        print(cost_note(args.strategy, stack.n_slices, stack.slice_shape, device_kind), file=sys.stderr)
    with timer("rank"), TqdmProgress("ranking", disable=args.quiet) as bar:
        ranking = rank(
            stack.image,
            args.strategy,
            args.budget,
            labels=stack.label_layers if segmentation is not None else None,
            annotated=annotated,
            axis=stack.slice_axis,
            model=model,
            seed=args.seed,
            progress=bar,
            segments=segments,
            pseudo_labeled=pseudo_labeled,
            device=device or "cpu",
            batch_size=args.batch_size,
            min_spacing=args.min_spacing,
            precision=args.precision,
            **options,
        )
    ranking.write_csv(output)
    configuration = {
        **vars(args),
        "axis": stack.slice_axis,
        "annotated": annotated,
        "pseudo_labeled": pseudo_labeled,
        "options": options,
        "model_config": asdict(model.config) if model is not None else None,
        "device": str(device) if device is not None else None,
    }
    configuration.pop("handler")
    results = {"slices": ranking.slices, "scores": ranking.scores, "details": ranking.details}
    write_json(run_record_path(output), run_record("spatial-al rank", configuration, results, timer))
    if not args.quiet:
        print(f"rank  slice  score   ({args.strategy}, axis {stack.slice_axis}, {stack.n_slices} slices)")
        for row in ranking:
            print(f"{row.rank:4d}  {row.slice:5d}  {row.score:.4g}")
    print(f"Wrote {output}")


def command_propagate(args: argparse.Namespace) -> None:
    from .session import propagate_segmentation, work_in_progress

    output = writable_output(args.output)
    confidence_output = Path(args.confidence_output) if args.confidence_output else None
    refuse_overwriting_inputs(output, [args.image, args.segmentation, args.model])
    require_storable(args, output)
    source = source_of_image(args)
    require_segmentation_suffix(output, source)
    if confidence_output is not None:
        refuse_overwriting_inputs(confidence_output, [args.image, args.segmentation, args.model, output])
        if confidence_output.suffix != ".csv":
            raise CommandLineError(f"--confidence-output {str(confidence_output)!r}: the confidence is a .csv file.")
    timer = Timer()
    with timer("load"):
        stack = load_stack(source, slice_axis=args.axis, channel=args.channel)
        segmentation = segmentation_on_image(args.segmentation, stack.geometry, source)
        model, device = load_model_argument(args)
    axis = stack.slice_axis
    annotated = resolve_annotated(args, segmentation, axis)
    options = parse_options(args.option)
    names = [name.strip() for name in args.segments.split(",")] if args.segments else None
    with timer("propagate"), TqdmProgress(f"propagating ({args.method})", disable=args.quiet) as bar:
        propagation = propagate_segmentation(
            work_in_progress(segmentation, annotated, axis, names),
            annotated,
            args.method,
            stack.image,
            axis=axis,
            progress=bar,
            segment_names=names,
            model=model,
            device=device or args.device,
            batch_size=args.batch_size,
            seed=args.seed,
            most_confident=args.most_confident,
            min_confidence=args.min_confidence,
            accept_edits=args.accept_edits,
            **options,
        )
    status = slice_status_names(propagation.confidence, propagation.annotated, propagation.propagated)
    with timer("write"):
        write_segmentation(output, propagation.segmentation, source=dicom_source(source))
        if confidence_output is not None:
            write_slice_confidence(confidence_output, propagation.confidence, status)
    configuration = {**vars(args), "axis": axis, "annotated": annotated, "options": options}
    configuration.pop("handler")
    configuration["model_config"] = asdict(model.config) if model is not None else None
    configuration["device"] = str(device or args.device)
    results = {
        "annotated_slices": propagation.annotated,
        "propagated_slices": propagation.propagated,
        "kept_edited_slices": propagation.kept_edited,
        "not_kept_slices": np.flatnonzero(status == "not_kept"),
        "unreached_slices": np.flatnonzero(status == "unreached"),
        "slice_confidence": [None if np.isnan(c) else round(float(c), 4) for c in propagation.confidence],
    }
    results["stored_sop_instance_uid"] = store_output(args, output)
    write_json(run_record_path(output), run_record("spatial-al propagate", configuration, results, timer))
    if results["unreached_slices"].size:
        print(
            f"{results['unreached_slices'].size} slices lie outside the annotated range and were left empty: "
            f"{results['unreached_slices'].tolist()}",
            file=sys.stderr,
        )
    for segment, slices in propagation.kept_edited.items():
        print(
            f"Segment {segment!r}: {len(slices)} slices hold a person's edits or strokes and were kept as they are: "
            f"{list(slices)} (--accept-edits takes edited pseudo-labels as annotated slices)",
            file=sys.stderr,
        )
    if results["not_kept_slices"].size:
        print(
            f"{results['not_kept_slices'].size} filled slices fell below the confidence cut and were left empty: "
            f"{results['not_kept_slices'].tolist()}",
            file=sys.stderr,
        )
    print(f"Wrote {output} ({propagation.propagated.size} slices propagated from {len(annotated)} annotated)")


def slice_status_names(confidence: np.ndarray, annotated: np.ndarray, propagated: np.ndarray) -> np.ndarray:
    """Per-slice status: "annotated", "propagated", "not_kept" (filled, but cut by --most-confident or
    --min-confidence) or "unreached" (outside what the method fills)."""
    status = np.where(np.isnan(confidence), "unreached", "not_kept").astype(object)
    status[np.asarray(propagated, dtype=np.int64)] = "propagated"
    status[np.asarray(annotated, dtype=np.int64)] = "annotated"
    return status


def write_slice_confidence(path: Path, confidence: np.ndarray, status: np.ndarray) -> None:
    """CSV ``slice,status,confidence``: one row per slice (see :func:`slice_status_names`; empty confidence where
    unreached)."""
    import csv

    from .files import atomic_path

    with atomic_path(path) as temporary, temporary.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["slice", "status", "confidence"])
        for index, (value, name) in enumerate(zip(confidence, status, strict=True)):
            writer.writerow([index, name, "" if np.isnan(value) else f"{value:.4f}"])


def command_train(args: argparse.Namespace) -> None:
    from .learning import train_on_stack
    from .training import TrainingConfig, read_checkpoint

    output = writable_output(args.output)
    refuse_overwriting_inputs(output, [args.image, args.segmentation, args.pseudo, args.resume, args.init])
    if not output.name.endswith(".pt"):
        raise CommandLineError(f"--output {str(output)!r}: a model checkpoint is written as a .pt file.")
    timer = Timer()
    with timer("load"):
        source = source_of_image(args)
        stack = load_stack(source, args.segmentation, slice_axis=args.axis, channel=args.channel)
        pseudo = segmentation_on_image(args.pseudo, stack.geometry, source) if args.pseudo else None
    segmentation = Segmentation(stack.label_layers, stack.segments, stack.geometry)
    annotated = resolve_annotated(args, segmentation, stack.slice_axis)
    pseudo_slices = (
        recorded_slices({s.name: s.tags for s in pseudo.segments}, stack.slice_axis, "propagated", stack.n_slices)
        if pseudo
        else None
    )
    base = (
        TrainingConfig() if args.resume is None else (read_checkpoint(args.resume).training_config or TrainingConfig())
    )
    changes = parse_options(args.option)
    changes.update(
        {name: value for name, value in (("max_epochs", args.max_epochs), ("seed", args.seed)) if value is not None}
    )
    training = base.with_options(**changes)
    segment_names = [name.strip() for name in args.segments.split(",")] if args.segments else None
    ranking_output = check_ranking_after_training(args, output, stack.n_slices - len(annotated))
    with timer("train"), TqdmProgress("training", disable=args.quiet) as bar:
        outcome = train_on_stack(
            stack,
            annotated,
            segment_names=segment_names,
            pseudo_labels=pseudo,
            pseudo_slices=pseudo_slices,
            preset=args.preset,
            resume=args.resume,
            training=training,
            device=args.device,
            progress=bar,
            checkpoint_path=output,
            initial_weights=args.init,
        )
    history = outcome.history
    configuration = {
        **vars(args),
        "axis": stack.slice_axis,
        "annotated": outcome.annotated_slices,
        "model": asdict(outcome.model.config),
        "training": asdict(training),
        "device": str(outcome.trainer.device),
    }
    configuration.pop("handler")
    results = {
        "round": outcome.trainer.state.round_index,
        "epochs": len([h for h in history if h["round"] == outcome.trainer.state.round_index]),
        "pseudo_labeled_slices": outcome.pseudo_labeled_slices,
        "validation_slices": outcome.validation_slices,
        "history": history,
    }
    if ranking_output is not None:
        ranking = rank_after_training(args, stack, outcome, segment_names, pseudo_slices, timer)
        ranking.write_csv(ranking_output)
        results["ranking"] = {"output": str(ranking_output), "slices": ranking.slices, "scores": ranking.scores}
    write_json(run_record_path(output), run_record("spatial-al train", configuration, results, timer))
    if ranking_output is not None:
        write_json(run_record_path(ranking_output), run_record("spatial-al train", configuration, results, timer))
        print(f"Wrote {ranking_output}: slices {', '.join(map(str, ranking.slices))} to annotate next ({args.rank})")
    last = history[-1]
    model_config = outcome.model.config
    print(
        f"Wrote {output}: {model_config.describe()}, classes {', '.join(model_config.class_names)}; round "
        f"{results['round']}, {results['epochs']} epochs, last train loss {last['train_loss']:.4f}"
        + (f", validation loss {last['validation_loss']:.4f}" if last["validation_loss"] is not None else "")
    )


def check_ranking_after_training(args: argparse.Namespace, model_output: Path, left: int) -> Path | None:
    """Where ``train --rank`` writes its ranking (None without ``--rank``); a strategy, budget or output that cannot
    work fails here, before any training."""
    if args.rank is None:
        return None
    from .selection import STRATEGIES

    STRATEGIES.get(args.rank)  # an unknown name fails with the closest valid one
    if args.budget > left:
        raise CommandLineError(f"--budget {args.budget} is larger than the {left} slices left unannotated.")
    ranking_output = writable_output(args.ranking_output or model_output.with_suffix(".queried.csv"))
    if ranking_output.suffix != ".csv":
        raise CommandLineError(f"--ranking-output {str(ranking_output)!r}: the ranking is a .csv file.")
    refuse_overwriting_inputs(ranking_output, [args.image, args.segmentation, args.pseudo, args.resume, model_output])
    return ranking_output


def rank_after_training(args, stack, outcome, segment_names, pseudo_slices, timer):
    """The ranking ``train --rank`` asks for, by the model just trained (in memory, on its training device)."""
    from .learning import select_segments
    from .selection import rank
    from .selection.costs import cost_note

    if not args.quiet:
        print(cost_note(args.rank, stack.n_slices, stack.slice_shape, outcome.trainer.device.type), file=sys.stderr)
    with timer("rank"), TqdmProgress("ranking", disable=args.quiet) as bar:
        return rank(
            stack.image,
            args.rank,
            args.budget,
            labels=stack.label_layers,
            annotated=outcome.annotated_slices,
            axis=stack.slice_axis,
            model=outcome.model,
            seed=outcome.trainer.config.seed,
            progress=bar,
            segments=select_segments(stack.segments, segment_names),
            pseudo_labeled=pseudo_slices or (),
            device=outcome.trainer.device,
        )


def command_predict(args: argparse.Namespace) -> None:
    from .device import resolve_device
    from .learning import predict_segmentation
    from .training import load_model

    output = writable_output(args.output)
    refuse_overwriting_inputs(output, [args.image, args.model])
    require_storable(args, output)
    source = source_of_image(args)
    require_segmentation_suffix(output, source)
    timer = Timer()
    with timer("load"):
        device = resolve_device(args.device)
        model, _ = load_model(args.model, device)
        stack = load_stack(source, slice_axis=model.config.slice_axis, channel=args.channel)
    with timer("predict"), TqdmProgress("predicting", disable=args.quiet) as bar:
        segmentation = predict_segmentation(model, stack, device, args.batch_size, bar)
    with timer("write"):
        write_segmentation(output, segmentation, source=dicom_source(source))
    configuration = {**vars(args), "axis": model.config.slice_axis, "device": str(device)}
    configuration.pop("handler")
    results = {
        "segments": [s.name for s in segmentation.segments],
        "stored_sop_instance_uid": store_output(args, output),
    }
    write_json(run_record_path(output), run_record("spatial-al predict", configuration, results, timer))
    print(f"Wrote {output} ({', '.join(results['segments'])})")


def command_benchmark(args: argparse.Namespace) -> None:
    from .device import resolve_device

    output = writable_output(args.output or f"benchmark-{args.name}.json")
    names = [name.strip() for name in args.names.split(",")] if args.names else None
    timer = Timer()
    device = resolve_device(args.device) if hasattr(args, "device") else None  # files: no device
    with timer("benchmark"), TqdmProgress("benchmark", disable=args.quiet) as bar:
        if args.name == "files":
            from .benchmarks.files import format_table, measure_files

            rows = measure_files(names, args.shape, None if args.no_scene else scene_files(), progress=bar)
            title = f"Files of a {'x'.join(map(str, args.shape))} label map, written and read back:"
        elif args.name == "throughput":
            from .benchmarks.throughput import format_table, measure_throughput

            rows = measure_throughput(names, device, args.size, args.batch_size, args.batches, progress=bar)
            title = f"Throughput on {device} ({args.size}x{args.size} slices, batch {args.batch_size}):"
        elif args.name == "training":
            from .benchmarks.training import format_table, measure_training, measure_training_under_load

            options = parse_options(args.option) | ({"max_epochs": args.max_epochs} if args.max_epochs else {})
            measure = measure_training_under_load if args.under_load else measure_training
            rows = measure(names, device, args.interval, options, progress=bar)
            loaded = " (idle, then with one core kept busy by another process)" if args.under_load else ""
            title = (
                f"Training on {device} with {args.threads} threads, the chest CT with 1 slice in {args.interval} "
                f"annotated, defaults{loaded}:"
            )
        elif args.name == "propagation":
            from .benchmarks.propagation import format_table, measure_propagation, speedups

            intervals = [int(value) for value in args.intervals.split(",")]
            speed_shape = None if args.no_speed else args.speed_shape
            rows = measure_propagation(names, intervals, speed_shape, not args.no_frog, bar, device, args.train_epochs)
            rows = speedups(rows)
            title = "Propagation against contour (Dice on the non-annotated slices between annotated ones):"
        else:
            from .benchmarks.ranking import format_table, measure_ranking

            rows = measure_ranking(
                names, device, args.slices, args.size, args.budget, args.preset, args.batch_size, progress=bar,
                precision=args.precision, options=strategy_options(args.option),
            )  # fmt: skip
            title = f"Ranking latency on {device} ({args.slices}x{args.size}x{args.size}, budget {args.budget}):"
    configuration = vars(args) | ({"device": str(device)} if device is not None else {})
    configuration.pop("handler")
    write_json(output, run_record(f"spatial-al benchmark {args.name}", configuration, {"rows": rows}, timer))
    print(title)
    print(format_table(rows))
    print(f"Wrote {output}")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    from .precision import PRECISIONS

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the networks' inference precision: auto (bf16 on CUDA GPUs that support it, fp32 elsewhere); bf16 also "
        "speeds up a CPU with native bfloat16 (AVX512-BF16, AMX)",
    )


def command_web(args: argparse.Namespace) -> None:
    """Serve the browser front end, a peer of the Slicer modules above this package: it is imported here, when asked
    for, and only with the ``web`` extra installed."""
    try:
        from SpatialALWeb.server import serve
    except ImportError as error:
        raise CommandLineError(
            f"The browser app needs the web extra ({error}): run `make web`, or pip install -e '.[web]' from the "
            "source tree."
        ) from None
    filters = qido_filters(args)
    if args.study:
        filters["StudyInstanceUID"] = args.study
    serve(args.data, args.segmentation, args.output, args.host, args.port, filters)


def scene_files():
    """Slicer's ``.mrb`` writer and reader for ``benchmark files``, or None (said on stderr) without slicer-core."""
    try:
        from SpatialALSlicerLib.SessionScene import readSceneSegmentation, writeImageScene
    except ImportError as error:
        print(f".mrb skipped: Slicer's MRML classes are not installed ({error}).", file=sys.stderr)
        return None
    return writeImageScene, readSceneSegmentation


def command_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    scene_writer = None
    if not args.no_scene:
        try:
            from SpatialALSlicerLib.SessionScene import writeSessionScene
        except ImportError as error:
            print(
                f"scene.mrb skipped: Slicer's MRML classes are not installed ({error}); "
                "pip install 'slicer-core==5.11.0.*' to write it.",
                file=sys.stderr,
            )
        else:
            scene_writer = writeSessionScene
    with TqdmProgress("demo", disable=args.quiet) as bar:
        report = run_demo(writable_output(args.output, folder=True), scene_writer=scene_writer, progress=bar)
    results = report["results"]
    print(
        f"Demo: {len(results['annotated_slices'])} of {results['n_slices']} slices annotated, "
        f"{len(results['propagated_slices'])} propagated. Dice on the non-annotated slices:"
    )
    methods = list(results["dice_on_non_annotated_slices"])
    print(f"  {'segment':28s}" + "".join(f"{m:>10s}" for m in methods))
    for segment in results["dice_on_non_annotated_slices"][methods[0]]:
        cells = [results["dice_on_non_annotated_slices"][m][segment] for m in methods]
        print(f"  {segment:28s}" + "".join(f"{'-' if c is None else f'{c:.3f}':>10s}" for c in cells))
    print(f"Wrote {', '.join(results['files'].values())} and report.json into {args.output}/")


def list_registry(registry) -> None:
    width = max(len(name) for name in registry.names())
    for entry in registry.entries():
        print(f"{entry.name:{width}s}  {entry.summary}")


def command_experiment(args: argparse.Namespace) -> None:
    if args.action == "protocols":
        from .experiments.protocols import PROTOCOLS

        list_registry(PROTOCOLS)
        return
    if args.action == "report":
        from .experiments.units import write_report

        print(f"Wrote the report into {write_report(args.study)}")
        return
    from .experiments.runner import StudyRequest, run_study

    request = StudyRequest(
        protocol=args.protocol,
        data=args.data,
        output=writable_output(args.output, folder=True),
        scale=args.scale,
        config_file=Path(args.config) if args.config else None,
        arms=[name.strip() for name in args.strategies.split(",")] if args.strategies else None,
        seeds=args.seeds,
        device=args.device,
        resume=args.resume,
        ray=args.ray,
        cache=Path(args.cache) if args.cache else None,
        threads=args.threads,
        command=" ".join(["spatial-al", *sys.argv[1:]]) if sys.argv else "",
    )
    run_study(request, quiet=args.quiet)


def command_presets(args: argparse.Namespace) -> None:
    from .models import PRESETS

    list_registry(PRESETS)


def command_strategies(args: argparse.Namespace) -> None:
    from .selection import STRATEGIES

    list_registry(STRATEGIES)


def command_methods(args: argparse.Namespace) -> None:
    from .propagation import PROPAGATORS

    list_registry(PROPAGATORS)


def add_image_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "image", help="scalar volume (.nrrd, .nii.gz, ...), a folder of DICOM files, or dicomweb:URL (a PACS)"
    )
    parser.add_argument("--series", metavar="UID", help="the series to read where the DICOM source holds several")
    parser.add_argument("--study", metavar="UID", help="dicomweb: the study to search")
    parser.add_argument(
        "--qido", action="append", default=[], metavar="KEY=VALUE", help="dicomweb: a search filter, e.g. Modality=CT"
    )


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", action="store_true", help="dicomweb: also store the output DICOM-SEG on the server (STOW-RS)"
    )


def add_volume_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--axis",
        default="axial",
        choices=AXIS_CHOICES,
        help="slice axis: array axis in KJI order (0 = K) or an anatomical plane (default: axial)",
    )
    parser.add_argument("--channel", type=int, default=None, help="channel of a 4D (multi-modal) image")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the strategy, method or training (repeatable), e.g. --option interval=10",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")
    add_threads_argument(parser)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="spatial-al",
        description="Which slices to annotate next, and pseudo-labels for the rest. " + __doc__.split("\n\n")[1],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="annotation session on the built-in chest CT; writes files to look at")
    demo.add_argument("--output", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument("--no-scene", action="store_true", help="do not write the Slicer scene")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(demo)
    demo.set_defaults(handler=command_demo)

    web = commands.add_parser("web", help="annotate in the browser: serve the app and print its URL")
    web.add_argument(
        "data",
        nargs="?",
        help="an image, a folder of images or DICOM series, or dicomweb:URL (default: the demo chest CT)",
    )
    web.add_argument("--study", metavar="UID", help="dicomweb: the study whose series to list")
    web.add_argument(
        "--qido", action="append", default=[], metavar="KEY=VALUE", help="dicomweb: a search filter, e.g. Modality=CT"
    )
    web.add_argument("--segmentation", help="the image's segmentation (.seg.nrrd, DICOM-SEG or label map), beside it")
    web.add_argument("--output", default="spatial-al-web", help="folder saved files go to (default: spatial-al-web)")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    web.set_defaults(handler=command_web)

    rank = commands.add_parser("rank", help="rank the slices to annotate next; writes rank,slice,score CSV")
    add_image_argument(rank)
    rank.add_argument("--labels", help="segmentation (.seg.nrrd, DICOM-SEG or label map) on the image grid")
    rank.add_argument("--annotated", help="annotated slices, e.g. 0,10,20 or 0-5 (default: recorded in --labels)")
    rank.add_argument("--strategy", required=True, help="strategy name (spatial-al strategies)")
    rank.add_argument("--budget", required=True, type=int, help="number of slices to pick")
    rank.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rank.add_argument("--output", required=True, help="CSV file to write (columns rank,slice,score)")
    rank.add_argument("--model", metavar="CKPT", help="trained model (spatial-al train) for model-based strategies")
    rank.add_argument("--segments", help="comma-separated segments of --labels the model knows (default: all)")
    rank.add_argument("--min-spacing", type=int, default=0, help="picks at least this many slices apart (default 0)")
    rank.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    rank.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    add_precision_argument(rank)
    add_volume_arguments(rank)
    rank.set_defaults(handler=command_rank)

    volumes = commands.add_parser(
        "rank-volumes", help="rank the scans of a folder to annotate first; writes rank,volume,score CSV"
    )
    volumes.add_argument(
        "folder",
        help="folder of scalar volumes (.nii.gz, .nrrd, .mha), a dataset folder (MSD, ACDC, KiTS19, LiTS, ATLAS, "
        "DBC), a folder of DICOM series, or dicomweb:URL",
    )
    volumes.add_argument(
        "--qido", action="append", default=[], metavar="KEY=VALUE", help="dicomweb: a search filter, e.g. Modality=CT"
    )
    volumes.add_argument(
        "--strategy",
        required=True,
        help="random, variance, entropy (with --model), proxy_variance or proxy_entropy (no model needed)",
    )
    volumes.add_argument("-k", type=positive_int, required=True, help="how many scans to annotate first")
    volumes.add_argument("--model", metavar="CKPT", help="trained model (spatial-al train) for variance and entropy")
    volumes.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    volumes.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    volumes.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    volumes.add_argument(
        "--patch-size",
        type=positive_int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="3D: train the proxy model as a 3D U-Net on patches of this size (Nath et al.: 96 96 96), and run a 3D "
        "--model by sliding windows of it",
    )
    volumes.add_argument("--output", required=True, help="CSV file to write (columns rank,volume,score)")
    add_volume_arguments(volumes)
    volumes.set_defaults(handler=command_rank_volumes)

    propagate = commands.add_parser(
        "propagate", help="fill the slices not annotated from the annotated ones; only annotated slices of SEG are read"
    )
    add_image_argument(propagate)
    propagate.add_argument(
        "segmentation", help="segmentation (.seg.nrrd, DICOM-SEG or label map) holding the annotated slices"
    )
    propagate.add_argument("--annotated", help="annotated slices, e.g. 0,10,20 (default: recorded in SEG)")
    propagate.add_argument("--method", default="sdf", help="propagation method (spatial-al methods; default sdf)")
    propagate.add_argument(
        "--output", required=True, help="output .seg.nrrd, .nrrd, .nii.gz or .dcm (DICOM-SEG; never an input)"
    )
    propagate.add_argument(
        "--confidence-output", metavar="CSV", help="also write slice,status,confidence per slice to this .csv"
    )
    propagate.add_argument("--model", metavar="CKPT", help="trained model (spatial-al train) for star and model")
    propagate.add_argument(
        "--segments", help="comma-separated segments to propagate (default: all; the others are written as read)"
    )
    propagate.add_argument(
        "--most-confident", type=int, metavar="N", help="keep pseudo-labels on the N most confident slices only"
    )
    propagate.add_argument(
        "--min-confidence", type=float, metavar="C", help="keep pseudo-labels only on slices at least C confident"
    )
    propagate.add_argument(
        "--accept-edits",
        action="store_true",
        help="take pseudo-labels a person edited or erased as annotated slices (default: kept, not propagated from)",
    )
    add_store_argument(propagate)
    propagate.add_argument("--seed", type=int, default=0, help="random seed of learned methods (default 0)")
    propagate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    propagate.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    add_volume_arguments(propagate)
    propagate.set_defaults(handler=command_propagate)

    train = commands.add_parser(
        "train", help="train or fine-tune a 2D segmentation model on the annotated slices; writes a .pt checkpoint"
    )
    add_image_argument(train)
    train.add_argument("segmentation", help="segmentation (.seg.nrrd, DICOM-SEG or label map): segments learned")
    train.add_argument("--annotated", help="annotated slices, e.g. 0,10,20 (default: recorded in SEG)")
    train.add_argument("--segments", help="comma-separated segment names to learn (default: all)")
    train.add_argument("--pseudo", metavar="PSEUDO_SEG", help="pseudo-labels (weighted lower) for other slices")
    train.add_argument("--preset", help="model preset (spatial-al presets; default unet-small for a new model)")
    train.add_argument(
        "--max-epochs", type=positive_int, help="epochs per round, each of 25 optimizer steps (default 20)"
    )
    train.add_argument("--resume", metavar="CKPT", help="checkpoint to continue or fine-tune (next round)")
    train.add_argument(
        "--init",
        metavar="CKPT",
        help="start a new model from this checkpoint's weights where they fit (e.g. a proxy model of the same preset; "
        "the output layer is re-made when the classes differ)",
    )
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    train.add_argument("--output", required=True, help="checkpoint to write (.pt); rewritten as training improves")
    train.add_argument(
        "--rank", metavar="STRATEGY", help="then rank the slices to annotate next with the model just trained"
    )
    train.add_argument("--budget", type=positive_int, default=10, help="slices --rank picks (default 10)")
    train.add_argument("--ranking-output", help="the ranking's .csv (default: OUTPUT with .queried.csv)")
    add_volume_arguments(train)
    train.set_defaults(handler=command_train)

    predict = commands.add_parser("predict", help="segment a volume with a trained model")
    add_image_argument(predict)
    predict.add_argument("--model", required=True, metavar="CKPT", help="checkpoint written by spatial-al train")
    predict.add_argument(
        "--output", required=True, help="output .seg.nrrd (segment names kept), .dcm (DICOM-SEG) or label map"
    )
    add_store_argument(predict)
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    predict.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    predict.add_argument("--channel", type=int, default=None, help="channel of a 4D (multi-modal) image")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(predict)
    predict.set_defaults(handler=command_predict)

    benchmark = commands.add_parser("benchmark", help="speed figures: prints a table, writes JSON")
    kinds = benchmark.add_subparsers(
        dest="name", required=True, metavar="{throughput,ranking,training,propagation,files}"
    )
    throughput = kinds.add_parser("throughput", help="training and inference slices per second of each preset")
    throughput.add_argument("--presets", dest="names", help="comma-separated presets (default: all)")
    throughput.add_argument("--batches", type=int, default=3, help="timed batches after one warm-up (default 3)")
    throughput.add_argument("--batch-size", type=int, default=4, help="slices per batch (default 4)")
    ranking = kinds.add_parser("ranking", help="seconds each query strategy takes on one synthetic volume")
    ranking.add_argument("--strategies", dest="names", help="comma-separated strategies (default: all)")
    ranking.add_argument("--slices", type=int, default=300, help="slices of the volume (default 300)")
    ranking.add_argument("--budget", type=int, default=10, help="slices to pick (default 10)")
    ranking.add_argument("--preset", default="unet-small", help="model of the model-based strategies (unet-small)")
    ranking.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    ranking.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="STRATEGY.KEY=VALUE",
        help="an option of one measured strategy (repeatable), e.g. --option mc_dropout.layers=last",
    )
    add_precision_argument(ranking)
    training = kinds.add_parser("training", help="training with the defaults: steps/s, seconds per phase, Dice")
    training.add_argument("--presets", dest="names", help="comma-separated presets (default: unet-small)")
    training.add_argument("--interval", type=positive_int, default=2, help="annotate every N-th slice (default 2)")
    training.add_argument("--max-epochs", type=positive_int, help="epochs of 25 steps (default: the default, 20)")
    training.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a training option (repeatable)"
    )
    training.add_argument(
        "--under-load",
        action="store_true",
        help="measure again while another process keeps one core busy, and print the slowdown",
    )
    propagation = kinds.add_parser("propagation", help="time and Dice of propagation methods against contour")
    propagation.add_argument("--methods", dest="names", help="comma-separated methods (default: every method)")
    propagation.add_argument(
        "--train-epochs", type=int, default=30, help="epochs of the model trained for star and model (default 30)"
    )
    propagation.add_argument("--intervals", default="5,10,15", help="annotation intervals (default 5,10,15)")
    propagation.add_argument(
        "--speed-shape",
        type=volume_shape,
        default=(300, 512, 512),
        help="slices x rows x columns of the synthetic speed volume, annotated every 10th slice (300x512x512)",
    )
    propagation.add_argument("--no-speed", action="store_true", help="skip the large synthetic label map")
    propagation.add_argument("--no-frog", action="store_true", help="skip pyvista's frog tissue label map")
    files = kinds.add_parser("files", help="seconds to write and read .seg.nrrd, label maps and .mrb of a large volume")
    files.add_argument("--label-maps", dest="names", help="comma-separated: organs, prediction (default both)")
    files.add_argument(
        "--shape", type=volume_shape, default=(300, 512, 512), help="slices x rows x columns (default 300x512x512)"
    )
    files.add_argument("--no-scene", action="store_true", help="leave out the .mrb scene bundle")
    for measurement in (throughput, ranking):
        measurement.add_argument("--size", type=positive_int, default=256, help="slice size in pixels (default 256)")
    for measurement in (throughput, ranking, training, propagation):
        measurement.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    for measurement in (throughput, ranking, training, propagation, files):
        measurement.add_argument("--output", help="JSON file to write (default benchmark-NAME.json)")
        measurement.add_argument("--quiet", action="store_true", help="no progress bar")
        add_threads_argument(measurement)
        measurement.set_defaults(handler=command_benchmark)

    experiment = commands.add_parser("experiment", help="the papers' active-learning studies, headless")
    actions = experiment.add_subparsers(dest="action", required=True, metavar="{run,report,protocols}")
    study = actions.add_parser("run", help="run a study (protocol x strategies x seeds); writes tables and curves")
    study.add_argument("protocol", help="protocol name (spatial-al experiment protocols)")
    study.add_argument(
        "--data",
        required=True,
        help="'demo' (the offline chest CT cohort) or a dataset folder (MSD task, ACDC, KiTS19, LiTS, ATLAS, DBC)",
    )
    study.add_argument("--output", required=True, help="study folder (runs, report, study.json)")
    study.add_argument("--config", help="JSON (or YAML) file overriding any protocol value")
    study.add_argument("--strategies", help="comma-separated strategies of the protocol (default: its default set)")
    study.add_argument("--seeds", type=int, help="runs per strategy (default: the protocol's)")
    study.add_argument("--scale", default="cpu", choices=["smoke", "cpu", "paper"], help="study size (default cpu)")
    study.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    study.add_argument("--resume", action="store_true", help="continue the study in --output (finished runs are kept)")
    study.add_argument("--ray", metavar="auto|ADDRESS", help="one Ray task per run: 'auto' or a cluster address")
    study.add_argument("--cache", help="folder of preprocessed cohorts (default OUTPUT/cache)")
    study.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads per run (default: the cores this process may use; 1 per Ray task)",
    )
    study.add_argument("--quiet", action="store_true", help="no progress bars")
    rebuild = actions.add_parser("report", help="rebuild a study's tables and curves from its run folders")
    rebuild.add_argument("study", help="study folder")
    actions.add_parser("protocols", help="list the protocols and their papers")
    experiment.set_defaults(handler=command_experiment)

    presets = commands.add_parser("presets", help="list the model presets")
    presets.set_defaults(handler=command_presets)
    strategies = commands.add_parser("strategies", help="list the query strategies")
    strategies.set_defaults(handler=command_strategies)
    methods = commands.add_parser("methods", help="list the propagation methods")
    methods.set_defaults(handler=command_methods)
    return parser


# Commands that compute with torch on the CPU: they take --threads (default: the cores this process may use).
THREADED_COMMANDS = ("demo", "rank", "rank-volumes", "propagate", "train", "predict", "benchmark")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads torch computes with (default: the cores this process may use, from its CPU affinity and "
        "cgroup quota; on a machine shared with other work, fewer threads are often faster)",
    )


# Options whose value may start with "-" (a negative index): argparse would read "-1,6" as an option.
DASH_VALUE_OPTIONS = ("--annotated",)


def joined_dash_values(argv: Sequence[str]) -> list[str]:
    """``[..., "--annotated", "-1,6"]`` -> ``[..., "--annotated=-1,6"]``, so the value reaches the slice parser, which
    then says what is wrong with it."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in DASH_VALUE_OPTIONS and token.startswith("-") and token[1:2].isdigit():
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def command_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line says it: one line, without the source location."""
    return f"spatial-al: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(joined_dash_values(sys.argv[1:] if argv is None else argv))
    wait_passively()  # before anything loads torch
    warnings.formatwarning = command_line_warning
    try:
        if getattr(args, "threads", None) is not None or args.command in THREADED_COMMANDS:
            args.threads = choose_threads(args.threads)
            if args.command != "experiment":  # a study sets each run's threads (one per Ray task)
                use_threads(args.threads)
        args.handler(args)
    except OperationCancelled as error:
        print(f"spatial-al: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("spatial-al: Cancelled (Ctrl+C); every file written so far is complete.", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, FloatingPointError, GeometryMismatchError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"spatial-al {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
