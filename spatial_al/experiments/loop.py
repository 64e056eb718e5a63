"""One run of a study: a simulated annotation session over a cohort, for one strategy (arm) and one seed.

Round 0 annotates the protocol's cold-start selection. Every round then: train (round 0) or fine-tune (later
rounds: from the last round's weights, or from the run's first weights with ``round_weights="initial"``) on the
annotated and pseudo-labeled training slices (and, for TAAL, the unannotated ones), early-stopping on the validation
subjects; evaluate on the test subjects; stop when the budget is spent; else query a batch over the whole training
pool with the arm's strategy, reveal the ground truth of the queried slices (the oracle) and make the arm's
pseudo-labels. The query, the pseudo-labels and the trainer are the ones the Slicer modules and the CLI use.

The run folder holds ``setting.json`` (what the run computes with), ``state.npz`` (the session after the last
finished round), ``model.pt`` (the trainer's checkpoint, rewritten after every epoch), ``rounds/round-NNN.json`` and,
once finished, ``run.json``. A killed run restarts from there, if its setting is the resumed study's: finished rounds
are kept and an interrupted round continues from its last epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from ..progress import ProgressReporter, report
from ..volume import Segment
from .cohort import Cohort, Split, Subject
from .config import ArmConfig, ConfigError, ExperimentConfig, InitialConfig
from .metrics import one_hot_prediction, pooled_overlap, summarize, volume_metrics

REFERENCE_ARM = "Full"  # the fully supervised reference: every training slice annotated, one round
STATE_FILE = "state.npz"
CHECKPOINT_FILE = "model.pt"
RUN_FILE = "run.json"
SETTING_FILE = "setting.json"  # what a run computes with, written when it is planned; checked when it is resumed
SLI2VOL_NETWORKS = "sli2vol-networks"  # folder of the cohort cache keeping the correspondence networks of M.I. arms


@dataclass(frozen=True)
class RunSpec:
    """What one run needs (picklable, so a Ray worker can run it).

    Attributes:
        folder: the run's folder.
        arm: the arm's name (:data:`REFERENCE_ARM` for the fully supervised reference).
        seed: the run's seed (weights, data order, augmentation, dropout, random queries).
        config: the resolved protocol.
        cohort: the cohort's cache folder.
        split: the subject-wise split.
        device: "auto", "cpu", "cuda", ...
        threads: torch CPU threads of the run (None: torch's default); the same value gives the same numbers.
        provenance: the study's protocol title, paper, scale and data source, copied into the run record.
    """

    folder: Path
    arm: str
    seed: int
    config: ExperimentConfig
    cohort: Path
    split: Split
    device: str = "auto"
    threads: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> bool:
        return self.arm == REFERENCE_ARM


@dataclass
class SessionState:
    """The annotation session after a finished round (what ``state.npz`` holds).

    Attributes:
        round_index: the next round to train.
        annotated: training subject -> its annotated slices (sorted).
        pseudo: training subject -> slice -> multi-hot pseudo-label (C, H, W) uint8.
        rounds: the records of the finished rounds.
        initial: training subject -> its round-0 annotation (STAR's fixed groups); None: ``annotated`` as it is.
    """

    round_index: int
    annotated: dict[str, list[int]]
    pseudo: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, list[int]] | None = None

    def __post_init__(self):
        if self.initial is None:
            self.initial = {subject: list(slices) for subject, slices in self.annotated.items()}

    def save(self, path: Path) -> None:
        header = {
            "round_index": self.round_index,
            "annotated": self.annotated,
            "rounds": self.rounds,
            "initial": self.initial,
        }
        arrays = {
            f"pseudo/{subject}/{index}": mask for subject, masks in self.pseudo.items() for index, mask in masks.items()
        }
        with atomic_path(path) as temporary:
            np.savez_compressed(temporary, header=np.array(json.dumps(header)), **arrays)

    @classmethod
    def load(cls, path: Path) -> SessionState:
        with np.load(path) as contents:
            header = json.loads(str(contents["header"]))
            pseudo: dict[str, dict[int, np.ndarray]] = {}
            for key in contents.files:
                if key.startswith("pseudo/"):
                    _, subject, index = key.rsplit("/", 2)
                    pseudo.setdefault(subject, {})[int(index)] = contents[key]
        initial = header.get("initial")
        if initial is None:  # written before the state kept it: round 0 is what no round queried
            queried = {(subject, index) for record in header["rounds"] for subject, index in record.get("queried", [])}
            initial = {s: [i for i in slices if (s, i) not in queried] for s, slices in header["annotated"].items()}
        return cls(header["round_index"], header["annotated"], pseudo, header["rounds"], initial)

    def labeled_count(self) -> int:
        return sum(len(slices) for slices in self.annotated.values())

    def pseudo_count(self) -> int:
        return sum(len(masks) for masks in self.pseudo.values())


class RoundProgress:
    """A run's progress: one step per round (rounds 0 .. ``last_round``); a phase's own steps (batches, volumes) show
    in the message. Wraps the caller's reporter (None: silent) and passes its cancel requests through."""

    def __init__(self, outer: ProgressReporter | None, last_round: int = 0):
        self.outer = outer
        self.last_round = last_round
        self.round_index = 0
        self.phase = ""

    def start(self, round_index: int, phase: str) -> None:
        self.round_index, self.phase = round_index, phase
        report(self.outer, round_index, self.last_round + 1, f"round {round_index}/{self.last_round} {phase}")

    def finish(self) -> None:
        report(self.outer, self.last_round + 1, self.last_round + 1, "done")

    def progress(self, done: int, total: int, message: str = "") -> None:
        if self.outer is not None:
            detail = f"{self.phase} {done}/{total}" + (f" {message}" if message else "")
            where = f"round {self.round_index}/{self.last_round} {detail}"
            self.outer.progress(self.round_index, self.last_round + 1, where)

    def should_cancel(self) -> bool:
        return self.outer is not None and self.outer.should_cancel()


def initial_slices(initial: InitialConfig, slice_counts: list[int]) -> int:
    """Slices the cold start annotates: the grid on every training volume (``slice_counts``), its budget, or (with
    a density) at most that many: the density on the largest volumes it may choose."""
    if initial.density is not None:
        largest = sorted(slice_counts, reverse=True)[: initial.annotated_volumes(len(slice_counts))]
        return sum(initial.volume_budget(count) for count in largest)
    if initial.per_volume_grid:
        return sum(math.ceil(count / initial.options["interval"]) for count in slice_counts)
    return initial.pool_budget(sum(slice_counts))


def last_round(config: ExperimentConfig, pool_slices: int, labeled: int, round_index: int = 0) -> int:
    """The last round a run reaches from ``round_index`` with ``labeled`` slices: the budget, or the round count."""
    rounds = config.rounds
    if config.budget_percent is not None:
        needed = config.budget_percent / 100.0 * pool_slices - labeled
        rounds = min(rounds, round_index + max(0, math.ceil(needed / config.query_count(pool_slices))))
    return rounds


def reference_epochs(config: ExperimentConfig, training, slice_counts: list[int]) -> int:
    """Epochs of the fully supervised reference: as many optimizer steps as a whole run's rounds take together
    (an upper bound where early stopping ends rounds sooner), so the reference is not the less trained model."""
    pool = sum(slice_counts)
    labeled = initial_slices(config.initial, slice_counts)
    rounds = last_round(config, pool, labeled) + 1
    if training.iterations_per_epoch is not None:
        return training.max_epochs * rounds
    steps = sum(
        training.max_epochs * math.ceil(min(pool, labeled + r * config.query_count(pool)) / training.batch_size)
        for r in range(rounds)
    )
    return max(training.max_epochs, math.ceil(steps / math.ceil(pool / training.batch_size)))


def class_indices(targets: np.ndarray) -> np.ndarray:
    """Multi-hot targets (S, C, H, W) as a label map (S, H, W) uint8: class c + 1 where channel c is set (the last
    class wins where channels overlap; a study's classes do not)."""
    label_map = np.zeros((targets.shape[0], *targets.shape[2:]), np.uint8)
    for c in range(targets.shape[1]):
        label_map[targets[:, c].astype(bool)] = c + 1
    return label_map


VOLUME_DRAW = 0x5C  # a stream of the run's seed for the annotated volumes of a density selection


def round_seed(seed: int, round_index: int) -> int:
    """The seed of a round's random choices, from the run's seed and the round (a resumed round repeats them)."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0])


def arm_config(spec: RunSpec) -> ArmConfig:
    if spec.reference:
        return ArmConfig(strategy="random", description="fully supervised: every training slice annotated")
    return spec.config.arms[spec.arm]


def arm_preset(config: ExperimentConfig, arm: ArmConfig) -> str:
    """The model preset of ``arm``: a STAR model for STAR queries or pseudo-labels, an SBC-AL model for SBC-AL's
    queries, the protocol's plain preset otherwise."""
    from ..selection import STRATEGIES, strategy_info

    if config.unit != "slice":  # volume strategies rank, and sparse volumes train, with the protocol's 3D model
        return config.preset
    kind = strategy_info(STRATEGIES.get(arm.strategy)).model
    if kind == "star" or arm.pseudo_labels == "star":
        return config.star_preset
    return config.structure_preset if kind == "structure" else config.preset


def arm_model_config(config: ExperimentConfig, arm: ArmConfig, classes: tuple[str, ...]):
    """The :class:`~spatial_al.models.ModelConfig` of ``arm``'s runs: its preset, then the protocol's and the arm's
    model changes (softmax head, slices along array axis 0).

    Raises:
        ConfigError: an unknown model field or a value the model rejects.
    """
    from ..models import ModelConfig, preset_config

    base = asdict(preset_config(arm_preset(config, arm)))
    values = {**base, **config.model, **arm.model}
    values.update(class_names=list(classes), class_colors=[], head="softmax", slice_axis=0)
    if values["architecture"] == "unetr":  # built for one input: the training patch, or (2D) the resized slice
        patch, size = config.training_config(0).patch_size, config.data.image_size
        values["input_size"] = patch if patch and len(patch) == values["spatial_dims"] else (size, size)
    try:
        return ModelConfig.from_json(json.dumps(values))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model configuration: {error}") from None


class Session:
    """A run in progress: the cohort, the session state, the model and its trainer."""

    def __init__(self, spec: RunSpec, progress: ProgressReporter | None = None):
        from ..device import resolve_device

        self.spec = spec
        self.config = spec.config
        self.arm = arm_config(spec)
        self.progress = progress
        self.device = resolve_device(spec.device)
        self.cohort = Cohort(spec.cohort)
        self.classes = self.cohort.class_names
        self.segments = tuple(Segment(name, index + 1) for index, name in enumerate(self.classes))
        self.training_subjects = [self.cohort[name] for name in spec.split.training]
        self.pool_slices = sum(subject.n_slices for subject in self.training_subjects)
        self.training = self.config.training_config(spec.seed)
        if spec.reference:
            self.training = self.training.with_options(max_epochs=self.reference_epochs())
        self.model = None
        self.trainer = None
        self.encoder_init: dict[str, Any] = {"weights": "random initialisation"}

    def reference_epochs(self) -> int:
        """Epochs of the fully supervised reference (see :func:`reference_epochs`)."""
        counts = [subject.n_slices for subject in self.training_subjects]
        return reference_epochs(self.config, self.training, counts)

    # -- model and trainer -------------------------------------------------------------------------------------------

    def model_config(self):
        return arm_model_config(self.config, self.arm, self.classes)

    def new_model(self):
        from monai.utils import set_determinism

        from ..models import SegmentationModel
        from ..models.pretrained import cached_resnet50_weights, load_imagenet_encoder

        set_determinism(seed=self.spec.seed)
        model = SegmentationModel(self.model_config())
        weights = self.config.encoder_weights
        resnet50 = model.config.architecture == "resnet_unet" and model.config.backbone == "resnet50"
        if weights is not None and resnet50:
            path = cached_resnet50_weights() if weights == "auto" else Path(weights)
            if path is None:
                self.encoder_init = {
                    "weights": "random initialisation (no ImageNet ResNet-50 file in the torch hub cache)"
                }
            else:
                self.encoder_init = {"weights": "ImageNet", **load_imagenet_encoder(model, path)}
        return model

    def final_stage(self, state: SessionState) -> str:
        """The training stage that ends a round: STAR's propagation stage for a STAR model."""
        return "star_propagation" if self.model.star is not None else "segmentation"

    def restore_trainer(self, state: SessionState) -> bool:
        """Build the model and trainer for the round of ``state`` from the run's checkpoint (or new); True when that
        round's training already finished (the run was killed after training it)."""
        from ..models import SegmentationModel
        from ..training import Trainer, read_checkpoint, save_checkpoint
        from ..training.checkpoint import load_weights

        path = self.spec.folder / CHECKPOINT_FILE
        round_index = state.round_index

        def checkpoint(trainer) -> None:
            save_checkpoint(path, trainer.model, trainer)

        if not path.is_file():
            if round_index > 0:
                raise FileNotFoundError(f"{path} is missing: the run folder is incomplete; delete it to rerun the run.")
            self.model = self.new_model()
            self.trainer = Trainer(self.model, self.training, self.device, self.progress, on_checkpoint=checkpoint)
            return False
        saved = read_checkpoint(path)
        self.model = SegmentationModel(saved.model_config)
        load_weights(self.model, saved.model_state, path)
        trained = saved.trainer_state
        self.trainer = Trainer(self.model, self.training, self.device, self.progress, trained, on_checkpoint=checkpoint)
        final = self.final_stage(state)
        complete = trained.finished and trained.stage == final
        if trained.round_index == round_index and complete:
            return True
        if trained.round_index == round_index - 1 and trained.finished:
            self.trainer.next_round()
            if self.config.round_weights == "initial":  # Nath et al.: every round trains from M_p, not from M_s
                self.model.load_state_dict(self.new_model().state_dict())
        elif trained.round_index == round_index and trained.finished:  # stage 1 ended, stage 2 not begun
            trained.start_stage(final)
        elif trained.round_index == round_index:
            self.trainer.pending_optimizer_state = saved.optimizer_state
            self.trainer.best_model_state = saved.best_model_state
        else:
            raise ValueError(f"{path} holds round {trained.round_index}, the session is at round {round_index}.")
        return False

    # -- data ----------------------------------------------------------------------------------------------------

    def training_examples(self, state: SessionState):
        """Annotated slices (weight 1) and pseudo-labeled slices (the round's pseudo-label weight) of the training
        subjects; images and targets stay memory-mapped until a batch reads them."""
        from ..training.data import SliceExamples

        examples = SliceExamples()
        pseudo_weight = self.training.pseudo_weight(state.round_index)
        for volume, subject in enumerate(self.training_subjects):
            for index in state.annotated[subject.name]:
                examples.append(subject.image[index][None], subject.targets[index], 1.0, (volume, index), True)
            for index, mask in sorted(state.pseudo.get(subject.name, {}).items()):
                examples.append(subject.image[index][None], mask, pseudo_weight, (volume, index), False)
        return examples

    def unlabeled_slices(self, state: SessionState):
        """The pool's unannotated slices (TAAL's unlabeled set), or None when every slice is annotated."""
        from ..training.data import UnlabeledSlices

        subjects = self.training_subjects
        slices = [np.setdiff1d(np.arange(s.n_slices), state.annotated[s.name]) for s in subjects]
        unlabeled = UnlabeledSlices([s.image for s in subjects], slices)
        return unlabeled if len(unlabeled) else None

    def validation_examples(self):
        """Every ``validation_stride``-th slice of each validation subject, or None without validation subjects."""
        from ..training.data import SliceExamples

        if not self.spec.split.validation:
            return None
        examples = SliceExamples()
        offset = len(self.training_subjects)
        for volume, name in enumerate(self.spec.split.validation, start=offset):
            subject = self.cohort[name]
            for index in range(0, subject.n_slices, self.config.validation_stride):
                examples.append(subject.image[index][None], subject.targets[index], 1.0, (volume, index), True)
        return examples

    def ranking_volume(self, subject: Subject, state: SessionState, with_labels: bool):
        """The subject as the selection code sees it: normalised slices, annotated slices, and (``with_labels``) a
        label map holding the revealed ground truth of the annotated slices only."""
        from ..selection import RankingVolume

        annotated = state.annotated[subject.name]
        labels = None
        if with_labels:
            labels = np.zeros(subject.image.shape, np.uint8)
            truth = np.asarray(subject.targets[annotated])  # (n, C, H, W)
            for c in range(truth.shape[1]):
                labels[annotated] = np.where(truth[:, c].astype(bool), c + 1, labels[annotated])
        return RankingVolume(
            subject.image,
            labels,
            self.segments,
            annotated,
            sorted(state.pseudo.get(subject.name, {})),
            subject.name,
            normalized=True,
            group_slices=state.initial[subject.name] if self.config.star_groups == "fixed" else (),
        )

    # -- the round's phases --------------------------------------------------------------------------------------

    def train(self, state: SessionState) -> dict[str, Any]:
        """Train (or fine-tune, or finish) the round's model unless a previous process already did; a summary of
        the round's epochs for the record."""
        from ..training import save_checkpoint

        already_trained = self.restore_trainer(state)
        started = len(self.trainer.state.history)
        unlabeled = self.unlabeled_slices(state) if self.arm.unlabeled_consistency else None
        if not already_trained:
            self.trainer.train_round(self.training_examples(state), self.validation_examples(), unlabeled)
            save_checkpoint(self.spec.folder / CHECKPOINT_FILE, self.model, self.trainer)
        epochs = [epoch for epoch in self.trainer.state.history if epoch["round"] == state.round_index]
        return {
            "unlabeled_slices": len(unlabeled) if unlabeled else 0,  # TAAL's consistency drew from these
            "epochs": len(epochs),
            "epochs_this_process": len(self.trainer.state.history) - started,
            "final_train_loss": epochs[-1]["train_loss"] if epochs else None,
            "best_validation_loss": min(
                (e["validation_loss"] for e in epochs if e["validation_loss"] is not None), default=None
            ),
        }

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the model on every test subject (see :mod:`spatial_al.experiments.metrics`)."""
        from ..models.inference import SlicePredictor

        predictor = SlicePredictor(self.model, self.device, self.config.batch_size)
        per_volume = []
        for done, name in enumerate(self.spec.split.test, start=1):
            subject = self.cohort[name]
            labels = predictor.labels(np.array(subject.image)[:, None]).numpy()
            per_volume.append(volume_metrics(labels, np.asarray(subject.targets), subject.spacing, self.config.hd95))
            report(self.progress, done, len(self.spec.split.test), "evaluating")
        return summarize(per_volume, self.classes, self.config.batch_size)

    def query(self, state: SessionState, count: int):
        """The arm's query of ``count`` slices over the whole training pool (a :class:`RankingResult`)."""
        from ..selection import STRATEGIES, rank_cohort, strategy_info

        info = strategy_info(STRATEGIES.get(self.arm.strategy))
        volumes = [
            self.ranking_volume(subject, state, with_labels=info.model == "star") for subject in self.training_subjects
        ]
        per_volume = self.arm.per_volume
        if per_volume is not None:
            per_volume = max(per_volume, math.ceil(count / len(volumes)))  # fewer scans than the query: relax
        elif info.spacing_controls:
            per_volume = count  # no limit: the q best of the whole pool, whatever the strategy's cohort default
        return rank_cohort(
            volumes,
            self.arm.strategy,
            count,
            axis=0,
            model=self.model if info.reads_model else None,
            device=self.device,
            batch_size=self.config.batch_size,
            per_volume=per_volume,
            seed=round_seed(self.spec.seed, state.round_index),
            progress=self.progress,
            **self.arm.options,
        )

    def reveal(self, state: SessionState, ranking) -> list[list[Any]]:
        """The oracle: the queried slices become annotated (their pseudo-labels, if any, give way)."""
        queried = []
        for volume, index in zip(ranking.volumes.tolist(), ranking.slices.tolist(), strict=True):
            name = self.training_subjects[volume].name
            state.annotated[name] = sorted({*state.annotated[name], index})
            state.pseudo.get(name, {}).pop(index, None)
            queried.append([name, index])
        return queried

    def make_pseudo_labels(self, state: SessionState, ranking) -> list[tuple[str, int]]:
        """The arm's pseudo-labels after the query; returns the (subject, slice) pairs made this round."""
        rule = self.arm.pseudo_labels
        if rule in ("none", "volume_interpolation"):  # the latter fills round 0 only
            return []
        if rule == "interpolation":
            return self.interpolate_blocks(state, ranking.details.get("blocks", []))
        from ..selection.pseudo_labels import select_cohort_pseudo_labels

        volumes = [self.ranking_volume(s, state, with_labels=rule == "star") for s in self.training_subjects]
        selection = select_cohort_pseudo_labels(
            volumes,
            "star_entropy" if rule == "star" else "ceal",
            self.model,
            count=self.arm.pseudo_label_count or self.config.query_count(self.pool_slices),
            device=self.device,
            batch_size=self.config.batch_size,
            progress=self.progress,
        )
        state.pseudo = {}  # STAR and CEAL choose their pseudo-labels afresh every round
        made = []
        for volume, index, mask in zip(selection.volumes, selection.slices, selection.labels, strict=True):
            name = self.training_subjects[int(volume)].name
            state.pseudo.setdefault(name, {})[int(index)] = mask
            made.append((name, int(index)))
        return made

    def interpolate_blocks(self, state: SessionState, blocks: list[list[int]]) -> list[tuple[str, int]]:
        """Fill the inside of each queried block from its two (now annotated) end slices with the arm's propagation
        method; the filled slices stay pseudo-labeled for the rest of the run. All blocks go through one call (their
        stacks are laid end to end, so no gap spans two blocks)."""
        from ..propagation import propagate

        blocks = [(self.training_subjects[v], first, last) for v, first, last in blocks if last - first >= 2]
        if not blocks:
            return []
        label_map = class_indices(np.concatenate([np.asarray(s.targets[a : b + 1]) for s, a, b in blocks]))
        ends, position = [], 0
        for _, first, last in blocks:
            ends += [position, position + last - first]
            position += last - first + 1
        known = np.zeros_like(label_map)
        known[ends] = label_map[ends]  # the interpolation reads the revealed end slices only
        filled_blocks = (
            propagate(
                known,
                ends,
                self.arm.propagation,
                spacing=blocks[0][0].spacing,
                segments=self.segments,
                seed=self.spec.seed,
                **self.arm.propagation_options,
            ).labels
            if known.any()
            else known  # every end slice empty: the interpolation of empty masks is empty, and the study goes on
        )
        made, position = [], 0
        for subject, first, last in blocks:
            for offset in range(1, last - first):
                filled = filled_blocks[position + offset][None]
                mask = one_hot_prediction(filled, len(self.classes))[0].astype(np.uint8)
                state.pseudo.setdefault(subject.name, {})[first + offset] = mask
                made.append((subject.name, first + offset))
            position += last - first + 1
        return made

    def interpolate_volumes(self, state: SessionState) -> list[tuple[str, int]]:
        """The MIDL 2025 study's mask interpolation before training: in each annotated volume, every slice between
        its first and last annotated slice is filled from the annotated ones with the arm's propagation method (on
        the volume's image, for learned methods such as ``sli2vol``); returns the (subject, slice) pairs filled."""
        from ..propagation import propagate

        options = dict(self.arm.propagation_options)
        if self.arm.propagation == "sli2vol":  # learns from the image alone: one network per volume and seed per study
            options.setdefault("network_store", str(self.spec.cohort / SLI2VOL_NETWORKS))
        made = []
        for subject in self.training_subjects:
            annotated = state.annotated[subject.name]
            inside = sorted(set(range(annotated[0] + 1, annotated[-1])) - set(annotated)) if annotated else []
            if not inside:
                continue
            known = np.zeros((subject.n_slices, *subject.image.shape[1:]), np.uint8)
            known[annotated] = class_indices(np.asarray(subject.targets[annotated]))  # the revealed slices only
            filled = (
                propagate(
                    known,
                    annotated,
                    self.arm.propagation,
                    image=np.asarray(subject.image),
                    spacing=subject.spacing,
                    segments=self.segments,
                    device=self.device,
                    seed=self.spec.seed,
                    **options,
                ).labels
                if known.any()
                else known  # every annotated slice empty: nothing to carry, the slices between stay empty
            )
            for index in inside:
                state.pseudo.setdefault(subject.name, {})[index] = one_hot_prediction(
                    filled[index][None], len(self.classes)
                )[0].astype(np.uint8)
                made.append((subject.name, index))
        return made

    def pseudo_label_dice(self, state: SessionState, made: list[tuple[str, int]]) -> dict[str, float | None]:
        """Dice of this round's new pseudo-labels, and Dice and IoU of every pseudo-label held now, against the
        hidden truth (pooled over their slices; 1 when every slice is empty in both). For the new ones also: the share
        holding foreground in the pseudo-label and in the truth, and their Dice over the slices where either holds
        foreground (None when none does: empty pseudo-labels of empty slices say nothing of the rule's quality)."""

        def pseudo_label(pair: tuple[str, int]) -> np.ndarray:
            return state.pseudo[pair[0]][pair[1]]

        def truth(pair: tuple[str, int]) -> np.ndarray:
            return np.asarray(self.cohort[pair[0]].targets[pair[1]])

        def overlap_of(pairs) -> tuple[float | None, float | None]:
            return pooled_overlap([pseudo_label(p) for p in pairs], [truth(p) for p in pairs])

        held = overlap_of([(name, index) for name, masks in state.pseudo.items() for index in masks])
        with_foreground = [pair for pair in made if pseudo_label(pair).any() or truth(pair).any()]
        return {
            "new": overlap_of(made)[0],
            "held": held[0],
            "held_iou": held[1],
            "new_foreground_predicted": float(np.mean([pseudo_label(p).any() for p in made])) if made else None,
            "new_foreground_truth": float(np.mean([truth(p).any() for p in made])) if made else None,
            "new_foreground_dice": overlap_of(with_foreground)[0] if with_foreground else None,
        }

    def initial_selection(self) -> SessionState:
        """Round 0's cold-start annotation: the protocol's strategy on the pool, or its grid on every volume."""
        from ..selection import RankingVolume, rank, rank_cohort

        initial = self.config.initial_for(self.arm)
        names = [subject.name for subject in self.training_subjects]
        if self.spec.reference:
            return SessionState(0, {s.name: list(range(s.n_slices)) for s in self.training_subjects})
        if initial.density is not None:
            return self.density_selection(initial)
        if initial.per_volume_grid:
            interval = initial.options.get("interval")
            annotated = {}
            for subject in self.training_subjects:
                budget = math.ceil(subject.n_slices / interval)
                picks = rank(subject.image, initial.strategy, budget, seed=self.spec.seed, **initial.options)
                annotated[subject.name] = sorted(picks.slices.tolist())
            return SessionState(0, annotated)
        volumes = [RankingVolume(s.image, name=s.name, normalized=True) for s in self.training_subjects]
        budget = initial.pool_budget(self.pool_slices)
        ranking = rank_cohort(volumes, initial.strategy, budget, seed=self.spec.seed, **initial.options)
        annotated = {name: [] for name in names}
        for volume, index in zip(ranking.volumes.tolist(), ranking.slices.tolist(), strict=True):
            annotated[names[volume]].append(index)
        return SessionState(0, {name: sorted(slices) for name, slices in annotated.items()})

    def density_selection(self, initial: InitialConfig) -> SessionState:
        """The MIDL 2025 study's cold start: rho percent of the slices of each of s x N training volumes (the first of
        a permutation drawn from the seed alone, so every arm of a seed annotates the same volumes), picked by the
        strategy in each volume on its own or, with scope "dataset", over the pool of those volumes at once."""
        from ..selection import RankingVolume, rank, rank_cohort

        order = np.random.default_rng([self.spec.seed, VOLUME_DRAW]).permutation(len(self.training_subjects))
        chosen = [self.training_subjects[i] for i in sorted(order[: initial.annotated_volumes(len(order))])]
        annotated = {subject.name: [] for subject in self.training_subjects}
        budgets = [initial.volume_budget(subject.n_slices) for subject in chosen]
        if initial.scope == "volume":
            for subject, budget in zip(chosen, budgets, strict=True):
                picks = rank(subject.image, initial.strategy, budget, seed=self.spec.seed, **initial.options)
                annotated[subject.name] = sorted(picks.slices.tolist())
            return SessionState(0, annotated)
        volumes = [RankingVolume(s.image, name=s.name, normalized=True) for s in chosen]
        total = sum(budgets)
        seed = self.spec.seed
        ranking = rank_cohort(volumes, initial.strategy, total, seed=seed, per_volume=total, **initial.options)
        for volume, index in zip(ranking.volumes.tolist(), ranking.slices.tolist(), strict=True):
            annotated[chosen[volume].name].append(index)
        return SessionState(0, {name: sorted(slices) for name, slices in annotated.items()})

    def query_count(self, state: SessionState) -> int:
        """What the round's query asks for: q slices, at most the unannotated ones."""
        return min(self.config.query_count(self.pool_slices), self.pool_slices - state.labeled_count())

    def round_details(self, state: SessionState) -> dict[str, Any]:
        """What the round record holds beyond the common fields (nothing for slice sessions)."""
        return {}

    def expected_rounds(self, state: SessionState) -> int:
        """The last round index the run will reach (the budget, or the protocol's round count)."""
        if self.spec.reference:
            return 0
        return last_round(self.config, self.pool_slices, state.labeled_count(), state.round_index)

    def finished(self, state: SessionState) -> bool:
        """Whether the run stops after evaluating this round: rounds done, budget spent or nothing left to query."""
        if self.spec.reference or state.round_index >= self.config.rounds:
            return True
        percent = 100.0 * state.labeled_count() / self.pool_slices
        budget = self.config.budget_percent
        return (budget is not None and percent >= budget - 1e-9) or state.labeled_count() >= self.pool_slices


def run_folder(study: Path, arm: str, seed: int) -> Path:
    """``study/runs/<arm>/seed-<seed>``, the arm's name kept to letters, digits and ``-_+.()``."""
    safe = "".join(character if character.isalnum() or character in "-_+.()" else "_" for character in arm)
    return Path(study) / "runs" / safe / f"seed-{seed}"
