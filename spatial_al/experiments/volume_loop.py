"""One run of a volume study (Nath et al. 2022): whole volumes are queried and annotated, a 3D model is trained.

Round 0 annotates k volumes: the proxy arms train one proxy model on the proxy labels of every training volume
(:class:`~spatial_al.experiments.config.ProxyConfig`), annotate the k it is least certain about and start the
supervised model from its weights; the other arms annotate k volumes drawn from the seed alone (the same for every
such arm of a seed). Every round then trains (round 0) or fine-tunes the 3D model on random patches of the annotated
volumes, and, for a semi-supervised arm, fine-tunes it once more with Nath et al.'s stage 2 on the most certain
unannotated volumes (:mod:`spatial_al.training.semi_supervised`); evaluates it on the test volumes by sliding
window; and queries the k unannotated volumes of highest mean MC-dropout variance or entropy (m passes), or k at
random. The run folder is the slice runs' (:mod:`spatial_al.experiments.loop`), with the proxy model
(``proxy.pt``) and each round's noisy labels (``noisy/round-NNN.npz``) beside it, so a killed run resumes exactly.

:class:`SparseVolumeSession` runs the MIDL 2025 study's 3D half on the same 3D machinery: slices, not volumes, are
annotated (once, by the 2D study's design grid), and the 3D model learns from them alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..files import atomic_path
from ..progress import report
from ..provenance import write_json
from .cohort import Subject
from .loop import CHECKPOINT_FILE, VOLUME_DRAW, Session, SessionState, round_seed
from .metrics import overlap_counts, pooled_scores, summarize, volume_metrics

PROXY_FILE = "proxy.pt"
PROXY_RANKING_FILE = "proxy_ranking.json"  # every training volume's proxy uncertainty, the cold start's scores
PROXY_RANK = "proxy_rank"  # the arm strategy that annotates volumes in the proxy model's order, every round
NOISY_FOLDER = "noisy"


@dataclass
class VolumeQuery:
    """Volumes chosen by a query, best first, with the scores of every candidate."""

    names: list[str]
    scores: dict[str, float]


def cached_window(window: list[float], data_window: list[float] | None, intensity: str) -> tuple[float, float]:
    """The proxy ``window`` (source units) in the cache's intensities: a CT window [low, high] scaled to [0, 1].

    Raises:
        ValueError: the cohort is not windowed, or the proxy window reaches outside the data window.
    """
    if intensity != "window" or data_window is None:
        raise ValueError(
            "The proxy arms threshold source intensities (Hounsfield units): set data.intensity to 'window' with a "
            "data.window that contains proxy.window."
        )
    low, high = data_window
    if not low <= window[0] < window[1] <= high:
        raise ValueError(
            f"proxy.window {window} reaches outside data.window {data_window}, which clips the cached intensities; "
            "widen data.window or move proxy.window inside it."
        )
    return (window[0] - low) / (high - low), (window[1] - low) / (high - low)


class VolumeSession(Session):
    """A volume study's run in progress (see the module docstring); the annotated slices of a volume are all of its
    slices or none."""

    def __init__(self, spec, progress=None):
        super().__init__(spec, progress)
        self.window = tuple(self.training.patch_size)

    def reference_epochs(self) -> int:
        """The fully supervised reference trains as many steps as a whole run's rounds together."""
        return self.training.max_epochs * (self.config.rounds + 1)

    # -- volumes -------------------------------------------------------------------------------------------------

    def unlabeled(self, state: SessionState) -> list[Subject]:
        return [s for s in self.training_subjects if not state.annotated[s.name]]

    def labeled_volumes(self, state: SessionState) -> int:
        return sum(1 for s in self.training_subjects if state.annotated[s.name])

    def volume_examples(self, subjects: list[Subject], targets: list[np.ndarray] | None = None):
        """:class:`~spatial_al.training.VolumeExamples` of ``subjects`` (image (1, S, H, W), target (C, S, H, W)): their
        ground truth, or ``targets`` (each (C, S, H, W)); views of the memory-mapped cache, read a patch at a time."""
        from ..training import VolumeExamples

        examples = VolumeExamples()
        for index, subject in enumerate(subjects):
            target = np.moveaxis(np.asarray(subject.targets), 1, 0) if targets is None else targets[index]
            examples.append(np.asarray(subject.image)[np.newaxis], target, name=subject.name)
        return examples

    def training_examples(self, state: SessionState):
        return self.volume_examples([s for s in self.training_subjects if state.annotated[s.name]])

    def validation_examples(self):
        if not self.spec.split.validation:
            return None
        return self.volume_examples([self.cohort[name] for name in self.spec.split.validation])

    def probabilities(self, subject: Subject):
        """The model's class probabilities (out_channels, S, H, W) of ``subject`` by sliding window."""
        from ..models.volume_inference import predict_volume

        self.model.eval()
        image = np.array(subject.image)[np.newaxis]
        return predict_volume(self.model, image, self.window, self.device, batch_size=self.config.batch_size)

    # -- model ---------------------------------------------------------------------------------------------------

    def new_model(self):
        """A fresh 3D model; a proxy arm's starts from the proxy model's weights (output layer re-made)."""
        from ..training.checkpoint import initialize_from, load_model

        model = super().new_model()
        path = self.spec.folder / PROXY_FILE
        if self.proxy_arm and path.is_file():
            proxy, _ = load_model(path, self.device)
            fresh = initialize_from(model, proxy)
            self.encoder_init = {"weights": f"the proxy model ({PROXY_FILE})", "not_copied": fresh}
        return model

    @property
    def proxy_arm(self) -> bool:
        return self.arm.strategy.startswith("proxy_")

    @property
    def proxy_measure(self) -> str:
        """The proxy model's uncertainty that makes a proxy arm's cold start (and a proxy_rank arm's every query)."""
        return (
            self.config.proxy.measure if self.arm.strategy == PROXY_RANK else self.arm.strategy.removeprefix("proxy_")
        )

    def final_stage(self, state: SessionState) -> str:
        semi_supervised = self.arm.semi_supervised and self.unlabeled(state)
        return "semi_supervised" if semi_supervised else "segmentation"

    # -- the round's phases --------------------------------------------------------------------------------------

    def train(self, state: SessionState) -> dict[str, Any]:
        """The supervised stage on the annotated volumes, then, for a semi-supervised arm with volumes left
        unannotated, stage 2 on as many noisy-labeled volumes as there are annotated ones."""
        from ..training import save_checkpoint
        from ..training.semi_supervised import SemiSupervisedExamples

        already_trained = self.restore_trainer(state)
        started = len(self.trainer.state.history)
        labeled, validation = self.training_examples(state), self.validation_examples()
        noisy = None
        if not already_trained:
            if self.trainer.state.stage == "segmentation" and not self.trainer.state.finished:
                self.trainer.train_round(labeled, validation)
                save_checkpoint(self.spec.folder / CHECKPOINT_FILE, self.model, self.trainer)
            if self.final_stage(state) == "semi_supervised":
                noisy = self.noisy_labels(state)
                examples = SemiSupervisedExamples(labeled, self.volume_examples(noisy["subjects"], noisy["labels"]))
                self.trainer.train_semi_supervised(examples, validation)
                save_checkpoint(self.spec.folder / CHECKPOINT_FILE, self.model, self.trainer)
        epochs = [epoch for epoch in self.trainer.state.history if epoch["round"] == state.round_index]
        summary = {
            "epochs": len(epochs),
            "epochs_this_process": len(self.trainer.state.history) - started,
            "final_train_loss": epochs[-1]["train_loss"] if epochs else None,
        }
        if self.final_stage(state) == "semi_supervised":
            noisy = noisy or self.noisy_labels(state)
            predicted = np.concatenate([np.moveaxis(label, 0, 1) for label in noisy["labels"]]).astype(bool)
            truth = np.concatenate([np.asarray(s.targets) for s in noisy["subjects"]]).astype(bool)
            summary["noisy_labels"] = {
                "volumes": [s.name for s in noisy["subjects"]],
                "dice": pooled_scores(overlap_counts(predicted, truth))[0],
            }
        return summary

    def noisy_labels(self, state: SessionState) -> dict[str, Any]:
        """The round's noisy labels (made by the supervised stage's model, saved, read back on a resume): the
        ``len(T_l)`` unannotated volumes of lowest mean entropy of one prediction, their labels (C, S, H, W) where a
        class's probability reaches ``noisy_label_threshold``."""
        from ..models.inference import pixel_entropy
        from ..training.semi_supervised import noisy_label

        path = self.spec.folder / NOISY_FOLDER / f"round-{state.round_index:03d}.npz"
        if path.is_file():
            with np.load(path) as saved:
                names = json.loads(str(saved["names"]))
                return {"subjects": [self.cohort[n] for n in names], "labels": [saved[n] for n in names]}
        candidates = self.unlabeled(state)
        certainty, labels = {}, {}
        for done, subject in enumerate(candidates, start=1):
            probabilities = self.probabilities(subject)
            certainty[subject.name] = -float(pixel_entropy(probabilities[None], self.model.config.head).mean())
            labels[subject.name] = noisy_label(probabilities, self.model.config.head, self.config.noisy_label_threshold)
            report(self.progress, done, len(candidates), "noisy labels")
        count = min(self.labeled_volumes(state), len(candidates))
        names = sorted(certainty, key=lambda name: (-certainty[name], name))[:count]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            np.savez_compressed(temporary, names=np.array(json.dumps(names)), **{n: labels[n] for n in names})
        return {"subjects": [self.cohort[n] for n in names], "labels": [labels[n] for n in names]}

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the model on every test volume, predicted by sliding window."""
        from ..models.volume_inference import volume_labels

        per_volume = []
        for done, name in enumerate(self.spec.split.test, start=1):
            subject = self.cohort[name]
            labels = volume_labels(self.probabilities(subject), self.model.config.head)
            per_volume.append(volume_metrics(labels, np.asarray(subject.targets), subject.spacing, self.config.hd95))
            report(self.progress, done, len(self.spec.split.test), "evaluating")
        return summarize(per_volume, self.classes, self.config.batch_size)

    def uncertainty_ranking(self, subjects: list[Subject], measure: str, model, seed: int) -> dict[str, float]:
        """Mean MC-dropout ``measure`` ("variance" or "entropy") of ``model`` over each subject's voxels."""
        from ..models.volume_inference import volume_uncertainty

        scores = {}
        for done, subject in enumerate(subjects, start=1):
            statistics = volume_uncertainty(
                model, np.array(subject.image)[np.newaxis], self.window, self.device, passes=self.config.mc_samples,
                seed=seed, batch_size=self.config.batch_size,
            )  # fmt: skip
            scores[subject.name] = statistics.mean_variance if measure == "variance" else statistics.mean_entropy
            report(self.progress, done, len(subjects), f"MC-dropout {measure}")
        return scores

    def choose(self, candidates: list[Subject], count: int, measure: str, model, seed: int) -> VolumeQuery:
        """The ``count`` candidates of highest ``measure`` (ties to the earlier name), or a seeded random choice."""
        if measure == "random":
            rng = np.random.default_rng(seed)
            scores = dict(zip([s.name for s in candidates], rng.random(len(candidates)).tolist(), strict=True))
        else:
            scores = self.uncertainty_ranking(candidates, measure, model, seed)
        names = sorted(scores, key=lambda name: (-scores[name], name))[:count]
        return VolumeQuery(names, scores)

    def query(self, state: SessionState, count: int) -> VolumeQuery:
        """The ``count`` unannotated volumes of highest uncertainty under this round's model; for a proxy_rank arm,
        the next ones in the proxy model's order (no uncertainty computed again: the paper's "ProxyRank")."""
        if self.arm.strategy == PROXY_RANK:
            proxy_scores = json.loads((self.spec.folder / PROXY_RANKING_FILE).read_text())
            scores = {s.name: proxy_scores[s.name] for s in self.unlabeled(state)}
            return VolumeQuery(sorted(scores, key=lambda name: (-scores[name], name))[:count], scores)
        measure = self.arm.strategy.removeprefix("proxy_")
        seed = round_seed(self.spec.seed, state.round_index)
        return self.choose(self.unlabeled(state), count, measure, self.model, seed)

    def reveal(self, state: SessionState, ranking: VolumeQuery) -> list[list[Any]]:
        """The oracle annotates every slice of the queried volumes."""
        for name in ranking.names:
            state.annotated[name] = list(range(self.cohort[name].n_slices))
        return [[name, round(ranking.scores[name], 8)] for name in ranking.names]

    def make_pseudo_labels(self, state: SessionState, ranking) -> list[tuple[str, int]]:
        return []  # the semi-supervised stage's noisy labels live within a round's training

    def initial_selection(self) -> SessionState:
        """Round 0's k volumes: by the proxy model's uncertainty (proxy arms), or drawn from the seed alone."""
        subjects = self.training_subjects
        annotated: dict[str, list[int]] = {s.name: [] for s in subjects}
        if self.spec.reference:
            return SessionState(0, {s.name: list(range(s.n_slices)) for s in subjects})
        count = min(self.config.query_volumes, len(subjects))
        if self.proxy_arm:
            ranking = self.choose(subjects, count, self.proxy_measure, self.proxy_model(), self.spec.seed)
            write_json(self.spec.folder / PROXY_RANKING_FILE, ranking.scores)
            chosen = ranking.names
        else:
            order = np.random.default_rng([self.spec.seed, VOLUME_DRAW]).permutation(len(subjects))
            chosen = [subjects[i].name for i in order[:count]]
        for name in chosen:
            annotated[name] = list(range(self.cohort[name].n_slices))
        return SessionState(0, annotated)

    def proxy_model(self):
        """The proxy model, trained on the proxy labels of every training volume for ``proxy.max_epochs``, keeping the
        epoch of lowest loss on the proxy labels of the ``proxy.selection`` volumes (saved as ``proxy.pt``; read back
        when a killed run restarts)."""
        from ..selection.proxy import proxy_label
        from ..selection.volumes import train_volume_proxy
        from ..training import save_checkpoint
        from ..training.checkpoint import load_model

        path = self.spec.folder / PROXY_FILE
        if path.is_file():
            return load_model(path, self.device)[0]
        data = self.config.data
        window = cached_window(self.config.proxy.window, data.window, data.intensity)
        images = [np.asarray(s.image) for s in self.training_subjects]
        selecting = {"validation": self.spec.split.validation, "test": self.spec.split.test, "none": []}
        held_out = [np.asarray(self.cohort[name].image) for name in selecting[self.config.proxy.selection]]
        epochs = self.config.proxy.max_epochs  # every epoch runs; the best on the held-out proxy labels is kept
        training = self.training.with_options(max_epochs=epochs, patience=epochs, validation_fraction=0.0)
        architecture = replace(self.model_config(), class_names=("proxy",), class_colors=())
        model = train_volume_proxy(
            images, [proxy_label(image, window) for image in images], architecture, training, self.device,
            self.progress, (held_out, [proxy_label(image, window) for image in held_out]) if held_out else None,
        )  # fmt: skip
        save_checkpoint(path, model)
        return model

    # -- budget --------------------------------------------------------------------------------------------------

    def query_count(self, state: SessionState) -> int:
        return min(self.config.query_volumes, len(self.unlabeled(state)))

    def round_details(self, state: SessionState) -> dict[str, Any]:
        return {"labeled_volumes": self.labeled_volumes(state)}

    def expected_rounds(self, state: SessionState) -> int:
        if self.spec.reference:
            return 0
        left = math.ceil(len(self.unlabeled(state)) / self.config.query_volumes)
        return min(self.config.rounds, state.round_index + left)

    def finished(self, state: SessionState) -> bool:
        return self.spec.reference or state.round_index >= self.config.rounds or not self.unlabeled(state)


