"""Pieces of one run on a tiny cached cohort: the session state on disk, the oracle, block interpolation."""

import numpy as np
import pytest
from scipy import ndimage

from spatial_al.experiments.cohort import build_cohort, open_source, split_subjects
from spatial_al.experiments.loop import RunSpec, Session, SessionState
from spatial_al.experiments.protocols import resolve_config


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    config, _ = resolve_config("less_is_more", "demo", "smoke")
    source = open_source("demo", config.data)
    cohort = build_cohort(source, config.data, tmp_path_factory.mktemp("cache"))
    return config, cohort, split_subjects(source.names, config.data.split, 0)


def session_for(parts, folder, arm):
    config, cohort, split = parts
    return Session(RunSpec(folder, arm, 0, config, cohort.folder, split, "cpu"))


def paper_blend(first, last, t):
    def distance(mask):
        return ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask) + 0.5

    if not (first & last).any():
        return np.zeros(first.shape, bool)
    return (1 - t) * distance(first) + t * distance(last) >= 0


def test_blocks_are_filled_from_their_two_end_slices_by_the_papers_sdf(parts, tmp_path):
    session = session_for(parts, tmp_path, "Blocks5-random-SDF")
    subject = session.training_subjects[0]
    state = SessionState(1, {s.name: [2, 6, 8, 9] for s in session.training_subjects})
    made = session.interpolate_blocks(state, [[0, 2, 6], [0, 8, 9]])  # the second block has no inside
    assert made == [(subject.name, k) for k in (3, 4, 5)]
    truth = np.asarray(subject.targets).astype(bool)
    for k in (3, 4, 5):
        pseudo = state.pseudo[subject.name][k].astype(bool)
        blends = np.stack([paper_blend(truth[2, c], truth[6, c], (k - 2) / 4) for c in range(truth.shape[1])])
        assert np.all(pseudo <= blends)  # each class only where the paper's formula puts it ...
        alone = blends.sum(0) == 1
        np.testing.assert_array_equal(pseudo[:, alone], blends[:, alone])  # ... and wherever no other class competes


def test_blocks_whose_end_slices_are_empty_get_empty_pseudo_labels_and_the_study_goes_on(parts, tmp_path):
    """A structure that spans a fraction of the slices leaves whole blocks empty: their interpolation is empty
    (the paper's interpolation of two empty masks), not an error that stops the study."""
    session = session_for(parts, tmp_path, "Blocks5-random-SDF")
    subject = session.training_subjects[0]
    empty = np.zeros_like(np.asarray(subject.targets))  # multi-hot (S, C, H, W): no structure on any slice
    session.training_subjects[0] = type(subject)(**{**vars(subject), "targets": empty})
    state = SessionState(1, {s.name: [2, 6] for s in session.training_subjects})
    made = session.interpolate_blocks(state, [[0, 2, 6]])
    assert made == [(subject.name, k) for k in (3, 4, 5)]
    for k in (3, 4, 5):
        pseudo = state.pseudo[subject.name][k]
        assert pseudo.shape == empty.shape[1:] and not pseudo.any()  # no structure
    state = SessionState(1, {s.name: [2, 6] for s in session.training_subjects})
    made = session.interpolate_volumes(state)  # the MIDL study's interpolation between annotated slices, likewise
    assert {(name, k) for name, k in made} == {(s.name, k) for s in session.training_subjects for k in (3, 4, 5)}
    assert not any(state.pseudo[subject.name][k].any() for k in (3, 4, 5))
    assert any(state.pseudo[s.name][4].any() for s in session.training_subjects[1:])  # the others hold structures


def test_the_oracle_reveals_queried_slices_and_their_pseudo_labels_give_way(parts, tmp_path):
    from spatial_al.selection import RankingResult

    session = session_for(parts, tmp_path, "RandS")
    name = session.training_subjects[1].name
    state = SessionState(
        1, {s.name: [0] for s in session.training_subjects}, {name: {4: np.ones((4, 32, 32), np.uint8)}}
    )
    ranking = RankingResult(np.array([4, 7]), np.ones(2), "random", 0, volumes=np.array([1, 1]))
    assert session.reveal(state, ranking) == [[name, 4], [name, 7]]
    assert state.annotated[name] == [0, 4, 7] and state.pseudo[name] == {}


