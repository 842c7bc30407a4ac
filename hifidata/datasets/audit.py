"""Cross-code audit: how two methods disagree on the same configurations.

Two DFT codes given "the same" functional still differ: pseudopotentials, basis sets, grids and
cutoffs move absolute energies by eV per atom and forces by tens of meV/Å. The absolute part is
harmless for training once per-element reference energies are removed, so energies are compared
after fitting one reference-energy shift per element by least squares to E_A − E_B (what is left
is the disagreement on *relative* energies, which a model would learn). Forces and stresses are
compared directly. :func:`compare` takes the paired labels, :func:`report` renders markdown,
:func:`plot` a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.units import GPa

from hifidata import plots
from hifidata.datasets.store import LabelSet

WORST_LISTED = 5


@dataclass
class Pairs:
    """Labels of the same structures by methods A and B (both ok), row for row."""

    names: tuple[str, str]
    structure_ids: list[str]
    structures: list[Atoms]
    origins: list[dict[str, Any]]
    energy: tuple[np.ndarray, np.ndarray]  # eV
    forces: tuple[list[np.ndarray], list[np.ndarray]]  # eV/Å
    stress: tuple[np.ndarray, np.ndarray]  # (n, 6) eV/Å³, NaN where a method gave none

    @classmethod
    def of(cls, names: tuple[str, str], a: LabelSet, b: LabelSet, structures: Sequence[Atoms],
           origins: Sequence[dict[str, Any]]) -> Pairs:
        """Pair ``a`` and ``b`` (ok labels) on the structures both hold; ``structures`` and
        ``origins`` are given for ``a.structure_ids``, in that order."""
        a, b = a.ok(), b.ok()
        common = set(b.structure_ids)
        rows = [i for i, sid in enumerate(a.structure_ids) if sid in common]
        ids = [a.structure_ids[i] for i in rows]
        a, b = a.for_ids(ids), b.for_ids(ids)
        return cls(
            names, ids, [structures[i] for i in rows], [origins[i] for i in rows],
            (a.energy, b.energy), (a.forces, b.forces), (a.stress, b.stress),
        )

    def __len__(self) -> int:
        return len(self.structure_ids)


def compare(pairs: Pairs) -> dict[str, Any]:
    """Force, relative-energy and stress disagreement of B against A, overall and per element."""
    if not len(pairs):
        raise ValueError(f"{pairs.names[0]} and {pairs.names[1]} have no ok labels in common")
    n_atoms = np.array([len(atoms) for atoms in pairs.structures])
    numbers = np.concatenate([atoms.numbers for atoms in pairs.structures])
    difference = np.concatenate([fa - fb for fa, fb in zip(*pairs.forces, strict=True)])
    per_structure_rmse = np.array([
        float(np.sqrt(np.mean((fa - fb) ** 2))) for fa, fb in zip(*pairs.forces, strict=True)
    ])
    shift, residual = _relative_energies(pairs)
    residual_per_atom = residual / n_atoms * 1000  # meV/atom
    return {
        "methods": list(pairs.names),
        "structures": len(pairs),
        "atoms": int(n_atoms.sum()),
        "forces_eV_per_A": {
            "all": _stats(difference),
            **{chemical_symbols[z]: _stats(difference[numbers == z])
               for z in sorted(set(numbers.tolist()))},
        },
        "energy": {
            "reference_shift_eV": {chemical_symbols[z]: v for z, v in shift.items()},
            "relative_mae_meV_per_atom": float(np.mean(np.abs(residual_per_atom))),
            "relative_rmse_meV_per_atom": float(np.sqrt(np.mean(residual_per_atom**2))),
            "relative_max_meV_per_atom": float(np.max(np.abs(residual_per_atom))),
        },
        "stress_GPa": _stress(pairs),
        "worst": _worst(pairs, per_structure_rmse, residual_per_atom),
    }


def _stats(values: np.ndarray) -> dict[str, float | int]:
    """MAE, RMSE and max of force-component differences (eV/Å) and how many components."""
    values = np.abs(np.asarray(values, dtype=float))
    return {"mae": float(values.mean()), "rmse": float(np.sqrt(np.mean(values**2))),
            "max": float(values.max()), "components": int(values.size)}


def _relative_energies(pairs: Pairs) -> tuple[dict[int, float], np.ndarray]:
    """Per-element shifts fitted to E_A − E_B by least squares, and the residual (eV).

    With one composition (all Si64, say) the shift absorbs the mean difference, and the residual
    is the spread of relative energies; vacancy cells (Si63) then test the per-element split.
    """
    delta = pairs.energy[0] - pairs.energy[1]
    elements = sorted({int(z) for atoms in pairs.structures for z in atoms.numbers})
    counts = np.array([[np.count_nonzero(atoms.numbers == z) for z in elements]
                       for atoms in pairs.structures], dtype=float)
    solution, *_ = np.linalg.lstsq(counts, delta, rcond=None)
    return dict(zip(elements, solution.tolist(), strict=True)), delta - counts @ solution


def _stress(pairs: Pairs) -> dict[str, float | int] | None:
    both = ~(np.isnan(pairs.stress[0]).any(axis=1) | np.isnan(pairs.stress[1]).any(axis=1))
    if not both.any():
        return None
    a, b = pairs.stress[0][both] / GPa, pairs.stress[1][both] / GPa
    pressure = -(a[:, :3].mean(axis=1) - b[:, :3].mean(axis=1))
    return {"structures": int(both.sum()), "mae": float(np.mean(np.abs(a - b))),
            "rmse": float(np.sqrt(np.mean((a - b) ** 2))),
            "pressure_mae": float(np.mean(np.abs(pressure)))}


def _worst(pairs: Pairs, force_rmse: np.ndarray, residual: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(-force_rmse, kind="stable")[:WORST_LISTED]
    return [{
        "structure_id": pairs.structure_ids[i],
        "formula": pairs.structures[i].get_chemical_formula(),
        "origin": pairs.origins[i],
        "force_rmse_eV_per_A": float(force_rmse[i]),
        "relative_energy_meV_per_atom": float(residual[i]),
    } for i in order]


def report(summary: dict[str, Any], plot_file: str | None = None,
           failures: Sequence[dict[str, str]] = ()) -> str:
    """The audit as markdown: tables of force, energy and stress disagreement, worst cases."""
    a, b = summary["methods"]
    lines = [
        f"# Audit: {b} against {a}", "",
        f"{summary['structures']} structures ({summary['atoms']} atoms) labeled ok by both.",
        "Differences are A − B. Energies after removing one reference-energy shift per element "
        "fitted by least squares to E_A − E_B.", "",
        "## Forces (eV/Å, per Cartesian component)", "",
        "| element | components | MAE | RMSE | max |", "|---|---|---|---|---|",
    ]
    for element, s in summary["forces_eV_per_A"].items():
        lines.append(f"| {element} | {s['components']} | {s['mae']:.4f} | {s['rmse']:.4f} | "
                     f"{s['max']:.4f} |")
    energy = summary["energy"]
    shifts = ", ".join(f"{el} {v:+.4f} eV" for el, v in energy["reference_shift_eV"].items())
    lines += [
        "", "## Relative energies (meV/atom)", "",
        "| MAE | RMSE | max |", "|---|---|---|",
        f"| {energy['relative_mae_meV_per_atom']:.2f} | {energy['relative_rmse_meV_per_atom']:.2f}"
        f" | {energy['relative_max_meV_per_atom']:.2f} |", "",
        f"Fitted reference shifts (A − B): {shifts}.",
    ]
    stress = summary["stress_GPa"]
    lines += ["", "## Stress (GPa)", ""]
    if stress:
        lines += ["| structures | MAE | RMSE | pressure MAE |", "|---|---|---|---|",
                  f"| {stress['structures']} | {stress['mae']:.3f} | {stress['rmse']:.3f} | "
                  f"{stress['pressure_mae']:.3f} |"]
    else:
        lines.append("No structure has a stress from both methods.")
    lines += ["", f"## The {len(summary['worst'])} structures they disagree on most", "",
              "| structure | formula | origin | force RMSE (eV/Å) | rel. energy (meV/atom) |",
              "|---|---|---|---|---|"]
    for w in summary["worst"]:
        origin = ", ".join(f"{k}={v}" for k, v in w["origin"].items() if k != "parent")
        lines.append(f"| `{w['structure_id'][:12]}` | {w['formula']} | {origin} | "
                     f"{w['force_rmse_eV_per_A']:.4f} | {w['relative_energy_meV_per_atom']:+.2f} |")
    if failures:
        lines += ["", "## Labels that failed", "", "| method | structure | class | message |",
                  "|---|---|---|---|"]
        lines += [f"| {f['method']} | `{f['structure_id'][:12]}` | {f['status']} | "
                  f"{f['message'].replace('|', '/')} |" for f in failures]
    if plot_file:
        lines += ["", f"![force and energy parity]({plot_file})"]
    return "\n".join(lines) + "\n"


def plot(pairs: Pairs, summary: dict[str, Any], path: str | Path) -> Path:
    """Force-component parity coloured by element, and relative-energy differences."""
    plt = plots.pyplot()

    a, b = pairs.names
    numbers = np.concatenate([atoms.numbers for atoms in pairs.structures])
    fa, fb = np.concatenate(pairs.forces[0]), np.concatenate(pairs.forces[1])
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for z in sorted(set(numbers.tolist())):
        mine = numbers == z
        left.scatter(fa[mine].ravel(), fb[mine].ravel(), s=5, alpha=0.5,
                     label=f"{chemical_symbols[z]} (MAE "
                     f"{summary['forces_eV_per_A'][chemical_symbols[z]]['mae'] * 1000:.1f} meV/Å)")
    low, high = left.get_xlim()
    left.plot([low, high], [low, high], color="0.5", lw=0.8)
    left.set_xlabel(f"{a} force component [eV/Å]")
    left.set_ylabel(f"{b} force component [eV/Å]")
    left.legend(fontsize=8)
    _, residual = _relative_energies(pairs)
    n_atoms = np.array([len(atoms) for atoms in pairs.structures])
    right.hist(residual / n_atoms * 1000, bins=min(30, max(5, len(pairs))), color="C1")
    right.set_xlabel(f"relative energy, {a} − {b} after reference shifts [meV/atom]")
    right.set_ylabel("structures")
    return plots.save(figure, path)
