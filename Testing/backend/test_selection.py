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


# --- strided blocks ----------------------------------------------------------------------------------------


def blocks_of(ranking):
    return [tuple(block[1:]) for block in ranking.details["blocks"]]


def test_strided_blocks_annotate_both_ends_and_never_overlap_labels():
    annotated = [0, 11, 12, 30]
    ranking = spatial_al.rank(IMAGE, "strided_blocks", 8, annotated=annotated, block_size=5, seed=2)
    blocks = blocks_of(ranking)
    sizes = [last - first + 1 for first, last in blocks]
    assert len(blocks) == 4 and sizes[0] == 5 and sizes == sorted(sizes, reverse=True)  # full blocks first
    covered = [set(range(first, last + 1)) for first, last in blocks]
    assert all(not (c & set(annotated)) for c in covered)
    assert all(not (a & b) for i, a in enumerate(covered) for b in covered[i + 1 :])
    assert ranking.slices.tolist() == [end for block in blocks for end in block]


def test_strided_blocks_shrink_when_no_full_block_is_left():
    # free runs: 1-3 (3 slices) and 5-6 (2 slices); no block of 5 fits
    annotated = [0, 4, *range(7, 34)]
    ranking = spatial_al.rank(IMAGE, "strided_blocks", 4, annotated=annotated, block_size=5)
    assert sorted(blocks_of(ranking)) == [(1, 3), (5, 6)]


def test_strided_blocks_requery_pseudo_labels_only_when_nothing_else_is_left():
    annotated, pseudo = [0, 10, 20, 33], [*range(1, 10), *range(11, 20)]
    ranking = spatial_al.rank(IMAGE, "strided_blocks", 4, annotated=annotated, pseudo_labeled=pseudo, block_size=5)
    assert all(first >= 21 and last <= 32 for first, last in blocks_of(ranking))
    everything_else = [*range(21, 33)]
    later = spatial_al.rank(
        IMAGE, "strided_blocks", 2, annotated=annotated + everything_else, pseudo_labeled=pseudo, block_size=5
    )
    assert all(set(range(first, last + 1)) <= set(pseudo) for first, last in blocks_of(later))


def test_strided_blocks_refuse_spacing_controls():
    with pytest.raises(ValueError, match="spaces its picks by construction"):
        spatial_al.rank(IMAGE, "strided_blocks", 4, min_spacing=3)


def test_strided_blocks_by_uncertainty_need_a_model():
    with pytest.raises(ValueError, match="needs a trained model"):
        spatial_al.rank(IMAGE, "strided_blocks", 4, blocks="uncertainty")


# --- shared selection controls and cohorts -----------------------------------------------------------------


def test_min_spacing_keeps_picks_apart():
    ranking = spatial_al.rank(IMAGE, "random", 6, min_spacing=5, seed=4)
    picks = np.sort(ranking.slices)
    assert len(picks) == 6 and np.diff(picks).min() >= 5


def test_ties_go_to_the_lower_slice():
    from spatial_al.selection.base import RankingContext, select_top, to_pool_volume

    volume = to_pool_volume(spatial_al.selection.RankingVolume(IMAGE, annotated=[2]), 0, 0)
    context = RankingContext((volume,), 3, np.random.default_rng(0))
    picks = select_top(context, np.ones(33))
    assert context.pool_slice[picks.positions].tolist() == [0, 1, 3]


def test_stratified_in_a_cohort_takes_equal_slices_per_volume():
    volumes = [spatial_al.selection.RankingVolume(IMAGE, name=f"case {i}") for i in range(3)]
    ranking = spatial_al.selection.rank_cohort(volumes, "stratified", 6, seed=1)
    assert np.bincount(ranking.volumes).tolist() == [2, 2, 2]


