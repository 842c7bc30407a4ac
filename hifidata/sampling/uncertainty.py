"""Uncertainty for iterations after the first: committee disagreement and feature distance.

Iteration k > 1 of a campaign has models trained on the labels of the iterations before it, and
can add the configurations those models are unsure about. Two measures:

- **Committee disagreement** (query by committee): several models predict the same candidates;
  where they disagree, at least one of them is wrong. The force measure is DP-GEN's "model
  deviation" (Zhang et al., Phys. Rev. Materials 3, 023804 (2019); Comput. Phys. Commun. 253,
  107206 (2020); DeePMD-kit's ``calc_model_devi_f``): for atom i,
  ``eps_i = sqrt(mean_m |F_m,i - mean_m F_m,i|^2)``, and a structure scores ``max_i eps_i``.
- **Feature distance**: the distance of a candidate to its nearest labeled structure in
  standardized feature space. It needs no committee (so it works with a single model), at the
  price of measuring novelty rather than error.

Uncertainty alone picks clusters of near-duplicates from the one region where the model is worst
(every rattled copy of the same broken geometry). :func:`select_by_uncertainty` therefore
stratifies first, on DIRECT's clusters, and ranks by uncertainty only within a cluster: every
region still gets labels, and in each one the label goes where the model is least sure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from hifidata.sampling.direct import DirectSampler, _as_features, _check_positive_int

#: A committee member's common interface: structures in, {"energy": (N,), "forces": [(n, 3)]}.
Predictor = Callable[[list[Atoms]], Mapping[str, Any]]

#: The per-structure measures committee_disagreement returns, and the default score among them.
SCORES = ("max_force_std", "mean_force_std", "energy_std_per_atom")
#: Why the maximum force deviation: forces are per-atom, so one badly described local
#: environment shows at full size instead of being averaged away over a large structure (as
#: it is in the mean, or in an extensive energy divided by the atom count); it is the measure
#: DP-GEN's trust levels are set on, so its thresholds carry over; and it is in eV/Å, the unit
#: force errors are judged in.
DEFAULT_SCORE = "max_force_std"


def as_predictor(member: Any, batch_size: int = 64) -> Predictor:
    """The callable interface of a committee member.

    A hifidata Model (``.predict(structures, batch_size)``), a CHGNet network (evaluated with
    hifidata.calculators.mlip.predict_batch; molecules are boxed there) or any callable
    ``structures -> {"energy", "forces"}``.
    """
    from hifidata.training.models import Model  # torch-heavy: imported when a member is

    if isinstance(member, Model):
        return lambda structures: member.predict(structures, batch_size=batch_size)
    if hasattr(member, "predict_structure") and hasattr(member, "graph_converter"):  # CHGNet
        from hifidata.calculators.mlip import predict_batch

        return lambda structures: predict_batch(member, structures, batch_size=batch_size)
    if callable(member):  # checked last: a CHGNet network is a callable torch module too
        return member
    raise TypeError(
        f"a committee member is a hifidata Model, a CHGNet model or a callable, "
        f"not {type(member).__name__}"
    )


def committee_predictions(
    models: Sequence[Any], structures: Sequence[Atoms], batch_size: int = 64
) -> dict[str, Any]:
    """Every member's predictions on ``structures``.

    Returns {"energy": array (M, N) in eV, "forces": M lists of N arrays (n_i, 3) in eV/Å,
    "n_atoms": array (N,)}, the input of :func:`committee_disagreement`.
    """
    structures = list(structures)
    if len(models) < 2:
        raise ValueError(f"a committee needs at least two members, got {len(models)}")
    n_atoms = np.array([len(atoms) for atoms in structures], dtype=np.int64)
    energies, forces = [], []
    for m, member in enumerate(models):
        result = as_predictor(member, batch_size)(structures) if structures else {
            "energy": [], "forces": []}
        energy = np.asarray(result["energy"], dtype=np.float64).reshape(-1)
        member_forces = [np.asarray(f, dtype=np.float64) for f in result["forces"]]
        if len(energy) != len(structures) or len(member_forces) != len(structures):
            raise ValueError(
                f"committee member {m} returned {len(energy)} energies and "
                f"{len(member_forces)} force arrays for {len(structures)} structures"
            )
        energies.append(energy)
        forces.append(member_forces)
    return {
        "energy": np.stack(energies) if structures else np.zeros((len(models), 0)),
        "forces": forces,
        "n_atoms": n_atoms,
    }


def committee_disagreement(
    energies: np.ndarray, forces: Sequence[Sequence[np.ndarray]], n_atoms: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-structure spread of a committee's predictions (population std, over the M members).

    energies : (M, N) eV.  forces : M lists of N arrays (n_i, 3) eV/Å.  n_atoms : (N,).

    Returns arrays of shape (N,):
      - "energy_std_per_atom" (eV/atom): std of the total energies over n_i.
      - "max_force_std" (eV/Å): DP-GEN's max_devi_f, the largest over atoms of
        ``sqrt(mean_m |F_m,i - F̄_i|^2)``; the default score (see DEFAULT_SCORE).
      - "mean_force_std" (eV/Å): DP-GEN's avg_devi_f, the same per-atom deviation averaged.
    """
    energies = np.asarray(energies, dtype=np.float64)
    if energies.ndim != 2:
        raise ValueError(f"energies must have shape (models, structures), got {energies.shape}")
    n_models, n_structures = energies.shape
    if n_models < 2:
        raise ValueError(f"a committee needs at least two members, got {n_models}")
    n_atoms = np.asarray(n_atoms, dtype=np.int64).reshape(-1)
    if n_atoms.shape != (n_structures,):
        raise ValueError(f"n_atoms has {n_atoms.size} entries for {n_structures} structures")
    if np.any(n_atoms < 1):
        raise ValueError("every structure needs at least one atom")
    if len(forces) != n_models or any(len(member) != n_structures for member in forces):
        raise ValueError(f"forces must be {n_models} lists of {n_structures} arrays")
    max_std, mean_std = np.empty(n_structures), np.empty(n_structures)
    for j in range(n_structures):
        stacked = np.stack([np.asarray(member[j], dtype=np.float64) for member in forces])
        if stacked.shape != (n_models, n_atoms[j], 3):
            raise ValueError(
                f"structure {j}: forces have shape {stacked.shape[1:]}, "
                f"expected ({n_atoms[j]}, 3)"
            )
        deviation = stacked - stacked.mean(axis=0)
        per_atom = np.sqrt(np.mean(np.sum(deviation**2, axis=-1), axis=0))
        max_std[j], mean_std[j] = per_atom.max(), per_atom.mean()
    return {
        "energy_std_per_atom": energies.std(axis=0) / n_atoms,
        "max_force_std": max_std,
        "mean_force_std": mean_std,
    }


