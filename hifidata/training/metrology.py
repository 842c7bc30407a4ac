"""Metrology: how far a model's energies and forces are from a rung's labels, and how it behaves.

Energies are compared after aligning per-element reference energies on the *training* labels
of that rung (a least-squares shift per element, nothing else). Models trained on a rung are
already aligned (the shift comes out ~0); a pretrained MLIP or a model of another rung sits on
another absolute scale, which says nothing about the shape of its energy surface. Forces are
compared as they are.

Beyond the parity (``compare``, ``Parity.errors``, ``parity_plot``): the same errors per element
and per origin of the test structures (``errors_by_element``, ``errors_by_origin``), MD
stability over many seeded Langevin runs (hifidata.training.stability), and one
markdown report of it all with the energy-landscape slices of hifidata.training.landscape
(``write_report``). Energies eV, forces eV/Å, times ps, temperatures K; errors in meV.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from hifidata import plots
from hifidata.training.finetune import fit_reference_energies
from hifidata.training.landscape import Slice, slice_errors
from hifidata.training.models import sort_species
from hifidata.training.stability import StabilityResult


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
    symbols: list[str] = field(default_factory=list)  # per stacked atom (may be empty)
    origins: list[dict] = field(default_factory=list)  # per structure (may be empty)

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

    ``train`` / ``test``: {"structures": [Atoms], "energy": (n,) eV, "forces": [(m, 3)]};
    ``test`` may hold "origins" (a dict per structure), kept for ``errors_by_origin``.
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
        symbols=[s for atoms in test["structures"] for s in atoms.get_chemical_symbols()],
        origins=[dict(o) for o in test.get("origins", [])],
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


def write_parity_points(parities: Sequence[Parity], path: str | Path,
                        max_points: int = 2000) -> Path:
    """The parity plot's data as JSON (what the dashboard draws): per model and rung, energies
    per atom (eV/atom) and force components (eV/Å), true and predicted, with the errors.

    At most ``max_points`` structures and force components each, an evenly spaced subset (the
    errors are over all of them), so a large test split stays a small file.
    """
    def thin(values: np.ndarray) -> list[float]:
        values = np.asarray(values, dtype=float).ravel()
        step = max(1, int(np.ceil(len(values) / max_points)))
        return np.round(values[::step], 6).tolist()

    rows = []
    for p in parities:
        n_atoms = np.maximum(np.asarray(p.n_atoms, dtype=float), 1)
        rows.append({
            "model": p.model, "rung": p.rung, "errors": p.errors(),
            "energy_true": thin(p.energy_true / n_atoms),
            "energy_pred": thin(p.energy_pred / n_atoms),
            "force_true": thin(p.forces_true), "force_pred": thin(p.forces_pred),
        })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"units": {"energy": "eV/atom", "force": "eV/Å"},
                                "parities": rows}))
    return path


# --- error tables ------------------------------------------------------------------------


def errors_by_element(
    parity: Parity, symbols: Sequence[str] | Sequence[Sequence[str]] | None = None
) -> dict[str, dict[str, float | int]]:
    """Force MAE and RMSE (meV/Å, per Cartesian component) per element, with its atom count.

    ``symbols``: one per stacked force row, or one list per structure; None takes
    ``parity.symbols`` (filled by ``compare``). Elements come in order of atomic number.
    """
    per_atom = _stacked_symbols(parity, symbols)
    difference = (parity.forces_pred - parity.forces_true) * 1000
    table = {}
    for element in sort_species(per_atom):
        mine = np.array([s == element for s in per_atom])
        d = difference[mine].ravel()
        table[element] = {
            "atoms": int(mine.sum()),
            "force_mae_meV_per_A": float(np.mean(np.abs(d))),
            "force_rmse_meV_per_A": float(np.sqrt(np.mean(d**2))),
        }
    return table


def _stacked_symbols(parity: Parity, symbols) -> list[str]:
    if symbols is None:
        symbols = parity.symbols
    per_atom = [s for group in symbols for s in ([group] if isinstance(group, str) else group)]
    if len(per_atom) != len(parity.forces_true):
        raise ValueError(f"{len(per_atom)} symbols for {len(parity.forces_true)} force rows "
                         f"({parity.model} on {parity.rung}); pass one per atom or per structure")
    return per_atom


def origin_group(origin: dict) -> str:
    """The group a structure's origin falls in: protocol, with temperature (K) and pressure
    (GPa) when the protocol ran at a fixed one ("md 400 K", "npt 600 K 1 GPa", "rattle").

    A ramp's temperature changes along the run (it is the target at that frame), so ramps
    form one group.
    """
    protocol, temperature, pressure = _group_fields(origin)
    parts = [protocol]
    if temperature is not None:
        parts.append(f"{temperature:g} K")
    if pressure is not None:
        parts.append(f"{pressure:g} GPa")
    return " ".join(parts)


def _group_fields(origin: dict) -> tuple[str, float | None, float | None]:
    protocol = str(origin.get("protocol", "unknown"))
    fixed_temperature = protocol != "ramp" and "schedule" not in origin
    temperature = origin.get("temperature") if fixed_temperature else None
    pressure = origin.get("pressure")
    return (protocol, None if temperature is None else float(temperature),
            None if pressure is None else float(pressure))


def errors_by_origin(
    parity: Parity, origins: Sequence[dict] | None = None
) -> dict[str, dict[str, float | int]]:
    """Energy MAE (meV/atom) and force MAE (meV/Å) per origin group (see ``origin_group``).

    ``origins``: a dict per test structure; None takes ``parity.origins``. Groups are sorted by
    protocol, then temperature, then pressure.
    """
    origins = parity.origins if origins is None else list(origins)
    if len(origins) != len(parity.energy_true):
        raise ValueError(f"{len(origins)} origins for {len(parity.energy_true)} structures "
                         f"({parity.model} on {parity.rung})")
    ends = np.cumsum(parity.n_atoms).astype(int)
    starts = ends - np.asarray(parity.n_atoms, dtype=int)
    energy_error = np.abs(parity.energy_pred - parity.energy_true) / parity.n_atoms * 1000
    force_error = np.abs(parity.forces_pred - parity.forces_true) * 1000
    members: dict[str, list[int]] = {}
    order: dict[str, tuple] = {}
    for index, origin in enumerate(origins):
        key = origin_group(origin)
        members.setdefault(key, []).append(index)
        protocol, temperature, pressure = _group_fields(origin)
        order[key] = (protocol, temperature or 0.0, pressure or 0.0)
    table = {}
    for key in sorted(members, key=order.__getitem__):
        indices = members[key]
        forces = np.concatenate([force_error[starts[k] : ends[k]] for k in indices])
        table[key] = {
            "structures": len(indices),
            "atoms": int(sum(parity.n_atoms[k] for k in indices)),
            "energy_mae_meV_per_atom": float(energy_error[indices].mean()),
            "force_mae_meV_per_A": float(forces.mean()),
        }
    return table


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, ...]]) -> str:
    """A markdown table: ``columns`` are (key, header) or (key, header, format spec such as
    ".1f"); missing, None and NaN values show as "–", and "|" in text is escaped."""
    lines = ["| " + " | ".join(c[1] for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c[0]), *c[2:]) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec and isinstance(value, int | float | np.number):
        return format(value, spec)
    return str(value).replace("|", "\\|").replace("\n", " ")


# --- the report -------------------------------------------------------------------------

#: The report lists at most this many failed MD runs (the earliest failures).
MAX_FAILED_ROWS = 20

_SUMMARY_KEYS = {
    "name": "name", "recipe": "recipe", "rung": "trained on rung", "rungs": "rungs (modalities)",
    "default_rung": "predicts by default", "method_id": "method",
    "parts": "parts (base + Δ)", "n_train": "training structures",
    "n_val": "validation structures", "train_seconds": "training time (s)",
}


def write_report(
    path: Path,
    *,
    model_name: str,
    model_metadata: dict,
    parities: Sequence[Parity],
    by_element: dict,
    by_origin: dict,
    stability: StabilityResult | None,
    slices: Sequence[Slice],
    images: dict[str, Path],
) -> Path:
    """Write the model's metrology report as markdown at ``path`` (a folder: ``report.md`` in
    it) and return the file's path.

    ``by_element`` / ``by_origin``: {rung: table from ``errors_by_element`` /
    ``errors_by_origin``}, or one such table. ``images``: caption → PNG, linked relative to the
    report (write them into its folder); missing files are listed, not linked.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    rungs = list(dict.fromkeys(p.rung for p in parities))
    sections = [
        f"# Model report: {model_name}",
        _summary_section(model_metadata, rungs),
        _errors_section(parities),
        _grouped_section(
            "Forces per element", by_element, "element",
            [("atoms", "atoms"), ("force_mae_meV_per_A", "force MAE (meV/Å)", ".1f"),
             ("force_rmse_meV_per_A", "force RMSE (meV/Å)", ".1f")],
            "Per Cartesian component of the force on atoms of that element (test split).",
        ),
        _grouped_section(
            "Errors per origin", by_origin, "origin",
            [("structures", "structures"), ("atoms", "atoms"),
             ("energy_mae_meV_per_atom", "energy MAE (meV/atom)", ".2f"),
             ("force_mae_meV_per_A", "force MAE (meV/Å)", ".1f")],
            "Test structures grouped by how they were made (protocol, temperature).",
        ),
        _stability_section(stability),
        _slices_section(slices),
        _images_section(images, path.parent),
    ]
    path.write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8")
    return path


