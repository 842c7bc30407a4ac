"""The dataset card: what a release holds and exactly how every number in it was made.

``dataset-card.json`` is checked against ``dataset-card.schema.json`` (kept beside this module)
and rendered to the release's ``README.md``. Field names follow ColabFit's dataset fields
(``nconfigurations``, ``nsites``, ``elements``, ``total_elements_ratios``, ``energy_mean``,
``energy_variance``, ``atomic_forces_count``, ``cauchy_stress_count``, ``software``,
``basis_set``) and OPTIMADE's structure fields (``chemical_formula_reduced``,
``chemical_formula_hill``, ``nelements``, ``nsites``, ``nperiodic_dimensions``,
``dimension_types``) where one exists.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache, reduce
from importlib.metadata import PackageNotFoundError, version
from math import gcd
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from hifidata.calculators.base import Method
from hifidata.datasets.release_data import (
    UNITS,
    ReleaseData,
    ReleaseError,
    RungData,
    engine_versions,
)

FORMAT = "hifidata-release"
FORMAT_VERSION = 2
SCHEMA = Path(__file__).with_name("dataset-card.schema.json")
SOFTWARE = {"pyscf": "PySCF", "cp2k": "CP2K", "espresso": "Quantum ESPRESSO"}
VERSIONED = ("hifidata", "ase", "numpy", "h5py", "pyscf", "chgnet", "sevenn", "torch",
             "scikit-learn", "prefect")
#: force-magnitude histogram edges, eV/Å (the last bin takes everything above)
FORCE_BINS = (0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 1e9)


def build_card(data: ReleaseData, meta: dict[str, Any], files: list[dict[str, Any]],
               spec: dict[str, Any], selections: dict[str, Any],
               run_settings: dict[str, Any], split_settings: dict[str, Any]) -> dict[str, Any]:
    """The card of a release. ``meta``: name, version, extends, description, license,
    authors, citation, doi, links, created; ``files``: the data files; ``spec``: the
    campaign's spec (may be empty); ``selections``: name -> DIRECT parameters;
    ``run_settings``: rung -> how it ran (threads, rescues)."""
    counts = [Counter(numbers.tolist()) for numbers in data.numbers]
    elements = sorted({z for c in counts for z in c}, key=lambda z: chemical_symbols[z])
    total = Counter()
    for c in counts:
        total.update(c)
    nsites = sum(total.values())
    dims = sorted({tuple(int(b) for b in pbc) for pbc in data.pbc})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "units": UNITS,
        "files": files,
        "nconfigurations": len(data),
        "nsites": nsites,
        "elements": [chemical_symbols[z] for z in elements],
        "nelements": len(elements),
        "total_elements_ratios": [total[z] / nsites for z in elements],
        "nperiodic_dimensions": sorted({sum(d) for d in dims}),
        "dimension_types": [list(d) for d in dims],
        "chemical_formulas": _formulas(counts),
        "splits": {**split_settings,
                   "rule": "sha256(f'{seed}:{structure_id}') as a number in [0, 1): below "
                           "test_fraction is test, the next validation_fraction of the rest "
                           "validation, the rest train (docs/release.md)",
                   "nconfigurations": dict(Counter(data.split))},
        "rungs": [_rung(data, rung, counts, run_settings.get(rung.name))
                  for rung in data.rungs.values()],
        "sampler": _sampler(spec, selections),
        "code_versions": _code_versions(),
    }


def validate_card(card: dict[str, Any]) -> None:
    """Raise ReleaseError with the first place the card breaks its schema."""
    errors = sorted(_validator().iter_errors(card), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ReleaseError(f"dataset card {where}: {error.message}")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


# -- parts of the card -------------------------------------------------------------------------
def _formulas(counts: list[Counter]) -> list[dict[str, Any]]:
    by_formula: Counter = Counter()
    for c in counts:
        by_formula[tuple(sorted(c.items()))] += 1
    out = []
    for composition, n in by_formula.most_common():
        c = dict(composition)
        out.append({
            "chemical_formula_reduced": reduced_formula(c),
            "chemical_formula_hill": _hill(c),
            "elements": sorted(chemical_symbols[z] for z in c),
            "nelements": len(c),
            "nsites": sum(c.values()),
            "nconfigurations": n,
        })
    return out


def reduced_formula(counts: dict[int, int]) -> str:
    """OPTIMADE's chemical_formula_reduced: elements alphabetical, counts over their gcd."""
    divisor = reduce(gcd, counts.values())
    return "".join(f"{s}{n // divisor if n // divisor > 1 else ''}"
                   for s, n in sorted((chemical_symbols[z], n) for z, n in counts.items()))


