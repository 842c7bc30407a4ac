"""The batched MD engine against torch-sim on a model both support: Lennard-Jones argon.

torch-sim is not a hifidata dependency: its current releases need Python 3.12, and the last
one that installs on 3.11 is torch-sim-atomistic 0.3.0. Its SevenNet wrapper does not load with
the installed sevenn (it imports ``sevenn.calculator.torch_script_type``, which sevenn no
longer has), so the model both run is its analytic Lennard-Jones, float64, the same parameters.
Run this in an environment that has torch-sim next to hifidata's, e.g.::

    python -m venv --system-site-packages /tmp/tsenv
    /tmp/tsenv/bin/pip install torch-sim-atomistic==0.3.0 -c constraints.txt
    echo "$PWD/.venv/lib/python3.11/site-packages" \
        > /tmp/tsenv/lib/python3.11/site-packages/hifidata.pth
    /tmp/tsenv/bin/python benchmarks/md_vs_torchsim.py [--steps 200] [--threads N]

Both run Langevin NVT at 300 K with a 1 fs step for the same replicas, all in one batch (one
model call per step); rates are atom·steps per second, the time of 3 + N steps less that of
3 (each code's set-up is not a step).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from ase.build import bulk

from hifidata.deploy.md import MDSettings, Replica, run_md
from hifidata.deploy.potentials import LennardJones

WARMUP = 3
ARGON = {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5}


def structures(replicas: int, repeat: int) -> list:
    base = bulk("Ar", "fcc", 5.26, cubic=True).repeat(repeat)
    out = []
    for seed in range(replicas):
        atoms = base.copy()
        atoms.rattle(0.02, seed=seed)
        out.append(atoms)
    return out


def rate(run, atoms: int, steps: int) -> float:
    """atom·steps/s of ``run(n)``: the time of WARMUP + steps steps less that of WARMUP, so
    neither code's set-up (state, first call, neighbor list) counts as a step."""
    run(1)
    timed = []
    for n in (WARMUP, WARMUP + steps):
        start = time.perf_counter()
        run(n)
        timed.append(time.perf_counter() - start)
    return steps * atoms / (timed[1] - timed[0])


def hifidata_run(potential, systems: list):
    settings = MDSettings(ensemble="langevin", timestep=1.0, sample_every=10**9)
    replicas = [Replica(a, 300.0, seed=k) for k, a in enumerate(systems)]
    return lambda n: run_md(potential, replicas, n, settings)


def torchsim_run(model, systems: list):
    import torch_sim as ts

    return lambda n: ts.integrate(system=systems, model=model, integrator=ts.nvt_langevin,
                                  n_steps=n, temperature=300.0, timestep=0.001)  # ps


def torchsim_lennard_jones():
    from torch_sim.models.lennard_jones import LennardJonesModel

    return LennardJonesModel(sigma=ARGON["sigma"], epsilon=ARGON["epsilon"],
                             cutoff=ARGON["cutoff"], device=torch.device("cpu"),
                             dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, {args.steps} steps (+{WARMUP} warm-up), "
          "CPU")
    print("model         replicas  atoms/replica  torch-sim atom·steps/s  "
          "hifidata atom·steps/s  ratio")
    for replicas, repeat in ((1, 2), (8, 2), (64, 2), (1, 7)):
        systems = structures(replicas, repeat)
        atoms = sum(len(a) for a in systems)
        rate_ts = rate(torchsim_run(torchsim_lennard_jones(), systems), atoms, args.steps)
        rate_hd = rate(hifidata_run(LennardJones(**ARGON), systems), atoms, args.steps)
        print(f"{'LJ argon':13s} {replicas:8d} {len(systems[0]):14d} {rate_ts:23.0f} "
              f"{rate_hd:22.0f} {rate_hd / rate_ts:6.2f}×", flush=True)

if __name__ == "__main__":
    main()
