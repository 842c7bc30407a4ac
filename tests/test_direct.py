"""DIRECT selection (PCA/Kaiser, BIRCH, k per cluster, coverage) and the CHGNet features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

import hifidata.sampling.direct as direct
from hifidata.sampling.direct import (
    BirchClustering,
    DirectSampler,
    KaiserPCA,
    _nearest_center,
    _ward_merge,
    coverage_per_component,
    coverage_score,
    select_k_per_cluster,
)


def correlation_eigenvalues(X: np.ndarray) -> np.ndarray:
    """The independent route: numpy's eigenvalues of the correlation matrix, largest first."""
    return np.linalg.eigvalsh(np.corrcoef(X, rowvar=False))[::-1]


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=600, centers=6, n_features=8, cluster_std=0.5, random_state=0)
    return X, y


# --- KaiserPCA -------------------------------------------------------------------------------


def test_kaiser_keeps_one_component_per_latent_variable():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(1000, 3))
    # each latent variable copied into 3 noisy features: 3 eigenvalues ≈ 3, 6 ≈ 0
    X = np.repeat(latent, 3, axis=1) + 0.1 * rng.normal(size=(1000, 9))
    pca = KaiserPCA().fit(StandardScaler().fit_transform(X))

    expected = correlation_eigenvalues(X)
    assert pca.n_components_ == 3
    np.testing.assert_allclose(pca.explained_variance_, expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_[:3], 3.0, atol=0.1)
    assert pca.explained_variance_[3:].max() < 0.05
    assert pca.transform(StandardScaler().fit_transform(X)).shape == (1000, 3)


def test_kaiser_transform_is_the_pca_projection_block_by_block(monkeypatch):
    rng = np.random.default_rng(3)
    X = StandardScaler().fit_transform(rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)))
    pca = KaiserPCA().fit(X)
    monkeypatch.setattr(direct, "BLOCK", 64)  # 500 rows: 8 blocks, the last one short

    np.testing.assert_allclose(
        pca.transform(X), pca.pca_.transform(X)[:, : pca.n_components_], atol=1e-12
    )


def test_kaiser_on_independent_features_keeps_the_sampling_noise_above_one():
    # No shared structure: every true eigenvalue is 1, the sample ones scatter around 1
    # (within the Marchenko–Pastur bulk). Kaiser then keeps exactly those that landed above 1
    # — some, never none and never all — each carrying about 1/F of the variance.
    rng = np.random.default_rng(1)
    n_features = 8
    X = rng.normal(size=(2000, n_features))
    pca = KaiserPCA().fit(StandardScaler().fit_transform(X))

    expected = correlation_eigenvalues(X)
    assert pca.n_components_ == np.count_nonzero(expected > 1)
    assert 1 <= pca.n_components_ < n_features
    assert np.all((expected > 0.8) & (expected < 1.2))
    np.testing.assert_allclose(pca.explained_variance_ratio_, 1 / n_features, atol=0.03)


def test_kaiser_keeps_at_least_one_component_and_weights_by_variance_ratio():
    rng = np.random.default_rng(2)
    # one varying feature among constant ones: the only eigenvalue is 1, not above it
    X = np.column_stack([rng.normal(size=50), np.full(50, 3.0), np.zeros(50)])
    standardized = StandardScaler().fit_transform(X)
    pca = KaiserPCA().fit(standardized)
    weighted = KaiserPCA(weighting=True).fit(standardized)

    assert pca.n_components_ == 1
    np.testing.assert_allclose(pca.explained_variance_, [1.0, 0.0, 0.0], atol=1e-12)
    assert np.isfinite(pca.transform(standardized)).all()
    np.testing.assert_allclose(
        weighted.transform(standardized),
        pca.transform(standardized) * pca.explained_variance_ratio_[0],
    )


# --- BIRCH and selection ---------------------------------------------------------------------


def test_every_cluster_contributes_and_birch_recovers_the_blobs(blobs):
    X, y = blobs
    sampler = DirectSampler(n_clusters=6, k=2).fit(X)

    assert adjusted_rand_score(y, sampler.labels_) > 0.95
    assert set(sampler.labels_[sampler.selected_]) == set(range(6))
    assert np.bincount(y[sampler.selected_]).tolist() == [2] * 6
    assert len(np.unique(sampler.selected_)) == len(sampler.selected_) == 12