def _hill(counts: dict[int, int]) -> str:
    return Atoms(numbers=[z for z, n in counts.items() for _ in range(n)]).get_chemical_formula(
        "hill")


def _rung(data: ReleaseData, rung: RungData, counts: list[Counter],
          run: dict[str, Any] | None) -> dict[str, Any]:
    ok = rung.ok()
    natoms = np.array([len(n) for n in data.numbers])
    energy = rung.energy[ok]
    per_atom = energy / natoms[ok]
    forces = [f for f, keep in zip(rung.forces, ok, strict=True) if keep]
    magnitudes = (np.linalg.norm(np.concatenate(forces), axis=1) if forces else np.zeros(0))
    stress = np.isfinite(rung.stress[ok]).all(axis=1)
    failed = [s for s in rung.status if s not in ("", "ok")]
    return {
        "name": rung.name,
        "method_id": rung.method_id,
        "method": _method(rung, run),
        "nconfigurations": int(ok.sum()),
        "failures": dict(Counter(failed)),
        "splits": dict(Counter(s for s, keep in zip(data.split, ok, strict=True) if keep)),
        "energy_count": int(ok.sum()),
        "energy_mean": _stat(np.mean, energy),
        "energy_variance": _stat(np.var, energy),
        "energy_per_atom_mean": _stat(np.mean, per_atom),
        "energy_per_atom_variance": _stat(np.var, per_atom),
        "atomic_forces_count": len(forces),
        "force_magnitudes": _distribution(magnitudes),
        "cauchy_stress_count": int(stress.sum()),
        "reference_energies": reference_energies(
            [c for c, keep in zip(counts, ok, strict=True) if keep], energy),
    }


def _method(rung: RungData, run: dict[str, Any] | None) -> dict[str, Any]:
    definition = dict(rung.definition)
    engine = definition["engine"]
    params = {k: v for k, v in definition.items() if k != "engine"}
    method = {
        "software": definition.get("software") if engine == "external"
        else SOFTWARE.get(engine, engine),
        "software_versions": engine_versions(rung),
        "method": Method(engine, params).describe(),
        "basis_set": definition.get("basis"),
        "settings": definition,  # everything that changes the number: the method_id's input
    }
    for key in ("xc", "theory", "dispersion", "kpoints", "smearing", "frozen_core"):
        if key in definition:
            method[key] = definition[key]
    pseudos = {k: definition[k] for k in ("potential", "potential_file", "pseudopotentials",
                                          "pseudo_sha256") if k in definition}
    if pseudos:
        method["pseudopotentials"] = pseudos
    if run:
        method["run_settings"] = run  # threads, ranks, time limits: how, not what
    return method


def reference_energies(counts: list[Counter], energy: np.ndarray) -> dict[str, Any]:
    """Per-element energies E ≈ Σ n_el e_el by least squares over a rung's configurations,
    and isolated-atom energies where the rung labeled single atoms.

    With fewer independent compositions than elements (a water-dimer dataset is all H4O2)
    the split between elements is not determined; the card says so instead of inventing one.
    """
    elements = sorted({z for c in counts for z in c}, key=lambda z: chemical_symbols[z])
    symbols = [chemical_symbols[z] for z in elements]
    out: dict[str, Any] = {"method": "least_squares", "elements": symbols}
    isolated = {chemical_symbols[next(iter(c))]: float(e)
                for c, e in zip(counts, energy, strict=True) if sum(c.values()) == 1}
    if isolated:
        out["isolated_atom"] = isolated
    if not counts:
        return {**out, "determined": False, "energies": None, "note": "no labels"}
    matrix = np.array([[c.get(z, 0) for z in elements] for c in counts], dtype=float)
    rank = int(np.linalg.matrix_rank(matrix))
    if rank < len(elements):
        return {**out, "determined": False, "energies": None,
                "note": f"{rank} independent composition(s) for {len(elements)} elements: "
                        "only combinations of the per-element energies are determined"}
    coefficients, *_ = np.linalg.lstsq(matrix, energy, rcond=None)
    residual = (energy - matrix @ coefficients) / matrix.sum(axis=1)
    return {**out, "determined": True,
            "energies": dict(zip(symbols, map(float, coefficients), strict=True)),
            "residual_rms_per_atom": float(np.sqrt(np.mean(residual**2)))}


