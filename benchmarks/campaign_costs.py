"""What the water-dimer campaign's stages cost on this machine, measured side by side.

    .venv/bin/python benchmarks/campaign_costs.py [--quick]

Prints one table: the labels of each rung one at a time and two side by side in threads (the
campaign's setting on 2 cores, and the reason for it), CHGNet MD per step, featurization per
structure, and store writes. Ratios compare runs made in this same process, minutes apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ase.collections import s22
from threadpoolctl import threadpool_limits

from hifidata.calculators.base import Label, Method, label
from hifidata.calculators.mlip import MLIPCalculator, predict_batch, pretrained_chgnet
from hifidata.datasets.store import Store
from hifidata.sampling.ase_md import langevin
from hifidata.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "water-dimer.yaml"


def dimers(n: int, seed: int = 0, stdev: float = 0.03) -> list:
    """``n`` water dimers, the s22 geometry with Gaussian displacements of ``stdev`` Å."""
    base = s22["Water_dimer"].copy()
    base.info = {"charge": 0, "spin": 1}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0, stdev, atoms.positions.shape)
        out.append(atoms)
    return out


def label_rates(method: Method, n: int) -> tuple[float, float]:
    """Seconds per label: one at a time, and per label with two running side by side."""
    structures = dimers(2 * n, seed=1)
    label(structures[0], method)  # warm-up: basis, grids, imports
    start = time.perf_counter()
    for atoms in structures[:n]:
        assert label(atoms, method).ok
    alone = (time.perf_counter() - start) / n
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        assert all(r.ok for r in pool.map(lambda a: label(a, method), structures[n:]))
    side_by_side = (time.perf_counter() - start) / n
    return alone, side_by_side


def md_step_ms(steps: int) -> float:
    calculator = MLIPCalculator(pretrained_chgnet("chgnet-0.3.0", "cpu"))
    result = langevin(dimers(1)[0], calculator, 300, steps, sample_every=steps)
    return result.wall_time / steps * 1000


def featurize_ms(n: int) -> float:
    model = pretrained_chgnet("chgnet-0.3.0", "cpu")
    structures = dimers(n, seed=2)
    start = time.perf_counter()
    predict_batch(model, structures, batch_size=64, features=True, forces=False)
    return (time.perf_counter() - start) / n * 1000


def store_rates(n: int) -> tuple[float, float]:
    """Labels per second written one per transaction, and structures per second in one batch."""
    structures = dimers(n, seed=3)
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "s.h5", "a") as store:
        start = time.perf_counter()
        ids = store.add_structures(structures)
        per_structure = (time.perf_counter() - start) / n
        method = Method("pyscf", {"theory": "hf", "basis": "sto-3g"}, "hf")
        start = time.perf_counter()
        for sid in ids[:200]:
            store.add_labels([Label(sid, method.method_id, "ok", energy=-1.0,
                                    forces=np.zeros((6, 3)), provenance={"engine": "pyscf"})])
        per_label = (time.perf_counter() - start) / 200
    return 1 / per_label, 1 / per_structure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    n = 2 if args.quick else 4
    torch.set_num_threads(1)
    spec = load_spec(EXAMPLE)
    rows = []
    with threadpool_limits(limits=1):
        for rung in spec.ladder:
            alone, paired = label_rates(rung.resolved, n)
            rows.append((f"label {rung.name}: {rung.resolved.describe()}",
                         f"{alone:.1f} s alone", f"{paired:.1f} s/label at 2",
                         f"{alone / paired:.2f}x throughput"))
        rows.append(("CHGNet 0.3.0 MD, water dimer", f"{md_step_ms(400):.1f} ms/step", "", ""))
        rows.append(("CHGNet features, batches of 64", f"{featurize_ms(512):.2f} ms/structure",
                     "", ""))
        labels_per_s, structures_per_s = store_rates(2000)
        rows.append(("store: one label per transaction", f"{labels_per_s:.0f} labels/s", "", ""))
        rows.append(("store: structures in one batch", f"{structures_per_s:.0f} structures/s",
                     "", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'one at a time':>16}  {'two side by side':>18}  ratio")
    for what, a, b, c in rows:
        print(f"{what:<{width}}  {a:>16}  {b:>18}  {c}")


if __name__ == "__main__":
    main()
