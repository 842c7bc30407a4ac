"""Labels for the learning-curve benchmark (benchmarks/learning_curves.py), computed once.

For each system: CHGNet 0.3.0 Langevin MD of the seed (200/400/700 K, two seeds) plus rattled
frames, DIRECT picks ``--pool`` diverse structures, and a fixed shuffle divides them into
a test set (``--test``), the top-rung training pool (``--top``, nested: the first n train
the n-label points) and extra low-rung structures. Labels go to
benchmarks/.cache/<system>/labels.npz, appended as they finish, so an interrupted run goes on
where it stopped. Order: test CCSD(T), low-rung DFT, top-pool CCSD(T).

    .venv/bin/python benchmarks/learning_labels.py --system water-dimer [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.collections import s22

CACHE = Path(__file__).parent / ".cache"

# DFT rung as in examples/water-dimer.yaml; top rung CCSD(T)/cc-pVDZ (the choice)
LOW = {"theory": "dft", "xc": "revpbe0", "dispersion": "d3bj", "basis": "def2-tzvp",
       "density_fit": True}
TOP = {"theory": "ccsd(t)", "basis": "cc-pvdz", "frozen_core": True, "reference": "rhf"}


def hf_dimer() -> Atoms:
    """(HF)2, a bent hydrogen-bonded dimer: F···F 2.73 Å, F–H 0.92 Å, H-bond angle ~117°."""
    f2 = np.array([2.73, 0.0, 0.0])
    angle = np.radians(117.0)
    return Atoms(
        "FHFH",
        positions=[[0, 0, 0], [0.92, 0.0, 0.0], f2,
                   f2 + 0.92 * np.array([-np.cos(angle), np.sin(angle), 0.0])],
    )


SYSTEMS = {"water-dimer": lambda: s22["Water_dimer"], "hf-dimer": hf_dimer}


def structures(system: str, pool: int, seed: int = 0) -> list[Atoms]:
    from hifidata.calculators.mlip import pretrained_chgnet
    from hifidata.sampling import dynamics, explore, features
    from hifidata.sampling.direct import DirectSampler

    atoms = SYSTEMS[system]()
    atoms.info.update(charge=0, spin=1)
    model = pretrained_chgnet("chgnet-0.3.0")
    runs = dynamics.nvt([atoms], model, [200, 400, 700], 1200, md_seeds=(1, 2),
                        sample_every=4, model_name="chgnet-0.3.0")
    frames = [a for run in runs for a in run.structures]
    rng = np.random.default_rng(seed)
    parents = [frames[i] for i in rng.choice(len(frames), 300, replace=False)]
    frames += explore.rattle(parents, 300, stdev=0.08, seed=seed).structures
    x = features.structure_features(model, frames)
    picked = DirectSampler(n_clusters=pool, k=1, seed=seed).fit(x).record()["selected"]
    chosen = [frames[i] for i in picked]
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]


def _label(args):
    atoms, params = args
    os.environ["OMP_NUM_THREADS"] = "1"
    from hifidata.calculators.base import Method, label

    result = label(atoms, Method.resolve("pyscf", params))
    return result.status, result.energy, result.forces, result.wall_time, result.message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="water-dimer")
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--top", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from ase.io import read, write

    folder = CACHE / args.system
    folder.mkdir(parents=True, exist_ok=True)
    xyz = folder / "structures.extxyz"
    if not xyz.exists():
        write(xyz, structures(args.system, args.pool), format="extxyz")
    pool = read(xyz, ":")
    test = list(range(args.test))
    top = list(range(args.test, args.test + args.top))
    low = list(range(args.test, len(pool)))
    jobs = [("top", i) for i in test] + [("low", i) for i in low] + [("top", i) for i in top]

    store = folder / "labels.npz"
    done: dict[str, dict] = {}
    if store.exists():
        data = np.load(store, allow_pickle=True)
        done = data["labels"].item()
    todo = [(rung, i) for rung, i in jobs if f"{rung}:{i}" not in done]
    print(f"{args.system}: {len(pool)} structures, {len(done)} labels cached, {len(todo)} to go")
    params = {"top": TOP, "low": LOW}
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool_exec:
        results = pool_exec.map(_label, [(pool[i], params[r]) for r, i in todo])
        for n, ((rung, i), (status, energy, forces, wall, message)) in enumerate(
            zip(todo, results, strict=True), 1
        ):
            done[f"{rung}:{i}"] = {"status": status, "energy": energy, "forces": forces,
                                   "wall_time": wall, "message": message}
            np.savez(store.with_suffix(".tmp.npz"), labels=np.array(done, dtype=object))
            os.replace(store.with_suffix(".tmp.npz"), store)
            print(f"[{n}/{len(todo)}] {rung}:{i} {status} {wall:.1f}s "
                  f"(elapsed {time.perf_counter() - started:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
