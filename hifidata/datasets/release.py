"""Dataset releases: one extxyz file per rung, a JSON dataset card, and a SHA-256 manifest.

Key names in the extxyz files (also written into the card):

- ``REF_energy`` (info): the rung's total energy, eV
- ``REF_forces`` (per-atom array): the rung's forces, eV/Å
- ``REF_stress`` (info, when the engine gave one): Voigt xx yy zz yz xz xy, eV/Å³, ASE sign
- ``structure_id``, ``method_id``, ``split`` (train / validation / test), ``charge``, ``spin``
- ``origin_*``: where the structure came from (protocol, temperature, step, seed, parent)

``REF_`` keeps the labels apart from what ASE treats as a calculator's own results, the
convention MACE and NequIP training scripts read (``energy_key="REF_energy"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import write

from hifidata import __version__
from hifidata.datasets.store import Store

CARD = "dataset-card.json"
MANIFEST = "SHA256SUMS"
KEYS = {
    "REF_energy": "total energy of the rung, eV",
    "REF_forces": "forces of the rung, eV/Å (per-atom array)",
    "REF_stress": "stress, Voigt order xx yy zz yz xz xy, eV/Å³, ASE sign (periodic only)",
    "structure_id": "SHA-256 of numbers, positions and cell (1e-6 Å), pbc, charge, spin",
    "method_id": "SHA-256 of the rung's canonical method definition",
    "split": "train / validation / test, by structure and the same across rungs",
    "charge": "total charge, e",
    "spin": "spin multiplicity 2S+1",
    "origin_*": "how the structure was made: protocol, temperature (K), step, seed, parent",
}
UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "positions": "Å"}
VERSIONED = ("ase", "numpy", "pyscf", "chgnet", "torch", "h5py", "scikit-learn", "prefect")


def export_release(
    store: Store, out_dir: str | Path, license: str = "CC-BY-4.0", description: str = ""
) -> dict[str, Any]:
    """Write a release of every rung's ok labels to ``out_dir`` (replaced whole)."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    split = store.record("split", "campaign") or {}
    rungs = []
    for method in _latest_methods(store):
        rungs.append(_write_rung(store, method, split, partial))
    spec = store.record("run", "spec") or {}
    card = {
        "format": "hifidata-release",
        "format_version": 1,
        "name": spec.get("name", store.path.stem),
        "description": description,
        "license": license,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": f"hifidata {__version__}",
        "units": UNITS,
        "keys": KEYS,
        "rungs": rungs,
        "structures": len({sid for r in rungs for sid in r.pop("_ids")}),
        "selection": {name: s for name, s in _selection_params(store).items()},
        "code_versions": _code_versions(),
    }
    (partial / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
    write_manifest(partial)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return {"files": sorted(p.name for p in out_dir.iterdir()), "structures": card["structures"],
            "labels": {r["name"]: r["labels_ok"] for r in rungs}}


def write_manifest(folder: Path) -> Path:
    """``sha256sum -c SHA256SUMS`` verifies every other file of the release."""
    lines = [
        f"{sha256_file(path)}  {path.name}"
        for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST
    ]
    manifest = folder / MANIFEST
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _latest_methods(store: Store) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for method in store.methods():
        latest[method["name"]] = method  # a rung redefined later wins
    return list(latest.values())


def _write_rung(store: Store, method: dict, split: dict, folder: Path) -> dict[str, Any]:
    labels = store.labels(method["method_id"])
    ok = labels.ok()
    structures = store.structures(ok.structure_ids)
    origins = store.origins(ok.structure_ids)
    frames = []
    for i, (atoms, origin) in enumerate(zip(structures, origins, strict=True)):
        frames.append(_frame(atoms, origin, ok, i, method["method_id"], split))
    path = folder / f"{method['name']}.extxyz"
    write(path, frames, format="extxyz")
    versions = sorted({json.loads(p).get("engine_version", "?") for p in ok.provenance})
    return {
        "name": method["name"],
        "file": path.name,
        "method_id": method["method_id"],
        "method": method["definition"],
        "engine_versions": versions,
        "labels_ok": len(ok),
        "labels_failed": dict(Counter(s for s in labels.status if s != "ok")),
        "structures_per_split": dict(Counter(split.get(s, "unassigned") for s in ok.structure_ids)),
        "wall_time_s": float(np.sum(ok.wall_time)),
        "_ids": ok.structure_ids,
    }


def _frame(atoms: Atoms, origin: dict, labels, i: int, method_id: str, split: dict) -> Atoms:
    sid = labels.structure_ids[i]
    frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.info.update(
        REF_energy=float(labels.energy[i]), structure_id=sid, method_id=method_id,
        split=split.get(sid, "unassigned"), charge=atoms.info["charge"], spin=atoms.info["spin"],
    )
    frame.info.update(
        {f"origin_{k}": v for k, v in origin.items() if isinstance(v, str | int | float)}
    )
    if np.all(np.isfinite(labels.stress[i])):
        frame.info["REF_stress"] = np.asarray(labels.stress[i])
    frame.arrays["REF_forces"] = np.asarray(labels.forces[i])
    return frame


def _selection_params(store: Store) -> dict[str, Any]:
    out = {}
    for name in store.selection_names():
        selection = store.selection(name)
        out[name] = {"pool": len(selection.pool_ids), "selected": len(selection.selected_ids),
                     **selection.params}
    return out


def _code_versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file, read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
