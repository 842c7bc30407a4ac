"""DIRECT stratified selection: standardize → PCA (Kaiser rule) → BIRCH → k per cluster.

DIRECT (DImensionality REduction-Clustering-sTratified sampling; Qi et al., npj Comput. Mater.
2024) picks a small, diverse subset of candidate structures from their feature vectors: it keeps
the principal components that carry more variance than one standardized feature (Kaiser rule),
clusters the structures in that space with BIRCH, and takes k structures from every cluster, so
rare regions of configuration space get labels as well as the crowded ones.

Each step is a scikit-learn estimator (the shape of maml's ``maml.sampling`` reference code) so
one can be swapped or used alone; ``DirectSampler`` chains them and records what the store keeps.
Where this module departs from maml, it says so next to the code.

Scale: BIRCH's insertion loop is Python, so BIRCH is fitted on a seeded subsample (at most
``max_samples`` rows, or 3 per subcluster aimed for) and all N rows are then assigned to their
nearest subcluster centre (exact, blockwise). The threshold is searched automatically for a
number of subclusters, and the global step merges them down to ``n_clusters`` by Ward's
criterion over a nearest-neighbour graph instead of running scikit-learn's agglomerative
clustering over all subclusters (O(S²) memory). See docs/selection.md, "Scaling".
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import Birch
from sklearn.decomposition import PCA
from sklearn.neighbors import KDTree
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted

log = logging.getLogger(__name__)

#: How select_k_per_cluster may pick members of a cluster.
STRATEGIES = ("center", "spread", "random")

#: BIRCH fits allowed while searching its threshold for the target number of subclusters.
MAX_THRESHOLD_STEPS = 100

#: BIRCH is fitted on at most this many samples (a seeded random subsample) by default ...
MAX_SAMPLES = 50_000

#: ... but on at least this many per subcluster aimed for, so that subclusters summarize data.
SAMPLES_PER_SUBCLUSTER = 3

#: Subclusters aimed for per cluster wanted (where the subsample allows): the global step then
#: forms the clusters by Ward's criterion, as maml's does, rather than BIRCH's radius alone.
OVERSAMPLE = 5

#: Subclusters the threshold search may leave above its aim, as a fraction of it.
TOL = 0.1

#: Rows outside the subsample farther than this many times the BIRCH scale from every
#: subcluster get subclusters of their own (see BirchClustering._add_outliers).
OUTLIER_FACTOR = 2.0

#: Nearest neighbours of each subcluster among which the global step looks for merges.
MERGE_NEIGHBORS = 8

#: Rows per block in the blockwise steps (scaling, projection, assignment).
BLOCK = 16384


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
    pca_ : the fitted sklearn PCA (all components). Its solver is "covariance_eigh" (eigenvectors
        of the F × F covariance: no copy of X, seconds for 10⁶ × 128) when there are at least
        10 samples per feature, as sklearn's "auto" would choose, else the exact "full" SVD.
        Both are deterministic.
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
        # Both solvers are deterministic; the randomized one would tie results to a seed.
        # errstate: sklearn's own variance bookkeeping divides 0 by 0 for a single sample or
        # constant input; those attributes are unused here, the eigenvalues come from S².
        n_samples, n_features = X.shape
        solver = "covariance_eigh" if n_samples >= 10 * n_features else "full"
        with np.errstate(divide="ignore", invalid="ignore"):
            self.pca_ = PCA(svd_solver=solver).fit(X)
        self.explained_variance_ = self.pca_.singular_values_**2 / X.shape[0]
        total = float(self.explained_variance_.sum())
        self.explained_variance_ratio_ = self.explained_variance_ / (total if total > 0 else 1.0)
        # At least one component, even when no eigenvalue exceeds 1 (e.g. a single varying
        # feature among constant ones): the clustering needs a space to work in.
        self.n_components_ = max(1, int(np.count_nonzero(self.explained_variance_ > 1.0)))
        return self

    def transform(self, X) -> np.ndarray:
        """Scores on the kept components only, block by block: no (N, F) temporary."""
        check_is_fitted(self, "pca_")
        X = _as_features(X)
        components = self.pca_.components_[: self.n_components_]
        if self.weighting:
            components = components * self.explained_variance_ratio_[: self.n_components_, None]
        shift = self.pca_.mean_ @ components.T
        scores = np.empty((X.shape[0], self.n_components_))
        for start in range(0, X.shape[0], BLOCK):
            block = scores[start : start + BLOCK]
            np.matmul(X[start : start + BLOCK], components.T, out=block)
            block -= shift
        return scores


class BirchClustering(ClusterMixin, BaseEstimator):
    """BIRCH with a target cluster count and an automatic threshold; scales to millions of rows.

    1. **Subsample.** scikit-learn's Birch inserts samples one by one in Python, so it is fitted
       on a seeded random subsample of ``n_fit = max(max_samples, 3 × n_clusters)`` rows (all
       rows when N is not larger). The insertion order is a seeded random permutation in any
       case: BIRCH depends on it, and data such as MD trajectories come sorted.
    2. **Threshold search.** The number of subclusters S aimed for is
       ``aim = max(target, min(oversample × target, n_fit / 3))``: several subclusters per
       cluster where the subsample allows, so that the global step forms the clusters by Ward's
       criterion as in maml (whose threshold ends up so small that every sample is its own
       subcluster), and at least 3 samples per subcluster, so that BIRCH summarizes.
       The threshold (Birch without its global step) is searched until S lies in
       ``[aim, aim + ⌈tol·aim⌉]``: geometric steps (×2, ×4, ×16, … from ``threshold_init``)
       until a threshold giving too few and one giving too many subclusters are known, then
       geometric bisection between them. A fit stops early once it has too many subclusters
       (their number only grows as samples are inserted) or when, after a sixteenth of the
       subsample, it is on course for too few (S over the samples inserted so far, times
       n_fit, below the aim). If no threshold gives a count in the window (BIRCH's count can
       jump over it), the largest threshold giving too many is fitted in full.
    3. **Assignment.** Every sample goes to its nearest subcluster centre (exact; blockwise, with
       triangle-inequality pruning over groups of centres), which is what ``Birch.predict``
       does. A subsample can miss a small isolated group of rows, the kind DIRECT exists to
       find: rows outside the subsample farther from every centre than twice the larger of the
       threshold and the farthest fitted row's distance get a BIRCH of their own (same
       threshold), whose subclusters join the others. A subcluster that gets no sample is
       dropped; should that leave fewer than the target, it takes the sample nearest its
       centre from a subcluster with two or more.
    4. **Global step.** The subclusters are merged down to exactly ``target`` clusters, one pair
       at a time, always the pair whose merge raises the within-cluster sum of squares least
       (Ward's criterion, each subcluster weighted by its number of samples), among pairs of
       nearest neighbours (each subcluster's ``MERGE_NEIGHBORS`` nearest; the graph is rebuilt
       if it runs out of pairs): O(S) memory. scikit-learn's Birch runs AgglomerativeClustering
       over all S subclusters instead, whose O(S²) distance matrix is what makes maml run out
       of memory at S in the tens of thousands.

    Parameters
    ----------
    n_clusters : the number of clusters wanted.
    threshold_init : the first BIRCH threshold tried, in the units of the input.
    branching_factor : passed to sklearn's Birch.
    oversample : subclusters aimed for per cluster, where the subsample allows (see above).
    tol : subclusters the search may leave above its aim, as a fraction of it.
    max_samples : BIRCH is fitted on at most ``max(max_samples, 3 × n_clusters)`` samples;
        None fits it on all of them.
    seed : seeds the subsample and the insertion order.

    Attributes
    ----------
    birch_ : the fitted sklearn Birch of the accepted threshold (on the subsample; no global
        step, so its ``subcluster_centers_`` are the subclusters), or None when target_ is 1.
    labels_ : cluster of each sample, numbered 0 .. n_clusters_ - 1 in order of first appearance.
    target_ : clusters aimed for: n_clusters, or the number of distinct samples when that is
        smaller (identical samples always share a subcluster).
    n_clusters_ : clusters formed: target_.
    threshold_ : the threshold of the accepted fit (None when target_ is 1: BIRCH is not run).
    n_subclusters_ : BIRCH subclusters of that fit; ``aim_`` : the number searched for.
    n_samples_fit_ : samples BIRCH was fitted on; ``subsampled_`` : whether that is fewer than N.
    n_outliers_, n_outlier_subclusters_ : rows outside the subsample found far from every
        subcluster, and the subclusters they added (0 and 0 without a subsample).
    search_ : the threshold search, one (threshold, subclusters, outcome) per fit; outcome is
        "ok", "many" or "few", and the subcluster count is where the fit stopped.
    centers_ : centroid (mean of the members) of each cluster, in the input space.
    """

    def __init__(
        self,
        n_clusters: int = 1,
        threshold_init: float = 0.5,
        branching_factor: int = 50,
        oversample: float = OVERSAMPLE,
        tol: float = TOL,
        max_samples: int | None = MAX_SAMPLES,
        seed: int = 0,
    ):
        self.n_clusters = n_clusters
        self.threshold_init = threshold_init
        self.branching_factor = branching_factor
        self.oversample = oversample
        self.tol = tol
        self.max_samples = max_samples
        self.seed = seed

    def fit(self, X, y=None) -> BirchClustering:
        X = _as_features(X)
        _check_birch_params(self.n_clusters, self.threshold_init, self.max_samples, self.tol)
        if not self.oversample >= 1:
            raise ValueError(f"oversample must be at least 1, got {self.oversample}")
        n_samples = X.shape[0]
        order = np.random.default_rng(self.seed).permutation(n_samples)
        n_fit = n_samples
        if self.max_samples is not None:
            n_fit = min(n_samples, max(self.max_samples, SAMPLES_PER_SUBCLUSTER * self.n_clusters))
        sample = X[order[:n_fit]]
        distinct = _n_distinct(sample)
        if distinct >= self.n_clusters:
            target = int(self.n_clusters)
        else:
            target = min(int(self.n_clusters), _n_distinct(X) if n_fit < n_samples else distinct)
            if distinct < target:  # the subsample lacks rows the target needs: fit on all
                n_fit, sample = n_samples, X[order]
                distinct = target
        self.target_, self.n_samples_fit_, self.subsampled_ = target, n_fit, n_fit < n_samples
        self.aim_ = max(
            target, min(int(self.oversample * target), n_fit // SAMPLES_PER_SUBCLUSTER, distinct)
        )
        if target == 1:
            self.birch_, self.threshold_, self.n_subclusters_, self.search_ = None, None, 1, []
            self.n_outliers_ = self.n_outlier_subclusters_ = 0
            labels = np.zeros(n_samples, dtype=np.intp)
        else:
            self.birch_, self.threshold_, self.search_ = self._search(sample, self.aim_)
            centers = self.birch_.subcluster_centers_
            self.n_subclusters_ = len(centers)
            nearest, nearest_sq = _nearest_center(X, centers)
            centers = self._add_outliers(X, order, n_fit, centers, nearest, nearest_sq)
            subcluster = _fill_empty(X, nearest, centers, target)
            n_sub = int(subcluster.max()) + 1
            merged = _ward_merge(_centroids(X, subcluster, n_sub), np.bincount(subcluster), target)
            labels = merged[subcluster]
        self.labels_ = _by_first_appearance(labels)
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.centers_ = _centroids(X, self.labels_, self.n_clusters_)
        return self

    def _add_outliers(
        self,
        X: np.ndarray,
        order: np.ndarray,
        n_fit: int,
        centers: np.ndarray,
        nearest: np.ndarray,
        nearest_sq: np.ndarray,
    ) -> np.ndarray:
        """Subclusters for the rows the subsample missed that lie far from every subcluster.

        A rare, isolated group of rows (what DIRECT is for) can be missed by the subsample. The
        rows farther from their nearest centre than OUTLIER_FACTOR times the larger of the
        threshold and the farthest fitted row's distance get a BIRCH of their own, at the same
        threshold (in the seeded order ``order``, at most n_fit rows), and the rows nearer to
        its subclusters move to them. ``order[:n_fit]`` are the fitted rows. ``nearest`` and
        ``nearest_sq`` are updated in place; the centres, old then new, are returned.
        """
        self.n_outliers_ = self.n_outlier_subclusters_ = 0
        if n_fit == X.shape[0]:
            return centers
        reach = max(math.sqrt(nearest_sq[order[:n_fit]].max()), self.threshold_)
        far = nearest_sq > (OUTLIER_FACTOR * reach) ** 2
        if not far.any():
            return centers
        rows = order[far[order]][:n_fit]
        extra = (
            Birch(
                threshold=self.threshold_,
                branching_factor=self.branching_factor,
                n_clusters=None,
                compute_labels=False,
            )
            .fit(X[rows])
            .subcluster_centers_
        )
        extra_nearest, extra_sq = _nearest_center(X, extra)
        moved = extra_sq < nearest_sq
        nearest[moved] = extra_nearest[moved] + len(centers)
        nearest_sq[moved] = extra_sq[moved]
        self.n_outliers_, self.n_outlier_subclusters_ = len(rows), len(extra)
        log.info("DIRECT: %d outlying rows gave %d more subclusters", len(rows), len(extra))
        return np.vstack([centers, extra])

    def _search(self, sample: np.ndarray, target: int) -> tuple[Birch, float, list]:
        """The Birch fit with ``target`` to ``target + ⌈tol·target⌉`` subclusters (or the
        fewest above), its threshold, and the search."""
        upper = target + math.ceil(self.tol * target)
        threshold, growth = float(self.threshold_init), 1
        too_small = too_large = None  # thresholds known to give too many / too few
        search: list[tuple[float, int, str]] = []
        for _ in range(MAX_THRESHOLD_STEPS):
            birch, n_sub, outcome = self._fit_birch(sample, threshold, target, upper)
            search.append((threshold, n_sub, outcome))
            log.info("BIRCH threshold %.4g: %d subclusters (%s)", threshold, n_sub, outcome)
            if outcome == "ok":
                return birch, threshold, search
            if outcome == "many":
                too_small = threshold if too_small is None else max(too_small, threshold)
            else:
                too_large = threshold if too_large is None else min(too_large, threshold)
            if too_small is not None and too_large is not None:
                if too_large <= too_small * (1 + 1e-9):
                    break  # the count jumps over the window at this threshold
                threshold = math.sqrt(too_small * too_large)
            else:
                # Steps ×2, ×4, ×16, ×256 …: far from the target in a few fits, and a fit with
                # a threshold far too large or too small stops early, so overshooting is cheap.
                factor = 2.0 ** min(growth, 64)
                growth *= 2
                threshold = threshold * factor if too_large is None else threshold / factor
        if too_small is None:
            raise RuntimeError(f"BIRCH found no threshold giving {target} subclusters: {search}")
        # The surplus is left to the global step.
        birch, n_sub, _ = self._fit_birch(sample, too_small, target, None)
        search.append((too_small, n_sub, "many"))
        return birch, too_small, search

    def _fit_birch(
        self, sample: np.ndarray, threshold: float, target: int, upper: int | None
    ) -> tuple[Birch, int, str]:
        """Birch on ``sample`` in blocks, stopping once the count is sure to miss the window
        (``upper`` None: never stop). Outcome "ok", "many" or "few"."""
        birch = Birch(
            threshold=threshold,
            branching_factor=self.branching_factor,
            n_clusters=None,
            compute_labels=False,
        )
        n_fit = len(sample)
        step = max(256, -(-n_fit // 64))
        n_sub = 0
        for start in range(0, n_fit, step):
            birch.partial_fit(sample[start : start + step])
            n_sub, seen = len(birch.subcluster_centers_), min(n_fit, start + step)
            if upper is None or seen == n_fit:
                continue
            if n_sub > upper:
                return birch, n_sub, "many"
            # Random order: the share of samples that open a subcluster only falls as more
            # are inserted, so the final count is at most n_sub × n_fit / seen.
            if seen * 16 >= n_fit and n_sub * n_fit < target * seen:
                return birch, n_sub, "few"
        if n_sub < target:
            return birch, n_sub, "few"
        return birch, n_sub, "ok" if upper is None or n_sub <= upper else "many"


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_birch_params(n_clusters, threshold_init, max_samples, tol=TOL) -> None:
    _check_positive_int("n_clusters", n_clusters)
    if not threshold_init > 0:
        raise ValueError(f"threshold_init must be positive, got {threshold_init}")
    if not tol >= 0:
        raise ValueError(f"tol must be zero or positive, got {tol}")
    if max_samples is not None:
        _check_positive_int("max_samples", max_samples)


def _n_distinct(X: np.ndarray) -> int:
    return len(np.unique(X, axis=0))


def _sq_distances(A: np.ndarray, B: np.ndarray, B_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(A), len(B)), given B's squared norms; at least 0."""
    D = A @ B.T
    D *= -2.0
    D += np.einsum("ij,ij->i", A, A)[:, None]
    D += B_sq
    return np.maximum(D, 0.0, out=D)


def _farthest_first(points: np.ndarray, n: int) -> np.ndarray:
    """n indices of ``points``, each the farthest from those before it (the first is 0)."""
    chosen = np.zeros(n, dtype=np.intp)
    nearest = ((points - points[0]) ** 2).sum(axis=1)
    for i in range(1, n):
        chosen[i] = np.argmax(nearest)
        np.minimum(nearest, ((points - points[chosen[i]]) ** 2).sum(axis=1), out=nearest)
    return chosen


def _nearest_center(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre of each row of X (exact; on ties the lower index), and the
    squared distance to it.

    The centres are grouped around √S farthest-first seeds; a row is compared with the
    centres of its nearest seed's group, then with those of any other group that the triangle
    inequality cannot rule out (distance to the seed minus the group's radius below the best
    distance so far). Clustered data rule out most groups: at 10⁶ rows and 2·10⁴ centres in
    45 dimensions this is several times faster than comparing every row with every centre.
    """
    n_centers = len(centers)
    n_groups = min(n_centers, max(1, round(math.sqrt(n_centers))))
    seeds = centers[_farthest_first(centers, n_groups)]
    seeds_sq = np.einsum("ij,ij->i", seeds, seeds)
    centers_sq = np.einsum("ij,ij->i", centers, centers)
    to_seed = _sq_distances(centers, seeds, seeds_sq)
    group = np.argmin(to_seed, axis=1)
    radius = np.zeros(n_groups)
    np.maximum.at(radius, group, np.sqrt(to_seed[np.arange(n_centers), group]))
    members = _members_by_cluster(group)  # every group holds its own seed, so none is empty
    nearest = np.empty(X.shape[0], dtype=np.intp)
    nearest_sq = np.empty(X.shape[0])
    for start in range(0, X.shape[0], BLOCK):
        block = X[start : start + BLOCK]
        seed_distance = np.sqrt(_sq_distances(block, seeds, seeds_sq))
        home = np.argmin(seed_distance, axis=1)
        best_sq = np.full(len(block), np.inf)
        best = np.zeros(len(block), dtype=np.intp)
        _closer(block, home, centers, centers_sq, members, best_sq, best)
        # A group can hold a centre nearer than the best so far only if the row is within
        # best + radius of its seed; the margin absorbs rounding in the distances.
        bound = np.sqrt(best_sq) * (1 + 1e-9) + 1e-12
        candidate = seed_distance - radius < bound[:, None]
        candidate[np.arange(len(block)), home] = False
        rows, groups = np.nonzero(candidate.T)[::-1]
        _closer(block[rows], groups, centers, centers_sq, members, best_sq, best, rows)
        nearest[start : start + len(block)] = best
        nearest_sq[start : start + len(block)] = best_sq
    return nearest, nearest_sq


def _closer(
    rows_X: np.ndarray,
    groups: np.ndarray,
    centers: np.ndarray,
    centers_sq: np.ndarray,
    members: list[np.ndarray],
    best_sq: np.ndarray,
    best: np.ndarray,
    rows: np.ndarray | None = None,
) -> None:
    """Compare each of ``rows_X`` with the centres of its group; keep the nearest in place."""
    if len(rows_X) == 0:
        return
    if rows is None:
        rows = np.arange(len(rows_X))
    order = np.argsort(groups, kind="stable")
    present, starts = np.unique(groups[order], return_index=True)
    for group, part in zip(present, np.split(order, starts[1:]), strict=True):
        ids = members[group]
        d = _sq_distances(rows_X[part], centers[ids], centers_sq[ids])
        pick = np.argmin(d, axis=1)
        d_min, index = d[np.arange(len(part)), pick], ids[pick]
        target = rows[part]
        better = (d_min < best_sq[target]) | ((d_min == best_sq[target]) & (index < best[target]))
        best_sq[target[better]] = d_min[better]
        best[target[better]] = index[better]


def _fill_empty(
    X: np.ndarray, subcluster: np.ndarray, centers: np.ndarray, target: int
) -> np.ndarray:
    """Subcluster of each sample, renumbered without empty ones; while fewer than ``target``
    would be left, an empty one takes the sample nearest its centre from a subcluster with at
    least two (one exists: there are at least ``target`` distinct samples)."""
    counts = np.bincount(subcluster, minlength=len(centers))
    for empty in np.flatnonzero(counts == 0):
        if np.count_nonzero(counts) >= target:
            break
        distance = _sq_distances(X, centers[empty : empty + 1], (centers[empty] ** 2).sum(None))
        distance[counts[subcluster] < 2, 0] = np.inf
        moved = int(np.argmin(distance[:, 0]))
        counts[subcluster[moved]] -= 1
        counts[empty] += 1
        subcluster[moved] = empty
    renumber = np.cumsum(counts > 0) - 1
    return renumber[subcluster]


def _ward_merge(
    centers: np.ndarray, sizes: np.ndarray, target: int, n_neighbors: int = MERGE_NEIGHBORS
) -> np.ndarray:
    """Cluster (0 .. target - 1) of each of the S weighted points, merged pairwise by Ward.

    Greedy agglomeration restricted to a nearest-neighbour graph, as scikit-learn's Ward with a
    connectivity matrix, but weighted: merging a and b costs
    ``n_a n_b / (n_a + n_b) · |c_a − c_b|²``, the rise in the within-cluster sum of squares of
    the samples they stand for. The cheapest pair goes first (ties to the lower indices), the
    merged cluster inherits both neighbour lists, and the graph is rebuilt if it runs out of
    pairs before ``target`` clusters are left. O(S·n_neighbors) memory.
    """
    n_points = len(centers)
    if n_points <= target:
        return np.arange(n_points)
    capacity = 2 * n_points  # every merge makes a new id; there are fewer than S merges
    center = np.zeros((capacity, centers.shape[1]))
    center[:n_points] = centers
    size = np.zeros(capacity)
    size[:n_points] = sizes
    parent = np.arange(capacity)
    alive = np.zeros(capacity, dtype=bool)
    alive[:n_points] = True
    neighbors: list[set[int]] = [set() for _ in range(capacity)]
    n_alive, next_id = n_points, n_points

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def cost(a, b):
        gap = ((center[a] - center[b]) ** 2).sum(axis=-1)
        return size[a] * size[b] / (size[a] + size[b]) * gap

    while n_alive > target:
        ids = np.flatnonzero(alive)
        k = min(n_neighbors + 1, len(ids))
        _, nearest = KDTree(center[ids]).query(center[ids], k=k)
        a = np.repeat(ids, k)
        b = ids[nearest.ravel()]
        pairs = np.unique(np.column_stack([np.minimum(a, b), np.maximum(a, b)])[a != b], axis=0)
        for i, j in pairs.tolist():
            neighbors[i].add(j)
            neighbors[j].add(i)
        heap = list(zip(cost(pairs[:, 0], pairs[:, 1]).tolist(), *pairs.T.tolist(), strict=True))
        heapq.heapify(heap)
        while heap and n_alive > target:
            _, i, j = heapq.heappop(heap)
            if not (alive[i] and alive[j]):
                continue
            new = next_id
            next_id += 1
            size[new] = size[i] + size[j]
            center[new] = (size[i] * center[i] + size[j] * center[j]) / size[new]
            alive[[i, j]], alive[new] = False, True
            parent[[i, j]] = new
            n_alive -= 1
            linked = {root(x) for x in neighbors[i] | neighbors[j]} - {new}
            neighbors[i] = neighbors[j] = set()
            neighbors[new] = linked
            for other in sorted(linked):
                neighbors[other].add(new)
                heapq.heappush(heap, (float(cost(other, new)), other, new))
    roots = np.array([root(i) for i in range(n_points)])
    return np.unique(roots, return_inverse=True)[1]


def _by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, … in the order in which they first occur."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.intp)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse]


def _centroids(X: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=n_clusters)[:, None]
    sums = np.column_stack(
        [np.bincount(labels, weights=column, minlength=n_clusters) for column in X.T]
    )
    return sums.reshape(n_clusters, X.shape[1]) / counts


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
    threshold_init : first BIRCH threshold, in (weighted) PC units; searched automatically.
    weighting : weight the PCs by explained-variance ratio before clustering (maml's default
        is True; here False, so that every kept component counts the same).
    strategy : "center", "spread" or "random"; see select_k_per_cluster.
    seed : seeds BIRCH's subsample and insertion order, and the "random" strategy; every
        other step is deterministic.
    max_samples : BIRCH is fitted on a subsample of max(max_samples, 3 × n_clusters) rows
        (when N is larger), and every row is then assigned to its nearest subcluster; None:
        on all rows. See BirchClustering.

    Attributes
    ----------
    selected_ : sorted indices of the selected rows of X.
    scaler_, pca_ : the fitted StandardScaler and KaiserPCA.
    clustering_ : the fitted BirchClustering, or None when every sample is its own cluster.
    embedding_ : (N, n_components) coordinates the clustering used.
    labels_ : cluster of each sample.
    notes_ : plain-language notes on degenerate input (recorded with the selection).

    Memory beyond X: one standardized copy of X while the PCA is fitted and applied, then the
    embedding; at 10⁶ × 128 features the fit peaks about 1.4 GiB above the 1 GiB of X.

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
        max_samples: int | None = MAX_SAMPLES,
    ):
        self.n_clusters = n_clusters
        self.k = k
        self.threshold_init = threshold_init
        self.weighting = weighting
        self.strategy = strategy
        self.seed = seed
        self.max_samples = max_samples

    def fit(self, X, y=None) -> DirectSampler:
        X = _as_features(X)
        self._check_params()
        self.notes_: list[str] = []
        # A constant feature becomes 0, not NaN. Fitted block by block: StandardScaler.fit
        # makes an (N, F) temporary, and the one standardized copy below is enough.
        self.scaler_ = StandardScaler()
        for start in range(0, X.shape[0], BLOCK):
            self.scaler_.partial_fit(X[start : start + BLOCK])
        standardized = self.scaler_.transform(X)
        self.pca_ = KaiserPCA(weighting=self.weighting).fit(standardized)
        self.embedding_ = self.pca_.transform(standardized)
        del standardized
        self.labels_ = self._cluster(self.embedding_)
        self.selected_ = select_k_per_cluster(
            self.embedding_, self.labels_, self.k, self.strategy, self.seed
        )
        return self

    def _check_params(self) -> None:
        """Fail before any work, naming the parameter."""
        _check_birch_params(self.n_clusters, self.threshold_init, self.max_samples)
        _check_positive_int("k", self.k)
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}"
            )

    def _cluster(self, embedding: np.ndarray) -> np.ndarray:
        n_samples = embedding.shape[0]
        if n_samples <= self.n_clusters:
            self.clustering_ = None
            self._note(f"{n_samples} samples for {self.n_clusters} clusters: all selected")
            return np.arange(n_samples)
        clustering = BirchClustering(
            self.n_clusters,
            self.threshold_init,
            max_samples=self.max_samples,
            seed=self.seed,
        ).fit(embedding)
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
            "threshold": _optional(float, clustering and clustering.threshold_),
            "notes": list(self.notes_),
            # How BIRCH got there: subclusters of the accepted fit, the rows it was fitted on
            # (fewer than N: a subsample), rows outside it that got subclusters of their own,
            # and the threshold search, fit by fit: [threshold, subclusters, outcome].
            "n_subclusters": _optional(int, clustering and clustering.n_subclusters_),
            "birch_samples": _optional(int, clustering and clustering.n_samples_fit_),
            "outlier_rows": int(clustering.n_outliers_) if clustering else 0,
            "outlier_subclusters": int(clustering.n_outlier_subclusters_) if clustering else 0,
            "threshold_search": [
                [float(t), int(n), outcome] for t, n, outcome in clustering.search_
            ]
            if clustering
            else [],
        }


def _optional(kind, value):
    return None if value is None else kind(value)


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
