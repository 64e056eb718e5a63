"""Model-based query strategies and pseudo-label selection: each strategy's defining property against a reference
computed another way (numpy / scipy / sklearn on the model's raw outputs), and the model checks."""

import numpy as np
import pytest
import torch
from conftest import TINY_UNET
from scipy.spatial.distance import cdist, directed_hausdorff

import spatial_al
from spatial_al.models import SegmentationModel, preset_config
from spatial_al.models.inference import SlicePredictor
from spatial_al.selection import select_pseudo_labels
from spatial_al.selection.uncertainty import UNCERTAINTY_MEASURES
from spatial_al.training.data import distance_targets, normalize_intensities

CPU = torch.device("cpu")
CLASSES = ("disc", "square")


def tiny_model(preset="unet-small", **changes) -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel(preset_config(preset, class_names=CLASSES, features=TINY_UNET, **changes)).eval()


def ranked(stack, strategy, budget, model, annotated=(0, 9), **options):
    return spatial_al.rank(
        stack.image,
        strategy,
        budget,
        labels=stack.label_layers,
        segments=stack.segments,
        annotated=annotated,
        model=model,
        device="cpu",
        **options,
    )


def model_inputs(stack, slices):
    return torch.as_tensor(normalize_intensities(stack.image)[list(slices), None])


def candidates(annotated=(0, 9)):
    return np.setdiff1d(np.arange(10), annotated)


def probabilities(model, stack, slices):
    return SlicePredictor(model, CPU).probabilities(model_inputs(stack, slices)).numpy()


def expected_top(scores, slices, budget):
    order = np.lexsort((slices, -np.asarray(scores)))
    return np.asarray(slices)[order[:budget]]


# --- uncertainty --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("measure", sorted(UNCERTAINTY_MEASURES))
def test_every_uncertainty_measure_ranks_a_uniform_prediction_first(measure, head):
    channels = 3
    alpha = 0.5 if head == "sigmoid" else 1 / channels
    uniform = np.full((channels, 4, 4), alpha)
    confident = np.zeros((channels, 4, 4))
    confident[1] = 1.0
    mixed = (uniform + confident) / 2
    slices = torch.tensor(np.stack([confident, uniform, mixed]), dtype=torch.float32)
    scores = UNCERTAINTY_MEASURES[measure](slices, head)
    assert np.argmax(scores) == 1 and np.argmin(scores) == 0


def test_least_confidence_follows_less_is_more_on_the_model_output(labeled_stack):
    model = tiny_model()
    slices = candidates()
    p = probabilities(model, labeled_stack, slices)  # softmax over 3 channels: alpha = 1/3
    reference = 1 - np.abs(p - 1 / 3).mean(axis=(1, 2, 3)) / (1 - 1 / 3)
    ranking = ranked(labeled_stack, "least_confidence", 3, model)
    np.testing.assert_array_equal(ranking.slices, expected_top(reference, slices, 3))
    np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1][:3], rtol=1e-5)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_classic_least_confidence_is_one_minus_the_predicted_class_probability(labeled_stack, head):
    model = tiny_model(head=head)
    slices = candidates()
    p = probabilities(model, labeled_stack, slices)
    confidence = p.max(axis=1) if head == "softmax" else np.maximum(p, 1 - p).mean(axis=1)
    reference = (1 - confidence).mean(axis=(1, 2))
    ranking = ranked(labeled_stack, "least_confidence", 4, model, form="classic")
    np.testing.assert_array_equal(ranking.slices, expected_top(reference, slices, 4))
    np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1][:4], rtol=1e-5)
    with pytest.raises(ValueError, match="choose one of less_is_more, classic"):
        ranked(labeled_stack, "least_confidence", 4, model, form="lewis")


def test_entropy_forms_match_their_definitions(labeled_stack):
    model = tiny_model(head="sigmoid")
    slices = candidates()
    p = probabilities(model, labeled_stack, slices).astype(np.float64)
    x = np.clip(np.abs(p - 0.5), 1e-10, None)
    less_is_more = (x * np.log(x)).mean(axis=(1, 2, 3))
    q = np.clip(p, 1e-12, 1)
    r = np.clip(1 - p, 1e-12, 1)
    shannon = -(q * np.log(q) + r * np.log(r)).sum(1).mean((1, 2)) / (2 * np.log(2))
    for form, reference in (("less_is_more", less_is_more), ("shannon", shannon)):
        ranking = ranked(labeled_stack, "entropy", 8, model, form=form)
        np.testing.assert_array_equal(ranking.slices, expected_top(reference, slices, 8))
        np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1], rtol=1e-4, atol=1e-7)


