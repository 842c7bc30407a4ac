"""What running CP2K through hifidata costs, measured side by side on the same inputs.

For ``--n`` rattled Si cells (the 2-atom primitive cell, or the 8-atom cubic one), three ways
to get energy and forces, interleaved per cell so that the machine's state is the same for all
three:

- ``label``: hifidata's ``label()`` (input generation, one ``cp2k`` process, parsing, scratch)
- ``bare``: ``cp2k -i same.inp`` on the very input file ``label`` writes (the floor for one
  process per label)
- ``shell``: one ``cp2k_shell`` process kept alive for all cells (LOAD once, then SET_POS /
  EVAL_EF / GET_E / GET_F per cell; CP2K starts each SCF from the previous cell's wavefunction)

Usage: ``python benchmarks/cp2k_costs.py [--n 20] [--atoms 2|8] [--cutoff 250] [--kpoints 2]``
(one thread per CP2K process; prints a table of times and ratios).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.units import Hartree

from hifidata.calculators import cp2k
from hifidata.calculators.base import Method, label
from hifidata.structures import with_charge_and_spin


def cells(n: int, size: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        crystal = bulk("Si", "diamond", a=5.43, cubic=size == 8)
        atoms = with_charge_and_spin(crystal, 0, 1)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        yield atoms


class Shell:
    """A minimal cp2k_shell driver (the protocol of ase/calculators/cp2k.py)."""

    def __init__(self, cwd: Path, program: str = "cp2k_shell.psmp") -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [program],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.expect_ready()
        self.send("UNITS_EV_A")
        self.expect_ready()

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def recv(self) -> str:
        return self.process.stdout.readline().strip()

    def expect_ready(self) -> None:
        while (line := self.recv()) != "* READY":
            if not line and self.process.poll() is not None:
                raise RuntimeError("cp2k_shell exited")

    def load(self, inp: Path) -> int:
        self.send(f"LOAD {inp} {inp.with_suffix('.out')}")
        env_id = int(self.recv())
        self.expect_ready()
        return env_id

    def energy_forces(self, env_id: int, positions: np.ndarray) -> tuple[float, np.ndarray]:
        self.send(f"SET_POS {env_id}")
        self.send(str(positions.size))
        for row in positions:
            self.send(" ".join(f"{x:.18e}" for x in row))
        self.send("*END")
        self.recv()  # largest change of a coordinate
        self.expect_ready()
        self.send(f"EVAL_EF {env_id}")
        self.expect_ready()
        self.send(f"GET_E {env_id}")
        energy = float(self.recv())
        self.expect_ready()
        self.send(f"GET_F {env_id}")
        values = [float(x) for _ in range(int(self.recv()) // 3) for x in self.recv().split()]
        self.expect_ready()
        return energy, np.array(values).reshape(-1, 3)

    def close(self) -> None:
        self.send("EXIT")
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--cutoff", type=float, default=250.0)
    parser.add_argument("--atoms", type=int, default=2, choices=(2, 8), help="atoms per cell")
    parser.add_argument("--kpoints", type=int, default=2, help="n for an n×n×n grid (1: Γ)")
    args = parser.parse_args()
    params = {"cutoff": args.cutoff, "rel_cutoff": 50}
    if args.kpoints > 1:
        params["kpoints"] = [args.kpoints] * 3
    method = Method.resolve("cp2k", params)
    settings = {**method.params, "restart_wavefunction": False, "mixing_alpha": 0.4}
    structures = list(cells(args.n, args.atoms))
    cp2k.version()  # cached once, as in a campaign
    times = {"label": [], "bare": [], "shell": []}
    energies = {"label": [], "bare": [], "shell": []}
    folder = Path(tempfile.mkdtemp(prefix="cp2k-costs-"))
    shell = Shell(folder)
    first = folder / "shell.inp"
    first.write_text(cp2k.input_text(structures[0], settings))
    env_id = shell.load(first)
    for number, atoms in enumerate(structures):
        start = time.perf_counter()
        result = label(atoms, method)
        times["label"].append(time.perf_counter() - start)
        assert result.ok, result.message
        energies["label"].append(result.energy)

        bare = folder / f"bare-{number}"
        bare.mkdir()
        (bare / "hifidata.inp").write_text(cp2k.input_text(atoms, settings))
        start = time.perf_counter()
        done = subprocess.run(
            ["cp2k", "-i", "hifidata.inp"],
            cwd=bare,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            check=True,
        )
        times["bare"].append(time.perf_counter() - start)
        marker = "ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]:"
        energies["bare"].append(float(done.stdout.split(marker)[1].split()[0]) * Hartree)

        start = time.perf_counter()
        energy, _ = shell.energy_forces(env_id, atoms.positions)
        times["shell"].append(time.perf_counter() - start)
        energies["shell"].append(energy)
        print(
            f"cell {number:2d}: " + "  ".join(f"{k} {v[-1]:6.2f} s" for k, v in times.items()),
            flush=True,
        )
    shell.close()

    total = {key: sum(value) for key, value in times.items()}
    k = f"{args.kpoints}x{args.kpoints}x{args.kpoints}" if args.kpoints > 1 else "Γ"
    print(
        f"\n{args.n} Si{args.atoms} cells, cutoff {args.cutoff:g} Ry, k-points {k}, 1 thread, "
        f"CP2K {cp2k.version()}"
    )
    print(f"{'way':8s} {'total s':>9s} {'per cell s':>11s} {'/ bare':>8s}")
    for key, value in total.items():
        print(f"{key:8s} {value:9.2f} {value / args.n:11.2f} {value / total['bare']:8.3f}")
    worst = max(abs(a - b) for a, b in zip(energies["label"], energies["bare"], strict=True))
    drift = max(abs(a - b) for a, b in zip(energies["label"], energies["shell"], strict=True))
    print(f"label overhead over bare: {100 * (total['label'] / total['bare'] - 1):+.1f} %")
    print(f"|E(label) - E(bare)| max {worst:.2e} eV; |E(label) - E(shell)| max {drift:.2e} eV")


if __name__ == "__main__":
    main()
