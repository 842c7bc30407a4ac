"""Structure identity and the checks every structure passes before any engine sees it.

A structure is an ``ase.Atoms`` with ``info["charge"]`` and ``info["spin"]`` (multiplicity 2S+1).
"""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.geometry import get_distances

#: Two atoms closer than this (Å) are overlapping: no engine gives a meaningful number there.
MIN_DISTANCE = 0.5


class StructureError(ValueError):
    """The structure cannot be labeled as given (overlap, impossible charge/spin)."""


def n_electrons(atoms: Atoms) -> int:
    return int(atoms.get_atomic_numbers().sum()) - charge_of(atoms)


def charge_of(atoms: Atoms) -> int:
    return int(atoms.info.get("charge", 0))


def spin_of(atoms: Atoms) -> int:
    """Spin multiplicity 2S+1; the lowest one the electron count allows when not given."""
    if "spin" in atoms.info:
        return int(atoms.info["spin"])
    return 1 if n_electrons(atoms) % 2 == 0 else 2


def with_charge_and_spin(atoms: Atoms, charge: int = 0, spin: int | None = None) -> Atoms:
    """A copy carrying explicit ``charge`` and ``spin`` in ``info`` (the store's contract)."""
    out = atoms.copy()
    out.info["charge"] = int(charge)
    out.info["spin"] = int(spin) if spin is not None else spin_of(out)
    return out


def structure_id(atoms: Atoms) -> str:
    """SHA-256 over numbers, positions and cell (rounded to 1e-6 Å), pbc, charge and spin."""
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.get_atomic_numbers(), dtype="<i8").tobytes())
    for array in (atoms.get_positions(), np.asarray(atoms.get_cell())):
        # integers of µÅ: immune to float formatting and to -0.0 vs 0.0
        digest.update(np.rint(np.asarray(array) * 1e6).astype("<i8").tobytes())
    digest.update(np.asarray(atoms.get_pbc(), dtype=np.uint8).tobytes())
    digest.update(np.array([charge_of(atoms), spin_of(atoms)], dtype="<i8").tobytes())
    return digest.hexdigest()


def check_structure(atoms: Atoms, min_distance: float = MIN_DISTANCE) -> None:
    """Raise StructureError when the structure is not one any engine should be given."""
    if len(atoms) == 0:
        raise StructureError("the structure has no atoms")
    if not np.all(np.isfinite(atoms.get_positions())):
        raise StructureError("the structure has non-finite positions")
    _check_charge_and_spin(atoms)
    if len(atoms) > 1:
        i, j, d = closest_pair(atoms)
        if d < min_distance:
            raise StructureError(
                f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {d:.3f} Å apart "
                f"(overlapping; the minimum is {min_distance} Å)"
            )


def closest_pair(atoms: Atoms) -> tuple[int, int, float]:
    """Indices and distance (Å, minimum image where periodic) of the two closest atoms."""
    dist = _distances(atoms)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    return int(min(i, j)), int(max(i, j)), float(dist[i, j])


def tightest_pair(atoms: Atoms) -> tuple[int, int, float]:
    """The pair closest relative to its covalent bond length: (i, j, d / (r_i + r_j))."""
    radii = covalent_radii[atoms.get_atomic_numbers()]
    ratio = _distances(atoms) / (radii[:, None] + radii[None, :])
    i, j = np.unravel_index(np.argmin(ratio), ratio.shape)
    return int(min(i, j)), int(max(i, j)), float(ratio[i, j])


def _distances(atoms: Atoms) -> np.ndarray:
    pbc = atoms.get_pbc()
    cell = atoms.get_cell() if pbc.any() else None
    _, dist = get_distances(atoms.get_positions(), cell=cell, pbc=pbc if pbc.any() else None)
    np.fill_diagonal(dist, np.inf)
    return dist


def _check_charge_and_spin(atoms: Atoms) -> None:
    charge, spin, electrons = charge_of(atoms), spin_of(atoms), n_electrons(atoms)
    unpaired = spin - 1
    if spin < 1 or electrons < 0 or unpaired > electrons or (electrons - unpaired) % 2:
        raise StructureError(
            f"charge {charge} and spin multiplicity {spin} do not fit "
            f"{electrons} electrons ({atoms.get_chemical_formula()})"
        )