def test_ranking_runs_the_network_in_the_requested_precision(labeled_stack):
    model = tiny_model()
    slices = candidates()
    p = SlicePredictor(model, CPU, precision="bf16").probabilities(model_inputs(labeled_stack, slices)).numpy()
    reference = 1 - p.max(1).mean((1, 2))  # classic least confidence of the bfloat16 prediction
    ranking = ranked(labeled_stack, "least_confidence", 8, model, form="classic", precision="bf16")
    np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1], rtol=1e-5)
    full = ranked(labeled_stack, "least_confidence", 8, model, form="classic", precision="fp32")
    assert not np.array_equal(full.scores, ranking.scores)  # float32 is another computation ...
    np.testing.assert_allclose(full.scores, ranking.scores, rtol=0.05)  # ... of about the same scores
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        ranked(labeled_stack, "least_confidence", 8, model, precision="fp8")


def test_margin_is_one_minus_the_gap_between_the_two_likeliest_classes(labeled_stack):
    model = tiny_model()
    slices = candidates()
    top_two = -np.sort(-probabilities(model, labeled_stack, slices), axis=1)[:, :2]
    reference = 1 - (top_two[:, 0] - top_two[:, 1]).mean((1, 2))
    ranking = ranked(labeled_stack, "margin", 4, model)
    np.testing.assert_array_equal(ranking.slices, expected_top(reference, slices, 4))


@pytest.mark.parametrize("measure", ["bald", "variance", "std"])
def test_mc_dropout_scores_are_the_predictor_statistics_with_the_derived_seed(labeled_stack, measure):
    model = tiny_model(dropout=0.3)
    slices = candidates()
    seed = int(np.random.default_rng(5).integers(0, 2**31 - 1, size=slices.size + 1)[0])
    statistics = SlicePredictor(model, CPU).mc_dropout(model_inputs(labeled_stack, slices), samples=4, seed=seed)
    values = {
        "bald": statistics.mutual_information,
        "variance": statistics.variance.mean(1),
        "std": statistics.variance.sqrt().mean(1),  # SBC-AL's "Mean STD"
    }[measure]
    reference = values.mean((1, 2)).numpy()
    ranking = ranked(labeled_stack, "mc_dropout", 8, model, seed=5, samples=4, measure=measure)
    np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1], rtol=1e-5)
    assert (ranking.scores >= 0).all()
    again = ranked(labeled_stack, "mc_dropout", 8, model, seed=5, samples=4, measure=measure)
    np.testing.assert_array_equal(ranking.slices, again.slices)


def test_last_layer_mc_dropout_scores_are_the_predictor_statistics_of_the_last_layer(labeled_stack):
    model = tiny_model(dropout=0.3)
    slices = candidates()
    seed = int(np.random.default_rng(5).integers(0, 2**31 - 1, size=slices.size + 1)[0])
    inputs = model_inputs(labeled_stack, slices)
    statistics = SlicePredictor(model, CPU).mc_dropout(inputs, samples=10, seed=seed, layers="last")
    reference = statistics.mutual_information.mean((1, 2)).numpy()
    ranking = ranked(labeled_stack, "mc_dropout", 8, model, seed=5, layers="last")
    np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1], rtol=1e-5)
    with pytest.raises(ValueError, match="Unknown MC-dropout layers 'first'"):
        ranked(labeled_stack, "mc_dropout", 8, model, layers="first")


def test_mc_dropout_refuses_a_model_without_dropout(labeled_stack):
    with pytest.raises(ValueError, match="no dropout"):
        ranked(labeled_stack, "mc_dropout", 2, tiny_model(dropout=0.0))


def test_taal_is_the_jensen_shannon_divergence_of_flipped_predictions(labeled_stack):
    model = tiny_model()
    slices = candidates()
    inputs = model_inputs(labeled_stack, slices)
    plain = probabilities(model, labeled_stack, slices)
    flipped = SlicePredictor(model, CPU).probabilities(inputs.flip(-1)).flip(-1).numpy()

    def entropy(p):
        return -(np.clip(p, 1e-12, 1) * np.log(np.clip(p, 1e-12, 1))).sum(1)

    reference = (entropy((plain + flipped) / 2) - (entropy(plain) + entropy(flipped)) / 2).mean((1, 2))
    ranking = ranked(labeled_stack, "taal", 8, model, transforms=["identity", "flip_columns"])
    np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1], rtol=1e-4, atol=1e-8)


# --- diversity and representativeness ----------------------------------------------------------------------