@pytest.mark.parametrize("threshold_init", [1e3, 1e-6])
def test_threshold_search_reaches_the_target_without_hand_tuning(blobs, threshold_init):
    # 1e3: one subcluster swallows everything; 1e-6: every sample is a subcluster of its own
    X, y = blobs
    clustering = BirchClustering(n_clusters=6, threshold_init=threshold_init).fit(X)
    thresholds, _, outcomes = zip(*clustering.search_, strict=True)

    assert thresholds[0] == threshold_init
    assert outcomes[-1] == "ok" and thresholds[-1] == clustering.threshold_
    assert clustering.aim_ == 30  # oversample 5 × 6 clusters
    assert 30 <= clustering.n_subclusters_ <= 33  # within tol = 10 % above the aim
    assert len(thresholds) < 30  # geometric steps, not maml's linear rescaling
    assert 1e-3 < clustering.threshold_ < 10  # the blobs' scale, found from 9 decades away
    assert clustering.n_clusters_ == 6
    assert adjusted_rand_score(y, clustering.labels_) > 0.95
    for label, center in enumerate(clustering.centers_):
        np.testing.assert_allclose(center, X[clustering.labels_ == label].mean(axis=0))

    many = DirectSampler(n_clusters=40, threshold_init=threshold_init).fit(X).record()
    assert many["n_clusters_found"] == 40
    assert many["threshold_search"][-1] == [many["threshold"], many["n_subclusters"], "ok"]


@pytest.mark.parametrize("n_clusters", [2, 7, 50, 199, 300])
def test_exactly_n_clusters_when_there_are_enough_distinct_samples(n_clusters):
    # 300 distinct rows in 4 tight groups: BIRCH's radius alone would see 4 clusters
    X, _ = make_blobs(n_samples=300, centers=4, n_features=3, cluster_std=0.01, random_state=1)
    clustering = BirchClustering(n_clusters=n_clusters).fit(X)

    assert clustering.n_clusters_ == n_clusters
    np.testing.assert_array_equal(np.unique(clustering.labels_), np.arange(n_clusters))
    # numbered in order of first appearance
    _, first = np.unique(clustering.labels_, return_index=True)
    assert np.all(np.diff(first) > 0)


def test_global_step_is_greedy_weighted_ward():
    rng = np.random.default_rng(6)
    centers = rng.normal(size=(25, 2))
    sizes = rng.integers(1, 20, size=25).astype(float)

    def naive(target):  # merge the globally cheapest pair until target clusters are left
        groups = [([i], centers[i], sizes[i]) for i in range(25)]
        while len(groups) > target:
            _, a, b = min(
                (na * nb / (na + nb) * ((ca - cb) ** 2).sum(), a, b)
                for a, (_, ca, na) in enumerate(groups)
                for b, (_, cb, nb) in enumerate(groups)
                if a < b
            )
            (ma, ca, na), (mb, cb, nb) = groups[a], groups[b]
            groups[a] = (ma + mb, (na * ca + nb * cb) / (na + nb), na + nb)
            del groups[b]
        labels = np.empty(25, dtype=int)
        for label, (members, _, _) in enumerate(groups):
            labels[members] = label
        return labels

    for target in (1, 5, 12, 24):
        merged = _ward_merge(centers, sizes, target, n_neighbors=24)  # complete graph
        assert len(np.unique(merged)) == target
        assert adjusted_rand_score(naive(target), merged) == 1.0
    # the sizes count: 0 and 1 are the closest pair, but merging two heavy points costs more
    # than moving a light one twice as far
    line = np.array([[0.0], [1.0], [3.0]])
    unweighted = _ward_merge(line, np.ones(3), 2)
    weighted = _ward_merge(line, np.array([50.0, 50.0, 1.0]), 2)
    assert unweighted[0] == unweighted[1] != unweighted[2]
    assert weighted[0] != weighted[1] == weighted[2]


def test_nearest_center_is_exact(monkeypatch):
    X, _ = make_blobs(n_samples=3000, centers=30, n_features=5, random_state=2)
    centers = X[np.random.default_rng(0).choice(3000, 400, replace=False)] + 0.05
    monkeypatch.setattr(direct, "BLOCK", 1000)
    nearest, nearest_sq = _nearest_center(X, centers)

    brute = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(nearest, brute.argmin(axis=1))
    np.testing.assert_allclose(nearest_sq, brute.min(axis=1), rtol=1e-9, atol=1e-12)


