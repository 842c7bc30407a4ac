"""Water-dimer training data for the training tests: rattled geometries and PySCF HF labels."""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.collections import s22
from scipy.integrate import simpson


def rattled_dimers(count: int, seed: int = 0) -> list[Atoms]:
    """Water dimers with the O–O distance varied by ±0.25 Å and every atom rattled."""
    rng = np.random.default_rng(seed)
    dimers = []
    for _ in range(count):
        atoms = s22["Water_dimer"].copy()
        oo = atoms.positions[3] - atoms.positions[0]
        atoms.positions[3:] += oo / np.linalg.norm(oo) * rng.uniform(-0.25, 0.25)
        atoms.positions += rng.normal(0.0, 0.04, atoms.positions.shape)
        dimers.append(atoms)
    return dimers


def hf_label(atoms: Atoms, basis: str) -> tuple[float, np.ndarray]:
    """RHF energy (eV) and forces (eV/Å) from PySCF's analytic gradient."""
    from pyscf import gto, lib, scf

    mol = gto.M(
        atom=list(zip(atoms.get_chemical_symbols(), atoms.positions.tolist(), strict=True)),
        basis=basis, unit="Angstrom", verbose=0,
    )
    # one thread: these matrices are tiny, and OpenMP threads spin when other work is running
    with lib.with_omp_threads(1):
        mf = scf.RHF(mol)
        energy = mf.kernel()
        assert mf.converged
        gradient = mf.nuc_grad_method().kernel()
    return energy * units.Hartree, -gradient * units.Hartree / units.Bohr


def energy_difference_and_mean_force(model, atoms: Atoms, atom: int, axis: int,
                                     half_step: float, points: int = 11) -> tuple[float, float]:
    """−(E(x+h) − E(x−h)) / 2h and the model's force averaged over [x−h, x+h] (Simpson).

    For a conservative model the two are equal exactly: comparing with the averaged force
    instead of F(x) leaves no O(h²) truncation error, which reached 0.02 eV/Å on stiff O–H bonds.
    """
    offsets = np.linspace(-half_step, half_step, points)
    path = []
    for offset in offsets:
        moved = atoms.copy()
        moved.positions[atom, axis] += offset
        path.append(moved)
    predicted = model.predict(path)
    difference = -(predicted["energy"][-1] - predicted["energy"][0]) / (2 * half_step)
    forces = np.array([f[atom, axis] for f in predicted["forces"]])
    return float(difference), float(simpson(forces, x=offsets) / (2 * half_step))