def pooled_features(model, stack, slices):
    return SlicePredictor(model, CPU).features(model_inputs(stack, slices)).amax((2, 3)).numpy().astype(np.float64)


def test_kcenter_greedy_picks_the_farthest_point_each_time(labeled_stack):
    model = tiny_model()
    annotated, slices = (0, 9), candidates()
    features, centers = pooled_features(model, labeled_stack, slices), pooled_features(model, labeled_stack, annotated)
    expected, covered = [], list(centers)
    for _ in range(3):
        distance = np.array([min(np.linalg.norm(f - c) for c in covered) for f in features])
        distance[[list(slices).index(s) for s in expected]] = -1
        expected.append(int(slices[np.argmax(distance)]))
        covered.append(features[np.argmax(distance)])
    ranking = ranked(labeled_stack, "kcenter_greedy", 3, model)
    assert ranking.slices.tolist() == expected
    assert (np.diff(ranking.scores) <= 1e-9).all()  # each pick is no farther than the one before


@pytest.mark.parametrize("form", ["paper", "greedy"])
def test_distance_representative_picks_the_farthest_on_average_in_pca_space(labeled_stack, form):
    from sklearn.decomposition import PCA

    model = tiny_model()
    annotated, slices = (0, 4, 9), candidates((0, 4, 9))
    everything = np.concatenate(
        [pooled_features(model, labeled_stack, annotated), pooled_features(model, labeled_stack, slices)]
    )
    if form == "greedy":
        everything = (everything - everything.min(0)) / (everything.max(0) - everything.min(0) + 1e-10)
    reduced = PCA(n_components=5, svd_solver="full").fit_transform(everything)
    mean_distance = cdist(reduced[3:], reduced[:3]).mean(1)  # s(x), the paper's score
    ranking = ranked(labeled_stack, "distance_representative", 3, model, annotated=annotated, dimensions=5, form=form)
    assert ranking.slices[0] == slices[np.argmax(mean_distance)]
    assert ranking.scores[0] == pytest.approx(mean_distance.max(), rel=1e-6)
    if form == "paper":  # scored once: the top three s(x), in order
        assert ranking.slices.tolist() == [int(slices[i]) for i in np.argsort(-mean_distance)[:3]]
        assert ranking.scores == pytest.approx(np.sort(mean_distance)[::-1][:3], rel=1e-6)
    else:  # the first pick joins the references: the second is farthest on average from all four
        second = cdist(reduced[3:], np.concatenate([reduced[:3], reduced[3:][[np.argmax(mean_distance)]]])).mean(1)
        second[np.argmax(mean_distance)] = -np.inf
        assert ranking.slices[1] == slices[np.argmax(second)]


def test_distance_representative_needs_annotated_slices(labeled_stack):
    with pytest.raises(ValueError, match="none is annotated"):
        ranked(labeled_stack, "distance_representative", 2, tiny_model(), annotated=())


def test_cluster_representative_in_one_cluster_scores_its_unlabeled_share(labeled_stack):
    ranking = ranked(labeled_stack, "cluster_representative", 3, tiny_model(), bandwidth=1e6)
    assert ranking.details == {"clusters": 1, "outliers": 0}
    np.testing.assert_allclose(ranking.scores, [1 - 2 / 10, 1 - 3 / 10, 1 - 4 / 10])


@pytest.mark.parametrize("measure", ["bald", "least_confidence"])
def test_bal_picks_spread_out_slices_among_the_most_uncertain(labeled_stack, measure):
    model = tiny_model(dropout=0.3)
    slices = candidates()
    if measure == "bald":  # Bayesian: MC-dropout mutual information with the derived seed (as mc_dropout's test)
        seed = int(np.random.default_rng(5).integers(0, 2**31 - 1, size=slices.size + 1)[0])
        inputs = model_inputs(labeled_stack, slices)
        statistics = SlicePredictor(model, CPU).mc_dropout(inputs, samples=4, seed=seed)
        uncertainty = statistics.mutual_information.mean((1, 2)).numpy()
    else:  # the form before issue 25: one prediction's least confidence
        p = probabilities(model, labeled_stack, slices)
        uncertainty = 1 - np.abs(p - 1 / 3).mean(axis=(1, 2, 3)) / (2 / 3)
    options = {"measure": measure, "samples": 4, "seed": 5}
    exact = ranked(labeled_stack, "bal", 3, model, shortlist_factor=1, **options)
    assert set(exact.slices) == set(expected_top(uncertainty, slices, 3))
    shortlist = expected_top(uncertainty, slices, 6)
    spread = ranked(labeled_stack, "bal", 3, model, shortlist_factor=2, **options)
    assert set(spread.slices) <= set(shortlist)
    features = pooled_features(model, labeled_stack, shortlist)
    centers = pooled_features(model, labeled_stack, (0, 9))
    first = shortlist[np.argmax(cdist(features, centers).min(1))]
    assert spread.slices[0] == first  # the shortlisted slice farthest from the annotated ones


