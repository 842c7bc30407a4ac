"""Molecular dynamics through ASE's integrators, watched by stability monitors (exploration).

The exploration stage drives ASE's own integrators with the pretrained MLIP's calculator (the
batched torch engine for production MD is hifidata.deploy.md). One driver, ``run_dynamics``,
runs any ASE integrator: Langevin NVT (``langevin_dynamics``), LangevinBAOAB NPT
(``npt_dynamics``), either with a temperature ramp; ``langevin`` is the NVT shorthand.
Monitors look at the structure every ``check_every`` steps and stop the run with a reason when
it turns unphysical (atoms too close, a covalent bond torn apart, temperature runaway, a cell
exploding or collapsing): an MLIP in a region it never saw fails that way, and a stopped run
is a result.

``MDJob`` describes one run; ``run_md`` runs it with a calculator, ``run_md_batched`` runs many
in lockstep with one batched model call per step (hifidata.calculators.batching).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.langevinbaoab import LangevinBAOAB
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.neighborlist import natural_cutoffs, neighbor_list

from hifidata.calculators.batching import Predict, run_lockstep
from hifidata.structures import closest_pair

#: A monitor returns the reason to stop, or None while the structure is fine.
Monitor = Callable[[Atoms], str | None]

#: A covalent bond counts as broken beyond this multiple of the sum of covalent radii.
BOND_BREAK_FACTOR = 1.5

#: A barostat run stops when the cell volume grows or shrinks by more than this factor.
VOLUME_CHANGE_FACTOR = 2.0


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


def volume_change(reference: Atoms, factor: float = VOLUME_CHANGE_FACTOR) -> Monitor:
    """Stop when the cell volume leaves [V0 / factor, V0 × factor]: an exploding or collapsing
    cell under a barostat (a cell is only as trustworthy as the stress that drives it)."""
    reference_volume = reference.get_volume()

    def check(atoms: Atoms) -> str | None:
        ratio = atoms.get_volume() / reference_volume
        if ratio > factor or ratio < 1 / factor:
            return f"cell volume change: V/V0 = {ratio:.2f} (outside 1/{factor:g} … {factor:g})"
        return None

    return check


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
    volumes: list[float] = field(default_factory=list)  # Å³ per frame (periodic cells)
    target_temperatures: list[float] = field(default_factory=list)  # thermostat's K per frame

    @property
    def stable(self) -> bool:
        return self.stopped is None


def temperature_schedule(
    temperatures: float | Sequence[float], steps: int
) -> Callable[[int], float]:
    """Target temperature at each step: a constant, or piecewise linear through ``temperatures``
    spread evenly over ``steps`` ([300, 2000, 300]: heat to 2000 K by the middle, then quench)."""
    if isinstance(temperatures, int | float):
        value = float(temperatures)
        return lambda step: value
    knots = [float(t) for t in temperatures]
    if not knots:
        raise ValueError("a temperature schedule needs at least one temperature")
    if len(knots) == 1:
        return lambda step: knots[0]
    at = np.linspace(0, steps, len(knots))
    return lambda step: float(np.interp(step, at, knots))


def thermalize(atoms: Atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann velocities at ``temperature``, no drift (nor spin for a molecule)."""
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def langevin_dynamics(
    atoms: Atoms, temperature: float, timestep: float = 0.5, friction: float = 0.01,
    seed: int = 0,
) -> Langevin:
    """ASE Langevin NVT on ``atoms`` (calculator attached), velocities drawn from ``seed``.

    ``atoms`` is changed in place: centre of mass fixed, velocities set.
    """
    atoms.set_constraint(FixCom())  # no drift of the whole system under the random kicks
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature, rng)
    return Langevin(
        atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
        fixcm=False, rng=rng,
    )


def npt_dynamics(
    atoms: Atoms, temperature: float, pressure: float, timestep: float = 0.5,
    friction: float = 0.01, barostat_time: float = 200.0, hydrostatic: bool = True,
    seed: int = 0,
) -> LangevinBAOAB:
    """ASE LangevinBAOAB NPT on periodic ``atoms``: pressure in GPa, T in K, timestep in fs.

    Langevin thermostat on the atoms (time constant 1/``friction`` fs) and a Langevin–Hoover
    barostat on the cell (period ~``barostat_time`` fs, also its damping time); ``hydrostatic``
    keeps the cell shape and lets only the volume change (robust for small cells), otherwise
    the whole cell moves. One force+stress evaluation per step.
    """
    if not atoms.pbc.all():
        raise ValueError("NPT needs a periodic structure (pbc on all three axes, with a cell)")
    atoms.set_constraint()
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature, rng)
    dt = timestep * units.fs
    p_tau = barostat_time * units.fs
    # ASE's heuristic barostat mass (fitted on Al: fluctuation period ≈ P_tau / 4) scaled so
    # the period is ≈ P_tau itself: slow, well damped cell motion for small cells
    p_mass = (p_tau / (1.66 * units.fs) * len(atoms) ** (1 / 6)) ** 2
    return LangevinBAOAB(
        atoms, dt, temperature_K=temperature, externalstress=-pressure * units.GPa,
        hydrostatic=hydrostatic, T_tau=units.fs / friction, P_tau=p_tau, P_mass=p_mass, rng=rng,
    )


