"""P5: the batched MD engine against the same model through its ASE calculator and ASE's
integrator, and the engine's cost per step against the number of atoms.

P5 table: Langevin NVT (300 K, 0.5 fs) of diamond Si, 1, 8 and 64 replicas of the 8-atom
cubic cell and one 1000-atom cell (5×5×5 cubic cells), side by side in one run:

- ASE: the model's own ASE calculator (sevenn's ``SevenNetCalculator`` for SevenNet,
  chgnet's ``CHGNetCalculator`` for CHGNet) with ``ase.md.langevin.Langevin``, one replica
  after another (that is how an ASE user runs 64 replicas; the rate does not depend on the
  count, so at most ``--ase-replicas`` of them are timed);
- engine: hifidata.deploy.md.run_md, all replicas in one batch, one model call per step.

Rates are atom·steps per second over ``--steps`` steps after a warm-up of 3 steps (for the
engine: the time of 3 + steps steps less that of 3, so each run's set-up is not counted).

Scaling table: one replica of n×n×n cubic Si cells (8n³ atoms), engine time per step and the
time of one neighbor-list build, up to ``--max-atoms`` (0: no scaling table).

    .venv/bin/python benchmarks/md_engine.py [--models 7net-0 chgnet-0.3.0] [--steps 20]
                                             [--repeats 1]
                                             [--device cpu] [--threads N] [--max-atoms 4096]

Measured numbers: docs/md.md and the closing note of the MD-engine issue.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin

from hifidata.deploy.md import MDSettings, Replica, hold_freed_memory, run_md
from hifidata.deploy.neighbors import neighbor_pairs
from hifidata.deploy.potentials import load_potential
from hifidata.sampling.ase_md import thermalize

WARMUP = 3


def silicon(repeat: int, seed: int = 0):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=seed)
    return atoms


def ase_calculator(model: str, device: str):
    if model.startswith("7net"):
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(model, device=device)
    from chgnet.model import CHGNetCalculator

    return CHGNetCalculator(use_device=device)


def ase_rate(model: str, device: str, structure, replicas: int, steps: int) -> float:
    """atom·steps/s of ASE Langevin + the model's ASE calculator, replicas one at a time."""
    calculator = ase_calculator(model, device)
    elapsed = 0.0
    for seed in range(replicas):
        atoms = structure.copy()
        atoms.calc = calculator
        rng = np.random.default_rng(seed)
        thermalize(atoms, 300.0, rng)
        dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=300.0,
                            friction=0.01 / units.fs, fixcm=False, rng=rng)
        dynamics.run(WARMUP)
        start = time.perf_counter()
        dynamics.run(steps)
        elapsed += time.perf_counter() - start
    return steps * len(structure) * replicas / elapsed


def engine_rate(potential, structure, replicas: int, steps: int, warmup: int = WARMUP
                ) -> float:
    """atom·steps/s of the engine, all replicas in one batch. A run's set-up (first model
    call, neighbor list) is not a step: the time of ``warmup`` steps is subtracted from the
    time of ``warmup + steps`` (ASE's first call is likewise outside its timed steps)."""
    settings = MDSettings(ensemble="langevin", timestep=0.5, sample_every=10**9,
                          check_every=10)
    batch = [Replica(structure, 300.0, seed=s) for s in range(replicas)]
    run_md(potential, batch, 1, settings)  # first-call costs (allocations, lazy imports)
    timed = []
    for n in (warmup, warmup + steps):
        start = time.perf_counter()
        run_md(potential, batch, n, settings)
        timed.append(time.perf_counter() - start)
    return steps * len(structure) * replicas / (timed[1] - timed[0])


def neighbor_time(structure, cutoff: float, device: str) -> float:
    tensors = dict(dtype=torch.float64, device=device)
    args = (torch.tensor(structure.positions, **tensors),
            torch.tensor(structure.cell[:], **tensors)[None],
            torch.tensor(structure.pbc, device=device)[None],
            torch.zeros(len(structure), dtype=torch.int64, device=device), cutoff + 1.0)
    neighbor_pairs(*args)
    start = time.perf_counter()
    neighbor_pairs(*args)
    return time.perf_counter() - start


def p5(model: str, args) -> None:
    potential = load_potential(model, device=args.device)
    cases = [("Si 8-atom cell", silicon(1), r) for r in (1, 8, 64)]
    cases.append(("Si 1000-atom cell", silicon(5), 1))
    for name, structure, replicas in cases:
        steps = args.steps if len(structure) < 1000 else max(3, args.steps // 4)
        # best of --repeats, the two interleaved: this box's load moves single runs by ±20 %
        ase = engine = 0.0
        for _ in range(args.repeats):
            ase = max(ase, ase_rate(model, args.device, structure,
                                    min(replicas, args.ase_replicas), steps))
            engine = max(engine, engine_rate(potential, structure, replicas, steps))
        print(f"{model:14s} {name:18s} {replicas:8d} {len(structure):14d} {ase:17.0f} "
              f"{engine:20.0f} {engine / ase:6.2f}×", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["7net-0", "chgnet-0.3.0"],
                        help="P5 for each; the scaling table for the first")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ase-replicas", type=int, default=4)
    parser.add_argument("--max-atoms", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1, help="P5: best of this many")
    parser.add_argument("--skip-p5", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # sevenn: "no tensor product accelerator" per calculator
    if args.threads:
        torch.set_num_threads(args.threads)
    # the engine holds freed memory (hifidata.deploy.md.hold_freed_memory) in its process; do it
    # before anything runs, so the ASE path gets the same allocator and the ratio is the engine's
    held = hold_freed_memory()
    print(f"freed memory held for both paths: {held}")
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.steps} steps "
          f"(+{WARMUP} warm-up)")
    if not args.skip_p5:
        print("\nmodel          case               replicas  atoms/replica  ASE atom·steps/s  "
              "engine atom·steps/s  ratio")
        for model in args.models:
            p5(model, args)
    if args.max_atoms < 8:
        return
    model = args.models[0]
    potential = load_potential(model, device=args.device)
    print(f"\nscaling, {model}: one replica")
    print("atoms  engine ms/step  µs/atom/step  neighbor build ms")
    n = 1
    while 8 * n**3 <= args.max_atoms:
        structure = silicon(n)
        steps = max(2, min(args.steps, 4000 // len(structure)))
        rate = engine_rate(potential, structure, 1, steps, warmup=1)
        build = neighbor_time(structure, potential.cutoff, args.device)
        print(f"{len(structure):5d} {1000 * len(structure) / rate:15.1f} "
              f"{1e6 / rate:13.1f} {1000 * build:18.1f}", flush=True)
        n += 1


if __name__ == "__main__":
    main()