def committee_uncertainty(
    models: Sequence[Any], structures: Sequence[Atoms], score: str = DEFAULT_SCORE,
    batch_size: int = 64,
) -> np.ndarray:
    """One score per structure: committee_predictions, then committee_disagreement[score]."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    predictions = committee_predictions(models, structures, batch_size=batch_size)
    if not len(predictions["n_atoms"]):
        return np.zeros(0)
    return committee_disagreement(
        predictions["energy"], predictions["forces"], predictions["n_atoms"]
    )[score]


def feature_distance(
    reference_features, candidate_features, n_neighbors: int = 1, standardize: bool = True
) -> np.ndarray:
    """Distance of each candidate to its nearest reference (labeled) structure, shape (N,).

    Both sets are standardized together (zero mean, unit variance per feature over reference and
    candidates), so that no feature dominates by its units; a constant feature is left out by
    StandardScaler's scale of 1. With ``n_neighbors`` > 1 the mean distance to that many
    nearest references is returned (smoother, less sensitive to one stray labeled point). A
    candidate that is itself in the reference set scores 0.
    """
    reference = _as_features(reference_features, "reference_features")
    candidates = _as_features(candidate_features, "candidate_features")
    if reference.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"reference_features has {reference.shape[1]} columns, "
            f"candidate_features {candidates.shape[1]}"
        )
    _check_positive_int("n_neighbors", n_neighbors)
    n_neighbors = min(n_neighbors, reference.shape[0])
    if standardize:
        scaler = StandardScaler().fit(np.vstack([reference, candidates]))
        reference, candidates = scaler.transform(reference), scaler.transform(candidates)
    distances, _ = NearestNeighbors(n_neighbors=n_neighbors).fit(reference).kneighbors(candidates)
    return distances.mean(axis=1)


def select_by_uncertainty(
    cluster_labels, uncertainty, k: int = 1, exclude=None
) -> np.ndarray:
    """Sorted indices: in every cluster, the k members with the highest uncertainty.

    Stratify first (every cluster contributes, as in DIRECT's select_k_per_cluster), then rank
    within a cluster by ``uncertainty``, highest first; ties go to the lower index, so the pick
    is deterministic. ``exclude`` (a boolean mask of length N, or indices) marks structures that
    are never picked, e.g. those labeled in an earlier iteration, so iteration k adds new ones;
    a cluster whose members are all excluded contributes nothing, and one with fewer than k
    eligible members gives all of them.
    """
    labels = np.asarray(cluster_labels)
    if labels.ndim != 1:
        raise ValueError(f"cluster_labels must be one-dimensional, got shape {labels.shape}")
    n = labels.shape[0]
    scores = np.asarray(uncertainty, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"uncertainty has shape {scores.shape}, expected ({n},)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("uncertainty must be finite (a NaN cannot be ranked)")
    _check_positive_int("k", k)
    allowed = ~_exclusion_mask(exclude, n)
    picked = []
    for cluster in np.unique(labels):
        members = np.flatnonzero((labels == cluster) & allowed)
        order = np.lexsort((members, -scores[members]))  # highest score, then lowest index
        picked.append(members[order[:k]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _exclusion_mask(exclude, n: int) -> np.ndarray:
    if exclude is None:
        return np.zeros(n, dtype=bool)
    exclude = np.asarray(exclude)
    if exclude.dtype == bool:
        if exclude.shape != (n,):
            raise ValueError(f"exclude mask has shape {exclude.shape}, expected ({n},)")
        return exclude
    if exclude.size and not np.issubdtype(exclude.dtype, np.integer):
        raise ValueError("exclude is a boolean mask or integer indices")
    indices = exclude.astype(np.int64).reshape(-1)
    if np.any((indices < 0) | (indices >= n)):
        raise ValueError(f"exclude has indices outside 0..{n - 1}")
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return mask


def direct_uncertainty_pick(
    features, uncertainty, n_clusters: int = 100, k: int = 1, exclude=None, **sampler_params
) -> tuple[np.ndarray, DirectSampler]:
    """DIRECT's strata, uncertainty within them: (sorted indices, the fitted DirectSampler).

    The sampler (StandardScaler → KaiserPCA → BIRCH, ``sampler_params`` passed on) gives the
    clusters; :func:`select_by_uncertainty` picks from each. The sampler's own ``selected_`` (its
    centre-based pick) is not used; its embedding and labels are what a Selection records.
    """
    sampler = DirectSampler(n_clusters=n_clusters, k=k, **sampler_params).fit(features)
    return select_by_uncertainty(sampler.labels_, uncertainty, k, exclude), sampler