class SparseVolumeSession(VolumeSession):
    """A run of the MIDL 2025 study's 3D half: the 2D study's cold start (rho percent of the slices of s x N volumes,
    by the arm's selection, and, for a '+ M.I.' arm, the slices between them filled by mask interpolation), then one
    3D model trained on patches of those volumes with every other slice masked out of the loss (the interpolated
    slices trained on as annotations), tested by sliding window. No query rounds."""

    def initial_selection(self) -> SessionState:
        return Session.initial_selection(self)

    def training_examples(self, state: SessionState):
        """The volumes holding an annotated slice: image (1, S, H, W), target (C, S, H, W) that holds the revealed
        truth of the annotated slices and the pseudo-labels of the filled ones (zero elsewhere, held slice by slice
        as a :class:`~spatial_al.training.volumes.SliceStack`), those slices as the loss mask."""
        from ..training import VolumeExamples
        from ..training.volumes import SliceStack

        examples = VolumeExamples()
        for subject in self.training_subjects:
            annotated, filled = state.annotated[subject.name], state.pseudo.get(subject.name, {})
            if not annotated:
                continue
            slices = {index: subject.targets[index] for index in annotated} | dict(filled)
            target = SliceStack((len(self.classes), *np.shape(subject.image)), slices)
            examples.append(np.asarray(subject.image)[np.newaxis], target, annotated=sorted(slices), name=subject.name)
        return examples
