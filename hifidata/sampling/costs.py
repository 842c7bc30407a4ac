"""What labels cost: a scaling law per method, fitted from the store's wall times, and a
budgeted pick of the configurations that cover the feature space best for their cost.

The cost model is a power law in a size measure, t = a · size^p · n_k, in core-seconds (wall
seconds × threads × MPI ranks of the run that measured it):

- ``size`` (:func:`size_of`) is what the method's cost scales with: basis functions for PySCF
  (Gaussian-basis quantum chemistry scales with the number of basis functions, not atoms), atoms
  for CP2K and Quantum ESPRESSO;
- ``n_k`` (:func:`kpoints_of`) is the number of k-points the engine computes. Each k-point is a
  separate diagonalization of the same size, so cost grows linearly with it: it is a factor of
  its own, not part of ``size`` (an atoms × k-points size with one exponent p ≈ 2 would have a
  2×2×2 grid cost 16× Γ instead of about 4×).

:meth:`CostModel.fit` fits log t = log a + p · log size by least squares, with the exponent
shrunk towards the theory's prior (:data:`PRIOR_EXPONENTS`) as far as the timings leave it
undetermined: with one size only, p is the prior's. :func:`prior_model` is the model of a method
the store has no timings for: a reference timing measured on this machine
(:data:`REFERENCE_TIMINGS`) scaled with the prior exponent. docs/costs.md says how they were
measured and why these exponents.

:func:`allocate` chooses which configurations of a lower rung get a higher one within a budget
of core-seconds: one per cluster first (the cheapest per coverage gained), then further members,
each time the one that adds most of maml's feature coverage score per core-second.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from ase import Atoms

from hifidata.calculators.base import cores_of

#: Exponents of the cost in the size measure, per (engine, theory). Gaussian basis (size: basis
#: functions N), asymptotic orders (Helgaker, Jørgensen & Olsen, Molecular Electronic-Structure
#: Theory, ch. 13-14): HF and hybrid DFT build Fock matrices from O(N⁴) integrals that
#: screening and density fitting bring to about N³ (diagonalization is N³); MP2's integral
#: transformation is O(o·v·N³) ~ N⁵; CCSD's iterations O(o²v⁴) ~ N⁶; (T) adds O(o³v⁴) ~ N⁷.
#: Plane waves and GPW (size: atoms) are N³ asymptotically, but FFTs and density grids (N log N)
#: dominate at the tens of atoms labeled here: fitted to Si8, Si16 and Si64 at Γ on this
#: machine (REFERENCE_TIMINGS), pw.x N^2.1 and CP2K N^1.7 (docs/costs.md).
PRIOR_EXPONENTS: dict[tuple[str, str], float] = {
    ("pyscf", "hf"): 3.0,
    ("pyscf", "dft"): 3.0,
    ("pyscf", "mp2"): 5.0,
    ("pyscf", "ccsd"): 6.0,
    ("pyscf", "ccsd(t)"): 7.0,
    ("cp2k", "dft"): 1.7,
    ("espresso", "dft"): 2.1,
}
#: How far a fit may move the exponent from its prior (1 sd, in the exponent's units): the
#: exponent is shrunk towards the prior in proportion to how little the timings fix it.
EXPONENT_PRIOR_SD = 1.0
#: Prior scatter of log wall times around the law (timings on a shared machine vary ~25 %),
#: worth NOISE_PRIOR_WEIGHT observations: it keeps two or three timings from claiming a
#: perfect fit.
NOISE_PRIOR_SD = 0.25
NOISE_PRIOR_WEIGHT = 2.0

#: Reference timings, core-seconds of one label (energy and forces, what a campaign computes)
#: with hifidata.calculators.base.label, one thread and one rank, on this project's machine (2
#: cores shared with other jobs, load 2-5; CPU time of the process and its children, since the
#: wall times were 1.2-4x longer on the shared cores). PySCF 2.14 on the S22 water dimer and its
#: first monomer; CP2K 2023.1 and pw.x 6.7 (Debian) on the cubic Si cells of
#: hifidata/examples/silicon.xyz (Si16: two Si8 stacked). Several sizes per kind: a prior starts
#: from the one nearest in size to the structures it predicts. ``size`` and ``kpoints`` as
#: size_of and kpoints_of count them, ``cutoff`` in Ry. docs/costs.md has the script.
_W, _W1 = "(H2O)2", "H2O"
REFERENCE_TIMINGS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("pyscf", "hf"): [
        {"seconds": 0.21, "size": 24, "system": _W1, "method": "HF/cc-pVDZ"},
        {"seconds": 0.59, "size": 48, "system": _W, "method": "HF/cc-pVDZ"},
    ],
    ("pyscf", "dft"): [
        {"seconds": 0.90, "size": 43, "system": _W1,
         "method": "revPBE0-D3(BJ)/def2-TZVP, density fitting"},
        {"seconds": 4.3, "size": 86, "system": _W,
         "method": "revPBE0-D3(BJ)/def2-TZVP, density fitting"},
    ],
    ("pyscf", "mp2"): [
        {"seconds": 0.14, "size": 24, "system": _W1, "method": "MP2/cc-pVDZ, frozen core"},
        {"seconds": 0.98, "size": 48, "system": _W, "method": "MP2/cc-pVDZ, frozen core"},
    ],
    ("pyscf", "ccsd"): [
        {"seconds": 0.33, "size": 24, "system": _W1, "method": "CCSD/cc-pVDZ, frozen core"},
        {"seconds": 2.97, "size": 48, "system": _W, "method": "CCSD/cc-pVDZ, frozen core"},
    ],
    ("pyscf", "ccsd(t)"): [
        {"seconds": 0.49, "size": 24, "system": _W1, "method": "CCSD(T)/cc-pVDZ, frozen core"},
        {"seconds": 23.5, "size": 48, "system": _W, "method": "CCSD(T)/cc-pVDZ, frozen core"},
        {"seconds": 175.5, "size": 82, "system": _W,
         "method": "CCSD(T)/aug-cc-pVDZ, frozen core"},
    ],
    ("cp2k", "dft"): [
        {"seconds": 11.2, "size": 8, "kpoints": 1, "cutoff": 300.0, "system": "Si8",
         "method": "PBE/DZVP-MOLOPT-SR-GTH, 300 Ry, Γ"},
        {"seconds": 16.9, "size": 16, "kpoints": 1, "cutoff": 300.0, "system": "Si16",
         "method": "PBE/DZVP-MOLOPT-SR-GTH, 300 Ry, Γ"},
        {"seconds": 348.0, "size": 64, "kpoints": 1, "cutoff": 300.0, "system": "Si64",
         "method": "PBE/DZVP-MOLOPT-SR-GTH, 300 Ry, Γ"},
    ],
    ("espresso", "dft"): [
        {"seconds": 1.98, "size": 8, "kpoints": 1, "cutoff": 30.0, "system": "Si8",
         "method": "PBE/PseudoDojo NC, 30 Ry, Γ"},
        {"seconds": 6.3, "size": 16, "kpoints": 1, "cutoff": 30.0, "system": "Si16",
         "method": "PBE/PseudoDojo NC, 30 Ry, Γ"},
        {"seconds": 160.0, "size": 64, "kpoints": 1, "cutoff": 30.0, "system": "Si64",
         "method": "PBE/PseudoDojo NC, 30 Ry, Γ"},
    ],
    # methods with k-points: at Γ CP2K runs OT, with k-points diagonalization, and at these
    # sizes fixed costs make k-points cheaper than linear, so they have references of their own
    ("cp2k", "dft k-points"): [
        {"seconds": 9.1, "size": 8, "kpoints": 4, "cutoff": 300.0, "system": "Si8",
         "method": "PBE/DZVP-MOLOPT-SR-GTH, 300 Ry, 2×2×2 (4 k-points)"},
    ],
    ("espresso", "dft k-points"): [
        {"seconds": 3.5, "size": 8, "kpoints": 4, "cutoff": 30.0, "system": "Si8",
         "method": "PBE/PseudoDojo NC, 30 Ry, 2×2×2 (4 k-points)"},
    ],
}

#: How a prior's cost grows with the cutoff (Ry), per engine. pw.x: the plane waves (and FFT
#: grid points) number cutoff^(3/2) and every step scales with them. CP2K's Gaussian basis does
#: not depend on the cutoff, only its density grids do: a 64-atom Si label took 336 s at 250 Ry
#: and 447 s at 400 Ry on this machine (docs/audit.md), cutoff^0.6.
CUTOFF_EXPONENTS = {"espresso": 1.5, "cp2k": 0.6}


# ------------------------------------------------------------------------------- size measures


def theory_of(engine: str, params: Mapping[str, Any]) -> str:
    """The theory a prior exponent is kept for: PySCF's ``theory``, else "dft"."""
    return str(params.get("theory", "dft")).lower() if engine == "pyscf" else "dft"