def test_per_volume_caps_random_picks_in_a_cohort(tmp_path):
    volumes = [spatial_al.selection.RankingVolume(IMAGE, name=name) for name in ("a", "b")]
    ranking = spatial_al.selection.rank_cohort(volumes, "random", 4, per_volume=2, seed=0)
    assert np.bincount(ranking.volumes).tolist() == [2, 2]
    with ranking.write_csv(tmp_path / "cohort.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["volume", "rank", "slice", "score"] and {r["volume"] for r in rows} == {"a", "b"}


def test_stratified_random_keeps_scans_equally_annotated_one_slice_per_scan_while_scans_outnumber_the_batch():
    sizes = (20, 40, 10, 30)
    annotated = ([0, 1, 2], [], [5], [3, 4])  # annotated fractions .15, 0, .1, .067
    volumes = [
        spatial_al.selection.RankingVolume(np.zeros((n, 4, 4), np.float32), annotated=done, name=f"s{i}")
        for i, (n, done) in enumerate(zip(sizes, annotated, strict=True))
    ]
    three = spatial_al.selection.rank_cohort(volumes, "stratified", 3, seed=0, within="random")
    assert sorted(three.volumes.tolist()) == [1, 2, 3]  # the three least annotated scans, one slice each
    many = spatial_al.selection.rank_cohort(volumes, "stratified", 10, seed=0, within="random")
    counts = np.bincount(many.volumes, minlength=4)
    assert counts.max() <= 3 and counts.sum() == 10  # fewer scans than the batch: at most ceil(10 / 4) each
    assert not {(v, s) for v, s in zip(many.volumes, many.slices, strict=True)} & {
        (i, s) for i, done in enumerate(annotated) for s in done
    }
    with pytest.raises(ValueError, match="within must be 'strata' or 'random'"):
        spatial_al.selection.rank_cohort(volumes, "stratified", 3, within="grid")


def test_a_grid_that_meets_annotated_slices_fills_its_budget_with_the_farthest_slices():
    ranking = spatial_al.rank(IMAGE, "fixed_interval", 5, annotated=[0, 10, 20, 30])
    # the grid 0, 8, 16, 24, 32 loses 0 to the annotation; slice 4 is then the farthest from every taken slice
    assert ranking.slices.tolist() == [4, 8, 16, 24, 32]
    full = spatial_al.rank(IMAGE, "fixed_interval", 10, annotated=[0, 10, 20, 30])
    assert len(full) == 10 and not {0, 10, 20, 30} & set(full.slices.tolist())


@pytest.mark.parametrize("min_spacing", [2.5, -1, True])
def test_a_spacing_that_cannot_be_honoured_is_refused(min_spacing):
    with pytest.raises(ValueError, match="min_spacing must be a whole number of slices"):
        spatial_al.rank(IMAGE, "random", 3, min_spacing=min_spacing)


def test_fixed_interval_from_a_budget_no_whole_step_fits_spreads_gaps_within_one_slice():
    ranking = spatial_al.rank(IMAGE, "fixed_interval", 11)  # 34 slices: 3.3 slices apart
    gaps = np.diff(ranking.slices)
    assert len(ranking.slices) == 11 and ranking.slices[[0, -1]].tolist() == [0, 33] and set(gaps) == {3, 4}


def test_ranking_costs_ship_the_committed_benchmark_figures_scaled_by_voxels():
    import json
    from pathlib import Path

    from spatial_al.selection.costs import cost_note, costs_from_benchmark, estimated_seconds, shipped_costs

    benchmarks = Path(__file__).parents[2] / "docs" / "results" / "benchmarks"
    for kind, entry in shipped_costs().items():
        record = json.loads((benchmarks / Path(entry["benchmark"]).name).read_text())
        assert costs_from_benchmark(record, entry["machine"], entry["benchmark"]) == entry, kind
    measured = shipped_costs()["cpu"]["seconds"]["mc_dropout"]
    assert estimated_seconds("mc_dropout", 300, (256, 256), "cpu") == pytest.approx(measured)
    assert estimated_seconds("mc_dropout", 150, (512, 512), "cpu") == pytest.approx(2 * measured)
    assert estimated_seconds("mc_dropout", 300, (256, 256), "mps") is None
    assert estimated_seconds("no_such_strategy", 300, (256, 256), "cpu") is None
    note = cost_note("mc_dropout", 150, (512, 512), "cpu")
    assert (
        note.startswith(f"mc_dropout: about {2 * measured / 60:.0f} min on cpu") and "150 slices of 512 x 512" in note
    )
    assert cost_note("random", 300, (256, 256), "cpu").startswith("random: under a second")
    assert "no timing figures for mps" in cost_note("entropy", 300, (256, 256), "mps")
