"""MD stability of a model: seeded Langevin runs at several temperatures, and when they fail.

A model that fits forces well can still drive MD into unphysical places (atoms fused, a bond
torn, a runaway temperature). ``md_stability`` runs ``replicas`` seeded NVT runs per start
structure and temperature in lockstep (one model call per step for all of them) and records
each run's time to failure on the batched MD engine (hifidata.deploy.md); ``stability_plot``
draws them. Times ps, temperatures K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from hifidata import plots
from hifidata.deploy.md import MDSettings, Replica, run_md
from hifidata.deploy.potentials import potential_for
from hifidata.training.models import Model


@dataclass
class StabilityRun:
    """One Langevin run of a stability test; times in ps."""

    structure: int  # index of the start structure
    temperature: float  # K
    seed: int
    stable: bool
    stopped: str | None  # the monitor's reason, None when it ran to the end
    steps_done: int
    simulated_ps: float
    time_to_failure_ps: float | None  # None when stable
    mean_temperature_K: float | None = None


@dataclass
class StabilityResult:
    """All runs of ``md_stability``, and their summary per temperature."""

    runs: list[StabilityRun]
    steps: int  # the run length asked for
    timestep: float  # fs

    @property
    def run_length_ps(self) -> float:
        return self.steps * self.timestep / 1000

    def summary(self) -> dict[float, dict[str, float | int | None]]:
        """Per temperature (K): runs, stable count and fraction, mean and min time to failure
        (ps) of the runs that failed (None if none did), and total simulated ps."""
        table = {}
        for temperature in sorted({run.temperature for run in self.runs}):
            runs = [run for run in self.runs if run.temperature == temperature]
            failures = [run.time_to_failure_ps for run in runs if not run.stable]
            stable = sum(run.stable for run in runs)
            table[temperature] = {
                "runs": len(runs),
                "stable": stable,
                "fraction_stable": stable / len(runs),
                "mean_time_to_failure_ps": float(np.mean(failures)) if failures else None,
                "min_time_to_failure_ps": float(np.min(failures)) if failures else None,
                "simulated_ps": float(sum(run.simulated_ps for run in runs)),
            }
        return table


def md_stability(
    model: Model,
    structures: Sequence[Atoms],
    temperatures: Sequence[float],
    replicas: int = 4,
    steps: int = 2000,
    timestep: float = 0.5,
    friction: float = 0.01,
    min_distance: float = 0.6,
    seed: int = 0,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> StabilityResult:
    """Langevin NVT runs with ``model`` from every structure at every temperature (K),
    ``replicas`` seeds each (``seed``, ``seed`` + 1, ...), all in one batch with one model call
    per step (``batch_size`` runs at a time). Timestep in fs, friction in 1/fs.

    A run fails when a monitor stops it: two atoms closer than ``min_distance`` Å, a covalent
    bond of a molecule broken, or the temperature past 5 × the target. A model that is stable
    at a temperature for ``replicas`` × ``steps`` says more than one lucky trajectory.
    """
    if replicas < 1 or steps < 1:
        raise ValueError(f"replicas and steps must be at least 1, got {replicas} and {steps}")
    if not structures or not temperatures:
        raise ValueError(f"nothing to run: {len(structures)} structures, "
                         f"{len(temperatures)} temperatures")
    plan = [(s, float(t), seed + r) for s in range(len(structures)) for t in temperatures
            for r in range(replicas)]
    settings = MDSettings(ensemble="langevin", timestep=timestep, friction=friction,
                          min_distance=min_distance, sample_every=max(1, steps // 50),
                          check_every=min(10, max(1, steps // 50)))
    potential = potential_for(model)
    results = []
    for first in range(0, len(plan), batch_size):
        chunk = [Replica(structures[s], t, seed=run_seed)
                 for s, t, run_seed in plan[first : first + batch_size]]
        results += run_md(potential, chunk, steps, settings, progress=_per_run(progress, chunk))
    runs = []
    for (s, t, run_seed), result in zip(plan, results, strict=True):
        simulated = result.steps_done * timestep / 1000
        runs.append(StabilityRun(
            structure=s, temperature=t, seed=run_seed, stable=result.stable,
            stopped=result.stopped, steps_done=result.steps_done, simulated_ps=simulated,
            time_to_failure_ps=None if result.stable else simulated,
            mean_temperature_K=float(np.mean(result.temperatures))
            if result.temperatures else None,
        ))
    return StabilityResult(runs, steps, timestep)


def _per_run(progress: Callable[[int], None] | None, chunk: list
             ) -> Callable[[int], None] | None:
    """Progress in run-steps: as many per MD step as runs in the batch."""
    if progress is None:
        return None
    return lambda n: progress(n * len(chunk))


def stability_plot(result: StabilityResult, path: str | Path) -> Path:
    """Time to failure of every run against temperature: failed runs as crosses at the time a
    monitor stopped them, stable runs as open triangles at the run length (they lasted at
    least that long), a color per start structure."""
    if not result.runs:
        raise ValueError("stability_plot needs at least one run")
    plt = plots.pyplot()
    figure, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    temperatures = sorted({run.temperature for run in result.runs})
    spacing = np.min(np.diff(temperatures)) if len(temperatures) > 1 else 100.0
    structures = sorted({run.structure for run in result.runs})
    seeds = sorted({run.seed for run in result.runs})
    labeled = set()
    for run in result.runs:
        # spread the replicas sideways so they do not hide each other
        shift = seeds.index(run.seed) - (len(seeds) - 1) / 2 + 0.3 * structures.index(run.structure)
        x = run.temperature + spacing * 0.04 * shift
        color = colors[structures.index(run.structure) % len(colors)]
        key = (run.structure, run.stable)
        label = f"structure {run.structure} {'stable' if run.stable else 'failed'}"
        if run.stable:
            ax.scatter(x, result.run_length_ps, marker="^", facecolors="none", edgecolors=color,
                       s=50, label=None if key in labeled else label)
        else:
            ax.scatter(x, run.time_to_failure_ps, marker="x", color=color, s=50,
                       label=None if key in labeled else label)
        labeled.add(key)
    ax.axhline(result.run_length_ps, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(temperatures)
    ax.set_xlim(temperatures[0] - spacing / 2, temperatures[-1] + spacing / 2)
    ax.set_xlabel("temperature [K]")
    ax.set_ylabel("time to failure [ps]")
    ax.set_ylim(0, result.run_length_ps * 1.12)
    ax.set_title(f"MD stability ({result.run_length_ps:g} ps runs; △ stable, × failed)")
    ax.legend(fontsize=8)
    return plots.save(figure, path)
