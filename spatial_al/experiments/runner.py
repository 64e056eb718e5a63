"""A study: protocol x arms x seeds, each (arm, seed) one run in its own folder, run one after another or as Ray
tasks; then the report.

Study folder::

    study.json                      command, protocol, scale, data, arms, seeds, resolved configuration, versions
    cohort -> the slice cache       (``--cache``, default ``<output>/cache``)
    runs/<arm>/seed-<s>/            one run (see :mod:`spatial_al.experiments.loop`)
    report/                         tables (Markdown, CSV) and figures (PNG), rebuilt by ``experiment report``

Every check of the request (protocol, arms, configuration keys and types, data folder, split, budget) runs before any
training, and errors name the fix.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import exclusive_folder
from ..progress import TqdmProgress
from ..provenance import environment, write_json
from ..threads import choose_threads
from .cohort import Cohort, Split, build_cohort, open_source, resolve_classes, split_subjects
from .config import ARM_STRATEGY, ConfigError, ExperimentConfig
from .loop import (
    REFERENCE_ARM,
    RUN_FILE,
    SETTING_FILE,
    STATE_FILE,
    RunSpec,
    arm_model_config,
    initial_slices,
    run_folder,
)
from .protocols import resolve_config
from .units import run_session, write_report

STUDY_FILE = "study.json"
# What a study runs and how it reports it, not how a run computes: runs split over processes with different --strategies
# or without the reference (each its own folder, joined afterwards) differ only here.
STUDY_LEVEL_KEYS = ("arms", "grid", "default_arms", "seeds", "supervised_reference", "report")


@dataclass(frozen=True)
class StudyRequest:
    """What ``spatial-al experiment run`` asks for.

    Attributes:
        protocol: protocol name (``spatial-al experiment protocols``).
        data: "demo" or a dataset folder.
        output: the study folder.
        scale: "smoke", "cpu" or "paper".
        config_file: a JSON/YAML file of overrides.
        arms: the arms to run (None: the protocol's default arms at this scale).
        seeds: runs per arm (None: the protocol's).
        device: "auto", "cpu", "cuda", ...
        resume: continue the study in ``output``.
        ray: None (one run after another), "auto" (a running Ray cluster, else a local one) or a cluster address.
        cache: the folder of slice caches (None: ``output/cache``).
        threads: torch CPU threads per run (None: the cores this process may use serially, 1 per Ray task on CPUs).
        command: the command line, for the record.
    """

    protocol: str
    data: str
    output: Path
    scale: str = "cpu"
    config_file: Path | None = None
    arms: list[str] | None = None
    seeds: int | None = None
    device: str = "auto"
    resume: bool = False
    ray: str | None = None
    cache: Path | None = None
    threads: int | None = None
    command: str = ""


@dataclass
class Study:
    """A checked request: configuration, cohort, split and the runs to do."""

    request: StudyRequest
    config: ExperimentConfig
    provenance: dict[str, Any]
    cohort: Cohort
    split: Split
    arms: list[str]
    seeds: list[int]
    runs: list[RunSpec] = field(default_factory=list)


def choose_arms(config: ExperimentConfig, names: list[str] | None) -> list[str]:
    """The arms to run, checked; an unknown name fails with the closest arm."""
    if names is None:
        return list(config.default_arms or config.arms)
    for name in names:
        if name not in config.arms:
            closest = difflib.get_close_matches(name, list(config.arms), n=1, cutoff=0.0)
            raise ConfigError(
                f"Unknown strategy {name!r} for protocol {config.protocol!r}. Did you mean {closest[0]!r}? "
                f"Strategies: {', '.join(config.arms)}."
            )
    return list(dict.fromkeys(names))


def check_components(config: ExperimentConfig, arms: list[str]) -> None:
    """Every strategy, propagation method and option named by the initial selection and the arms exists."""
    from ..models import PRESETS
    from ..propagation import PROPAGATORS
    from ..selection import STRATEGIES, strategy_info

    def check_initial(initial) -> None:
        if strategy_info(STRATEGIES.get(initial.strategy)).model is not None:
            raise ConfigError(
                f"initial.strategy {initial.strategy!r} needs a trained model, and round 0 has none; use a "
                "cold-start strategy such as fixed_interval, random or stratified."
            )
        STRATEGIES.check_options(initial.strategy, initial.options)
        if initial.per_volume_grid and (initial.strategy != "fixed_interval" or "interval" not in initial.options):
            raise ConfigError(
                "initial.budget, initial.percent or initial.density is required unless initial.strategy is "
                "fixed_interval with an interval option."
            )

    for preset in (config.preset, config.star_preset, config.structure_preset):
        PRESETS.get(preset)
    if config.unit == "volume":
        check_volume_study(config, arms)
        return
    if config.unit == "sparse_volume":
        check_sparse_volume_study(config, arms)
    semi_supervised = [name for name in arms if config.arms[name].semi_supervised]
    if semi_supervised:
        raise ConfigError(
            f"arms {semi_supervised} ask for semi-supervised fine-tuning, which volume studies do (unit 'volume', "
            "a 3D model); drop semi_supervised or set unit to 'volume'."
        )
    if config.initial.strategy != ARM_STRATEGY:
        check_initial(config.initial)
    for name in arms:
        arm = config.arms[name]
        try:
            check_initial(config.initial_for(arm))
            STRATEGIES.check_options(arm.strategy, arm.options)
            if arm.pseudo_labels in ("interpolation", "volume_interpolation"):
                PROPAGATORS.check_options(arm.propagation, arm.propagation_options)
            arm_model_config(config, arm, ("class",))
        except (KeyError, ValueError) as error:
            raise ConfigError(f"arms.{name}: {error}") from None


def check_volume_study(config: ExperimentConfig, arms: list[str]) -> None:
    """A volume study's arms rank volumes (:data:`~spatial_al.selection.volumes.VOLUME_STRATEGIES`, or proxy_rank: the
    proxy model's order every round) with a 3D model on 3D patches; a proxy arm's window lies inside the cohort's CT
    window."""
    from ..selection.volumes import VOLUME_STRATEGIES
    from .volume_loop import PROXY_RANK, cached_window

    strategies = (*VOLUME_STRATEGIES, PROXY_RANK)

    check_volume_models(config, arms)
    for name in arms:
        arm = config.arms[name]
        if arm.strategy not in strategies:
            closest = difflib.get_close_matches(arm.strategy, strategies, n=1, cutoff=0.0)
            raise ConfigError(
                f"arms.{name}: {arm.strategy!r} is not a volume strategy. Did you mean {closest[0]!r}? Volume "
                f"strategies: {', '.join(strategies)}."
            )
        if arm.pseudo_labels != "none" or arm.unlabeled_consistency:
            raise ConfigError(
                f"arms.{name}: a volume study makes no slice pseudo-labels and trains no slice consistency; drop "
                "pseudo_labels and unlabeled_consistency."
            )
        if arm.strategy.startswith("proxy_"):
            try:
                cached_window(config.proxy.window, config.data.window, config.data.intensity)
            except ValueError as error:
                raise ConfigError(f"arms.{name}: {error}") from None


def check_volume_models(config: ExperimentConfig, arms: list[str]) -> None:
    """A 3D study's arms train a 3D model on 3D patches of ``training.patch_size``."""
    patch = config.training_config(0).patch_size
    if patch is None or len(patch) != 3:
        raise ConfigError(
            f"A {config.unit} study trains a 3D model on patches: set training.patch_size to [D, H, W] (96, 96, 96 in "
            f"Nath et al.); got {patch}."
        )
    for name in arms:
        model = arm_model_config(config, config.arms[name], ("class",))
        if model.spatial_dims != 3:
            raise ConfigError(
                f"arms.{name}: a {config.unit} study trains a 3D model, and {model.describe()} is 2D; set preset to a "
                "3D one (unet3d, resunet3d, segresnet3d, unetr3d, or their -small versions)."
            )


def check_sparse_volume_study(config: ExperimentConfig, arms: list[str]) -> None:
    """The MIDL 2025 study's 3D half annotates slices once (a design grid, no query rounds) and trains a 3D model on
    them, with mask interpolation as the only pseudo-labels, weighed as annotations."""
    check_volume_models(config, arms)
    if config.rounds != 0:
        raise ConfigError(
            f"A sparse_volume study annotates its slices once and trains one 3D model (rounds 0); got rounds "
            f"{config.rounds}: set rounds to 0, or use unit 'slice' for query rounds with a 2D model."
        )
    for name in arms:
        arm = config.arms[name]
        if arm.pseudo_labels not in ("none", "volume_interpolation") or arm.unlabeled_consistency:
            raise ConfigError(
                f"arms.{name}: a sparse_volume study trains on the annotated slices and, with mask interpolation "
                f"(pseudo_labels 'volume_interpolation'), the slices filled between them; got pseudo_labels "
                f"{arm.pseudo_labels!r}{' and unlabeled_consistency' if arm.unlabeled_consistency else ''}."
            )
        if arm.pseudo_labels == "volume_interpolation" and config.training_config(0).pseudo_label_weight != 1.0:
            raise ConfigError(
                "A 3D patch holds annotated and interpolated slices together, so they weigh the same in a "
                "sparse_volume study; set training.pseudo_label_weight to 1."
            )


def check_budget(config: ExperimentConfig, cohort: Cohort, split: Split) -> None:
    """The initial selection fits the pool and the budget is above it."""
    if config.unit == "volume":
        if config.query_volumes > len(split.training):
            raise ConfigError(
                f"query_volumes (k = {config.query_volumes}) is larger than the {len(split.training)} training volumes "
                f"of the unlabeled pool; lower it to at most {len(split.training)}."
            )
        return
    counts = cohort.slice_counts()
    pool = sum(counts[name] for name in split.training)
    first = initial_slices(config.initial, [counts[name] for name in split.training])
    if first > pool:
        raise ConfigError(
            f"initial.budget {first} is larger than the {pool} training slices; lower it to at most {pool}."
        )
    if config.budget_percent is not None and config.budget_percent < 100.0 * first / pool:
        raise ConfigError(
            f"budget_percent {config.budget_percent} is below the initial selection ({first} of {pool} training "
            f"slices, {100.0 * first / pool:.1f} %); raise budget_percent or lower the initial selection."
        )


def prepare_study(request: StudyRequest, progress=None) -> Study:
    """Check ``request`` and prepare the cohort; nothing is trained here.

    Raises:
        ConfigError / ValueError / KeyError / FileNotFoundError: a bad protocol, arm, configuration key or type,
            data folder, split or budget, or an existing study folder without ``resume``; the message names the fix.
    """
    from ..device import resolve_device

    output = writable_study_folder(request.output)
    if (output / STUDY_FILE).is_file() and not request.resume:
        raise ConfigError(
            f"{str(output)!r} already holds a study; pass --resume to continue it, or choose another --output."
        )
    config, provenance = resolve_config(request.protocol, request.data, request.scale, request.config_file)
    arms = choose_arms(config, request.arms)
    check_components(config, arms)
    resolve_device(request.device)
    if request.ray:
        from importlib.util import find_spec

        if find_spec("ray") is None:
            raise ConfigError(
                "--ray needs Ray: pip install 'ray>=2.9' (or pip install -e '.[cluster]'), or drop --ray."
            )
    seeds = list(range(request.seeds if request.seeds is not None else config.seeds))
    if not seeds:
        raise ConfigError("--seeds must be at least 1.")
    source = open_source(request.data, config.data)
    resolve_classes(source, config.data)
    cache = Path(request.cache) if request.cache is not None else output / "cache"
    cohort = build_cohort(source, config.data, cache, progress)
    slice_counts = cohort.slice_counts() if config.data.split_by == "slices" else None
    split = split_subjects(source.names, config.data.split, config.data.split_seed, slice_counts)
    check_budget(config, cohort, split)
    names = arms + ([REFERENCE_ARM] if config.supervised_reference else [])
    threads = request.threads if request.threads is not None else (1 if request.ray else choose_threads())
    provenance = {**provenance, "source": source.description, "cache": str(cohort.folder)}
    runs = [
        RunSpec(
            run_folder(output, arm, seed), arm, seed, config, cohort.folder, split, request.device, threads, provenance
        )
        for arm in names
        for seed in seeds
    ]
    check_resumed_runs(runs)
    return Study(request, config, provenance, cohort, split, arms, seeds, runs)


def run_computation(config: dict[str, Any], arm: str) -> dict[str, Any]:
    """What of a resolved configuration (as ``ExperimentConfig.to_dict`` gives it) one run of ``arm`` computes with:
    every key but :data:`STUDY_LEVEL_KEYS`, and of the arms only its own (None for the reference)."""
    computation = {key: value for key, value in config.items() if key not in STUDY_LEVEL_KEYS}
    computation["arm"] = config["arms"].get(arm)
    return computation


def differing_paths(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ, e.g. ["training.max_epochs"]."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            difference
            for key in sorted(set(old) | set(new), key=str)
            for difference in differing_paths(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        ]
    return [] if old == new else [path or "(the whole configuration)"]


def run_setting(spec: RunSpec) -> dict[str, Any]:
    """What a run computes with, as its records hold it (tuples as lists, keys as strings): :func:`run_computation`
    of the study's configuration for its arm, and the split."""
    return json.loads(json.dumps({**run_computation(spec.config.to_dict(), spec.arm), "split": spec.split.to_dict()}))


def check_resumed_runs(runs: list[RunSpec]) -> None:
    """A resumed study keeps its finished runs and continues its unfinished ones from their saved state, so both must
    be the computation this study would run: same configuration (but :data:`STUDY_LEVEL_KEYS`) and same split. A
    study resumed after the protocol changed would otherwise mix two settings in one table. A finished run's
    setting is in its ``run.json``; an unfinished one's in the :data:`SETTING_FILE` written when it was planned
    (state saved by a version without it cannot be checked and is continued). Then every run not finished gets
    this study's setting written.

    Raises:
        ConfigError: naming the run, the keys that differ and the fix, before anything is written.
    """
    for spec in runs:
        record_path, setting_path = spec.folder / RUN_FILE, spec.folder / SETTING_FILE
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        if record.get("status") == "finished":
            found, where, what = (
                {**run_computation(record["config"], spec.arm), "split": record["split"]},
                record_path,
                "finished",
            )
        elif (spec.folder / STATE_FILE).is_file() and setting_path.is_file():
            found, where, what = json.loads(setting_path.read_text()), setting_path, "was started"
        else:
            continue
        differences = differing_paths(found, run_setting(spec))
        if differences:
            shown = ", ".join(differences[:6]) + (f" and {len(differences) - 6} more" if len(differences) > 6 else "")
            raise ConfigError(
                f"{str(where)!r}: this run {what} under another setting than this study's ({shown} differ), so"
                " resuming would mix two settings in one study. Resume it with a --config that gives those values,"
                " or run the study into another --output."
            )
    for spec in runs:
        if not (spec.folder / RUN_FILE).is_file() and not (spec.folder / STATE_FILE).is_file():
            write_json(spec.folder / SETTING_FILE, run_setting(spec))


def write_study_record(study: Study) -> None:
    request = study.request
    write_json(
        Path(request.output) / STUDY_FILE,
        {
            "command": request.command,
            **study.provenance,
            "data": str(request.data),
            "arms": study.arms,
            "seeds": study.seeds,
            "device": request.device,
            "ray": request.ray,
            "threads": request.threads,
            "classes": study.cohort.class_names,
            "split": study.split.to_dict(),
            "slices": study.cohort.slice_counts(),
            "config": study.config.to_dict(),
            "environment": environment(),
        },
    )


def summary_line(record: dict[str, Any], metric: str) -> str:
    last = record["rounds"][-1]
    value = last["metrics"].get(metric)
    shown = "n/a" if value is None else f"{value:.3f}"
    seconds = sum(sum(r["seconds"].values()) for r in record["rounds"])
    return (
        f"{record['arm']:>24} seed {record['seed']}: {len(record['rounds'])} rounds, {metric} {shown} at "
        f"{last['labeled_percent']:.1f} % labeled, {seconds:.0f} s"
    )


def run_serially(study: Study, quiet: bool = False) -> list[dict[str, Any]]:
    records = []
    for spec in study.runs:
        with TqdmProgress(f"{spec.arm} seed {spec.seed}", disable=quiet) as bar:
            record = run_session(spec, bar)
        records.append(record)
        print(summary_line(record, study.config.report.metric), file=sys.stderr)
    return records


def run_on_ray(study: Study, address: str) -> list[dict[str, Any]]:
    """Each run as one Ray task (1 GPU each on CUDA, else ``threads`` CPUs); records gathered into the study folder
    as the tasks finish. The study folder must be on a file system the workers share."""
    import ray

    from ..device import resolve_device

    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, log_to_driver=False)
    gpus = 1 if resolve_device(study.request.device).type == "cuda" else 0
    cpus = (study.runs[0].threads or 1) if study.runs else 1
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_session)
    pending = {task.remote(spec): spec for spec in study.runs}
    records = []
    while pending:
        finished, _ = ray.wait(list(pending), num_returns=1)
        spec = pending.pop(finished[0])
        record = ray.get(finished[0])
        write_json(spec.folder / "run.json", record)  # also when the worker's disk is not the driver's
        records.append(record)
        print(summary_line(record, study.config.report.metric), file=sys.stderr)
    return sorted(records, key=lambda r: [(s.arm, s.seed) for s in study.runs].index((r["arm"], r["seed"])))


def run_study(request: StudyRequest, quiet: bool = False) -> Path:
    """Run a study end to end (or continue it with ``request.resume``) and write its report; returns the report
    folder. One study at a time writes a folder: a second one is refused, naming the first
    (:func:`~spatial_al.files.exclusive_folder`)."""
    with exclusive_folder(writable_study_folder(request.output)):
        return run_locked_study(request, quiet)


def writable_study_folder(output: str | Path) -> Path:
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {str(output)!r} is a file; give a folder for the study.")
    return output


def split_summary(study: Study) -> str:
    """The split's subjects and slices per part, e.g. "10 training, 1 validation, 3 test; slices 1,200 / 130 / 380"."""
    counts = study.cohort.slice_counts()
    parts = (study.split.training, study.split.validation, study.split.test)
    slices = " / ".join(f"{sum(counts[name] for name in part):,}" for part in parts)
    return f"{len(parts[0])} training, {len(parts[1])} validation, {len(parts[2])} test; slices {slices}"


def run_locked_study(request: StudyRequest, quiet: bool) -> Path:
    """:func:`run_study` once this process holds the study folder."""
    started = time.perf_counter()
    with TqdmProgress("preparing the cohort", disable=quiet) as bar:
        study = prepare_study(request, bar)
    write_study_record(study)
    done = sum(1 for spec in study.runs if (spec.folder / "run.json").is_file())
    print(
        f"{request.protocol} at scale {request.scale}: {len(study.arms)} strategies x {len(study.seeds)} seeds"
        f"{' + the fully supervised reference' if study.config.supervised_reference else ''}, {len(study.runs)} runs"
        f" ({done} already finished); cohort {len(study.cohort.names)} subjects ({split_summary(study)})",
        file=sys.stderr,
    )
    if request.ray:
        run_on_ray(study, request.ray)
    else:
        run_serially(study, quiet)
    folder = write_report(Path(request.output))
    print(f"Study finished in {time.perf_counter() - started:.0f} s; report in {folder}", file=sys.stderr)
    return folder