def size_of(atoms: Atoms, engine: str, params: Mapping[str, Any]) -> float:
    """The size a method's cost scales with: basis functions (pyscf), else atoms.

    PySCF's count is ``Mole.nao`` of the method's basis (spherical functions, ECP elements
    included), read from the basis set without any integral or SCF (~1 ms; cached by
    composition, since the count depends only on the elements).
    """
    if engine == "pyscf":
        numbers = atoms.get_atomic_numbers()
        basis = str(params["basis"])
        return float(sum(_basis_functions(int(z), basis) for z in numbers))
    return float(len(atoms))


@lru_cache(maxsize=1024)
def _basis_functions(z: int, basis: str) -> int:
    """Basis functions of one atom of element ``z`` (a count additive over atoms)."""
    from pyscf import gto

    from hifidata.calculators.pyscf import _ecp

    symbol = gto.mole._symbol(z)
    # charge z % 2 makes the electron count even, so the closed-shell default is legal
    mol = gto.M(atom=[(symbol, (0.0, 0.0, 0.0))], basis=basis, ecp=_ecp(basis, [symbol]),
                charge=z % 2, verbose=0)
    return int(mol.nao)


def kpoints_of(atoms: Atoms, engine: str, params: Mapping[str, Any]) -> int:
    """K-points the engine computes for this structure: 1 for molecules and Γ, else the
    Monkhorst–Pack set with k and −k counted once (what CP2K and pw.x without symmetry run)."""
    if engine == "pyscf" or not atoms.get_pbc().any():
        return 1
    from hifidata.calculators.cp2k import n_kpoints
    from hifidata.calculators.kpoints import mesh, resolve_kpoints

    return n_kpoints(mesh(atoms, resolve_kpoints(params.get("kpoints"))))