# --- spatial ------------------------------------------------------------------------------------------------


def one_hot_with_background(labels, classes=2):
    return np.stack([labels == value for value in range(classes + 1)], axis=1).astype(np.float32)


def star_cosine(model, stack, slices, annotated):
    """Cosine similarity (n, m) of the f_U bottlenecks of ``slices`` to the f_L bottlenecks of ``annotated``."""
    with torch.no_grad():
        unlabeled = model.encode(model_inputs(stack, slices))[-1].flatten(1).numpy()
        labels = torch.as_tensor(one_hot_with_background(stack.label_layers[0][list(annotated)]))
        labeled_inputs = torch.cat([model_inputs(stack, annotated), labels], 1)
        labeled = model.star.labeled_encoder(labeled_inputs)[-1].flatten(1).numpy()
    return 1 - cdist(unlabeled, labeled, "cosine")


def test_star_similarity_picks_the_least_similar_slices_of_the_pool_or_of_each_group(labeled_stack):
    model = tiny_model("star-small")
    annotated = (0, 4, 9)
    slices = candidates(annotated)
    cosine = star_cosine(model, labeled_stack, slices, annotated)
    groups = {1: (0, 1), 2: (1, 2)}  # slices 1-3 between annotated 0 and 4, slices 5-8 between 4 and 9
    dissimilarity = np.empty(len(slices))
    for group, members in groups.items():
        rows = [i for i, s in enumerate(slices) if np.searchsorted(annotated, s) == group]
        dissimilarity[rows] = 1 - cosine[rows][:, list(members)].mean(1)
    least_similar = np.argsort(-dissimilarity, kind="stable")[:2]  # eq. 4 over the whole pool, the paper's code
    ranking = ranked(labeled_stack, "star_similarity", 2, model, annotated=annotated)
    assert ranking.slices.tolist() == slices[least_similar].tolist()
    np.testing.assert_allclose(ranking.scores, dissimilarity[least_similar], rtol=1e-4)

    per_group = ranked(labeled_stack, "star_similarity", 2, model, annotated=annotated, per_group=True)
    in_group = [np.searchsorted(annotated, s) for s in slices]
    best_of_group = {g: slices[np.argmax(np.where(np.equal(in_group, g), dissimilarity, -np.inf))] for g in (1, 2)}
    assert sorted(per_group.slices.tolist()) == sorted(best_of_group.values())


def test_star_groups_stay_fixed_to_the_first_grid_and_grow_with_the_queries_inside_them():
    from spatial_al.selection.base import RankingVolume, to_pool_volume
    from spatial_al.selection.spatial import star_groups

    def groups(annotated, grid=()):
        volume = to_pool_volume(RankingVolume(np.zeros((25, 2, 2)), annotated=annotated, group_slices=grid), 0, 0)
        ids, members = star_groups(volume, np.array([1, 5, 15, 23]))
        return [members[i].tolist() for i in ids]

    # grid 2, 12, 22 (j = 10), queries 7 and 20 landed: slice 1 is in the head group supplemented to 0-10, slice 23
    # in the tail group supplemented to 14-24, slice 15 in group 12-22 with its grid ends and query 20
    assert groups((2, 7, 12, 20, 22), grid=(2, 12, 22)) == [[2, 7], [2, 7, 12], [12, 20, 22], [20, 22]]
    # bounded by the annotated slices: each slice sees the two around it, one at either end
    assert groups((2, 7, 12, 20, 22)) == [[2], [2, 7], [12, 20], [22]]
    with pytest.raises(ValueError, match="slices 12-22 holds no annotated slice"):
        groups((2, 7), grid=(2, 12, 22))