def test_the_session_state_round_trips_through_its_file(tmp_path):
    masks = {"a": {3: np.arange(8, dtype=np.uint8).reshape(2, 2, 2)}, "b": {}}
    state = SessionState(4, {"a": [0, 5], "b": []}, masks, [{"round": 0, "metrics": {"dice_3d": 0.5}}])
    state.save(tmp_path / "state.npz")
    loaded = SessionState.load(tmp_path / "state.npz")
    assert (loaded.round_index, loaded.annotated, loaded.rounds) == (4, state.annotated, state.rounds)
    np.testing.assert_array_equal(loaded.pseudo["a"][3], masks["a"][3])
    assert loaded.labeled_count() == 2 and loaded.pseudo_count() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # written through a temporary file, renamed
    assert loaded.initial == {"a": [0, 5], "b": []}  # round 0's annotation: STAR's fixed groups


def test_a_state_written_before_it_kept_round_0_recovers_it_from_the_queries(tmp_path):
    import json

    rounds = [{"round": 0, "queried": [["a", 5]]}, {"round": 1, "queried": [["b", 2], ["a", 7]]}]
    header = {"round_index": 2, "annotated": {"a": [0, 5, 7, 10], "b": [0, 2]}, "rounds": rounds}
    np.savez_compressed(tmp_path / "state.npz", header=np.array(json.dumps(header)))
    assert SessionState.load(tmp_path / "state.npz").initial == {"a": [0, 10], "b": [0]}


def test_training_slices_stream_from_the_cache_and_validation_takes_every_nth_slice(tmp_path):
    config, _ = resolve_config("star", "demo", "smoke")
    source = open_source("demo", config.data)
    cohort = build_cohort(source, config.data, tmp_path / "cache")
    split = split_subjects(source.names, config.data.split, 0)
    session = Session(RunSpec(tmp_path / "run", "STAR", 0, config, cohort.folder, split, "cpu"))
    state = SessionState(
        0, {s.name: [0, 5] for s in session.training_subjects}, {split.training[0]: {2: np.ones((4, 32, 32), np.uint8)}}
    )
    examples = session.training_examples(state)
    assert all(isinstance(image, np.memmap) for image in examples.images)  # views into the cache, not copies
    assert examples.annotated.count(False) == 1 and examples.weights[examples.annotated.index(False)] == 1.0
    validation = session.validation_examples()
    subject = cohort[split.validation[0]]
    assert [index for _, index in validation.sources] == list(range(0, subject.n_slices, config.validation_stride))

    first = session.training_subjects[0]
    state.annotated[first.name] = [0, 3, 5]  # a query landed in the group 0-5
    assert session.ranking_volume(first, state, with_labels=False).group_slices == [0, 5]  # STAR's groups stay
    unlabeled = session.unlabeled_slices(state)  # TAAL's: every slice not annotated, pseudo-labeled ones included
    assert unlabeled.slices[0].tolist() == [i for i in range(first.n_slices) if i not in (0, 3, 5)]
    assert len(unlabeled) == sum(s.n_slices for s in session.training_subjects) - 3 - 2 * (len(split.training) - 1)


def test_the_reference_trains_as_many_steps_as_a_whole_run():
    from spatial_al.experiments.loop import reference_epochs

    lim, _ = resolve_config("less_is_more", "demo", "cpu")  # 8 iterations an epoch, 4 epochs, rounds 0-12
    training = lim.training_config(0)
    assert reference_epochs(lim, training, [30] * 11) == 4 * 13
    smoke, _ = resolve_config("less_is_more", "demo", "smoke")  # whole passes: 1 epoch, batch 4, 6 + 4 a round
    training = smoke.training_config(0)
    run_steps = sum(-(-(6 + 4 * r) // 4) for r in range(3))  # ceil(labeled / batch) per round, rounds 0-2
    assert reference_epochs(smoke, training, [30, 30, 30]) == max(1, -(-run_steps // 23))
