"""A small store with real labels for the release tests: PySCF on water, CP2K on silicon.

Two molecular rungs (HF and MP2 in STO-3G) label five rattled water dimers, MP2 only three of
them; one structure PySCF rejects (an odd electron count as a singlet: invalid_structure,
a real failure); a CP2K rung labels a two-atom silicon cell (stress). About 10 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.collections import s22

from hifidata.calculators.base import Method, label
from hifidata.datasets.store import Store

RUNGS = {
    "hf": ("pyscf", {"theory": "hf", "basis": "sto-3g"}),
    "mp2": ("pyscf", {"theory": "mp2", "basis": "sto-3g", "frozen_core": True}),
    "cp2k": ("cp2k", {"cutoff": 150, "rel_cutoff": 30}),
}


def waters(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = s22["Water_dimer"].copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info = {"charge": 0, "spin": 1}
        out.append(atoms)
    return out


def silicon() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[1] += [0.05, -0.03, 0.02]
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


def labeled_store(path: Path, extra_waters: int = 0, seed: int = 0) -> Store:
    """Write the store at ``path`` (returned open for writing: close it when done)."""
    store = Store(path, "a")
    water = waters(5 + extra_waters, seed)
    broken = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    broken.info = {"charge": 0, "spin": 1}  # 9 electrons cannot be a singlet
    si = silicon()
    origins = [{"protocol": "rattle", "stdev": 0.05, "seed": seed, "step": i}
               for i in range(len(water))]
    store.add_structures([*water, broken, si],
                         [*origins, {"protocol": "seed"}, {"protocol": "seed"}])
    methods = {name: Method.resolve(engine, params, name)
               for name, (engine, params) in RUNGS.items()}
    for method in methods.values():
        store.add_method(method)
    store.add_labels([label(a, methods["hf"]) for a in [*water, broken]])
    store.add_labels([label(a, methods["mp2"]) for a in water[:3]])
    store.add_labels([label(si, methods["cp2k"])])
    return store