def _distribution(values: np.ndarray) -> dict[str, Any]:
    if len(values) == 0:
        return {"count": 0}
    counts, _ = np.histogram(values, bins=FORCE_BINS)
    return {
        "count": len(values),
        "mean": float(values.mean()),
        "max": float(values.max()),
        "percentiles": {str(p): float(np.percentile(values, p)) for p in (50, 90, 99)},
        "histogram": {"edges": list(FORCE_BINS[:-1]), "counts": counts.tolist()},
    }


def _stat(function, values: np.ndarray) -> float | None:
    return float(function(values)) if len(values) else None


def _sampler(spec: dict[str, Any], selections: dict[str, Any]) -> dict[str, Any]:
    ladder = spec.get("ladder") or []
    return {
        "seeds": spec.get("seeds", []),
        "explore": spec.get("explore"),
        "select": spec.get("select"),
        "rungs": {r.get("name"): r.get("select") for r in ladder if isinstance(r, dict)},
        "selections": selections,
    }


def _code_versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


# -- README.md ---------------------------------------------------------------------------------
def render_readme(card: dict[str, Any]) -> str:
    """The card as a page to read (README.md of the release)."""
    lines = [f"# {card['name']} {card['version']}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    lines += [
        f"- License: {card['license']}",
        f"- Authors: {', '.join(a['name'] for a in card['authors']) or 'not given'}",
        f"- Created: {card['created']} by {card['created_by']}",
    ]
    if card.get("extends"):
        lines.append(f"- Extends: {card['extends']['name']} {card['extends']['version']}")
    if card.get("citation"):
        lines.append(f"- Cite: {card['citation']}")
    if card.get("doi"):
        lines.append(f"- DOI: {card['doi']}")
    lines += [
        f"- {card['nconfigurations']} configurations, {card['nsites']} atoms; elements "
        f"{', '.join(card['elements'])}; formulas "
        f"{', '.join(f['chemical_formula_reduced'] for f in card['chemical_formulas'][:10])}",
        "- Splits (by structure, the same in every rung): "
        + ", ".join(f"{k} {v}" for k, v in sorted(card["splits"]["nconfigurations"].items())),
        "",
        "## Methods (rungs)",
        "",
        "| rung | method | software | ok labels | failed | energy mean (eV) | "
        "median / 99th pct |F| (eV/Å) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for rung in card["rungs"]:
        m, forces = rung["method"], rung["force_magnitudes"]
        spread = (f"{forces['percentiles']['50']:.3f} / {forces['percentiles']['99']:.3f}"
                  if forces["count"] else "–")
        mean = "–" if rung["energy_mean"] is None else f"{rung['energy_mean']:.4f}"
        lines.append(
            f"| {rung['name']} | {m['method']} | {m['software']} "
            f"{', '.join(m['software_versions'])} | {rung['nconfigurations']} | "
            f"{sum(rung['failures'].values())} | {mean} | {spread} |")
    lines += ["", "Every setting of every method is in `dataset-card.json` "
              "(`rungs[].method.settings`); `method_id` is the SHA-256 of those settings.", "",
              "## Files", "", "| file | format | rung | entries |", "|---|---|---|---:|"]
    for f in card["files"]:
        lines.append(f"| {f['file']} | {f['format']} | {f.get('rung') or 'all'} | "
                     f"{f['entries']} |")
    lines += ["", "Units: " + ", ".join(f"{k} {v}" for k, v in card["units"].items()) + ".",
              "", "`sha256sum -c SHA256SUMS` (or `hifidata verify .`) checks every file.", ""]
    return "\n".join(lines)