def _summary_section(metadata: dict, rungs: Sequence[str]) -> str:
    lines = ["## Summary", ""]
    rows = [{"key": label, "value": _plain(metadata[key])}
            for key, label in _SUMMARY_KEYS.items() if metadata.get(key) is not None]
    rows.append({"key": "evaluated on rungs", "value": ", ".join(rungs) or "none"})
    lines.append(markdown_table(rows, [("key", "what"), ("value", "value")]))
    return "\n".join(lines)


def _plain(value) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):  # per rung, e.g. a multi-fidelity model's training sizes
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _errors_section(parities: Sequence[Parity]) -> str:
    rows = [{"model": p.model, "rung": p.rung, **p.errors()} for p in parities]
    return "\n".join([
        "## Errors per rung", "",
        "Held-out test structures of each rung. Energies after aligning one reference energy "
        "per element on the rung's training labels (a constant offset per element is not an "
        "error of the energy surface); forces as they are, per Cartesian component.", "",
        markdown_table(rows, [
            ("model", "model"), ("rung", "rung"), ("n_structures", "structures"),
            ("energy_mae_meV_per_atom", "energy MAE (meV/atom)", ".2f"),
            ("energy_rmse_meV_per_atom", "energy RMSE (meV/atom)", ".2f"),
            ("force_mae_meV_per_A", "force MAE (meV/Å)", ".1f"),
            ("force_rmse_meV_per_A", "force RMSE (meV/Å)", ".1f"),
        ]) if rows else "No rung had test structures.",
    ])


