"""Metrology: how far a model's energies and forces are from a rung's labels.

Energies are compared after aligning per-element reference energies on the *training* labels
of that rung (a least-squares shift per element, nothing else). Models trained on a rung are
already aligned (the shift comes out ~0); a pretrained MLIP or a model of another rung sits on
another absolute scale, which says nothing about the shape of its energy surface. Forces are
compared as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from hifidata import plots
from hifidata.training.finetune import fit_reference_energies


@dataclass
class Parity:
    """One model against one rung's labels on held-out structures."""

    model: str
    rung: str
    n_atoms: np.ndarray  # per structure
    energy_true: np.ndarray  # eV
    energy_pred: np.ndarray  # eV, reference energies aligned
    forces_true: np.ndarray  # (atoms, 3) eV/Å, all structures stacked
    forces_pred: np.ndarray

    def errors(self) -> dict[str, float | int]:
        """MAE and RMSE in meV/atom (energies) and meV/Å (force components)."""
        if len(self.energy_true) == 0:
            return {"n_structures": 0}
        de = (self.energy_pred - self.energy_true) / self.n_atoms * 1000
        df = (self.forces_pred - self.forces_true).ravel() * 1000
        return {
            "n_structures": len(self.energy_true),
            "energy_mae_meV_per_atom": float(np.mean(np.abs(de))),
            "energy_rmse_meV_per_atom": float(np.sqrt(np.mean(de**2))),
            "force_mae_meV_per_A": float(np.mean(np.abs(df))),
            "force_rmse_meV_per_A": float(np.sqrt(np.mean(df**2))),
        }


def compare(model, name: str, rung: str, train: dict, test: dict) -> Parity:
    """Predict ``test`` with ``model`` after aligning reference energies on ``train``.

    ``train`` / ``test``: {"structures": [Atoms], "energy": (n,) eV, "forces": [(m, 3)]}.
    """
    shift = _reference_shift(model, train)
    if not test["structures"]:
        empty = np.zeros((0, 3))
        return Parity(name, rung, np.zeros(0), np.zeros(0), np.zeros(0), empty, empty)
    prediction = model.predict(test["structures"])
    return Parity(
        model=name,
        rung=rung,
        n_atoms=np.array([len(a) for a in test["structures"]]),
        energy_true=np.asarray(test["energy"], dtype=float),
        energy_pred=np.asarray(prediction["energy"], dtype=float) + shift(test["structures"]),
        forces_true=np.concatenate(test["forces"]),
        forces_pred=np.concatenate(prediction["forces"]),
    )


def _reference_shift(model, train: dict):
    """Per-element energies that best map the model's training predictions onto the labels."""
    if not train["structures"]:
        return lambda structures: np.zeros(len(structures))
    predicted = np.asarray(model.predict(train["structures"])["energy"], dtype=float)
    references = fit_reference_energies(
        train["structures"], np.asarray(train["energy"], dtype=float) - predicted
    )

    def shift(structures: Sequence[Atoms]) -> np.ndarray:
        return np.array(
            [sum(references.get(int(z), 0.0) for z in a.get_atomic_numbers()) for a in structures]
        )

    return shift


def parity_plot(parities: Sequence[Parity], path: str | Path) -> Path:
    """One PNG: a row per rung, energy (per atom) and force-component parity, a color per model."""
    plt = plots.pyplot()

    rungs = list(dict.fromkeys(p.rung for p in parities))
    models = list(dict.fromkeys(p.model for p in parities))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    figure, axes = plt.subplots(len(rungs), 2, figsize=(10, 4.5 * len(rungs)), squeeze=False)
    for row, rung in enumerate(rungs):
        for p in (p for p in parities if p.rung == rung and len(p.energy_true)):
            err = p.errors()
            e_true = p.energy_true / p.n_atoms
            axes[row, 0].scatter(
                e_true - e_true.mean(), p.energy_pred / p.n_atoms - e_true.mean(), s=12,
                color=colors[p.model], alpha=0.7,
                label=f"{p.model} ({err['energy_mae_meV_per_atom']:.1f} meV/atom)",
            )
            axes[row, 1].scatter(
                p.forces_true.ravel(), p.forces_pred.ravel(), s=6, color=colors[p.model],
                alpha=0.5, label=f"{p.model} ({err['force_mae_meV_per_A']:.0f} meV/Å)",
            )
        for col, (quantity, unit) in enumerate(
            [("energy − mean (per atom)", "eV/atom"), ("force component", "eV/Å")]
        ):
            ax = axes[row, col]
            low, high = ax.get_xlim()
            ax.plot([low, high], [low, high], color="0.5", lw=0.8)
            ax.set_xlabel(f"{rung} {quantity} [{unit}]")
            ax.set_ylabel(f"model {quantity} [{unit}]")
            ax.set_title(f"{rung}: {quantity.split(' ')[0]} (test split)")
            ax.legend(fontsize=8)
    return plots.save(figure, path)