def run_dynamics(
    dynamics: MolecularDynamics,
    steps: int,
    sample_every: int = 10,
    monitors: Sequence[Monitor] = (),
    check_every: int = 1,
    progress: Callable[[int], None] | None = None,
    temperature: Callable[[int], float] | None = None,
    keep_info: dict | None = None,
) -> MDResult:
    """Run any ASE dynamics ``steps`` steps, watched by ``monitors``, sampling frames.

    Frames are taken every ``sample_every`` steps (step 0 excluded: it is the start structure);
    monitors look every ``check_every`` steps and at every frame, and the first reason stops the
    run. ``temperature(step)`` (a ramp) resets the thermostat's target before each step through
    ``dynamics.set_temperature``. ``progress(n)`` gets the steps done since its last call
    (every 50 steps and at the end). ``keep_info`` goes into every frame's ``info``.
    """
    work = dynamics.atoms
    result, start = MDResult(), time.perf_counter()
    target = None
    for step in range(1, steps + 1):
        if temperature is not None:
            target = temperature(step)
            dynamics.set_temperature(temperature_K=target)
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
            frame.info.update(keep_info or {})
            result.frames.append(frame)
            result.frame_steps.append(step)
            result.energies.append(float(work.get_potential_energy()))
            result.temperatures.append(float(work.get_temperature()))
            if work.pbc.all():
                result.volumes.append(float(work.get_volume()))
            if target is not None:
                result.target_temperatures.append(target)
        if progress is not None and step % 50 == 0:
            progress(50)
    if progress is not None:
        progress(result.steps_done % 50)
    result.wall_time = time.perf_counter() - start
    return result


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
    dynamics = langevin_dynamics(work, temperature, timestep, friction, seed)
    return run_dynamics(dynamics, steps, sample_every, monitors, check_every, progress,
                        keep_info=_charge_and_spin(atoms))


def _charge_and_spin(atoms: Atoms) -> dict:
    return {k: atoms.info[k] for k in ("charge", "spin") if k in atoms.info}


@dataclass
class MDJob:
    """One MD run for ``run_md`` / ``run_md_batched``.

    ``temperature``: K, or a piecewise-linear schedule (a list of K; see
    ``temperature_schedule``); ``pressure``: GPa for NPT (LangevinBAOAB), None for NVT
    (Langevin). Velocities start at the schedule's first temperature.
    """

    atoms: Atoms
    temperature: float | Sequence[float]
    steps: int
    pressure: float | None = None
    timestep: float = 0.5  # fs
    friction: float = 0.01  # 1/fs
    seed: int = 0
    sample_every: int = 10
    check_every: int = 1
    monitors: Sequence[Monitor] = ()
    barostat_time: float = 200.0  # fs
    hydrostatic: bool = True

    @property
    def ramp(self) -> bool:
        return not isinstance(self.temperature, int | float)

    def start_temperature(self) -> float:
        return temperature_schedule(self.temperature, self.steps)(0)


def run_md(
    job: MDJob, calculator: Calculator, progress: Callable[[int], None] | None = None
) -> MDResult:
    """Run one job with ``calculator``: NVT, NPT, with or without a temperature ramp."""
    work = job.atoms.copy()
    work.calc = calculator
    start = job.start_temperature()
    if job.pressure is None:
        dynamics = langevin_dynamics(work, start, job.timestep, job.friction, job.seed)
    else:
        dynamics = npt_dynamics(work, start, job.pressure, job.timestep, job.friction,
                                job.barostat_time, job.hydrostatic, job.seed)
    schedule = temperature_schedule(job.temperature, job.steps) if job.ramp else None
    return run_dynamics(dynamics, job.steps, job.sample_every, job.monitors, job.check_every,
                        progress, temperature=schedule, keep_info=_charge_and_spin(job.atoms))


def run_md_batched(
    jobs: Sequence[MDJob],
    predict: Predict,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 32,
) -> list[MDResult]:
    """Run many jobs in lockstep, ``batch_size`` at a time: each MD step of all running jobs
    is one ``predict`` call (see hifidata.calculators.batching). Results come in job order.

    ``progress(n)`` is called (from one thread at a time) with steps done by any job.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    def as_task(job: MDJob) -> Callable[[Calculator], MDResult]:
        return lambda calculator: run_md(job, calculator, report if progress else None)

    results: list[MDResult] = []
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        results += run_lockstep(predict, [as_task(job) for job in chunk], name="md")
    return results


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
