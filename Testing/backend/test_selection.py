"""Cold-start strategies and the ranking driver: each strategy's defining property, and the input checks."""

import csv

import numpy as np
import pytest

import spatial_al
from spatial_al.registry import UnknownNameError
from spatial_al.selection import STRATEGIES

IMAGE = np.zeros((34, 8, 8), np.float32)


def test_every_strategy_has_a_one_line_summary():
    assert {"random", "fixed_interval", "stratified"} <= set(STRATEGIES.names())
    assert all(entry.summary and "\n" not in entry.summary for entry in STRATEGIES.entries())


def test_unknown_strategy_names_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'fixed_interval'"):
        spatial_al.rank(IMAGE, "fixed_intervall", 3)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"no option 'step'.*interval, offset"):
        spatial_al.rank(IMAGE, "fixed_interval", 3, step=2)


@pytest.mark.parametrize(("interval", "offset"), [(3, None), (5, 0), (10, 4), (1, None)])
def test_fixed_interval_takes_exactly_every_jth_slice(interval, offset):
    grid_size = len(range(offset or 0, 34, interval))
    ranking = spatial_al.rank(IMAGE, "fixed_interval", grid_size, interval=interval, offset=offset)
    steps = np.diff(ranking.slices)
    assert (steps == interval).all()
    if offset is not None:
        assert ranking.slices[0] == offset
    else:  # centred: the margins before the first and after the last pick differ by at most one slice
        assert abs(ranking.slices[0] - (33 - ranking.slices[-1])) <= 1


def test_fixed_interval_from_budget_spans_the_volume():
    ranking = spatial_al.rank(IMAGE, "fixed_interval", 12)
    np.testing.assert_array_equal(ranking.slices, np.arange(0, 34, 3))


def test_fixed_interval_skips_annotated_grid_slices_and_spreads_a_smaller_budget():
    ranking = spatial_al.rank(IMAGE, "fixed_interval", 10, interval=3, annotated=[3, 4])
    assert 3 not in ranking.slices and all(s % 3 == 0 for s in ranking.slices)
    spread = spatial_al.rank(IMAGE, "fixed_interval", 4, interval=3)
    gaps = np.diff(spread.slices)
    assert spread.slices[[0, -1]].tolist() == [0, 33] and gaps.max() - gaps.min() <= 3 and (gaps % 3 == 0).all()


def test_random_is_reproducible_by_seed_and_never_repeats_annotated_slices():
    first = spatial_al.rank(IMAGE, "random", 10, annotated=range(0, 34, 2), seed=7)
    again = spatial_al.rank(IMAGE, "random", 10, annotated=range(0, 34, 2), seed=7)
    other = spatial_al.rank(IMAGE, "random", 10, annotated=range(0, 34, 2), seed=8)
    np.testing.assert_array_equal(first.slices, again.slices)
    assert first.slices.tolist() != other.slices.tolist()
    assert (first.slices % 2 == 1).all() and len(set(first.slices)) == 10
    assert (np.diff(first.scores) <= 0).all()  # best (highest priority) first


def test_random_picks_each_slice_equally_often():
    counts = np.zeros(34)
    for seed in range(3000):
        counts[spatial_al.rank(IMAGE, "random", 1, seed=seed).slices] += 1
    expected = 3000 / 34
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_stratified_picks_one_slice_in_each_equal_run():
    ranking = spatial_al.rank(IMAGE, "stratified", 5, seed=3)
    bounds = [run[[0, -1]] for run in np.array_split(np.arange(34), 5)]
    assert all(low <= pick <= high for pick, (low, high) in zip(ranking.slices, bounds, strict=True))


@pytest.mark.parametrize(
    ("budget", "annotated", "message"),
    [
        (35, (), "budget 35 is larger than the 34 slices left"),
        (5, range(31), "at most 3"),
        (0, (), "at least 1"),
        (1, range(34), "already annotated"),
    ],
)
def test_impossible_budgets_are_explained(budget, annotated, message):
    with pytest.raises(ValueError, match=message):
        spatial_al.rank(IMAGE, "random", budget, annotated=annotated)


def test_single_slice_volume_ranks_its_only_slice():
    ranking = spatial_al.rank(np.zeros((1, 8, 8)), "fixed_interval", 1)
    assert ranking.slices.tolist() == [0]


def test_ranking_along_another_axis_counts_that_axis():
    ranking = spatial_al.rank(np.zeros((4, 20, 6)), "fixed_interval", 5, axis=1, interval=4, offset=0)
    np.testing.assert_array_equal(ranking.slices, [0, 4, 8, 12, 16])


def test_ranking_csv_has_rank_slice_score(tmp_path):
    ranking = spatial_al.rank(IMAGE, "random", 3, seed=1)
    with ranking.write_csv(tmp_path / "r.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["rank", "slice", "score"]
    assert [int(r["slice"]) for r in rows] == ranking.slices.tolist()
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
