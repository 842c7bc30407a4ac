"""Exploration protocols: ways of turning seed structures into candidate structures.

Each protocol returns ``Candidates``: structures plus one origin record each (protocol,
temperature, step, seed, parent), so every configuration in a dataset can say where it came
from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from hifidata.deploy.md import default_monitors, langevin
from hifidata.structures import (
    MIN_DISTANCE,
    StructureError,
    charge_of,
    check_structure,
    structure_id,
    tightest_pair,
    with_charge_and_spin,
)


@dataclass
class Candidates:
    structures: list[Atoms] = field(default_factory=list)
    origins: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why a trajectory ended early, if it did

    def __len__(self) -> int:
        return len(self.structures)


def md_trajectory(
    seed_structure: Atoms,
    calculator: Calculator,
    temperature: float,
    steps: int,
    timestep: float = 0.5,
    friction: float = 0.01,
    sample_every: int = 5,
    seed: int = 0,
    model: str = "",
    progress: Callable[[int], None] | None = None,
) -> Candidates:
    """Langevin MD of one seed at one temperature; frames every ``sample_every`` steps.

    The run stops at the first unphysical state (close contact, broken covalent bond,
    temperature runaway) and keeps the frames before it.
    """
    result = langevin(
        seed_structure,
        calculator,
        temperature,
        steps,
        timestep=timestep,
        friction=friction,
        sample_every=sample_every,
        seed=seed,
        monitors=default_monitors(seed_structure, temperature, MIN_DISTANCE),
        check_every=sample_every,
        progress=progress,
    )
    parent = structure_id(seed_structure)
    origins = [
        {
            "protocol": "md",
            "temperature": temperature,
            "step": step,
            "seed": seed,
            "timestep": timestep,
            "model": model,
            "parent": parent,
        }
        for step in result.frame_steps
    ]
    return Candidates(result.frames, origins, result.stopped)


def rattle(
    parents: Sequence[Atoms], count: int, stdev: float = 0.05, seed: int = 0,
    min_bond_ratio: float = 0.8,
) -> Candidates:
    """``count`` Gaussian rattles (σ = ``stdev`` Å per coordinate) of parents drawn at random.

    A rattle that brings two atoms closer than ``min_bond_ratio`` × the sum of their covalent
    radii (0.78 Å for O–H at 0.8) is drawn again: such squeezed bonds sit eV above anything
    a simulation visits, and a stratified pick would spend labels on them first (they are the
    edge of feature space).
    """
    rng = np.random.default_rng(seed)
    out = Candidates()
    parent_ids = [structure_id(p) for p in parents]
    for _ in range(100 * count):  # bounded: a huge stdev must not loop forever
        if len(out) == count:
            break
        index = int(rng.integers(len(parents)))
        atoms = parents[index].copy()
        atoms.calc = None
        atoms.positions += rng.normal(0.0, stdev, size=atoms.positions.shape)
        try:
            check_structure(atoms)
        except StructureError:
            continue
        if tightest_pair(atoms)[2] < min_bond_ratio:
            continue
        out.structures.append(atoms)
        out.origins.append(
            {
                "protocol": "rattle",
                "stdev": stdev,
                "seed": seed,
                "step": len(out.origins),
                "parent": parent_ids[index],
            }
        )
    if len(out) < count:
        raise ValueError(
            f"rattles of stdev {stdev} Å keep bringing atoms closer than {min_bond_ratio} × "
            "their covalent bond length; lower stdev or min_bond_ratio"
        )
    return out


def strain(
    parents: Sequence[Atoms], count: int, max_strain: float = 0.03, shear: bool = True,
    seed: int = 0,
) -> Candidates:
    """``count`` homogeneous strains of periodic parents drawn at random; atoms move with the cell.

    Each Voigt component of the symmetric strain ε is uniform in ±``max_strain`` (the shear ones
    zero unless ``shear``); the cell becomes cell · (1 + ε). Strained cells are what a model
    needs to learn stress and the equation of state, which MD at one density never visits.
    """
    periodic = [p for p in parents if p.pbc.all()]
    if not periodic:
        raise ValueError("strain needs periodic parents (pbc on all three axes, with a cell)")
    rng = np.random.default_rng(seed)
    out = Candidates()
    for step in range(count):
        index = int(rng.integers(len(periodic)))
        voigt = rng.uniform(-max_strain, max_strain, size=6)
        if not shear:
            voigt[3:] = 0.0
        epsilon = np.array([[voigt[0], voigt[5], voigt[4]],
                            [voigt[5], voigt[1], voigt[3]],
                            [voigt[4], voigt[3], voigt[2]]])
        atoms = periodic[index].copy()
        atoms.calc = None
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)
        out.structures.append(atoms)
        out.origins.append({"protocol": "strain", "seed": seed, "step": step,
                            "strain_voigt": [round(float(v), 6) for v in voigt],
                            "parent": structure_id(periodic[index])})
    return out


def vacancies(parents: Sequence[Atoms], count: int, seed: int = 0) -> Candidates:
    """Up to ``count`` single vacancies: one per symmetry-distinct site of each periodic parent.

    pymatgen's symmetry analysis groups equivalent sites, so a perfect crystal gives one
    vacancy per Wyckoff orbit rather than N copies of the same defect; parents without
    symmetry (MD snapshots) give any site. Which parents and sites, when there are more than
    ``count``, is drawn from ``seed``.
    """
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    options = []
    for parent in parents:
        if not parent.pbc.all() or len(parent) < 2:
            continue
        structure = AseAtomsAdaptor.get_structure(parent)
        orbits = SpacegroupAnalyzer(structure, symprec=1e-3).get_symmetrized_structure()
        options += [(parent, group[0]) for group in orbits.equivalent_indices]
    if not options:
        raise ValueError("vacancies need periodic parents with at least two atoms")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(options))[:count]
    out = Candidates()
    for step, k in enumerate(sorted(chosen)):
        parent, site = options[k]
        atoms = parent.copy()
        atoms.calc = None
        removed = atoms.get_chemical_symbols()[site]
        del atoms[site]
        atoms = with_charge_and_spin(atoms, charge_of(parent), None)  # parity may have changed
        out.structures.append(atoms)
        out.origins.append({"protocol": "vacancy", "removed": removed, "site": int(site),
                            "seed": seed, "step": step, "parent": structure_id(parent)})
    return out