def test_star_similarity_averages_over_the_fixed_groups_annotated_slices(labeled_stack):
    model = tiny_model("star-small")
    annotated, grid = (0, 4, 6, 8), (0, 4, 8)
    slices = candidates(annotated)  # 1, 2, 3, 5, 7, 9
    cosine = star_cosine(model, labeled_stack, slices, annotated)
    # columns of annotated 0, 4, 6, 8: 1-3 in group 0-4; 5 and 7 in group 4-8 with query 6; 9 in the tail 5-9
    members = {1: [0, 1], 2: [0, 1], 3: [0, 1], 5: [1, 2, 3], 7: [1, 2, 3], 9: [2, 3]}
    dissimilarity = np.array([1 - cosine[row, members[s]].mean() for row, s in enumerate(slices)])
    ranking = ranked(labeled_stack, "star_similarity", 6, model, annotated=annotated, group_slices=grid)
    np.testing.assert_allclose(ranking.scores, dissimilarity[np.argsort(-dissimilarity, kind="stable")], rtol=1e-4)
    assert ranking.slices.tolist() == slices[np.argsort(-dissimilarity, kind="stable")].tolist()


def test_star_similarity_needs_a_star_model_and_annotated_slices(labeled_stack):
    with pytest.raises(ValueError, match="star-small"):
        ranked(labeled_stack, "star_similarity", 2, tiny_model())
    with pytest.raises(ValueError, match="none is annotated"):
        ranked(labeled_stack, "star_similarity", 2, tiny_model("star-small"), annotated=())


def hausdorff(a, b):
    points_a, points_b = np.argwhere(a), np.argwhere(b)
    return max(directed_hausdorff(points_a, points_b)[0], directed_hausdorff(points_b, points_a)[0])


@pytest.mark.parametrize(
    ("form", "scale"), [("paper", "pixels"), ("paper", "normalized"), ("normalized", "normalized")]
)
def test_sbc_consistency_against_an_independent_computation(labeled_stack, form, scale):
    model = tiny_model("sbc-small", distance_scale=scale)
    slices = candidates()
    with torch.no_grad():
        outputs = model.structure_outputs(model_inputs(labeled_stack, slices))
    coarse, refined = outputs.coarse.softmax(1).argmax(1).numpy(), outputs.refined.softmax(1).argmax(1).numpy()
    distance = outputs.distance.numpy()
    diagonal = np.hypot(32, 32)
    reference = []
    for n in range(len(slices)):
        structure, boundary = [], []
        for c in range(2):
            a, b = coarse[n] == c + 1, refined[n] == c + 1
            expected_map = distance_targets((b if form == "paper" else a)[None], scale)[0]
            dot = (expected_map * distance[n, c]).sum()
            norms = np.linalg.norm(expected_map) * np.linalg.norm(distance[n, c])
            q_cos = dot / norms if norms else float(not expected_map.any() and not distance[n, c].any())
            if form == "paper":  # the paper's Dice of the two maps, as printed: 2 sum(ab) / (sum a + sum b)
                total = expected_map.sum() + distance[n, c].sum()
            else:  # V-Net's soft Dice, squares in the denominator
                total = (expected_map**2).sum() + (distance[n, c] ** 2).sum()
            q_dice = 2 * dot / total if total else 1.0
            one_empty_distance = 0.0 if a.any() == b.any() else diagonal  # both empty: 0; one empty: the diagonal
            pixels = hausdorff(a, b) if a.any() and b.any() else one_empty_distance
            if form == "paper":  # inconsistencies, Hausdorff in pixels
                structure.append(0.6 * (1 - q_cos) + 0.4 * (1 - q_dice))
                boundary.append(pixels)
            else:
                structure.append(0.6 * q_cos + 0.4 * q_dice)
                boundary.append(1 - pixels / diagonal)
        cs = 0.8 * np.mean(structure) + 0.2 * np.mean(boundary)
        reference.append(cs if form == "paper" else 1 - cs)
    ranking = ranked(labeled_stack, "sbc_consistency", 8, model, form=form)
    np.testing.assert_allclose(ranking.scores, np.sort(reference)[::-1], rtol=1e-4, atol=1e-6)


