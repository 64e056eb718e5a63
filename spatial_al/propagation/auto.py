"""``auto``: the better of ``sdf`` and ``sli2vol`` on this scan, judged on the scan's own annotated slices.

Neither method wins everywhere: signed-distance interpolation is best where structures change little across a gap
(thin slices, narrow gaps), learned propagation where they move and deform (wide gaps, thick slices). Which applies
depends on the anatomy, the slice thickness and the gap, so ``auto`` measures it on the scan itself: it hides every
other annotated slice, fills them with both methods from the remaining ones, and scores each method against the
hidden annotation. By default the method with the higher mean score over every hidden slice fills the whole scan
(``choice="volume"``); ``choice="gap"`` lets each gap take the method that reproduced its own two end slices better.
Measured on every data set the project ships (README, "auto against the better of its two methods"), the per-gap
choice lost up to 0.017 Dice to the better method: two hidden slices are too few to tell methods apart that differ
by a few hundredths, and the test runs at twice the gap. The per-volume choice pools every hidden slice and matched
the better method everywhere. ``sdf_gap_mm`` sends gaps narrower than that many mm to ``sdf`` untested instead (off
by default: measured, it helps on a 1 mm brain MRI and hurts on the frog cohort, see the README).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from ..metrics import mean_label_dice
from ..progress import report
from .base import PROPAGATORS, MethodInfo, PropagationTask, gaps, needs

CANDIDATES = ("sdf", "sli2vol")
# Without hidden slices to judge by (fewer than three annotated), gaps of at least this many mm go to sli2vol: on a
# 1 mm brain MRI with 10 deep structures sdf won at 5 mm gaps and sli2vol at 10 mm ones (issue "Speed where people
# wait"), and sli2vol won at every gap of the 10 mm chest CT (README).
SLI2VOL_MIN_GAP_MM = 7.5


def held_out_scores(task: PropagationTask, options: dict[str, dict]) -> dict[str, dict[int, float]]:
    """Each candidate's mean label Dice on annotated slices it did not see: every other annotated slice is hidden
    (twice, once per parity), filled from the others, and compared with its annotation. Slices outside the range of
    the ones kept are not scored. The gaps are twice as wide as the real ones; the comparison is between methods
    at the same width.

    Returns:
        method -> {hidden slice: mean label Dice over the label layers}.
    """
    annotated = task.annotated
    scores: dict[str, dict[int, float]] = {method: {} for method in CANDIDATES}
    for parity in (0, 1):
        kept, hidden = annotated[parity::2], annotated[1 - parity :: 2]
        hidden = hidden[(hidden > kept[0]) & (hidden < kept[-1])] if kept.size >= 2 else hidden[:0]
        if hidden.size == 0:
            continue
        subtask = replace(task, annotated=kept)
        for method in CANDIDATES:
            filled, _ = PROPAGATORS.get(method)(subtask, **options[method])
            for slice_index in hidden.tolist():
                scores[method][slice_index] = float(
                    np.mean(
                        [
                            mean_label_dice(filled[layer, slice_index], task.label_layers[layer, slice_index])
                            for layer in range(task.label_layers.shape[0])
                        ]
                    )
                )
    return scores


def gap_mm(task: PropagationTask, gap: tuple[int, int]) -> float:
    """The width of the gap (a, b) along the slice axis, in mm."""
    return (gap[1] - gap[0]) * float(task.spacing[0])


CHOICES = ("volume", "gap")


def better_method(scores: dict[str, dict[int, float]], judged: list[int]) -> str:
    """The candidate with the higher mean held-out Dice on the ``judged`` slices; a tie goes to sdf."""
    means = {method: np.mean([scores[method][index] for index in judged]) for method in CANDIDATES}
    return "sli2vol" if means["sli2vol"] > means["sdf"] else "sdf"


def choose_per_gap(
    task: PropagationTask, scores: dict[str, dict[int, float]], choice: str = "volume", sdf_gap_mm: float = 0.0
) -> dict[tuple[int, int], str]:
    """The candidate for each gap (a, b): sdf for a gap narrower than ``sdf_gap_mm``; else, with ``choice="volume"``,
    the one with the higher mean held-out Dice over every scored slice; with ``choice="gap"``, over a and b (those
    scored), else over every scored slice. Without scores (fewer than three annotated slices), sli2vol for gaps of
    at least :data:`SLI2VOL_MIN_GAP_MM`, else sdf. Ties go to sdf."""
    scored = list(scores["sdf"])
    choices = {}
    for a, b in gaps(task.annotated):
        local = [index for index in (a, b) if index in scores["sdf"]] if choice == "gap" else []
        if gap_mm(task, (a, b)) < sdf_gap_mm:
            choices[(a, b)] = "sdf"
        elif scored:
            choices[(a, b)] = better_method(scores, local or scored)
        else:
            choices[(a, b)] = "sli2vol" if gap_mm(task, (a, b)) >= SLI2VOL_MIN_GAP_MM else "sdf"
    return choices


@PROPAGATORS.register("auto")
@needs(MethodInfo())
def auto_propagation(
    task: PropagationTask,
    *,
    sdf_options: dict[str, Any] | None = None,
    sli2vol_options: dict[str, Any] | None = None,
    choice: str = "volume",
    sdf_gap_mm: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``sdf`` or ``sli2vol``, whichever reproduced the scan's annotated slices better when they were hidden (every
    other annotated slice hidden in turn and filled from the rest; see :func:`held_out_scores`): for the whole scan,
    or with ``choice="gap"`` for each gap from its own end slices.

    Without an image only ``sdf`` can run; with fewer than three annotated slices nothing can be hidden, and gaps of
    at least 7.5 mm go to ``sli2vol``. Costs sli2vol's training once (the network is reused) and three propagations
    with each method. Confidence is the chosen method's.

    Keyword Args:
        sdf_options: options of ``sdf`` (e.g. {"tip_fraction": 0.5}).
        sli2vol_options: options of ``sli2vol`` (e.g. {"steps": 100}).
        choice: "volume" (the default) judges by every hidden slice and fills the scan with one method; "gap" judges
            each gap by its two end slices (by every hidden slice where neither was scored).
        sdf_gap_mm: gaps narrower than this many mm take ``sdf`` untested (when every gap is, only ``sdf`` runs);
            0 (the default) judges every gap.
    """
    if choice not in CHOICES:
        raise ValueError(f"auto's choice must be 'volume' (one method for the scan) or 'gap', not {choice!r}.")
    options = {"sdf": dict(sdf_options or {}), "sli2vol": dict(sli2vol_options or {})}
    for method, method_options in options.items():
        PROPAGATORS.check_options(method, method_options)
    if task.image is None:
        return PROPAGATORS.get("sdf")(task, **options["sdf"])
    testable = task.annotated.size >= 3 and any(gap_mm(task, gap) >= sdf_gap_mm for gap in gaps(task.annotated))
    scores = held_out_scores(task, options) if testable else {m: {} for m in CANDIDATES}
    choices = choose_per_gap(task, scores, choice, sdf_gap_mm)
    filled = np.zeros_like(task.label_layers)
    confidence = np.full(task.n_slices, np.nan, dtype=np.float32)
    for method in sorted(set(choices.values())):
        method_filled, method_confidence = PROPAGATORS.get(method)(task, **options[method])
        for (a, b), chosen in choices.items():
            if chosen == method:
                filled[:, a + 1 : b] = method_filled[:, a + 1 : b]
                confidence[a + 1 : b] = method_confidence[a + 1 : b]
    report(task.progress, 1, 1, choice_report(choices))
    return filled, confidence


def choice_report(choices: dict[tuple[int, int], str]) -> str:
    """The progress message saying what ``auto`` chose, e.g. "auto chose 0-5: sdf, 5-10: sli2vol"."""
    summary = ", ".join(f"{a}-{b}: {method}" for (a, b), method in choices.items())
    return f"auto chose {summary}" if summary else "auto: no gap to fill"


def reported_choices(messages: Iterable[str]) -> Counter:
    """Gaps per method, read back from the :func:`choice_report` among progress ``messages``."""
    counts: Counter = Counter()
    for message in messages:
        if message.startswith("auto chose "):
            counts.update(re.findall(r"\d+-\d+: (\w+)", message))
    return counts
