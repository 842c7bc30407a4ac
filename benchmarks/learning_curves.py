"""Learning curves: how many top-rung labels each recipe needs to reach the top rung.

Energy and force MAE against the top rung (CCSD(T)/cc-pVDZ, frozen core) on a fixed held-out
set, as a function of the number n of top-rung training labels, for
  (i)   finetune: CHGNet 0.3.0 fine-tuned on the n top-rung labels only; and finetune-7net:
        SevenNet 7net-0 fine-tuned on them (the same architecture as (iii));
  (ii)  delta: a CHGNet fine-tuned on the DFT rung (revPBE0-D3(BJ)/def2-TZVP, all DFT labels
        outside the test set) plus a small Δ-model trained on the n (CCSD(T) − DFT) pairs;
  (iii) multifidelity: one SevenNet (7net-MF-0 with a new modality per rung) trained on all DFT
        labels and the n CCSD(T) labels at once, predicting the CCSD(T) modality.
Labels come from benchmarks/learning_labels.py (run it first; it caches them). Every run uses
the hifidata recipes exactly as a campaign does (training/recipes.py), with their defaults,
except that runs without enough labels for a validation set early-stop on the training loss.

    .venv/bin/python benchmarks/learning_labels.py --system water-dimer
    .venv/bin/python benchmarks/learning_curves.py --system water-dimer [--recipes delta ...]
    .venv/bin/python benchmarks/learning_curves.py --system water-dimer --report

Results accumulate in benchmarks/.cache/<system>/curves.json (one entry per recipe and n), so
recipes can run in separate processes side by side; ``--report`` prints the table and draws
docs/learning-curves-<system>.png. Measured numbers: docs/learning-curves.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np

from hifidata.training.recipes import RECIPES as CAMPAIGN_RECIPES

#: the recipes, plus fine-tuning SevenNet (7net-0) on the top rung only: the multi-fidelity
#: model is a SevenNet, so this separates what the second rung brings from what the
#: architecture brings
RECIPES = (*CAMPAIGN_RECIPES, "finetune-7net")

CACHE = Path(__file__).parent / ".cache"
DOCS = Path(__file__).parent.parent / "docs"
SIZES = (2, 5, 10, 20, 40, 80)
TARGET_MEV = 22.0  # 0.5 kcal/mol per dimer: "chemical accuracy" for interaction energies
VALIDATION_FRACTION = 0.15


def load(system: str):
    from ase.io import read

    folder = CACHE / system
    structures = read(folder / "structures.extxyz", ":")
    labels = np.load(folder / "labels.npz", allow_pickle=True)["labels"].item()
    return structures, labels


def labeled(structures, labels, rung: str, indices):
    from hifidata.training.finetune import LabeledSet

    ok = [i for i in indices if labels.get(f"{rung}:{i}", {}).get("status") == "ok"]
    return ok, LabeledSet([structures[i] for i in ok],
                          [labels[f"{rung}:{i}"]["energy"] for i in ok],
                          [labels[f"{rung}:{i}"]["forces"] for i in ok])


def divide(data, fraction: float = VALIDATION_FRACTION):
    """(train, validation): every k-th structure to validation, none below 10 structures."""
    from hifidata.training.finetune import LabeledSet

    n = len(data.structures)
    if n < 10:
        return data, LabeledSet([], [], [])
    every = max(2, round(1 / fraction))
    val = [i for i in range(n) if i % every == every - 1]
    train = [i for i in range(n) if i % every != every - 1]
    pick = lambda rows: LabeledSet(*[[part[i] for i in rows] for part in data[:3]])  # noqa: E731
    return pick(train), pick(val)


def errors(model, test) -> dict[str, float]:
    predicted = model.predict(test.structures)
    e = np.abs(np.asarray(predicted["energy"]) - np.asarray(test.energies)) * 1000
    f = np.abs(np.concatenate(predicted["forces"]) - np.concatenate(test.forces)) * 1000
    return {"energy_mae_meV": float(e.mean()), "force_mae_meV_per_A": float(f.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="water-dimer")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--top", type=int, default=80)
    parser.add_argument("--report", action="store_true", help="print the table and plot only")
    args = parser.parse_args()
    results_file = CACHE / args.system / "curves.json"
    if args.report:
        report(args.system, results_file)
        return

    import torch

    from hifidata.training import recipes
    from hifidata.training.models import load_model

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    structures, labels = load(args.system)
    _, test = labeled(structures, labels, "top", range(args.test))
    pool = list(range(args.test, args.test + args.top))
    low_ids, low = labeled(structures, labels, "low", range(args.test, len(structures)))
    print(f"{args.system}: {len(test.structures)} test, {len(low_ids)} DFT labels")
    base_dir = CACHE / args.system / "models" / "dft"
    for n in args.sizes:
        top_ids, top = labeled(structures, labels, "top", pool[:n])
        if len(top_ids) < n:
            print(f"n={n}: only {len(top_ids)} top-rung labels cached; stopping")
            break
        for recipe in args.recipes:
            started = time.perf_counter()
            if recipe == "finetune":
                model = recipes.finetune(*divide(top), base="chgnet-0.3.0")
            elif recipe == "finetune-7net":
                model = recipes.finetune(*divide(top), base="7net-0")
            elif recipe == "delta":
                if not (base_dir / "model.json").exists():
                    recipes.finetune(*divide(low), base="chgnet-0.3.0", out_dir=base_dir)
                base = load_model(base_dir)
                where = {i: k for k, i in enumerate(low_ids)}
                pairs = [(k, where[i]) for k, i in enumerate(top_ids) if i in where]
                diff = type(top)([top.structures[k] for k, _ in pairs],
                                 [top.energies[k] - low.energies[j] for k, j in pairs],
                                 [top.forces[k] - low.forces[j] for k, j in pairs])
                delta = recipes.delta(*divide(diff))
                from hifidata.training import compose

                model = compose(base, delta)
            else:
                model = recipes.multifidelity(
                    {"dft": divide(low), "ccsdt": divide(top)}, default_rung="ccsdt")
            row = {"system": args.system, "recipe": recipe, "n": n,
                   "train_seconds": round(time.perf_counter() - started, 1),
                   **errors(model, test)}
            print(json.dumps(row), flush=True)
            save(results_file, row)


def save(results_file: Path, row: dict) -> None:
    """Add ``row`` (replacing an earlier run of its recipe and n); several processes may."""
    with open(results_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(results_file.read_text()) if results_file.exists() else []
        results = [r for r in results if (r["recipe"], r["n"]) != (row["recipe"], row["n"])]
        results_file.write_text(json.dumps([*results, row], indent=1))


def report(system: str, results_file: Path) -> None:
    rows = json.loads(results_file.read_text())
    sizes = sorted({r["n"] for r in rows})
    table = {(r["recipe"], r["n"]): r for r in rows}
    print(f"{system}: energy MAE meV per structure / force MAE meV/Å against CCSD(T), "
          "held-out set")
    print("recipe".ljust(15) + "".join(f"n={n}".rjust(16) for n in sizes))
    for recipe in RECIPES:
        cells = []
        for n in sizes:
            r = table.get((recipe, n))
            cells.append((f"{r['energy_mae_meV']:.1f} / {r['force_mae_meV_per_A']:.0f}"
                          if r else "-").rjust(16))
        print(recipe.ljust(15) + "".join(cells))
    for recipe in RECIPES:
        reached = [n for n in sizes if (recipe, n) in table
                   and table[(recipe, n)]["energy_mae_meV"] <= TARGET_MEV]
        print(f"{recipe}: first n with energy MAE <= {TARGET_MEV:g} meV: "
              f"{reached[0] if reached else 'not reached'}")

    from hifidata import plots

    plt = plots.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for recipe in RECIPES:
        ns = [n for n in sizes if (recipe, n) in table]
        if not ns:
            continue
        for ax, key in zip(axes, ("energy_mae_meV", "force_mae_meV_per_A"), strict=True):
            ax.loglog(ns, [table[(recipe, n)][key] for n in ns], "o-", label=recipe)
    axes[0].axhline(TARGET_MEV, color="0.5", ls="--", lw=0.8, label="22 meV (0.5 kcal/mol)")
    axes[0].set_ylabel("energy MAE vs CCSD(T) [meV/structure]")
    axes[1].set_ylabel("force MAE vs CCSD(T) [meV/Å]")
    from matplotlib.ticker import NullLocator

    for ax in axes:
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("CCSD(T) training labels")
        ax.legend(fontsize=8)
    figure.suptitle(f"learning curves: {system}")
    print(f"plot: {plots.save(figure, DOCS / f'learning-curves-{system}.png')}")


if __name__ == "__main__":
    main()