def test_the_papers_sbc_score_and_the_normalized_one_rank_a_constructed_pair_oppositely():
    from spatial_al.selection.spatial import structure_boundary_scores

    rows, columns = np.mgrid[:32, :32]
    disc = (rows - 12) ** 2 + (columns - 12) ** 2 < 36
    far_blob = (rows - 28) ** 2 + (columns - 28) ** 2 < 4  # 20 pixels from the disc
    refined = np.stack([disc, disc])
    coarse = np.stack([disc, disc | far_blob])  # slice 1: the coarse output adds a blob far away
    matching = distance_targets(disc[None])[0]
    distance = np.stack([matching[::-1, ::-1].copy(), matching])[:, None]  # slice 0: the SFP map is elsewhere

    def probabilities(masks):
        return torch.as_tensor(np.stack([~masks, masks], axis=1).astype(np.float32))

    outputs = {
        "coarse": probabilities(coarse),
        "refined": probabilities(refined),
        "distance": torch.as_tensor(distance),
    }
    paper = structure_boundary_scores(outputs, "softmax", (0.8, 0.2, 0.6, 0.4), "paper")
    normalized = structure_boundary_scores(outputs, "softmax", (0.8, 0.2, 0.6, 0.4), "normalized")
    # the paper's Hausdorff distance in pixels outweighs a wrong structure map; normalised, the structure term wins
    assert paper[1] > paper[0] and normalized[0] > normalized[1]
    # slice 1's maps agree (cosine 1), yet the paper's Dice of a map with itself is sum(m^2) / sum(m), below 1
    # for a map in [0, 1]: its structure term stays, as printed
    self_dice = (matching**2).sum() / matching.sum()
    assert paper[1] == pytest.approx(0.8 * 0.4 * (1 - self_dice) + 0.2 * hausdorff(disc | far_blob, disc))
    with pytest.raises(ValueError, match="choose one of paper, normalized"):
        structure_boundary_scores(outputs, "softmax", (0.8, 0.2, 0.6, 0.4), "normalised")


# --- models that do not fit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["entropy", "kcenter_greedy", "sbc_consistency"])
def test_a_model_strategy_without_a_model_names_the_fix(labeled_stack, strategy):
    with pytest.raises(ValueError, match="--model CKPT"):
        ranked(labeled_stack, strategy, 2, None)


def test_a_model_of_other_classes_is_refused(labeled_stack):
    torch.manual_seed(0)
    other = SegmentationModel(preset_config("unet-small", class_names=("liver",), features=TINY_UNET))
    with pytest.raises(ValueError, match=r"does not match the segmentation.*liver"):
        ranked(labeled_stack, "entropy", 2, other)


def test_a_model_of_another_slice_axis_is_refused(labeled_stack):
    model = tiny_model(slice_axis=1)
    with pytest.raises(ValueError, match="axis 1"):
        ranked(labeled_stack, "entropy", 2, model)


def test_uncertainty_in_a_cohort_takes_one_slice_per_volume_by_default(labeled_stack):
    volumes = [
        spatial_al.selection.RankingVolume(labeled_stack.image, name="a"),
        spatial_al.selection.RankingVolume(labeled_stack.image[::-1].copy(), name="b"),
    ]
    ranking = spatial_al.selection.rank_cohort(volumes, "entropy", 2, model=tiny_model(), device="cpu")
    assert sorted(ranking.volumes.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="raise per_volume to at least 2"):
        spatial_al.selection.rank_cohort(volumes, "entropy", 3, model=tiny_model(), device="cpu")


# --- pseudo-labels -----------------------------------------------------------------------------------------


def test_ceal_keeps_the_most_confident_slices(labeled_stack):
    model = tiny_model()
    slices = candidates()
    p = np.clip(probabilities(model, labeled_stack, slices), 1e-12, 1)
    confidence = 1 - (-(p * np.log(p)).sum(1)).mean((1, 2)) / np.log(3)
    selection = select_pseudo_labels(labeled_stack.image, "ceal", model, count=3, annotated=(0, 9), device="cpu")
    np.testing.assert_array_equal(selection.slices, expected_top(confidence, slices, 3))
    np.testing.assert_allclose(selection.confidence, np.sort(confidence)[::-1][:3], rtol=1e-5)
    threshold = float(np.median(confidence))
    above = select_pseudo_labels(labeled_stack.image, "ceal", model, min_confidence=threshold, annotated=(0, 9))
    assert set(above.slices) == set(slices[confidence >= threshold])


def test_star_entropy_ranks_the_propagations_by_entropy(labeled_stack):
    model = tiny_model("star-small")
    selection = select_pseudo_labels(
        labeled_stack.image,
        "star_entropy",
        model,
        count=8,
        labels=labeled_stack.label_layers,
        segments=labeled_stack.segments,
        annotated=(0, 9),
        device="cpu",
    )
    labeled = one_hot_with_background(labeled_stack.label_layers[0][[0, 9]])
    propagated, _ = SlicePredictor(model, CPU).propagate(
        model_inputs(labeled_stack, candidates()), model_inputs(labeled_stack, (0, 9)), labeled
    )
    p = np.clip(propagated.numpy(), 1e-12, 1)
    confidence = 1 - (-(p * np.log(p)).sum(1)).mean((1, 2)) / np.log(3)
    np.testing.assert_allclose(selection.confidence, np.sort(confidence)[::-1], rtol=1e-4)
    with pytest.raises(ValueError, match="STAR model"):
        select_pseudo_labels(labeled_stack.image, "star_entropy", tiny_model(), count=2, annotated=(0, 9))


