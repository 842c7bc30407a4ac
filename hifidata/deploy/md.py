"""The batched MD engine: many replicas advanced together in torch, one potential call per step.

Replicas may differ in structure, size, temperature (or temperature ramp), pressure and seed;
their atoms are stacked into one batch on the device (CPU or CUDA) and every MD step is one
call of a ``Potential`` (hifidata.deploy.potentials) on edges from a device neighbor list that
is rebuilt only when an atom moved more than half the skin (hifidata.deploy.neighbors).

Ensembles (``MDSettings.ensemble``), all with a time-reversible velocity-Verlet core:

- ``nve``: velocity Verlet.
- ``langevin``: BAOAB Langevin (Leimkuhler & Matthews, AMRX 2013), friction γ.
- ``csvr``: canonical sampling through velocity rescaling (Bussi, Donadio & Parrinello, JCP 126,
  014101 (2007)): the kinetic energy follows its exact canonical stochastic dynamics with time
  constant τ_T, so it samples NVT with minimal disturbance of the trajectory.
- ``npt``: CSVR plus isotropic stochastic cell rescaling (Bernetti & Bussi, JCP 153, 114107
  (2020)), a first-order barostat that samples the isothermal-isobaric volume distribution;
  periodic cells only, and the potential must give stresses.

State is float64 (positions, velocities, cells); potentials get vectors in their own dtype.
Positions are never wrapped during a run (the neighbor list takes unwrapped positions), so
bonds and diffusion stay continuous; written frames are wrapped. Every replica draws its noise
from its own generator seeded by its seed, so a replica's trajectory does not depend on which
others share its batch (up to the float rounding of batched model calls).

Monitors look every ``check_every`` steps and stop a replica (it leaves the batch, the others go
on) with the reason: two atoms closer than ``min_distance``, a covalent bond of a molecule torn
past ``bond_factor`` × its covalent length, a temperature past ``runaway_factor`` × the target,
a cell volume off by ``volume_factor``, or a non-finite energy. Units: Å, eV, fs, K, GPa.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms, units
from ase.neighborlist import natural_cutoffs, neighbor_list

from hifidata.deploy.neighbors import VerletList
from hifidata.deploy.potentials import Graph, Potential
from hifidata.deploy.trajectory import TrajectoryWriter
from hifidata.sampling.ase_md import MDResult, temperature_schedule, thermalize

ENSEMBLES = ("nve", "langevin", "csvr", "npt")


@dataclass
class MDSettings:
    """How every replica of a run moves and when it is stopped (units: fs, K, GPa, Å)."""

    ensemble: str = "langevin"
    timestep: float = 0.5  # fs
    friction: float = 0.01  # 1/fs (langevin)
    thermostat_time: float = 50.0  # fs, τ_T (csvr, npt)
    barostat_time: float = 500.0  # fs, τ_P (npt)
    compressibility: float = 0.01  # 1/GPa (npt): how fast the volume relaxes, not where to
    skin: float = 1.0  # Å, neighbor-list skin
    check_every: int = 10
    sample_every: int = 100  # frames (energy, temperature, structure) every this many steps
    min_distance: float = 0.5  # Å
    runaway_factor: float = 5.0
    bond_factor: float = 1.5
    volume_factor: float = 2.0
    fix_com: bool = True  # remove the centre-of-mass motion (no drift under random kicks)

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {self.ensemble!r}: use one of "
                             f"{', '.join(ENSEMBLES)}")
        for name in ("timestep", "friction", "thermostat_time", "barostat_time",
                     "compressibility", "check_every", "sample_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.skin < 0:
            raise ValueError(f"skin must not be negative, got {self.skin}")


@dataclass
class Replica:
    """One trajectory: its start structure, target temperature (K, or a list of K for a
    piecewise-linear ramp over the run), seed, and pressure (GPa, npt only)."""

    atoms: Atoms
    temperature: float | Sequence[float] = 300.0
    seed: int = 0
    pressure: float = 0.0


def run_md(
    potential: Potential,
    replicas: Sequence[Replica],
    steps: int,
    settings: MDSettings | None = None,
    trajectory: TrajectoryWriter | None = None,
    progress: Callable[[int], None] | None = None,
    keep_frames: bool = False,
) -> list[MDResult]:
    """Run all ``replicas`` ``steps`` steps together; one MDResult per replica, in order.

    Every ``sample_every`` steps each running replica records its potential energy,
    temperature (and volume) and, when ``trajectory`` is given or ``keep_frames``, its frame.
    ``progress(n)`` gets the steps advanced since its last call.
    """
    if steps < 0:
        raise ValueError(f"steps must not be negative, got {steps}")
    if not replicas:
        raise ValueError("no replicas to run")
    hold_freed_memory()
    batch = _Batch(potential, replicas, settings or MDSettings(), steps)
    return batch.run(steps, trajectory, progress, keep_frames)


_HELD = False

#: glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def hold_freed_memory() -> bool:
    """Keep the memory torch frees in this process instead of handing it back to the kernel.

    glibc serves every allocation above 32 MB with fresh pages from mmap and unmaps it on free,
    and trims its heap when the top is free. A 1000-atom SevenNet step allocates hundreds of
    such temporaries (edges × channels × irreps), so on CPU it spent 90 % of its time in the
    kernel on page faults: 3.3 million faults and 8.4 s per model call, 3.4 s and no fault with
    mmap and trimming off (2 threads). The process keeps its peak memory, which an MD process
    needs again the next step anyway. Applied once per process; glibc only (returns False
    where there is none, and nothing changes).
    """
    global _HELD
    if _HELD:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        # a trim threshold of −1 is SIZE_MAX for glibc: never trim
        _HELD = bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):
        _HELD = False
    return _HELD


class _Batch:
    """The stacked state of the replicas still running, and the steps that move it."""

    def __init__(self, potential: Potential, replicas: Sequence[Replica],
                 settings: MDSettings, steps: int):
        self.potential, self.settings, self.replicas = potential, settings, list(replicas)
        device = potential.device
        check_replicas(potential, self.replicas, settings)
        self.schedules = [temperature_schedule(r.temperature, steps) for r in self.replicas]
        starts = [_start_velocities(r, self.schedules[k](0), settings.fix_com)
                  for k, r in enumerate(self.replicas)]
        f64 = dict(dtype=torch.float64, device=device)
        cat = np.concatenate
        self.numbers = torch.tensor(cat([r.atoms.numbers for r in self.replicas]),
                                    dtype=torch.int64, device=device)
        self.masses = torch.tensor(cat([r.atoms.get_masses() for r in self.replicas]),
                                   **f64)[:, None]
        self.positions = torch.tensor(cat([r.atoms.positions for r in self.replicas]), **f64)
        self.velocities = torch.tensor(cat(starts), **f64)
        self.cells = torch.tensor(np.stack([r.atoms.cell[:] for r in self.replicas]), **f64)
        self.pbc = torch.tensor(np.stack([r.atoms.pbc for r in self.replicas]),
                                dtype=torch.bool, device=device)
        sizes = [len(r.atoms) for r in self.replicas]
        self.system = torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                              torch.tensor(sizes, device=device))
        self.index = list(range(len(self.replicas)))  # replica of each running system
        self.dof_list = [_degrees_of_freedom(r.atoms, settings) for r in self.replicas]
        self.dof = torch.tensor(self.dof_list, **f64)
        self.pressures = torch.tensor([r.pressure * units.GPa for r in self.replicas], **f64)
        self.volumes0 = torch.linalg.det(self.cells).abs()
        self.generators = [torch.Generator(device=device).manual_seed(r.seed)
                           for r in self.replicas]
        self.bonds = _bonds(self.replicas, settings.bond_factor, device)
        cutoff = potential.cutoff if potential.cutoff > 0 else 2 * settings.min_distance + 1.0
        self.neighbors = VerletList(cutoff, settings.skin)
        self.dt = settings.timestep * units.fs
        self.stress_needed = settings.ensemble == "npt"
        self.graph: Graph | None = None
        self.keep: torch.Tensor | None = None  # systems kept by the last stop(), None: all

    # -- the run ---------------------------------------------------------------------------
    def run(self, steps: int, trajectory: TrajectoryWriter | None,
            progress: Callable[[int], None] | None, keep_frames: bool) -> list[MDResult]:
        results = [MDResult() for _ in self.replicas]
        ramps = any(not isinstance(r.temperature, int | float) for r in self.replicas)
        start, reported = time.perf_counter(), 0
        self.evaluate()
        targets = self.targets(0)
        for step in range(1, steps + 1):
            if ramps:
                targets = self.targets(step)
            self.advance(targets)
            for k in self.index:
                results[k].steps_done = step
            sample = step % self.settings.sample_every == 0
            if sample or step % self.settings.check_every == 0:
                self.stop(self.check(step, targets), results, start)
                targets = targets[self.keep] if self.keep is not None else targets
            if sample and self.index:
                self.sample(step, targets, results, trajectory, keep_frames)
            if progress is not None and (step % 10 == 0 or step == steps):
                progress(step - reported)
                reported = step
            if not self.index:
                break
        elapsed = time.perf_counter() - start
        for k in self.index:
            results[k].wall_time = elapsed
        return results

    def targets(self, step: int) -> torch.Tensor:
        values = [self.schedules[k](step) for k in self.index]
        return torch.tensor(values, dtype=torch.float64, device=self.positions.device)

    def advance(self, targets: torch.Tensor) -> None:
        ensemble, half = self.settings.ensemble, 0.5 * self.dt
        self.velocities += half * self.forces / self.masses
        if ensemble == "langevin":
            self.positions += half * self.velocities
            self.langevin_kick(targets)
            self.positions += half * self.velocities
        else:
            if ensemble == "npt":
                self.rescale_cells(targets)
            self.positions += self.dt * self.velocities
        self.evaluate()
        self.velocities += half * self.forces / self.masses
        if ensemble in ("csvr", "npt"):
            self.rescale_velocities(targets)

    def evaluate(self) -> None:
        i, j, shifts, vectors = self.neighbors.edges(self.positions, self.cells, self.pbc,
                                                     self.system)
        self.graph = Graph(self.numbers, self.positions, self.cells, self.pbc, self.system,
                           i, j, shifts, vectors)
        out = self.potential(self.graph, stress=self.stress_needed)
        self.energy = out.energy.detach().double()
        self.forces = out.forces.detach().double()
        self.stress = None if out.stress is None else out.stress.detach().double()

    # -- thermostats and barostat ----------------------------------------------------------
    def langevin_kick(self, targets: torch.Tensor) -> None:
        """The O step: v ← c v + √((1 − c²) kT/m) ξ, c = exp(−γ dt), exact for the friction."""
        c = math.exp(-self.settings.friction / units.fs * self.dt)
        kt = (units.kB * targets)[self.system][:, None]
        noise = self.normals([(n, 3) for n in self.counts])
        self.velocities = c * self.velocities + torch.sqrt((1 - c * c) * kt / self.masses) * noise
        if self.settings.fix_com:
            self.remove_drift()

    def rescale_velocities(self, targets: torch.Tensor) -> None:
        """CSVR: draw the kinetic energy of the next step from its exact canonical stochastic
        dynamics (Bussi et al. 2007, their appendix), then scale every velocity to it."""
        kinetic = self.kinetic()
        dof = self.dof.clamp(min=1)
        target = 0.5 * dof * units.kB * targets
        c = math.exp(-self.dt / (self.settings.thermostat_time * units.fs))
        draws = [self.generator_normals(k, n) for k, n in enumerate(self.dof_counts)]
        r1 = torch.stack([d[0] for d in draws])
        rest = torch.stack([(d[1:] ** 2).sum() for d in draws])
        new = (kinetic + (1 - c) * (target * (rest + r1 * r1) / dof - kinetic)
               + 2 * r1 * torch.sqrt((kinetic * target / dof * (1 - c) * c).clamp(min=0)))
        alpha = torch.where(kinetic > 0, torch.sqrt(new.clamp(min=0) / kinetic.clamp(min=1e-300)),
                            torch.ones_like(kinetic))
        self.velocities *= alpha[self.system][:, None]

    def rescale_cells(self, targets: torch.Tensor) -> None:
        """Isotropic stochastic cell rescaling (Bernetti & Bussi 2020, eq. 3 with ε = ln V):
        dε = −(β/τ_P)(P₀ − P − kT/V) dt + √(2kTβ dt/(V τ_P)) R; positions and cells scale
        by exp(dε/3), velocities by its inverse. P is the last step's (virial + kinetic)."""
        volume = torch.linalg.det(self.cells).abs()
        kt = units.kB * targets
        pressure = (2 * self.kinetic() / 3 - torch.diagonal(self.stress, dim1=1, dim2=2)
                    .sum(-1) * volume / 3) / volume
        beta = self.settings.compressibility / units.GPa
        tau = self.settings.barostat_time * units.fs
        noise = torch.stack([self.generator_normals(k, 1)[0] for k in range(len(self.index))])
        d_eps = (-(beta / tau) * (self.pressures - pressure - kt / volume) * self.dt
                 + torch.sqrt(2 * kt * beta * self.dt / (volume * tau)) * noise)
        scale = torch.exp(d_eps / 3)
        self.positions *= scale[self.system][:, None]
        self.cells *= scale[:, None, None]
        self.velocities /= scale[self.system][:, None]

    # -- per-system quantities -------------------------------------------------------------
    @property
    def counts(self) -> list[int]:
        """Atoms per running system (host ints: no device sync per step)."""
        return [len(self.replicas[k].atoms) for k in self.index]

    @property
    def dof_counts(self) -> list[int]:
        return [self.dof_list[k] for k in self.index]

    def per_system(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(self.index), *values.shape[1:], dtype=values.dtype,
                          device=values.device)
        return out.index_add(0, self.system, values)

    def kinetic(self) -> torch.Tensor:
        return 0.5 * self.per_system((self.masses * self.velocities**2).sum(-1))

    def temperatures(self) -> torch.Tensor:
        return 2 * self.kinetic() / (self.dof.clamp(min=1) * units.kB)

    def remove_drift(self) -> None:
        momentum = self.per_system(self.masses * self.velocities)
        mass = self.per_system(self.masses)
        self.velocities -= (momentum / mass)[self.system]

    def normals(self, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Standard normals for every running system from its own generator, stacked."""
        return torch.cat([
            torch.randn(shape, generator=self.generators[k], dtype=torch.float64,
                        device=self.positions.device)
            for k, shape in enumerate(shapes)
        ])

    def generator_normals(self, k: int, n: int) -> torch.Tensor:
        return torch.randn(n, generator=self.generators[k], dtype=torch.float64,
                           device=self.positions.device)

    # -- monitors --------------------------------------------------------------------------
    def check(self, step: int, targets: torch.Tensor) -> dict[int, str]:
        """{running system: why it stops} for every system a monitor stops now."""
        s = self.settings
        reasons: dict[int, str] = {}
        finite = torch.isfinite(self.energy) & torch.isfinite(
            self.per_system(self.forces.abs().sum(-1)))
        for b in torch.nonzero(~finite).flatten().tolist():
            reasons[b] = "non-finite energy or forces"
        graph = self.graph
        distances = torch.linalg.norm(graph.vectors, dim=-1)
        if len(distances):
            nearest = torch.full((len(self.index),), math.inf, dtype=distances.dtype,
                                 device=distances.device)
            nearest = nearest.scatter_reduce(0, self.system[graph.i], distances, "amin")
            for b in torch.nonzero(nearest < s.min_distance).flatten().tolist():
                edge = int(torch.argmin(torch.where(self.system[graph.i] == b, distances,
                                                    math.inf)))
                a1, a2 = (int(x) - self.first_atom(b) for x in (graph.i[edge], graph.j[edge]))
                reasons.setdefault(b, f"close contact: atoms {a1} and {a2} at "
                                      f"{float(distances[edge]):.3f} Å (< {s.min_distance} Å)")
        self.check_bonds(reasons)
        temperature = self.temperatures()
        runaway = (targets > 0) & (temperature > s.runaway_factor * targets)
        for b in torch.nonzero(runaway).flatten().tolist():
            reasons.setdefault(b, f"temperature runaway: {float(temperature[b]):.0f} K "
                                  f"(> {s.runaway_factor:g} × {float(targets[b]):g} K)")
        if self.settings.ensemble == "npt":
            ratio = torch.linalg.det(self.cells).abs() / self.volumes0
            for b in torch.nonzero((ratio > s.volume_factor) | (ratio < 1 / s.volume_factor)
                                   ).flatten().tolist():
                reasons.setdefault(b, f"cell volume change: V/V0 = {float(ratio[b]):.2f} "
                                      f"(outside 1/{s.volume_factor:g} … {s.volume_factor:g})")
        return {b: f"step {step}: {reason}" for b, reason in reasons.items()}

    def check_bonds(self, reasons: dict[int, str]) -> None:
        first, second, limits = self.bonds
        if not len(first):
            return
        lengths = torch.linalg.norm(self.positions[second] - self.positions[first], dim=-1)
        for bond in torch.nonzero(lengths > limits).flatten().tolist():
            b = int(self.system[first[bond]])
            a1, a2 = int(first[bond]), int(second[bond])
            z1, z2 = (Atoms(numbers=[int(self.numbers[a])]).get_chemical_symbols()[0]
                      for a in (a1, a2))
            offset = self.first_atom(b)
            reasons.setdefault(b, f"bond {z1}{a1 - offset}–{z2}{a2 - offset} broke: "
                                  f"{float(lengths[bond]):.2f} Å (> {float(limits[bond]):.2f} Å)")

    def first_atom(self, b: int) -> int:
        return sum(self.counts[:b])

    def stop(self, reasons: dict[int, str], results: list[MDResult], start: float) -> None:
        """Record why, and take the stopped systems out of the batch."""
        self.keep = None
        if not reasons:
            return
        elapsed = time.perf_counter() - start
        for b, reason in reasons.items():
            results[self.index[b]].stopped = reason
            results[self.index[b]].wall_time = elapsed
        keep = torch.ones(len(self.index), dtype=torch.bool, device=self.positions.device)
        keep[list(reasons)] = False
        self.drop(keep)

    def drop(self, keep: torch.Tensor) -> None:
        atoms = keep[self.system]
        renumber = torch.cumsum(keep, 0) - 1
        new_atom = torch.cumsum(atoms, 0) - 1
        for name in ("numbers", "masses", "positions", "velocities", "forces"):
            setattr(self, name, getattr(self, name)[atoms])
        self.system = renumber[self.system[atoms]]
        for name in ("cells", "pbc", "dof", "pressures", "volumes0", "energy"):
            setattr(self, name, getattr(self, name)[keep])
        if self.stress is not None:
            self.stress = self.stress[keep]
        kept = keep.tolist()
        self.index = [k for k, ok in zip(self.index, kept, strict=True) if ok]
        self.generators = [g for g, ok in zip(self.generators, kept, strict=True) if ok]
        first, second, limits = self.bonds
        bond_kept = atoms[first] if len(first) else first.bool()
        self.bonds = (new_atom[first[bond_kept]], new_atom[second[bond_kept]], limits[bond_kept])
        self.keep = keep
        if self.index:
            self.evaluate()  # the graph of the smaller batch, for the next monitors

    # -- output ----------------------------------------------------------------------------
    def sample(self, step: int, targets: torch.Tensor, results: list[MDResult],
               trajectory: TrajectoryWriter | None, keep_frames: bool) -> None:
        energies = self.energy.tolist()
        temperatures = self.temperatures().tolist()
        volumes = torch.linalg.det(self.cells).abs().tolist()
        frames = self.frames(step, energies, temperatures) if (trajectory or keep_frames) else None
        for b, k in enumerate(self.index):
            result = results[k]
            result.frame_steps.append(step)
            result.energies.append(energies[b])
            result.temperatures.append(temperatures[b])
            result.target_temperatures.append(float(targets[b]))
            if self.replicas[k].atoms.pbc.all():
                result.volumes.append(volumes[b])
            if frames is not None:
                if trajectory is not None:
                    trajectory.write(k, frames[b])
                if keep_frames:
                    result.frames.append(frames[b])

    def frames(self, step: int, energies: list[float], temperatures: list[float]
               ) -> list[Atoms]:
        bounds = np.cumsum(self.counts)[:-1]
        positions = np.split(self.positions.cpu().numpy(), bounds)
        velocities = np.split(self.velocities.cpu().numpy(), bounds)
        cells = self.cells.cpu().numpy()
        frames = []
        for b, k in enumerate(self.index):
            start = self.replicas[k].atoms
            frame = Atoms(start.numbers, positions[b], cell=cells[b], pbc=start.pbc,
                          velocities=velocities[b])
            if frame.pbc.any():
                frame.wrap()
            frame.info.update({k2: start.info[k2] for k2 in ("charge", "spin")
                               if k2 in start.info})
            frame.info.update({"step": step, "time_fs": step * self.settings.timestep,
                               "energy": energies[b], "temperature_K": temperatures[b],
                               "replica": k, "seed": self.replicas[k].seed})
            frames.append(frame)
        return frames


def check_replicas(potential: Potential, replicas: Sequence[Replica],
                   settings: MDSettings) -> None:
    """ValueError naming the first replica the engine cannot run (run_md checks this too)."""
    for k, replica in enumerate(replicas):
        atoms = replica.atoms
        if len(atoms) == 0:
            raise ValueError(f"replica {k} has no atoms")
        if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-9:
            raise ValueError(f"replica {k} is periodic but has no cell")
        if settings.ensemble == "npt" and not atoms.pbc.all():
            raise ValueError(f"replica {k} ({atoms.get_chemical_formula()}): NPT needs a "
                             "periodic structure (pbc on all three axes, with a cell)")
    potential.check_species({int(z) for r in replicas for z in r.atoms.numbers})


def _start_velocities(replica: Replica, temperature: float, fix_com: bool) -> np.ndarray:
    """Maxwell–Boltzmann velocities (Å/ASE time) from the replica's seed: no drift, and for a
    molecule no spin, when the centre of mass is fixed; velocities the structure already has
    are kept."""
    atoms = replica.atoms
    if atoms.get_velocities() is not None and np.any(atoms.get_velocities()):
        return atoms.get_velocities()
    work = atoms.copy()
    rng = np.random.default_rng(replica.seed)
    if fix_com:
        thermalize(work, temperature, rng)
    else:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(work, temperature_K=temperature, rng=rng)
    return work.get_velocities()


def _degrees_of_freedom(atoms: Atoms, settings: MDSettings) -> int:
    """3N, less 3 with the centre of mass fixed, less 3 more for a molecule whose (zero)
    angular momentum a deterministic thermostat keeps (Langevin kicks rotate it)."""
    dof = 3 * len(atoms)
    if settings.fix_com:
        dof -= 3
        if (not atoms.pbc.any() and settings.ensemble in ("nve", "csvr")
                and len(atoms) > 2):
            dof -= 3
    return max(dof, 1)


def _bonds(replicas: Sequence[Replica], factor: float, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covalent bonds of the molecules (global atom indices) and their break lengths. Solids
    are left out: atoms change partners there (diffusion, melting) without anything wrong."""
    first, second, limits, offset = [], [], [], 0
    for replica in replicas:
        atoms = replica.atoms
        if not atoms.pbc.any() and len(atoms) > 1:
            radii = np.array(natural_cutoffs(atoms))
            i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
            pairs = i < j
            first += (i[pairs] + offset).tolist()
            second += (j[pairs] + offset).tolist()
            limits += (factor * (radii[i[pairs]] + radii[j[pairs]])).tolist()
        offset += len(atoms)
    return (torch.tensor(first, dtype=torch.int64, device=device),
            torch.tensor(second, dtype=torch.int64, device=device),
            torch.tensor(limits, dtype=torch.float64, device=device))


def md_rate(steps: int, atoms: int, timestep: float, seconds: float) -> dict[str, float]:
    """Speed of a run: ns/day of simulated time (per replica) and atom-steps per second."""
    if seconds <= 0:
        return {"ns_per_day": math.nan, "atom_steps_per_s": math.nan}
    return {"ns_per_day": steps * timestep * 1e-6 * 86400 / seconds,
            "atom_steps_per_s": steps * atoms / seconds}