def _grouped_section(title: str, tables: dict, key: str, columns: list, note: str) -> str:
    if not tables:
        return f"## {title}\n\nNot computed."
    # one table ({group: stats}) or one per rung ({rung: {group: stats}})
    single = all(isinstance(v, dict) and "atoms" in v for v in tables.values())
    per_rung = {"": tables} if single else tables
    rows = [{"rung": rung, key: group, **stats}
            for rung, table in per_rung.items() for group, stats in table.items()]
    head = [] if single else [("rung", "rung")]
    return "\n".join([f"## {title}", "", note, "",
                      markdown_table(rows, [*head, (key, key), *columns])])


def _stability_section(stability: StabilityResult | None) -> str:
    if stability is None:
        return "## MD stability\n\nNot run."
    rows = [{"temperature": t, **s} for t, s in stability.summary().items()]
    lines = [
        "## MD stability", "",
        f"Langevin NVT, {stability.steps} steps of {stability.timestep:g} fs "
        f"({stability.run_length_ps:g} ps) per run. A run fails when atoms come closer than the "
        "minimum distance, a covalent bond of a molecule breaks, or the temperature runs past "
        "5 × the target; its time to failure is when that happened. A stable run lasted the "
        "whole run length (its time to failure is at least that): it counts in the fraction "
        "stable, while the mean and min time to failure are over the failed runs only.", "",
        markdown_table(rows, [
            ("temperature", "T (K)", "g"), ("runs", "runs"), ("stable", "stable"),
            ("fraction_stable", "fraction stable", ".2f"),
            ("mean_time_to_failure_ps", "mean time to failure (ps)", ".3f"),
            ("min_time_to_failure_ps", "min time to failure (ps)", ".3f"),
            ("simulated_ps", "simulated (ps)", ".2f"),
        ]),
    ]
    failed = sorted((vars(run) for run in stability.runs if not run.stable),
                    key=lambda run: run["time_to_failure_ps"])
    if failed:
        shown = f"the {MAX_FAILED_ROWS} earliest of {len(failed)}" \
            if len(failed) > MAX_FAILED_ROWS else "earliest first"
        lines += ["", f"Failed runs ({shown}):", "", markdown_table(failed[:MAX_FAILED_ROWS], [
            ("structure", "structure"), ("temperature", "T (K)", "g"), ("seed", "seed"),
            ("time_to_failure_ps", "time to failure (ps)", ".3f"), ("stopped", "reason"),
        ])]
    return "\n".join(lines)


def _slices_section(slices: Sequence[Slice]) -> str:
    if not slices:
        return "## Energy-landscape slices\n\nNone computed."
    rows = []
    for slice_ in slices:
        errors = slice_errors(slice_)
        if not errors:
            rows.append({"slice": slice_.title, "rung": "(model only)"})
        rows += [{"slice": slice_.title, "rung": rung, **e} for rung, e in errors.items()]
    return "\n".join([
        "## Energy-landscape slices", "",
        "Energies along a scanned coordinate, each curve relative to its own minimum: the "
        "shape of the surface is compared, not its absolute level. Errors only over the points "
        "the rung labeled.", "",
        markdown_table(rows, [("slice", "slice"), ("rung", "reference"), ("points", "points"),
                              ("mae_meV", "MAE (meV)", ".1f"), ("max_meV", "max error (meV)",
                                                                 ".1f")]),
    ])


def _images_section(images: dict[str, Path], folder: Path) -> str:
    if not images:
        return ""
    lines, missing = ["## Figures"], []
    for caption, image in images.items():
        image = Path(image)
        if not image.is_file():
            missing.append(f"{caption} ({image})")
            continue
        link = Path(os.path.relpath(image.resolve(), folder.resolve())).as_posix()
        lines += ["", f"### {caption}", "", f"![{caption}]({link})"]
    if missing:
        lines += ["", "Figures not found: " + "; ".join(missing) + "."]
    return "\n".join(lines)