def test_strided_blocks_by_uncertainty_start_with_the_most_uncertain_block(labeled_stack):
    model = tiny_model()
    slices = candidates((0,))
    p = probabilities(model, labeled_stack, slices)
    uncertainty = dict(zip(slices.tolist(), 1 - np.abs(p - 1 / 3).mean(axis=(1, 2, 3)) / (2 / 3), strict=True))
    block_means = {first: np.mean([uncertainty[s] for s in range(first, first + 4)]) for first in range(1, 7)}
    best = max(block_means, key=lambda first: (block_means[first], -first))
    ranking = ranked(labeled_stack, "strided_blocks", 2, model, annotated=(0,), blocks="uncertainty", block_size=4)
    assert ranking.details["blocks"] == [[0, best, best + 3]]
    assert ranking.slices.tolist() == [best, best + 3]
    assert ranking.scores[0] == pytest.approx(block_means[best], rel=1e-5)


# --- proxy-ranked cold start -------------------------------------------------------------------------------


def test_proxy_label_is_the_largest_component_in_the_window():
    from skimage.measure import label as connected_components

    from spatial_al.selection.proxy import proxy_label

    image = np.full((6, 20, 20), -1000.0)
    image[1:5, 2:10, 2:10] = 40.0  # the larger blob
    image[2:4, 14:17, 14:17] = 60.0  # a smaller one
    image[0, 0, 0] = 2000.0  # bone, outside the window
    components = connected_components((image >= -160) & (image <= 240), connectivity=1)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    np.testing.assert_array_equal(proxy_label(image, (-160, 240)), components == largest)
    with pytest.raises(ValueError, match="No voxel lies in the intensity window"):
        proxy_label(image, (300, 400))


def test_proxy_rank_ranks_a_ct_without_any_annotation(labeled_stack):
    image = labeled_stack.image  # about 0 outside, 60 in the disc, 120 in the square
    options = {"window": (40, 90), "training_slices": 4, "max_epochs": 1, "samples": 3}
    first = spatial_al.rank(image, "proxy_rank", 3, device="cpu", seed=1, **options)
    again = spatial_al.rank(image, "proxy_rank", 3, device="cpu", seed=1, **options)
    assert len(first) == 3 and len(set(first.slices.tolist())) == 3 and (first.scores >= 0).all()
    np.testing.assert_array_equal(first.slices, again.slices)
    last = spatial_al.rank(image, "proxy_rank", 3, device="cpu", seed=1, layers="last", **options)
    assert (last.scores >= 0).all() and not np.allclose(np.sort(last.scores), np.sort(first.scores))
    with pytest.raises(ValueError, match="low < high"):
        spatial_al.rank(image, "proxy_rank", 3, window=(90, 40))


# --- unsupervised representative annotation ----------------------------------------------------------------


