"""Molecular dynamics with any hifidata model, watched by stability monitors.

One Langevin (NVT) driver serves both exploration (pretrained MLIP) and deployment (trained
models). Monitors look at the structure every ``check_every`` steps and stop the run with a
reason when it turns unphysical (atoms too close, a covalent bond torn apart, temperature
runaway): an MLIP in a region it never saw fails that way, and a stopped run is a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.neighborlist import natural_cutoffs, neighbor_list

from hifidata.structures import closest_pair

#: A monitor returns the reason to stop, or None while the structure is fine.
Monitor = Callable[[Atoms], str | None]

#: A covalent bond counts as broken beyond this multiple of the sum of covalent radii.
BOND_BREAK_FACTOR = 1.5


def close_contact(min_distance: float) -> Monitor:
    def check(atoms: Atoms) -> str | None:
        i, j, d = closest_pair(atoms)
        if d < min_distance:
            return f"close contact: atoms {i} and {j} at {d:.3f} Å (< {min_distance} Å)"
        return None

    return check


def bonds_kept(reference: Atoms, factor: float = BOND_BREAK_FACTOR) -> Monitor:
    """Stop when a covalent bond of ``reference`` stretches past ``factor`` × covalent length.

    This is "no molecule dissociated": thermal O–H stretches at 300 K stay far below 1.5×.
    """
    i_idx, j_idx = neighbor_list("ij", reference, natural_cutoffs(reference, mult=1.2))
    bonds = [(i, j) for i, j in zip(i_idx, j_idx, strict=True) if i < j]
    radii = np.array(natural_cutoffs(reference))

    def check(atoms: Atoms) -> str | None:
        for i, j in bonds:
            d = atoms.get_distance(i, j, mic=atoms.pbc.any())
            limit = factor * (radii[i] + radii[j])
            if d > limit:
                return (
                    f"bond {atoms[i].symbol}{i}–{atoms[j].symbol}{j} broke: "
                    f"{d:.2f} Å (> {limit:.2f} Å)"
                )
        return None

    return check


def temperature_runaway(target: float, factor: float = 5.0) -> Monitor:
    def check(atoms: Atoms) -> str | None:
        temperature = atoms.get_temperature()
        if temperature > factor * target:
            return f"temperature runaway: {temperature:.0f} K (> {factor:g} × {target:g} K)"
        return None

    return check


def default_monitors(atoms: Atoms, temperature: float, min_distance: float) -> list[Monitor]:
    return [close_contact(min_distance), bonds_kept(atoms), temperature_runaway(temperature)]


@dataclass
class MDResult:
    """Sampled frames (positions only, charge/spin kept) and how the run ended."""

    frames: list[Atoms] = field(default_factory=list)
    frame_steps: list[int] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)  # potential, eV
    temperatures: list[float] = field(default_factory=list)  # K
    steps_done: int = 0
    stopped: str | None = None  # why a monitor stopped the run; None: it ran to the end
    wall_time: float = 0.0

    @property
    def stable(self) -> bool:
        return self.stopped is None


def langevin(
    atoms: Atoms,
    calculator: Calculator,
    temperature: float,
    steps: int,
    timestep: float = 0.5,
    friction: float = 0.01,
    sample_every: int = 10,
    seed: int = 0,
    monitors: Sequence[Monitor] = (),
    check_every: int = 1,
    progress: Callable[[int], None] | None = None,
) -> MDResult:
    """Langevin NVT from ``atoms``; T in K, timestep in fs, friction in 1/fs.

    Frames are taken every ``sample_every`` steps (step 0 excluded: it is the start structure).
    ``progress(n)`` is called with the number of steps done since the last call.
    """
    work = atoms.copy()
    work.calc = calculator
    work.set_constraint(FixCom())  # no drift of the whole system under the random kicks
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(work, temperature_K=temperature, rng=rng)
    Stationary(work)
    if not work.pbc.any():
        ZeroRotation(work)
    dynamics = Langevin(
        work, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
        fixcm=False, rng=rng,
    )
    result, start = MDResult(), time.perf_counter()
    for step in range(1, steps + 1):
        dynamics.run(1)
        result.steps_done = step
        if step % check_every == 0 or step % sample_every == 0:
            reason = next((r for m in monitors if (r := m(work)) is not None), None)
            if reason is not None:
                result.stopped = f"step {step}: {reason}"
                break
        if step % sample_every == 0:
            frame = Atoms(work.get_atomic_numbers(), work.get_positions(), cell=work.cell,
                          pbc=work.pbc)
            frame.info.update({k: atoms.info[k] for k in ("charge", "spin") if k in atoms.info})
            result.frames.append(frame)
            result.frame_steps.append(step)
            result.energies.append(float(work.get_potential_energy()))
            result.temperatures.append(float(work.get_temperature()))
        if progress is not None and step % 50 == 0:
            progress(50)
    if progress is not None:
        progress(result.steps_done % 50)
    result.wall_time = time.perf_counter() - start
    return result


def md_summary(result: MDResult, timestep: float, n_atoms: int) -> dict:
    """What a report says about a run: stability, length, speed."""
    time_ps = result.steps_done * timestep / 1000
    per_day = 86400 / result.wall_time if result.wall_time else float("nan")
    return {
        "stable": result.stable,
        "stopped": result.stopped,
        "steps": result.steps_done,
        "time_ps": time_ps,
        "wall_time_s": result.wall_time,
        "ns_per_day": time_ps / 1000 * per_day,
        "atom_steps_per_s": result.steps_done * n_atoms / result.wall_time
        if result.wall_time else float("nan"),
        "mean_temperature_K": float(np.mean(result.temperatures)) if result.temperatures else None,
    }