# ------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class CostModel:
    """t = a · size^p · kpoints core-seconds per label.

    ``exponent_sd`` is the exponent's posterior standard deviation (the prior's when the timings
    say nothing about it), ``spread`` the typical factor between a timing and the law (1.3:
    ±30 %), ``n`` the timings behind it (0: a prior), ``source`` "fit" or "prior", and
    ``exponent_from`` "fit" or "prior" (a fit on one size keeps the prior's exponent).
    """

    a: float
    exponent: float
    exponent_sd: float
    spread: float
    n: int
    source: str
    exponent_from: str
    sizes: tuple[float, float] = (float("nan"), float("nan"))  # smallest and largest fitted
    reference: str = ""

    def predict(self, size: float | np.ndarray, kpoints: float | np.ndarray = 1) -> np.ndarray:
        """Core-seconds per label of this size (and k-points)."""
        size = np.asarray(size, dtype=float)
        if np.any(~(size > 0)):
            raise ValueError("sizes must be positive")
        return self.a * size**self.exponent * np.asarray(kpoints, dtype=float)

    def describe(self) -> str:
        """'fit (n=12, p=6.8±0.3)', 'fit (n=3, p=7 prior)' or 'prior'."""
        if self.source == "prior":
            return "prior"
        if self.exponent_from == "prior":
            return f"fit (n={self.n}, p={self.exponent:g} prior)"
        return f"fit (n={self.n}, p={self.exponent:.2f}±{self.exponent_sd:.2f})"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (None for what is not known, e.g. a prior's spread)."""
        def plain(value: Any) -> Any:
            return None if isinstance(value, float) and not math.isfinite(value) else value

        out = {key: plain(value) for key, value in asdict(self).items()}
        return {**out, "sizes": [plain(v) for v in self.sizes], "describe": self.describe()}

    @classmethod
    def fit(
        cls,
        sizes: Sequence[float],
        seconds: Sequence[float],
        prior_exponent: float,
        kpoints: Sequence[float] | None = None,
        prior_sd: float = EXPONENT_PRIOR_SD,
    ) -> CostModel:
        """Least squares of log(t / n_k) = log a + p · log size, the exponent shrunk to the
        prior by its uncertainty (a Gaussian prior of sd ``prior_sd`` on p).

        With one distinct size p is the prior's; with many well-spread sizes the prior no
        longer matters. Raises ValueError without a timing or for non-positive values.
        """
        x = np.log(_positive("sizes", sizes))
        t = _positive("seconds", seconds)
        k = np.ones_like(t) if kpoints is None else _positive("kpoints", kpoints)
        if not len(x) == len(t) == len(k):
            raise ValueError("one size, one timing (and one k-point count) per label")
        if len(t) == 0:
            raise ValueError("no timings to fit")
        y = np.log(t / k)
        n = len(y)
        xc, yc = x - x.mean(), y - y.mean()
        sxx = float(xc @ xc)
        distinct = len(np.unique(np.round(x, 12))) > 1
        if distinct:
            slope = float(xc @ yc) / sxx
            rss = float(np.sum((yc - slope * xc) ** 2))
            s2 = (rss + NOISE_PRIOR_WEIGHT * NOISE_PRIOR_SD**2) / (n - 2 + NOISE_PRIOR_WEIGHT)
            precision = sxx / s2 + 1 / prior_sd**2
            p = (slope * sxx / s2 + prior_exponent / prior_sd**2) / precision
            p_sd = 1 / math.sqrt(precision)
            residual = yc - p * xc
            dof = n - 1 + NOISE_PRIOR_WEIGHT
        else:
            p, p_sd = float(prior_exponent), float(prior_sd)
            residual = yc
            dof = n - 1 + NOISE_PRIOR_WEIGHT
        s = math.sqrt((float(residual @ residual) + NOISE_PRIOR_WEIGHT * NOISE_PRIOR_SD**2) / dof)
        log_a = float(y.mean() - p * x.mean())
        return cls(
            a=math.exp(log_a), exponent=float(p), exponent_sd=float(p_sd),
            spread=math.exp(s), n=n, source="fit",
            exponent_from="fit" if distinct else "prior",
            sizes=(float(np.exp(x.min())), float(np.exp(x.max()))),
        )


def _positive(name: str, values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float).ravel()
    if np.any(~np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name} must be positive and finite")
    return array


def prior_exponent(engine: str, params: Mapping[str, Any]) -> float:
    return PRIOR_EXPONENTS.get((engine, theory_of(engine, params)), 3.0)


def prior_model(engine: str, params: Mapping[str, Any], size: float | None = None) -> CostModel:
    """The model of a method without timings: the reference timing of its kind on this machine
    nearest to ``size`` (the largest when None; with k-points: a k-point reference), scaled by
    the prior exponent, linearly in k-points, and by the cutoff for plane waves and GPW
    (CUTOFF_EXPONENTS)."""
    key = (engine, theory_of(engine, params))
    if engine != "pyscf" and params.get("kpoints") is not None:
        key = (engine, f"{key[1]} k-points")
    if key not in REFERENCE_TIMINGS:
        raise ValueError(f"no reference timing for {engine} {key[1]}")
    references = REFERENCE_TIMINGS[key]
    if size is None or not size > 0:
        ref = max(references, key=lambda r: r["size"])
    else:
        ref = min(references, key=lambda r: abs(math.log(r["size"] / size)))
    p = prior_exponent(engine, params)
    seconds = ref["seconds"] / ref.get("kpoints", 1)
    cutoff = params.get("cutoff") if engine == "cp2k" else params.get("ecutwfc")
    if "cutoff" in ref and cutoff:
        seconds *= (float(cutoff) / ref["cutoff"]) ** CUTOFF_EXPONENTS[engine]
    return CostModel(
        a=seconds / ref["size"] ** p, exponent=p, exponent_sd=EXPONENT_PRIOR_SD,
        spread=float("nan"), n=0, source="prior", exponent_from="prior",
        sizes=(float(ref["size"]), float(ref["size"])),
        reference=f"{ref['method']}, {ref['system']}: {ref['seconds']:g} s",
    )


def fit_from_store(store, method_id: str) -> CostModel | None:
    """The model fitted to a method's ok labels in ``store`` (None: it has none).

    Wall times become core-seconds with the threads and ranks each label's provenance records;
    failed labels are left out (a timeout's wall time is a lower bound, not a cost).
    """
    definition = next((m["definition"] for m in store.methods() if m["method_id"] == method_id),
                      None)
    if definition is None:
        return None
    labels = store.labels(method_id).ok()
    if not len(labels):
        return None
    engine = definition["engine"]
    params = {k: v for k, v in definition.items() if k != "engine"}
    structures = store.structures(labels.structure_ids)
    cores = [_cores(text) for text in labels.provenance]
    seconds = np.asarray(labels.wall_time, dtype=float) * np.asarray(cores, dtype=float)
    keep = np.isfinite(seconds) & (seconds > 0)
    if not keep.any():
        return None
    sizes = [size_of(a, engine, params) for a in structures]
    kpoints = [kpoints_of(a, engine, params) for a in structures]
    return CostModel.fit(
        np.asarray(sizes)[keep], seconds[keep], prior_exponent(engine, params),
        kpoints=np.asarray(kpoints)[keep],
    )


def _cores(provenance: str) -> int:
    try:
        info = json.loads(provenance or "{}")
    except json.JSONDecodeError:
        info = {}
    return cores_of(info)


def cost_model(engine: str, params: Mapping[str, Any], store=None,
               method_id: str | None = None, size: float | None = None) -> CostModel:
    """The store's fit for ``method_id`` when it has timings, else the prior (from the
    reference nearest to ``size``, a typical size of the structures to predict)."""
    if store is not None and method_id is not None:
        fitted = fit_from_store(store, method_id)
        if fitted is not None:
            return fitted
    return prior_model(engine, params, size)


def label_seconds(model: CostModel, structures: Sequence[Atoms], engine: str,
                  params: Mapping[str, Any]) -> np.ndarray:
    """Predicted core-seconds of labeling each structure with the method."""
    sizes = [size_of(a, engine, params) for a in structures]
    kpoints = [kpoints_of(a, engine, params) for a in structures]
    return np.asarray(model.predict(np.asarray(sizes), np.asarray(kpoints)), dtype=float).ravel()


# ------------------------------------------------------------------------------- allocation


def allocate(
    embedding: np.ndarray,
    cluster_labels: Sequence[int],
    seconds: Sequence[float],
    budget_seconds: float,
    k: int = 1,
    reference: np.ndarray | None = None,
    n_bins: int = 100,
) -> np.ndarray:
    """Indices of the configurations to label within ``budget_seconds``, in the order chosen.

    ``embedding`` (N × d) and ``cluster_labels`` (N) are the DIRECT embedding and BIRCH cluster
    of the candidates (a lower rung's selection), ``seconds`` (N) each one's predicted cost at
    the higher rung, in the budget's unit (core-seconds for a CPU-hour budget). Coverage is
    maml's score (hifidata.sampling.direct.coverage_score) of the chosen set against
    ``reference`` (the embedding whose spread counts as the feature space; default
    ``embedding``).

    Greedy, in rounds: in round r = 1..k each cluster with fewer than r chosen members gets
    one more, always taking next the member (of any such cluster) that adds most coverage per
    second, until none fits the budget left. At most k per cluster, as DIRECT would take: a
    budget caps a rung's pick, it never enlarges it. Ties go to the member farthest from those
    chosen per second, then the cheaper, then the lower index: the result is deterministic.
    The chosen costs never sum above the budget.
    """
    x = np.asarray(embedding, dtype=float)
    if x.ndim != 2:
        raise ValueError("embedding must be N × d")
    n = len(x)
    labels = np.asarray(cluster_labels)
    cost = np.asarray(seconds, dtype=float)
    if labels.shape != (n,) or cost.shape != (n,):
        raise ValueError("one cluster label and one cost per configuration")
    if np.any(~np.isfinite(cost)) or np.any(cost <= 0):
        raise ValueError("costs must be positive and finite")
    if k < 1:
        raise ValueError("k must be at least 1")
    if n == 0 or not budget_seconds > 0:
        return np.zeros(0, dtype=int)
    bins, weight = _bins(x, np.asarray(reference, dtype=float) if reference is not None else x,
                         n_bins)
    occupied = np.zeros((x.shape[1], n_bins - 1), dtype=bool)
    columns = np.arange(x.shape[1])
    _, cluster = np.unique(labels, return_inverse=True)
    members = np.zeros(cluster.max() + 1, dtype=int)  # chosen per cluster
    nearest = np.full(n, np.inf)  # distance to the nearest chosen configuration
    chosen = np.zeros(n, dtype=bool)
    left = float(budget_seconds)
    order: list[int] = []
    for round_ in range(1, k + 1):
        while True:
            open_ = ~chosen & (cost <= left) & (members[cluster] < round_)
            candidates = np.flatnonzero(open_)
            if not len(candidates):
                break
            at = bins[candidates]
            new = (at >= 0) & ~occupied[columns, np.maximum(at, 0)]
            gain = (new * weight).sum(axis=1)
            price = cost[candidates]
            # most coverage per second; then farthest per second, cheaper, lower index
            best = candidates[np.lexsort((candidates, price, -(nearest[candidates] / price),
                                          -(gain / price)))[0]]
            chosen[best] = True
            order.append(int(best))
            left -= cost[best]
            members[cluster[best]] += 1
            inside = bins[best] >= 0
            occupied[columns[inside], bins[best][inside]] = True
            nearest = np.minimum(nearest, np.linalg.norm(x - x[best], axis=1))
    return np.asarray(order, dtype=int)


def _bins(x: np.ndarray, reference: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each configuration's bin per column on coverage_score's edges (-1: outside them), and
    each column's weight: 1 / (occupied bins of the reference × columns)."""
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    if reference.ndim != 2 or reference.shape[1] != x.shape[1] or not len(reference):
        raise ValueError("reference must be M × d with the embedding's d columns")
    d = x.shape[1]
    bins = np.full(x.shape, -1, dtype=int)
    weight = np.zeros(d)
    for c in range(d):
        low, high = reference[:, c].min(), reference[:, c].max()
        if low == high:  # coverage_score counts such a column covered by any selection
            bins[:, c] = 0
            weight[c] = 1.0 / d
            continue
        edges = np.linspace(low, high, n_bins)
        index = np.searchsorted(edges, x[:, c], side="right") - 1
        index[x[:, c] == high] = n_bins - 2  # np.histogram's last bin is closed
        index[(x[:, c] < low) | (x[:, c] > high)] = -1
        bins[:, c] = index
        occupied = np.count_nonzero(np.histogram(reference[:, c], bins=edges)[0])
        weight[c] = 1.0 / (occupied * d)
    return bins, weight
