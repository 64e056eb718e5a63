"""What a study is made of, chosen by name: the session that runs an arm's annotation loop (by the protocol's query
``unit``) and the layout of its report (by its report's ``curve_axis``).

The sessions (:mod:`.loop`, :mod:`.volume_loop`) and the report layouts (:mod:`.report`, :mod:`.grid_report`) do
not know of each other's variants; this module is the one place that lists them, so each module depends one way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..progress import ProgressReporter
from ..provenance import Timer, environment, write_json
from ..registry import Registry
from .grid_report import write_grid_report
from .loop import RUN_FILE, STATE_FILE, RoundProgress, RunSpec, Session, SessionState
from .paper_report import write_paper_comparison
from .report import read_runs, write_curve_report
from .volume_loop import SparseVolumeSession, VolumeSession

SESSIONS: Registry[type[Session]] = Registry("query unit")
SESSIONS.register("slice", "slices are queried, annotated and pseudo-labeled; a 2D model")(Session)
SESSIONS.register("volume", "whole volumes are queried and annotated; a 3D model (Nath et al.)")(VolumeSession)
SESSIONS.register(
    "sparse_volume", "slices of a design grid annotated once; a 3D model on them (the MIDL 2025 study's 3D half)"
)(SparseVolumeSession)

ReportLayout = Callable[[dict[str, list[dict[str, Any]]], dict[str, Any], Path, str], None]
REPORT_LAYOUTS: Registry[ReportLayout] = Registry("report layout")
for axis in ("percent", "round", "volumes"):
    REPORT_LAYOUTS.register(axis, f"a table at chosen {axis} columns and learning curves")(write_curve_report)
REPORT_LAYOUTS.register("grid", "a design grid: density x volumes, by selection and interpolation")(write_grid_report)


def run_session(spec: RunSpec, progress: ProgressReporter | None = None) -> dict[str, Any]:
    """Run (or continue) one run to its end; returns its record (also written to ``run.json``).

    A finished run is read back, not repeated. Progress reports one step per phase of each round; cancelling stops
    at the next step, and the run continues from its last saved state when started again.
    """
    import torch

    folder = Path(spec.folder)
    record_path = folder / RUN_FILE
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("status") == "finished":
            return record
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()  # everything this process does for the run: set-up, initial selection, rounds
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    phases = RoundProgress(progress)
    session = SESSIONS.get(spec.config.unit)(spec, phases)
    state_path = folder / STATE_FILE
    interpolation_seconds = None
    if state_path.is_file():
        state = SessionState.load(state_path)
    else:
        state = session.initial_selection()
        if session.arm.pseudo_labels == "volume_interpolation":
            interpolating = time.perf_counter()
            session.interpolate_volumes(state)
            interpolation_seconds = round(time.perf_counter() - interpolating, 4)
        state.save(state_path)
    phases.last_round = session.expected_rounds(state)
    while True:
        timer = Timer()
        round_index = state.round_index
        phases.start(round_index, "training")
        with timer("train"):
            training = session.train(state)
        phases.start(round_index, "evaluating")
        with timer("evaluate"):
            metrics = session.evaluate()
        record: dict[str, Any] = {
            "round": round_index,
            "labeled_slices": state.labeled_count(),
            "labeled_percent": 100.0 * state.labeled_count() / session.pool_slices,
            "pseudo_labeled_slices": state.pseudo_count(),
            **session.round_details(state),
            "metrics": metrics,
            "training": training,
        }
        done = session.finished(state)
        if not done:
            count = session.query_count(state)
            phases.start(round_index, "querying")
            with timer("query"):
                ranking = session.query(state, count)
            record["queried"] = session.reveal(state, ranking)
            phases.start(round_index, "pseudo-labels")
            with timer("pseudo_labels"):
                made = session.make_pseudo_labels(state, ranking)
            record["pseudo_label_dice"] = session.pseudo_label_dice(state, made) if made or state.pseudo else None
        if round_index == 0 and session.arm.pseudo_labels == "volume_interpolation":
            filled = [(name, index) for name, masks in state.pseudo.items() for index in masks]
            record["pseudo_label_dice"] = session.pseudo_label_dice(state, filled)
            record["interpolation_seconds"] = interpolation_seconds  # None when a resumed run did it before
        record["seconds"] = timer.seconds
        write_json(folder / "rounds" / f"round-{round_index:03d}.json", record)
        state.rounds.append(record)
        state.round_index += 1
        state.save(state_path)
        if done:
            break
    phases.last_round = state.round_index - 1
    phases.finish()
    result = {
        "status": "finished",
        "protocol": spec.config.protocol,
        "study": spec.provenance,
        "arm": spec.arm,
        "arm_config": asdict(session.arm),
        "seed": spec.seed,
        "reference": spec.reference,
        "device": str(session.device),
        "threads": spec.threads,
        "split": spec.split.to_dict(),
        "pool_slices": session.pool_slices,
        "classes": session.classes,
        "model_config": json.loads(session.model.config.to_json()),
        "encoder_initialisation": session.encoder_init,
        "training_config": json.loads(session.training.to_json()),
        "config": spec.config.to_dict(),
        "rounds": state.rounds,
        "seconds_this_process": round(time.perf_counter() - started, 2),
        "environment": environment(),
    }
    write_json(record_path, result)
    return result


def write_report(study: str | Path) -> Path:
    """Write the report of the study in ``study`` into ``study/report`` from its finished runs (the protocol's
    layout, then ``paper.md``: the paper's tables beside ours); returns that folder.

    Raises:
        FileNotFoundError: the folder holds no finished run.
    """
    study = Path(study)
    runs = read_runs(study)
    if not runs:
        raise FileNotFoundError(f"{str(study)!r} holds no finished run (runs/*/seed-*/run.json); run the study first.")
    config = next(iter(runs.values()))[0]["config"]
    study_record = read_study_record(study)
    if "config" in study_record:
        # How a study reports is study-level (not how a run computes): the protocol the study last ran with lays out
        # the report, so a report section added after the runs finished reads them.
        config = {**config, "report": study_record["config"]["report"]}
    provenance = study_provenance(study_record, runs)
    title = provenance.get("title", config["protocol"])
    if provenance:
        title += f"\n\n{provenance['paper']}. Data: {provenance['source']}; scale {provenance['scale']}."
    folder = study / "report"
    REPORT_LAYOUTS.get(config["report"]["curve_axis"])(runs, config, folder, title)
    write_paper_comparison(runs, config, provenance, folder / "paper.md")
    return folder


def read_study_record(study: Path) -> dict[str, Any]:
    """``study.json`` (command, resolved configuration, versions: written when the study runs), or {} without one."""
    study_file = study / "study.json"
    return json.loads(study_file.read_text()) if study_file.is_file() else {}


def study_provenance(study_record: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The study's provenance (protocol title, paper, data source, scale) from a run record or ``study.json``'s
    ``study_record``."""
    return next(iter(runs.values()))[0].get("study") or study_record
