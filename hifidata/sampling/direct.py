"""DIRECT stratified selection: standardize → PCA (Kaiser rule) → BIRCH → k per cluster.

DIRECT (DImensionality REduction-Clustering-sTratified sampling; Qi et al., npj Comput. Mater.
2024) picks a small, diverse subset of candidate structures from their feature vectors: it keeps
the principal components that carry more variance than one standardized feature (Kaiser rule),
clusters the structures in that space with BIRCH, and takes k structures from every cluster, so
rare regions of configuration space get labels as well as the crowded ones.

Each step is a scikit-learn estimator (the shape of maml's ``maml.sampling`` reference code) so
one can be swapped or used alone; ``DirectSampler`` chains them and records what the store keeps.
Where this module departs from maml, it says so next to the code.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import Birch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted

log = logging.getLogger(__name__)

#: How select_k_per_cluster may pick members of a cluster.
STRATEGIES = ("center", "spread", "random")

#: Refits of BIRCH allowed while lowering its threshold towards the target cluster count.
MAX_THRESHOLD_STEPS = 100


def _as_features(X, name: str = "X") -> np.ndarray:
    """A finite float64 matrix of shape (N, F) with N ≥ 1, or a ValueError naming ``name``."""
    try:
        return check_array(X, dtype=np.float64, ensure_min_samples=1, input_name=name)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error


class KaiserPCA(TransformerMixin, BaseEstimator):
    """PCA keeping the components whose eigenvalue exceeds 1 (Kaiser rule), at least one.

    The input must already be standardized (zero mean, unit variance per feature, as
    StandardScaler gives): then the eigenvalues are those of the correlation matrix, whose
    average is 1, and a component above 1 carries more variance than one original feature.

    Parameters
    ----------
    weighting : multiply each kept component by its explained-variance ratio (maml's
        ``weighting_PCs``), so that BIRCH distances favour the leading components.

    Attributes
    ----------
    pca_ : the fitted sklearn PCA (all components).
    explained_variance_ : every eigenvalue, largest first, of the covariance of the input taken
        with 1/N (ddof=0). For StandardScaler output this is exactly the correlation matrix;
        maml thresholds sklearn's 1/(N-1) variances, larger by N/(N-1) — negligible at DIRECT's
        sample sizes, and this way the rule is the textbook one.
    explained_variance_ratio_ : each eigenvalue over their sum (zeros when the input is constant).
    n_components_ : how many components are kept.
    """

    def __init__(self, weighting: bool = False):
        self.weighting = weighting

    def fit(self, X, y=None) -> KaiserPCA:
        X = _as_features(X)
        # "full" is exact and deterministic; the randomized solver would tie results to a seed.
        # errstate: sklearn's own variance bookkeeping divides 0 by 0 for a single sample or
        # constant input; those attributes are unused here, the eigenvalues come from S².
        with np.errstate(divide="ignore", invalid="ignore"):
            self.pca_ = PCA(svd_solver="full").fit(X)
        self.explained_variance_ = self.pca_.singular_values_**2 / X.shape[0]
        total = float(self.explained_variance_.sum())
        self.explained_variance_ratio_ = self.explained_variance_ / (total if total > 0 else 1.0)
        # At least one component, even when no eigenvalue exceeds 1 (e.g. a single varying
        # feature among constant ones): the clustering needs a space to work in.
        self.n_components_ = max(1, int(np.count_nonzero(self.explained_variance_ > 1.0)))
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "pca_")
        scores = self.pca_.transform(_as_features(X))[:, : self.n_components_]
        if self.weighting:
            scores = scores * self.explained_variance_ratio_[: self.n_components_]
        return scores


class BirchClustering(ClusterMixin, BaseEstimator):
    """BIRCH with a target cluster count, lowering the threshold until it can be reached.

    BIRCH first summarizes the data into subclusters of radius at most ``threshold``, then a
    global agglomerative step merges the subclusters into ``n_clusters``. That step cannot make
    more clusters than there are subclusters, so while there are too few the threshold shrinks
    in proportion to the shortfall (maml's rule), and at least by a factor 0.8 per refit so a
    near miss does not take dozens of refits.

    Parameters
    ----------
    n_clusters : the number of clusters wanted.
    threshold_init : the first BIRCH threshold tried, in the units of the input.
    branching_factor : passed to sklearn's Birch.

    Attributes
    ----------
    birch_ : the fitted sklearn Birch.
    labels_ : cluster of each sample, numbered 0 .. n_clusters_ - 1.
    target_ : clusters aimed for: n_clusters, or the number of distinct samples when that is
        smaller (identical samples always share a subcluster).
    n_clusters_ : clusters actually formed (target_ unless BIRCH left a cluster empty).
    threshold_ : the threshold of the final fit.
    n_subclusters_ : BIRCH subclusters in the final fit.
    centers_ : centroid (mean of the members) of each cluster, in the input space.
    """

    def __init__(
        self, n_clusters: int = 1, threshold_init: float = 0.5, branching_factor: int = 50
    ):
        self.n_clusters = n_clusters
        self.threshold_init = threshold_init
        self.branching_factor = branching_factor

    def fit(self, X, y=None) -> BirchClustering:
        X = _as_features(X)
        _check_positive_int("n_clusters", self.n_clusters)
        if not self.threshold_init > 0:
            raise ValueError(f"threshold_init must be positive, got {self.threshold_init}")
        self.target_ = target = min(int(self.n_clusters), len(np.unique(X, axis=0)))
        self.birch_, self.threshold_ = self._fit_birch(X, target)
        self.n_subclusters_ = len(self.birch_.subcluster_centers_)
        # One cluster needs no global step (and sklearn's needs two subclusters); otherwise
        # predict() can leave a global cluster without members: renumber the ones in use.
        labels = self.birch_.labels_ if target > 1 else np.zeros(X.shape[0], dtype=np.int64)
        _, self.labels_ = np.unique(labels, return_inverse=True)
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.centers_ = _centroids(X, self.labels_, self.n_clusters_)
        return self

    def _fit_birch(self, X: np.ndarray, target: int) -> tuple[Birch, float]:
        threshold = float(self.threshold_init)
        for _ in range(MAX_THRESHOLD_STEPS):
            birch = Birch(
                n_clusters=target if target > 1 else None,
                threshold=threshold,
                branching_factor=self.branching_factor,
            )
            with warnings.catch_warnings():
                # Too few subclusters is the case handled below, not something to warn about.
                warnings.simplefilter("ignore", ConvergenceWarning)
                birch.fit(X)
            n_sub = len(birch.subcluster_centers_)
            if n_sub >= target:
                break
            log.info("BIRCH threshold %.4g gives %d subclusters < %d", threshold, n_sub, target)
            threshold *= min(n_sub / target, 0.8)
        return birch, threshold


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _centroids(X: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    sums = np.zeros((n_clusters, X.shape[1]))
    np.add.at(sums, labels, X)
    return sums / np.bincount(labels, minlength=n_clusters)[:, None]


def select_k_per_cluster(
    X: np.ndarray, labels: np.ndarray, k: int = 1, strategy: str = "center", seed: int = 0
) -> np.ndarray:
    """Indices (sorted) of up to k members of every cluster; each cluster gives at least one.

    strategy:
      - "center": the k members closest to the cluster's centroid (mean of its members in X).
      - "spread": members ranked by distance to the centroid, k taken at evenly spaced ranks
        from the closest to the farthest (maml's "center" rule for k > 1); the same as
        "center" when k = 1.
      - "random": k members drawn without replacement, reproducible from ``seed``.
    A cluster with k or fewer members gives all of them. Ties go to the lower index.
    """
    X = _as_features(X)
    labels = np.asarray(labels)
    if labels.shape != (X.shape[0],):
        raise ValueError(f"labels has shape {labels.shape}, expected ({X.shape[0]},)")
    _check_positive_int("k", k)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    rng = np.random.default_rng(seed)
    picked = [
        _pick(X[members], members, k, strategy, rng) for members in _members_by_cluster(labels)
    ]
    return np.sort(np.concatenate(picked))


def _members_by_cluster(labels: np.ndarray) -> list[np.ndarray]:
    """Sample indices of each cluster, clusters in label order, members in index order."""
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    return np.split(order, starts[1:])


def _pick(
    X_cluster: np.ndarray, members: np.ndarray, k: int, strategy: str, rng: np.random.Generator
) -> np.ndarray:
    n = len(members)
    if strategy == "random":
        return rng.choice(members, size=min(k, n), replace=False)
    distance = np.linalg.norm(X_cluster - X_cluster.mean(axis=0), axis=1)
    ranked = members[np.argsort(distance, kind="stable")]
    if strategy == "center":
        return ranked[:k]
    ranks = np.unique(np.rint(np.linspace(0, n - 1, min(k, n))).astype(int))
    return ranked[ranks]


class DirectSampler(BaseEstimator):
    """DIRECT selection: StandardScaler → KaiserPCA → BirchClustering → k per cluster.

    Parameters
    ----------
    n_clusters : clusters to form; the selection has about n_clusters × k structures (fewer
        when clusters have fewer than k members).
    k : structures taken from each cluster.
    threshold_init : first BIRCH threshold, in (weighted) PC units; lowered automatically.
    weighting : weight the PCs by explained-variance ratio before clustering (maml's default
        is True; here False, so that every kept component counts the same).
    strategy : "center", "spread" or "random"; see select_k_per_cluster.
    seed : seeds the "random" strategy; every other step is deterministic.

    Attributes
    ----------
    selected_ : sorted indices of the selected rows of X.
    scaler_, pca_ : the fitted StandardScaler and KaiserPCA.
    clustering_ : the fitted BirchClustering, or None when every sample is its own cluster.
    embedding_ : (N, n_components) coordinates the clustering used.
    labels_ : cluster of each sample.
    notes_ : plain-language notes on degenerate input (recorded with the selection).

    Two-stage picks (DFT on a selection, CCSD(T) on a smaller one among it) are a second
    sampler on the subset: ``first[DirectSampler(n_clusters=m).fit(X[first]).selected_]``.
    """

    def __init__(
        self,
        n_clusters: int = 100,
        k: int = 1,
        threshold_init: float = 0.5,
        weighting: bool = False,
        strategy: str = "center",
        seed: int = 0,
    ):
        self.n_clusters = n_clusters
        self.k = k
        self.threshold_init = threshold_init
        self.weighting = weighting
        self.strategy = strategy
        self.seed = seed

    def fit(self, X, y=None) -> DirectSampler:
        X = _as_features(X)
        self._check_params()
        self.notes_: list[str] = []
        self.scaler_ = StandardScaler().fit(X)  # a constant feature becomes 0, not NaN
        standardized = self.scaler_.transform(X)
        self.pca_ = KaiserPCA(weighting=self.weighting).fit(standardized)
        self.embedding_ = self.pca_.transform(standardized)
        self.labels_ = self._cluster(self.embedding_)
        self.selected_ = select_k_per_cluster(
            self.embedding_, self.labels_, self.k, self.strategy, self.seed
        )
        return self

    def _check_params(self) -> None:
        """Fail before any work, naming the parameter."""
        _check_positive_int("n_clusters", self.n_clusters)
        _check_positive_int("k", self.k)
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}"
            )
        if not self.threshold_init > 0:
            raise ValueError(f"threshold_init must be positive, got {self.threshold_init}")

    def _cluster(self, embedding: np.ndarray) -> np.ndarray:
        n_samples = embedding.shape[0]
        if n_samples <= self.n_clusters:
            self.clustering_ = None
            self._note(f"{n_samples} samples for {self.n_clusters} clusters: all selected")
            return np.arange(n_samples)
        clustering = BirchClustering(self.n_clusters, self.threshold_init).fit(embedding)
        if clustering.target_ < self.n_clusters:
            self._note(
                f"only {clustering.target_} distinct samples for {self.n_clusters} clusters: "
                f"{clustering.n_clusters_} clusters formed"
            )
        elif clustering.n_clusters_ < self.n_clusters:
            self._note(f"BIRCH formed {clustering.n_clusters_} of {self.n_clusters} clusters")
        self.clustering_ = clustering
        return clustering.labels_

    def _note(self, message: str) -> None:
        log.warning("DIRECT: %s", message)
        self.notes_.append(message)

    def record(self) -> dict[str, Any]:
        """What the store keeps about this selection: arrays, and JSON-able scalars."""
        check_is_fitted(self, "selected_")
        clustering = self.clustering_
        return {
            "selected": self.selected_.copy(),
            "embedding": self.embedding_.copy(),
            "labels": np.asarray(self.labels_, dtype=np.int64),
            "params": _json_params(self.get_params()),
            "explained_variance": self.pca_.explained_variance_.copy(),
            "n_components": int(self.pca_.n_components_),
            "n_clusters_found": int(self.labels_.max()) + 1,
            "threshold": None if clustering is None else float(clustering.threshold_),
            "notes": list(self.notes_),
        }


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Plain Python scalars, so numpy ints or floats passed as parameters serialize."""
    return {
        name: value.item() if isinstance(value, np.generic) else value
        for name, value in params.items()
    }


def coverage_per_component(
    all_embedding: np.ndarray, selected_embedding: np.ndarray, n_bins: int = 100
) -> np.ndarray:
    """Feature coverage of each PC: occupied bins of the selection over occupied bins of all.

    maml's definition, kept exactly: for each column, the edges are
    ``np.linspace(min, max, n_bins)`` over all samples (so n_bins - 1 bins), and the score is
    the number of non-empty bins of the selection's histogram over that of all samples. A
    column on which all samples agree is covered by any non-empty selection.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2 (it counts bin edges), got {n_bins}")
    all_embedding = _as_features(all_embedding, "all_embedding")
    selected_embedding = np.asarray(selected_embedding, dtype=np.float64)
    if selected_embedding.size == 0:
        return np.zeros(all_embedding.shape[1])
    selected_embedding = _as_features(selected_embedding, "selected_embedding")
    if selected_embedding.shape[1] != all_embedding.shape[1]:
        raise ValueError(
            f"selected_embedding has {selected_embedding.shape[1]} columns, "
            f"all_embedding {all_embedding.shape[1]}"
        )
    return np.array(
        [
            _coverage_1d(all_embedding[:, column], selected_embedding[:, column], n_bins)
            for column in range(all_embedding.shape[1])
        ]
    )


def _coverage_1d(all_values: np.ndarray, selected_values: np.ndarray, n_bins: int) -> float:
    low, high = all_values.min(), all_values.max()
    if low == high:
        return 1.0
    edges = np.linspace(low, high, n_bins)
    occupied_all = np.count_nonzero(np.histogram(all_values, bins=edges)[0])
    occupied_selected = np.count_nonzero(np.histogram(selected_values, bins=edges)[0])
    return occupied_selected / occupied_all


def coverage_score(
    all_embedding: np.ndarray, selected_embedding: np.ndarray, n_bins: int = 100
) -> float:
    """maml's feature coverage score averaged over the PCs: 1 when the selection occupies
    every bin that the whole set does, lower the more of the distribution it misses."""
    return float(np.mean(coverage_per_component(all_embedding, selected_embedding, n_bins)))