def test_ual_queries_one_typical_slice_of_each_kind_of_slice():
    rows, columns = np.mgrid[:32, :32]
    kinds = [
        (rows // 4) % 2 * 100.0,  # horizontal stripes
        (columns // 4) % 2 * 100.0,  # vertical stripes
        ((rows - 16) ** 2 + (columns - 16) ** 2 < 80) * 100.0,  # a disc
    ]
    noise = np.random.default_rng(0).normal(0, 5, (12, 32, 32))
    image = np.stack([kinds[k // 4] for k in range(12)]) + noise
    for selection in ("representative", "kmeans"):
        ranking = spatial_al.rank(image, "ual", 3, device="cpu", seed=0, epochs=30, selection=selection)
        assert sorted(ranking.slices // 4) == [0, 1, 2], selection
    assert ranking.details == {"clusters": 3} and ranking.scores.sum() == pytest.approx(1.0)
    again = spatial_al.rank(image, "ual", 3, device="cpu", seed=0, epochs=30, selection="kmeans")
    np.testing.assert_array_equal(ranking.slices, again.slices)


def test_greedy_representatives_maximise_coverage_as_a_brute_force_search_does():
    from itertools import combinations

    from spatial_al.selection.unsupervised import greedy_representatives

    features = np.random.default_rng(3).normal(size=(9, 4))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = np.clip(unit @ unit.T, 0, 1)

    def coverage(rows):
        return similarity[list(rows)].max(axis=0).sum()

    chosen, gains = greedy_representatives(features, 3, lambda row: True)
    assert len(chosen) == 3 and np.sum(gains) == pytest.approx(coverage(chosen))
    assert chosen[0] == int(np.argmax(similarity.sum(axis=1)))  # first: the row most similar to all
    best = max(coverage(rows) for rows in combinations(range(9), 3))
    assert coverage(chosen) >= (1 - 1 / np.e) * best  # the greedy guarantee of a facility-location objective
    refused = greedy_representatives(features, 3, lambda row: row != chosen[0])[0]
    assert chosen[0] not in refused and len(refused) == 3


def test_kcenter_greedy_without_annotation_starts_at_random_then_goes_farthest(labeled_stack):
    model = tiny_model()
    features = pooled_features(model, labeled_stack, range(10))
    firsts = set()
    for seed in range(4):
        ranking = ranked(labeled_stack, "kcenter_greedy", 2, model, annotated=(), seed=seed)
        first, second = ranking.slices.tolist()
        assert second == int(np.argmax(np.linalg.norm(features - features[first], axis=1)))
        assert ranking.scores[0] == 0 and ranking.scores[1] > 0
        firsts.add(first)
    assert len(firsts) > 1  # the seed chooses the start


@pytest.mark.parametrize(
    ("strategy", "preset"), [("mc_dropout", "unet-small"), ("ual", None), ("kcenter_greedy", "unet-small")]
)
def test_model_based_ranking_reports_progress_and_can_be_cancelled(labeled_stack, strategy, preset):
    from spatial_al.progress import OperationCancelled, RecordingProgress

    model = tiny_model(preset) if preset else None
    progress = RecordingProgress()
    ranked(labeled_stack, strategy, 2, model, progress=progress, **({"epochs": 2} if strategy == "ual" else {}))
    assert progress.reports and all(done <= total for done, total, _ in progress.reports)
    with pytest.raises(OperationCancelled):
        ranked(labeled_stack, strategy, 2, model, progress=RecordingProgress(cancel_after=1))


def test_scoring_steps_hold_the_same_number_of_pixels_whatever_the_slice_size():
    from spatial_al.selection.base import PoolVolume
    from spatial_al.selection.uncertainty import slice_chunks

    def volume(size):
        image = np.zeros((3, size, size), np.float32)
        return PoolVolume(image, None, (), np.zeros(0, int), np.zeros(0, int), np.arange(3), "v", normalized=True)

    slices = np.arange(70)
    assert [len(c) for c in slice_chunks(volume(256), slices)] == [32, 32, 6]
    assert [len(c) for c in slice_chunks(volume(512), slices[:20])] == [8, 8, 4]
    assert [len(c) for c in slice_chunks(volume(4096), slices[:2])] == [1, 1]  # at least one slice a step
    np.testing.assert_array_equal(np.concatenate(slice_chunks(volume(512), slices)), slices)


@pytest.mark.parametrize("encoder", ["vae", "unet"])
def test_vaal_queries_the_slices_least_like_the_annotated_ones_first(encoder):
    import spatial_al

    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[:32, :32]
    disc = ((rows - 16) ** 2 + (columns - 16) ** 2 < 80).astype(np.float32)
    stripes = (np.sin(columns / 1.5) > 0).astype(np.float32)
    kinds = np.array([0] * 24 + [1] * 6)  # 24 disc slices (8 annotated), 6 striped ones, none annotated
    rng.shuffle(kinds)
    image = np.stack([(stripes if kind else disc) + rng.normal(0, 0.1, (32, 32)) for kind in kinds]).astype(np.float32)
    annotated = np.flatnonzero(kinds == 0)[:8]
    options = {"epochs": 15, "batch_size": 8, "encoder": encoder}
    ranking = spatial_al.rank(image, "vaal", 6, annotated=annotated, seed=3, device="cpu", **options)
    assert (kinds[ranking.slices] == 1).sum() >= 5  # the striped slices, unlike every annotated one, come first
    assert np.all((ranking.scores >= 0) & (ranking.scores <= 1))
    again = spatial_al.rank(image, "vaal", 6, annotated=annotated, seed=3, device="cpu", **options)
    np.testing.assert_array_equal(ranking.slices, again.slices)
    with pytest.raises(ValueError, match="vaal learns what tells annotated slices from the others, and none is"):
        spatial_al.rank(image, "vaal", 6, device="cpu", epochs=1, encoder=encoder)
    with pytest.raises(ValueError, match="encoder must be one of vae, unet"):
        spatial_al.rank(image, "vaal", 6, annotated=annotated, device="cpu", encoder="resnet")
