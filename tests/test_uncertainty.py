"""Uncertainty: committee disagreement, feature distance, and stratified uncertainty picks."""

from __future__ import annotations

import numpy as np
import pytest

from hifidata.sampling.uncertainty import (
    DEFAULT_SCORE,
    committee_disagreement,
    committee_predictions,
    committee_uncertainty,
    direct_uncertainty_pick,
    feature_distance,
    select_by_uncertainty,
)


# -- committee disagreement ----------------------------------------------------------------------
def test_committee_disagreement_matches_a_hand_computation():
    energies = np.array([[1.0, 10.0], [3.0, 14.0]])  # 2 models, 2 structures
    forces = [
        [np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])],
        [np.array([[-1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 4.0]])],
    ]
    result = committee_disagreement(energies, forces, [1, 2])
    # energies: population std 1 and 2 eV, over 1 and 2 atoms
    np.testing.assert_allclose(result["energy_std_per_atom"], [1.0, 1.0])
    # structure 0: mean force 0, both deviations of length 1 -> sqrt(mean(1, 1)) = 1
    # structure 1: atom 0 agrees (0); atom 1: mean (0, 1.5, 2), |deviation|^2 = 6.25 -> 2.5
    np.testing.assert_allclose(result["max_force_std"], [1.0, 2.5])
    np.testing.assert_allclose(result["mean_force_std"], [1.0, 1.25])
    assert DEFAULT_SCORE in result


def test_force_deviation_is_dpgens_model_deviation():
    rng = np.random.default_rng(0)
    fs = rng.normal(size=(4, 3, 5, 3))  # models x frames x atoms x 3, as DeePMD-kit lays it out
    # DeePMD-kit's calc_model_devi_f: the norm of the per-component std over models
    devi = np.linalg.norm(np.std(fs, axis=0), axis=-1)
    result = committee_disagreement(
        rng.normal(size=(4, 3)), [list(member) for member in fs], [5, 5, 5]
    )
    np.testing.assert_allclose(result["max_force_std"], devi.max(axis=-1))
    np.testing.assert_allclose(result["mean_force_std"], devi.mean(axis=-1))


def test_committee_disagreement_rejects_bad_input():
    one_atom = [np.zeros((1, 3))]
    with pytest.raises(ValueError, match="two members"):
        committee_disagreement(np.zeros((1, 1)), [one_atom], [1])
    with pytest.raises(ValueError, match="expected"):
        committee_disagreement(np.zeros((2, 1)), [one_atom, one_atom], [2])
    with pytest.raises(ValueError, match="lists"):
        committee_disagreement(np.zeros((2, 1)), [one_atom], [1])


def test_a_committee_of_callables_disagrees_where_one_member_is_off(water_dimer):
    """Members are plain callables; the second one is wrong far from the training geometry."""
    reference = water_dimer.get_positions()

    def truth(structures):
        return {"energy": [0.0 for _ in structures],
                "forces": [np.zeros((len(a), 3)) for a in structures]}

    def off_far_away(structures):
        shifts = [np.abs(a.get_positions() - reference).max() for a in structures]
        return {"energy": shifts,
                "forces": [np.full((len(a), 3), s)
                           for a, s in zip(structures, shifts, strict=True)]}

    near, far = water_dimer.copy(), water_dimer.copy()
    near.positions[0] += 0.01
    far.positions[0] += 0.5
    predictions = committee_predictions([truth, off_far_away], [near, far])
    assert predictions["energy"].shape == (2, 2)
    assert list(predictions["n_atoms"]) == [6, 6]
    score = committee_uncertainty([truth, off_far_away], [near, far])
    assert score[1] > score[0] > 0


def _compressed(atoms, factor):
    """Every O-H bond shortened to ``factor`` of its length (s22 dimer: O 0 and 3, H the rest)."""
    out = atoms.copy()
    for o, h in ((0, 1), (0, 2), (3, 4), (3, 5)):
        out.positions[h] = out.positions[o] + factor * (out.positions[h] - out.positions[o])
    return out


def test_two_chgnet_models_disagree_more_on_a_distorted_dimer(water_dimer):
    """CHGNet 0.3.0 (PBE/MPtrj) and CHGNet r2SCAN, one as a hifidata Model, one as a network.

    Checked before writing this test: at the equilibrium dimer max_devi_f is 0.38 eV/Å and the
    energy spread 0.09 eV/atom; with the O-H bonds at 70% (0.67 Å) they are 4.4 eV/Å and
    0.23 eV/atom. The margins asserted are a factor 3 and 1.5.
    """
    from hifidata.calculators.mlip import pretrained_chgnet
    from hifidata.training.models import ChgnetModel

    pbe = ChgnetModel(pretrained_chgnet("chgnet-0.3.0"), ["H", "O"])
    r2scan = pretrained_chgnet("chgnet-r2scan")
    structures = [water_dimer, _compressed(water_dimer, 0.7)]
    predictions = committee_predictions([pbe, r2scan], structures, batch_size=2)
    result = committee_disagreement(
        predictions["energy"], predictions["forces"], predictions["n_atoms"]
    )
    assert result["max_force_std"][1] > 3 * result["max_force_std"][0]
    assert result["mean_force_std"][1] > 3 * result["mean_force_std"][0]
    assert result["energy_std_per_atom"][1] > 1.5 * result["energy_std_per_atom"][0]
    # the ranking the selection uses prefers the distorted one
    assert list(select_by_uncertainty([0, 0], result[DEFAULT_SCORE])) == [1]
    # the same network as a Model and as a raw CHGNet: the committee agrees exactly
    same = committee_uncertainty([pbe, pbe.network], structures)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_committee_needs_two_members_and_known_member_types(water_dimer):
    with pytest.raises(ValueError, match="two members"):
        committee_predictions([lambda s: {}], [water_dimer])
    with pytest.raises(TypeError, match="committee member"):
        committee_predictions([1, 2], [water_dimer])
    with pytest.raises(ValueError, match="returned"):
        committee_predictions([lambda s: {"energy": [], "forces": []}] * 2, [water_dimer])