def test_large_n_path_subsamples_and_still_picks_every_known_cluster():
    # 30,000 rows, 12 known clusters from 0.6 % to 30 % of the rows, BIRCH on 2,000 of them
    sizes = np.round(np.geomspace(188, 9030, 12)).astype(int)  # make_blobs shuffles the rows
    X, y = make_blobs(n_samples=sizes, n_features=8, cluster_std=0.8, random_state=4)
    sampler = DirectSampler(n_clusters=12, max_samples=2000).fit(X)
    record = sampler.record()

    assert 29_900 < len(X) < 30_100
    assert record["birch_samples"] == 2000
    assert record["n_clusters_found"] == 12
    assert adjusted_rand_score(y, sampler.labels_) > 0.99
    assert np.bincount(y[record["selected"]], minlength=12).tolist() == [1] * 12


def test_a_rare_isolated_group_gets_a_cluster_even_when_the_subsample_misses_it():
    rng = np.random.default_rng(9)
    bulk = rng.normal(size=(30_000, 8))
    rare = 500.0 + rng.normal(size=(3, 8))  # 1 row in 10,000, far from everything
    X = np.vstack([bulk, rare])
    group = np.arange(30_000, 30_003)
    missed = 0
    for seed in range(6):
        clustering = BirchClustering(n_clusters=5, max_samples=2000, seed=seed).fit(X)
        labels = clustering.labels_
        assert clustering.subsampled_ and clustering.n_samples_fit_ == 2000
        assert len(set(labels[group])) == 1
        assert np.count_nonzero(labels == labels[group[0]]) == 3  # a cluster of its own
        missed += clustering.n_outliers_ > 0
        assert clustering.n_outliers_ in (0, 3)
    assert missed > 0  # the subsample missed the group at least once (each time: p ≈ 0.8)
    selected = DirectSampler(n_clusters=5, max_samples=2000).fit(X).selected_
    assert np.isin(group, selected).sum() == 1


def test_center_strategy_picks_the_members_nearest_the_centroid(blobs):
    X, _ = blobs
    sampler = DirectSampler(n_clusters=10, k=3).fit(X)
    embedding, labels = sampler.embedding_, sampler.labels_

    expected = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centroid = embedding[members].mean(axis=0)
        distances = [np.sqrt(((embedding[i] - centroid) ** 2).sum()) for i in members]
        expected.extend(members[np.argsort(distances)[:3]])
    np.testing.assert_array_equal(sampler.selected_, np.sort(expected))

    nearest_only = select_k_per_cluster(embedding, labels, k=1)
    assert len(nearest_only) == 10
    assert set(nearest_only) <= set(sampler.selected_)


def test_spread_strategy_spans_the_distance_ranking():
    # one cluster on a line: centroid at 0, ranked by distance 0, ±1, ±2, ... ±5
    X = np.arange(-5.0, 6.0)[:, None]
    labels = np.zeros(len(X), dtype=int)
    spread = select_k_per_cluster(X, labels, k=3, strategy="spread")
    center = select_k_per_cluster(X, labels, k=3, strategy="center")

    assert np.abs(X[center, 0]).tolist() == [1.0, 0.0, 1.0]
    assert sorted(np.abs(X[spread, 0])) == [0.0, 3.0, 5.0]


@pytest.mark.parametrize("max_samples", [None, 200])  # 200 of 600: the subsample path
def test_selection_is_reproducible_from_the_seed(blobs, max_samples):
    X, _ = blobs
    for strategy in ("center", "random"):
        sampler = DirectSampler(
            n_clusters=12, k=3, strategy=strategy, seed=7, max_samples=max_samples
        )
        first = sampler.fit(X).record()
        again = clone(sampler).fit(X).record()
        for key in ("selected", "labels", "embedding", "explained_variance"):
            np.testing.assert_array_equal(first[key], again[key])
        assert first["threshold_search"] == again["threshold_search"]
        assert first["birch_samples"] == (600 if max_samples is None else 200)
    other_seed = DirectSampler(n_clusters=12, k=3, strategy="random", seed=8).fit(X)
    assert not np.array_equal(other_seed.selected_, first["selected"])


def test_random_strategy_takes_k_distinct_members_per_cluster(blobs):
    X, y = blobs
    picked = select_k_per_cluster(X, y, k=4, strategy="random", seed=3)
    assert np.bincount(y[picked]).tolist() == [4] * 6
    # a cluster smaller than k gives all of its members
    assert select_k_per_cluster(X[:3], np.array([0, 0, 1]), k=5, strategy="random").tolist() == [
        0,
        1,
        2,
    ]


