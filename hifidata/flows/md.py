"""`hifidata md`: production MD with any model on the batched engine (hifidata.deploy.md).

Not a Prefect flow: one process runs one batch of replicas, and a server round trip per run
would add seconds to a command people use interactively; the campaign's deploy stage, which
runs the same engine, is a flow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hifidata.errors import HifidataError
from hifidata.flows.predict import read_structures
from hifidata.flows.progress import reporter


@dataclass
class MDRun:
    """What `hifidata md` was asked to do (units: K, fs, GPa)."""

    model: str
    structure: Path
    temperatures: list[float]
    steps: int
    replicas: int = 1
    device: str | None = None
    ensemble: str = "langevin"
    timestep: float = 0.5
    pressure: float = 0.0
    friction: float = 0.01
    thermostat_time: float = 50.0
    barostat_time: float = 500.0
    every: int = 100
    out: Path | None = None
    rung: str | None = None
    seed: int = 0
    charge: int = 0


def run_md_file(run: MDRun) -> dict:
    """Check every input first (one-line HifidataError, nothing written), then run all
    replicas (structures of the file × temperatures × ``replicas`` seeds) together.

    Returns {"replicas": [per replica: structure, temperature, seed, stable, stopped, steps,
    mean_temperature_K, final_energy_eV], "atoms", "steps", "wall_time_s", "ns_per_day",
    "atom_steps_per_s", "device", "trajectory"}.
    """
    from hifidata.calculators.mlip import default_device
    from hifidata.deploy.md import MDSettings, Replica, check_replicas, md_rate, run_md
    from hifidata.deploy.potentials import load_potential
    from hifidata.deploy.trajectory import open_trajectory

    if run.steps < 1 or run.replicas < 1:
        raise HifidataError(f"--steps and --replicas must be at least 1, got {run.steps} and "
                            f"{run.replicas}")
    if not run.temperatures or min(run.temperatures) < 0:
        raise HifidataError(f"--temperature: give non-negative K, got {run.temperatures}")
    structures = read_structures(run.structure, run.charge)
    device = run.device or default_device()
    try:
        settings = MDSettings(ensemble=run.ensemble, timestep=run.timestep, friction=run.friction,
                              thermostat_time=run.thermostat_time,
                              barostat_time=run.barostat_time,
                              sample_every=run.every, check_every=min(10, run.every))
        potential = load_potential(run.model, device=device, rung=run.rung)
        plan = [(s, t, run.seed + r) for s in range(len(structures)) for t in run.temperatures
                for r in range(run.replicas)]
        replicas = [Replica(structures[s], t, seed, run.pressure) for s, t, seed in plan]
        check_replicas(potential, replicas, settings)
        writer = open_trajectory(run.out, len(replicas)) if run.out else None
    except ValueError as error:
        raise HifidataError(str(error)) from None
    atoms = sum(len(r.atoms) for r in replicas)
    bar = reporter()
    label = (f"md: {len(replicas)} × {len(structures[0])} atoms" if len(structures) == 1
             else f"md: {len(replicas)} replicas, {atoms} atoms")
    bar.start("md", label, run.steps)
    start = last = time.perf_counter()
    done = 0

    def progress(n: int) -> None:
        nonlocal done, last
        done += n
        bar.advance("md", n)
        now = time.perf_counter()
        if now - last > 1.0:  # the rate line at most once a second
            rate = md_rate(done, atoms, run.timestep, now - start)
            bar.describe("md", f"{label}: {rate['ns_per_day']:.3g} ns/day, "
                               f"{rate['atom_steps_per_s']:.3g} atom·steps/s")
            last = now

    try:
        results = run_md(potential, replicas, run.steps, settings, writer, progress)
    except ValueError as error:
        raise HifidataError(str(error)) from None
    finally:
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - start
    rate = md_rate(run.steps, atoms, run.timestep, wall)
    stable = sum(r.stable for r in results)
    bar.done("md", f"{stable}/{len(results)} stable")
    rows = []
    for (s, t, seed), result in zip(plan, results, strict=True):
        rows.append({
            "structure": s, "temperature": t, "seed": seed, "stable": result.stable,
            "stopped": result.stopped, "steps": result.steps_done,
            "mean_temperature_K": (sum(result.temperatures) / len(result.temperatures)
                                   if result.temperatures else None),
            "final_energy_eV": result.energies[-1] if result.energies else None,
        })
    return {"replicas": rows, "atoms": atoms, "steps": run.steps, "wall_time_s": wall,
            "device": device, "trajectory": str(run.out) if run.out else None, **rate}
