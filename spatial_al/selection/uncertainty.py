"""Uncertainty strategies: slices where the trained model is least sure of itself.

Every score is a per-slice mean over pixels (and classes), so slices of different sizes compare fairly across a
cohort; higher = more uncertain = annotate sooner. In a cohort these strategies pick at most one slice per volume
per round by default, as "Less Is More" does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..progress import report
from .base import STRATEGIES, PoolVolume, RankingContext, uses_model

if TYPE_CHECKING:  # torch is imported on first use, so importing the backend stays light
    import torch

    from ..models.inference import McDropoutStatistics, SlicePredictor

# Pixels scored per step (32 slices of 256 x 256): bounds the memory of the per-class maps a step holds (MC dropout's
# mean and variance) whatever the slice size, and paces progress and cancel.
CHUNK_PIXELS = 32 * 256 * 256

# (predictor, inputs (N, 1, H, W)) -> one score per slice, shape (N,)
SliceScorer = Callable[["SlicePredictor", np.ndarray], np.ndarray]


def slice_chunks(volume: PoolVolume, slices: np.ndarray) -> list[np.ndarray]:
    """``slices`` of ``volume`` in steps of :data:`CHUNK_PIXELS` pixels (at least one slice a step)."""
    size = max(1, CHUNK_PIXELS // int(np.prod(volume.normalized_image.shape[1:])))
    return [slices[start : start + size] for start in range(0, slices.size, size)]


def score_pool(
    context: RankingContext, scorer: SliceScorer, message: str, model=None, volume_index: int | None = None
) -> np.ndarray:
    """``scorer`` on every candidate slice of the pool (or of one volume), in chunks, with progress.

    Args:
        context: the call's context.
        scorer: scores a chunk of slices with a predictor.
        message: progress message.
        model: the model to score with (default: the call's model).
        volume_index: score only this volume's candidates.

    Returns:
        Scores (n,) in pool order (of that volume's candidates when ``volume_index`` is given).
    """
    predictor = context.predictor(model)
    volumes = context.volumes if volume_index is None else context.volumes[volume_index : volume_index + 1]
    chunks = [(volume, slices) for volume in volumes for slices in slice_chunks(volume, volume.candidates)]
    scores = []
    for done, (volume, slices) in enumerate(chunks, start=1):
        scores.append(np.asarray(scorer(predictor, volume.model_inputs(slices)), dtype=float))
        report(context.progress, done, len(chunks), message)
    return np.concatenate(scores) if scores else np.zeros(0)


def max_uncertainty_value(head: str, channels: int) -> float:
    """alpha of "Less Is More" (appendix A): 0.5 for multi-label (sigmoid) outputs, 1/C for single-label (softmax,
    C channels including the background)."""
    return 0.5 if head == "sigmoid" else 1.0 / channels


def least_confidence_scores(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """1 - mean |alpha - p| / (1 - alpha) per slice, for probabilities (N, C, H, W): 1 when every probability
    sits at alpha (maximally uncertain), 0 when every pixel is certain."""
    alpha = max_uncertainty_value(head, probabilities.shape[1])
    distance = (probabilities - alpha).abs().mean((1, 2, 3))
    return (1.0 - distance / (1.0 - alpha)).numpy()


def classic_least_confidence(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """Mean of 1 - (the probability of the predicted class) per slice, for probabilities (N, C, H, W): the classic
    least confidence (Lewis and Gale; SBC-AL's "LC" baseline). Softmax: 1 - max over C; sigmoid: 1 - max(p, 1 - p)
    per class, averaged over the classes."""
    if head == "softmax":
        return (1.0 - probabilities.max(1).values).mean((1, 2)).numpy()
    return (0.5 - (probabilities - 0.5).abs()).mean((1, 2, 3)).numpy()  # 1 - max(p, 1 - p)


def less_is_more_entropy(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """Minus the mean of -x log x with x = |alpha - p| ("Less Is More" appendix A, ranked ascending there): a
    prediction at alpha everywhere scores 0, the highest; any confident pixel lowers the score."""
    alpha = max_uncertainty_value(head, probabilities.shape[1])
    x = (probabilities - alpha).abs().clamp(min=1e-10)
    return (x * x.log()).mean((1, 2, 3)).numpy()


def shannon_entropy(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """Mean pixel entropy divided by its maximum (log C for softmax, C log 2 for sigmoid), in [0, 1]."""
    from ..models.inference import pixel_entropy

    channels = probabilities.shape[1]
    maximum = math.log(channels) if head == "softmax" else channels * math.log(2.0)
    return (pixel_entropy(probabilities, head).mean((1, 2)) / maximum).numpy()


def margin_scores(probabilities: torch.Tensor, head: str) -> np.ndarray:
    """1 - mean margin per slice: the gap between the two likeliest classes (softmax) or |2p - 1| per class
    (sigmoid, the gap between a class and its absence)."""
    if head == "softmax":
        top_two = probabilities.topk(2, dim=1).values
        margin = (top_two[:, 0] - top_two[:, 1]).mean((1, 2))
    else:
        margin = (2.0 * probabilities - 1.0).abs().mean((1, 2, 3))
    return (1.0 - margin).numpy()


UNCERTAINTY_MEASURES: dict[str, Callable[[torch.Tensor, str], np.ndarray]] = {
    "least_confidence": least_confidence_scores,
    "classic_least_confidence": classic_least_confidence,
    "entropy": less_is_more_entropy,
    "shannon": shannon_entropy,
    "margin": margin_scores,
}


def probability_measure(measure: str) -> SliceScorer:
    """A slice scorer applying one of :data:`UNCERTAINTY_MEASURES` to the model's probabilities."""
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(f"Unknown uncertainty measure {measure!r}; choose one of {', '.join(UNCERTAINTY_MEASURES)}.")
    function = UNCERTAINTY_MEASURES[measure]
    return lambda predictor, inputs: function(predictor.probabilities(inputs), predictor.head)


@STRATEGIES.register("least_confidence")
@uses_model(default_per_volume=1)
def least_confidence(context: RankingContext, *, form: str = "less_is_more") -> np.ndarray:
    """Slices the model is least confident of, in "Less Is More"'s form or the classic one.

    Keyword Args:
        form: "less_is_more" (appendix A): score = 1 - mean |alpha - p| / (1 - alpha) over pixels and output
            channels, alpha = 0.5 for a multi-label (sigmoid) model and 1/C for a single-label (softmax) one with C
            channels; "classic": score = mean of 1 - the predicted class's probability (SBC-AL's LC baseline).
    """
    forms = {"less_is_more": "least_confidence", "classic": "classic_least_confidence"}
    if form not in forms:
        raise ValueError(f"Unknown least-confidence form {form!r}; choose one of {', '.join(forms)}.")
    return score_pool(context, probability_measure(forms[form]), f"least confidence ({form})")


@STRATEGIES.register("entropy")
@uses_model(default_per_volume=1)
def entropy(context: RankingContext, *, form: str = "less_is_more") -> np.ndarray:
    """Slices of highest prediction entropy ("Less Is More" appendix A form, or Shannon's).

    Keyword Args:
        form: "less_is_more": score = mean x log x with x = |alpha - p| (alpha as in least_confidence; a uniform
            prediction scores 0, the maximum); "shannon": mean pixel entropy over its maximum, in [0, 1].
    """
    forms = {"less_is_more": "entropy", "shannon": "shannon"}
    if form not in forms:
        raise ValueError(f"Unknown entropy form {form!r}; choose one of {', '.join(forms)}.")
    return score_pool(context, probability_measure(forms[form]), f"entropy ({form})")


@STRATEGIES.register("margin")
@uses_model(default_per_volume=1)
def margin(context: RankingContext) -> np.ndarray:
    """Slices where the two likeliest classes are closest: score = 1 - mean margin (best-versus-second-best)."""
    return score_pool(context, probability_measure("margin"), "margin")


@STRATEGIES.register("mc_dropout")
@uses_model(default_per_volume=1)
def mc_dropout(context: RankingContext, *, samples: int = 10, measure: str = "bald", layers: str = "all") -> np.ndarray:
    """Slices where passes with dropout on disagree most (Gal et al.): mean BALD mutual information, variance or
    standard deviation.

    Keyword Args:
        samples: stochastic forward passes per slice (>= 2).
        measure: "bald" (mutual information between prediction and weights, in nats), "variance" (mean variance of
            the probabilities over the passes) or "std" (their mean standard deviation: SBC-AL's "Mean STD").
        layers: "all" (every dropout layer is sampled: MC dropout as published; ``samples`` forward passes) or
            "last" (dropout on the decoder's output only, which for the U-Net presets is their last dropout layer:
            the network runs once and each pass is one 1 x 1 head, so 10 passes cost about one prediction; an
            approximation that keeps the last layer's uncertainty only). See ``SlicePredictor.mc_dropout``.
    """
    return score_pool(
        context,
        mc_dropout_scorer(context, samples, measure, layers),
        f"MC-dropout ({measure}, {samples} samples, {layers} layers)",
    )


# MC-dropout statistics -> a map per slice (N, H, W)
MC_DROPOUT_MEASURES: dict[str, Callable[[McDropoutStatistics], torch.Tensor]] = {
    "bald": lambda statistics: statistics.mutual_information,
    "variance": lambda statistics: statistics.variance.mean(1),
    "std": lambda statistics: statistics.variance.sqrt().mean(1),
}


def mc_dropout_scorer(context: RankingContext, samples: int, measure: str, layers: str = "all") -> SliceScorer:
    """A slice scorer of mean BALD or variance over ``samples`` dropout passes of ``layers``, each chunk seeded from
    the call's random generator."""
    from ..models.inference import MC_DROPOUT_LAYERS

    if measure not in MC_DROPOUT_MEASURES:
        raise ValueError(f"Unknown MC-dropout measure {measure!r}; choose one of {', '.join(MC_DROPOUT_MEASURES)}.")
    if layers not in MC_DROPOUT_LAYERS:
        raise ValueError(f"Unknown MC-dropout layers {layers!r}; choose one of {', '.join(MC_DROPOUT_LAYERS)}.")
    seeds = iter(context.rng.integers(0, 2**31 - 1, size=len(context.pool_slice) + 1).tolist())

    def scorer(predictor: SlicePredictor, inputs: np.ndarray) -> np.ndarray:
        statistics = predictor.mc_dropout(inputs, samples=samples, seed=next(seeds), layers=layers)
        return MC_DROPOUT_MEASURES[measure](statistics).mean((1, 2)).numpy()

    return scorer


def tta_disagreement(predictor: SlicePredictor, inputs: np.ndarray, transforms: tuple[str, ...]) -> np.ndarray:
    """Mean Jensen-Shannon divergence between the predictions under test-time transforms (entropy of the mean
    prediction minus the mean entropy), per slice (N,)."""
    return predictor.tta_divergence(inputs, transforms).mean((1, 2)).numpy()


@STRATEGIES.register("taal")
@uses_model(default_per_volume=1)
def taal(context: RankingContext, *, transforms: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
    """Test-time augmentation disagreement (TAAL, Gaillochet et al. 2022): slices whose predictions change most
    under flips and rotations; score = mean Jensen-Shannon divergence between the augmented predictions.

    Keyword Args:
        transforms: names from ``identity, flip_rows, flip_columns, rotate_90, rotate_180, rotate_270`` (default:
            all of them).
    """
    from ..models.inference import TTA_TRANSFORMS

    transforms = tuple(TTA_TRANSFORMS if transforms is None else transforms)
    if len(transforms) < 2:
        raise ValueError("taal needs at least two test-time transforms to measure disagreement.")
    return score_pool(context, lambda p, x: tta_disagreement(p, x, transforms), "test-time augmentation")