def test_record_holds_what_the_store_keeps(blobs):
    X, _ = blobs
    record = DirectSampler(n_clusters=6, k=2, weighting=True).fit(X).record()

    n_pc = record["n_components"]
    assert record["embedding"].shape == (600, n_pc)
    assert record["labels"].shape == (600,)
    assert record["selected"].dtype.kind == "i"
    assert len(record["explained_variance"]) == 8
    assert record["n_clusters_found"] == 6
    assert record["notes"] == []
    scalars = {key: value for key, value in record.items() if not isinstance(value, np.ndarray)}
    assert json.loads(json.dumps(scalars))["params"]["weighting"] is True


# --- degenerate input ------------------------------------------------------------------------


def test_fewer_samples_than_clusters_selects_all_with_a_note():
    X = np.random.default_rng(4).normal(size=(5, 3))
    record = DirectSampler(n_clusters=10).fit(X).record()

    assert record["selected"].tolist() == [0, 1, 2, 3, 4]
    assert record["threshold"] is None
    assert "all selected" in record["notes"][0]


def test_constant_columns_and_duplicates_give_no_nans():
    rng = np.random.default_rng(5)
    varying = np.repeat(rng.normal(size=(4, 2)), 10, axis=0)  # only 4 distinct rows
    X = np.column_stack([varying, np.full(40, 7.0)])
    sampler = DirectSampler(n_clusters=6, k=1).fit(X)
    record = sampler.record()

    assert np.isfinite(record["embedding"]).all()
    assert np.isfinite(record["explained_variance"]).all()
    assert record["n_clusters_found"] == 4
    assert len(record["selected"]) == 4
    assert "4 distinct samples" in record["notes"][0]


def test_bad_parameters_name_themselves():
    X = np.arange(20.0).reshape(10, 2)
    for params, name in [
        ({"n_clusters": 0}, "n_clusters"),
        ({"n_clusters": 2, "k": 0}, "k"),
        ({"n_clusters": 2, "strategy": "farthest"}, "strategy"),
        ({"n_clusters": 2, "threshold_init": 0.0}, "threshold_init"),
        ({"n_clusters": 2, "max_samples": 0}, "max_samples"),
    ]:
        with pytest.raises(ValueError, match=name):
            DirectSampler(**params).fit(X)
    with pytest.raises(ValueError, match="X"):
        DirectSampler(n_clusters=2).fit(np.full((10, 2), np.nan))


# --- coverage --------------------------------------------------------------------------------


def test_coverage_of_everything_is_one_and_of_a_corner_is_lower(blobs):
    X, _ = blobs
    sampler = DirectSampler(n_clusters=30).fit(X)
    embedding = sampler.embedding_
    corner = embedding[embedding[:, 0] < np.quantile(embedding[:, 0], 0.1)]

    assert coverage_score(embedding, embedding) == 1.0
    assert coverage_score(embedding, corner) < 0.5
    assert coverage_score(embedding, embedding[sampler.selected_]) > coverage_score(
        embedding, corner[:30]
    )


def test_coverage_follows_maml_bin_edges():
    values = np.arange(100.0)[:, None]
    # 11 edges from 0 to 99 make 10 bins; picks in the first and the last bin cover 2 of 10
    np.testing.assert_allclose(coverage_per_component(values, values[[0, 5, 95]], 11), [0.2])
    assert coverage_score(values, values[:0]) == 0.0
    # the default 100 edges make 99 bins, all occupied; a constant column counts as covered
    with_constant = np.column_stack([values, np.ones(100)])
    assert coverage_score(with_constant, with_constant[[0]]) == pytest.approx((1 / 99 + 1) / 2)


# --- CHGNet structure features ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chgnet():
    from hifidata.calculators.mlip import pretrained_chgnet

    return pretrained_chgnet("chgnet-0.3.0", "cpu")


def rattled_water_dimers(n: int):
    from ase.collections import s22

    dimers = []
    for seed in range(n):
        atoms = s22["Water_dimer"].copy()
        atoms.rattle(stdev=0.05, seed=seed)
        dimers.append(atoms)
    return dimers


def test_structure_features_are_batch_invariant(chgnet):
    from hifidata.sampling.features import structure_features

    dimers = rattled_water_dimers(3)
    advanced: list[int] = []
    batched = structure_features(chgnet, dimers, batch_size=2, progress=advanced.append)
    one_at_a_time = np.vstack([structure_features(chgnet, [atoms]) for atoms in dimers])

    assert batched.shape == (3, 64)
    assert batched.dtype == np.float64
    assert np.isfinite(batched).all()
    assert advanced == [2, 1]
    np.testing.assert_allclose(batched, one_at_a_time, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])  # the rattle shows in the features
    assert structure_features(chgnet, []).shape == (0, 0)
