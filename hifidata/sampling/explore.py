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
    check_structure,
    structure_id,
    tightest_pair,
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