# -- feature distance ----------------------------------------------------------------------------
@pytest.fixture
def two_regions():
    """Training covers region A; candidates come from A and from a far region B."""
    rng = np.random.default_rng(1)
    train = rng.normal(0.0, 1.0, size=(200, 4))
    in_a = rng.normal(0.0, 1.0, size=(30, 4))
    in_b = rng.normal(0.0, 1.0, size=(30, 4)) + np.array([8.0, -6.0, 0.0, 5.0])
    return train, np.vstack([in_a, in_b])


def test_feature_distance_ranks_the_uncovered_region_first(two_regions):
    train, candidates = two_regions
    distance = feature_distance(train, candidates)
    assert distance.shape == (60,)
    assert distance[30:].min() > distance[:30].max()
    assert set(np.argsort(-distance)[:30]) == set(range(30, 60))
    smooth = feature_distance(train, candidates, n_neighbors=5)
    assert np.all(smooth >= distance - 1e-12)  # the mean of 5 is at least the nearest
    # a candidate that is a training point is at distance 0
    assert feature_distance(train, train[:3]) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_feature_distance_checks_its_input(two_regions):
    train, candidates = two_regions
    with pytest.raises(ValueError, match="columns"):
        feature_distance(train[:, :3], candidates)
    with pytest.raises(ValueError, match="reference_features"):
        feature_distance(np.zeros((0, 4)), candidates)


# -- stratified uncertainty selection ------------------------------------------------------------
def test_every_cluster_gives_its_most_uncertain_member():
    labels = np.array([0, 0, 0, 1, 1, 2])
    uncertainty = np.array([0.1, 0.9, 0.5, 0.2, 0.2, 0.0])
    # coverage: cluster 2 contributes although its member is the least uncertain of all;
    # cluster 1's tie goes to the lower index
    assert select_by_uncertainty(labels, uncertainty).tolist() == [1, 3, 5]
    assert select_by_uncertainty(labels, uncertainty, k=2).tolist() == [1, 2, 3, 4, 5]
    assert select_by_uncertainty(labels, uncertainty, k=5).tolist() == [0, 1, 2, 3, 4, 5]


def test_excluded_indices_are_never_picked():
    labels = np.array([0, 0, 0, 1, 1, 2])
    uncertainty = np.array([0.1, 0.9, 0.5, 0.2, 0.2, 0.0])
    mask = np.array([False, True, False, False, False, True])
    assert select_by_uncertainty(labels, uncertainty, exclude=mask).tolist() == [2, 3]
    assert select_by_uncertainty(labels, uncertainty, exclude=[1, 5]).tolist() == [2, 3]
    everything = np.ones(6, dtype=bool)
    assert select_by_uncertainty(labels, uncertainty, exclude=everything).tolist() == []

    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = rng.integers(0, 7, size=80)
        uncertainty = rng.integers(0, 5, size=80).astype(float)  # many ties
        excluded = rng.random(80) < 0.4
        picked = select_by_uncertainty(labels, uncertainty, k=2, exclude=excluded)
        assert not excluded[picked].any()
        assert np.array_equal(picked, select_by_uncertainty(labels, uncertainty, 2, excluded))
        for cluster in np.unique(labels):
            eligible = np.flatnonzero((labels == cluster) & ~excluded)
            chosen = np.intersect1d(picked, eligible)
            assert len(chosen) == min(2, len(eligible))  # coverage
            expected = eligible[np.lexsort((eligible, -uncertainty[eligible]))][:2]
            assert sorted(chosen) == sorted(expected)  # most uncertain, ties to lower index


def test_select_by_uncertainty_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        select_by_uncertainty([0, 1], [0.1])
    with pytest.raises(ValueError, match="finite"):
        select_by_uncertainty([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="k must be"):
        select_by_uncertainty([0, 1], [0.1, 0.2], k=0)
    with pytest.raises(ValueError, match="outside"):
        select_by_uncertainty([0, 1], [0.1, 0.2], exclude=[2])


def test_direct_strata_then_distance_to_the_training_set(two_regions):
    """Iteration k: DIRECT clusters over all candidates, farthest-from-training in each."""
    train, candidates = two_regions
    distance = feature_distance(train, candidates)
    labeled = np.zeros(60, dtype=bool)
    labeled[:5] = True  # already labeled in an earlier iteration
    picked, sampler = direct_uncertainty_pick(candidates, distance, n_clusters=6, exclude=labeled)
    assert not labeled[picked].any()
    clusters = sampler.labels_
    assert sorted(set(clusters[picked])) == sorted(set(clusters[~labeled]))  # coverage
    for index in picked:
        same = np.flatnonzero((clusters == clusters[index]) & ~labeled)
        assert distance[index] == distance[same].max()
    # both regions are represented although region B is far more uncertain
    assert (picked < 30).any() and (picked >= 30).any()
