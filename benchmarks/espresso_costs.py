"""What hifidata's wrapper costs on top of pw.x, measured side by side on the same inputs.

    .venv/bin/python benchmarks/espresso_costs.py [--repeats 3] [--threads 1]

For each of five small cells: a label through :func:`hifidata.calculators.base.label` (resolve,
checks, input writing, pw.x, classification, parsing, scratch clean-up) against bare ``pw.x -in``
on the very input the engine wrote, run in a fresh folder. The two alternate, so both see the same
machine load; the table shows medians and the wrapper's overhead per label.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ase import Atoms
from ase.build import bulk

from hifidata.calculators import espresso
from hifidata.calculators.base import Method, Run, label
from hifidata.structures import with_charge_and_spin


def cells() -> list[tuple[str, Atoms, dict]]:
    si2 = bulk("Si", "diamond", a=5.43)
    si2.positions[1] += (0.03, -0.04, 0.02)
    si8 = bulk("Si", "diamond", a=5.43, cubic=True)
    si8.rattle(0.03, seed=1)
    al = bulk("Al", "fcc", a=4.05)
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.positions[1] += (0.05, 0.0, 0.0)
    sic = bulk("SiC", "zincblende", a=4.36)
    sic.positions[1] += (0.0, 0.04, -0.03)
    return [
        ("Si2 25 Ry 4x4x4", si2, {"ecutwfc": 25, "kpoints": [4, 4, 4]}),
        ("Si8 30 Ry 2x2x2", si8, {"ecutwfc": 30, "kpoints": [2, 2, 2]}),
        ("Al1 30 Ry 6x6x6 FD 1000 K", al, {"ecutwfc": 30, "kpoints": [6, 6, 6], "smearing": 1000}),
        ("NaCl 40 Ry 3x3x3", nacl, {"ecutwfc": 40, "kpoints": [3, 3, 3]}),
        ("SiC 40 Ry 3x3x3", sic, {"ecutwfc": 40, "kpoints": [3, 3, 3]}),
    ]


def bare_pw(pw_input: Path, threads: int) -> float:
    """Wall time of ``pw.x -in`` on a copy of ``pw_input`` in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="bare-pw-") as folder:
        shutil.copy(pw_input, Path(folder) / "pw.in")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        with open(Path(folder) / "pw.out", "wb") as out:
            subprocess.run(["pw.x", "-in", "pw.in"], cwd=folder, stdout=out, env=env, check=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"pw.x {espresso.version()}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'cell':28s} {'bare pw.x s':>12s} {'label s':>9s} {'overhead':>9s}")
    for name, atoms, params in cells():
        atoms = with_charge_and_spin(atoms)
        method = Method.resolve("espresso", params)
        with tempfile.TemporaryDirectory(prefix="espresso-input-") as folder:
            # the input the engine writes, kept for the bare runs
            settings = {**method.params, "time_limit": None}
            espresso.compute(atoms, settings, Run(threads=args.threads, workdir=Path(folder)))
            pw_input = Path(folder) / "pw-1.in"
            bare, wrapped = [], []
            for _ in range(args.repeats):
                bare.append(bare_pw(pw_input, args.threads))
                start = time.perf_counter()
                result = label(atoms, method, threads=args.threads)
                wrapped.append(time.perf_counter() - start)
                assert result.ok, result.message
        b, w = statistics.median(bare), statistics.median(wrapped)
        print(f"{name:28s} {b:12.2f} {w:9.2f} {100 * (w - b) / b:8.1f}%")


if __name__ == "__main__":
    main()
