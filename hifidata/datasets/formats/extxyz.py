"""extxyz release files: ``<rung>.extxyz`` per rung (its ok labels), ``<rung>.failed.extxyz``
with its failed ones (left out with ``--only-ok``). Keys in docs/release-format.md.

In ``<rung>.extxyz`` the ``REF_`` keys are that rung's labels; the labels other rungs gave
the same structure ride along suffixed with the rung's name (``REF_energy_ccsdt``), which is
what Δ-learning and multi-fidelity training read. ``REF_`` keeps labels apart from what ASE
loads into a calculator (plain ``energy``/``forces``), the convention MACE and NequIP read
(``energy_key="REF_energy"``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from hifidata.datasets.formats import Entry
from hifidata.datasets.release_data import ReleaseData, ReleaseError, RungData

FAILED = ".failed.extxyz"
#: info keys every frame has (the failed files add ``status`` and ``message``)
REQUIRED = ("structure_id", "method_id", "split", "config_type", "charge", "spin")
KEYS = {
    "REF_energy": "total energy of the file's rung, eV (info)",
    "REF_forces": "forces of the file's rung, eV/Å (per-atom array)",
    "REF_stress": "stress of the file's rung, Voigt xx yy zz yz xz xy, eV/Å³, ASE sign "
                  "(info; periodic structures only)",
    "REF_energy_<rung>, REF_forces_<rung>, REF_stress_<rung>": "another rung's label of the "
                  "same structure, where it has an ok one",
    "structure_id": "SHA-256 of numbers, positions and cell (1e-6 Å), pbc, charge, spin",
    "method_id": "SHA-256 of the file's rung's canonical method definition",
    "split": "train / validation / test, by structure_id hash, the same in every file",
    "config_type": "how the structure was made: md, ramp, rattle, seed, scan, imported, …",
    "charge": "total charge, e",
    "spin": "spin multiplicity 2S+1",
    "origin_*": "the origin's settings: temperature (K), step, seed, parent, …",
    "status, message": "failure class and message (failed files only)",
}


def write(data: ReleaseData, folder: Path, name: str,
          progress: Callable[[int], None] | None = None) -> list[str]:
    files = []
    for rung in data.rungs.values():
        ok = np.flatnonzero(rung.ok())
        failed = np.flatnonzero(rung.labeled() & ~rung.ok())
        for rows, file in ((ok, f"{rung.name}.extxyz"), (failed, f"{rung.name}{FAILED}")):
            if len(rows) == 0:
                continue
            ase.io.write(folder / file, [_frame(data, rung, i) for i in rows], format="extxyz")
            files.append(file)
            if progress:
                progress(len(rows))
    return files


def _frame(data: ReleaseData, rung: RungData, i: int) -> Atoms:
    atoms = data.atoms(i)
    atoms.info.update(structure_id=data.structure_ids[i], method_id=rung.method_id,
                      split=data.split[i], config_type=data.config_type(i))
    atoms.info.update({f"origin_{k}": v for k, v in data.origins[i].items()
                       if k != "protocol" and isinstance(v, str | int | float)})
    if rung.status[i] != "ok":
        # one line, no quotes: extxyz comment lines hold key=value pairs
        atoms.info.update(status=rung.status[i],
                          message=" ".join(rung.message[i].replace('"', "'").split()))
        return atoms
    for other in data.rungs.values():
        if other.status[i] == "ok":
            suffix = "" if other is rung else f"_{other.name}"
            atoms.info[f"REF_energy{suffix}"] = float(other.energy[i])
            atoms.arrays[f"REF_forces{suffix}"] = other.forces[i]
            if np.isfinite(other.stress[i]).all():
                atoms.info[f"REF_stress{suffix}"] = other.stress[i]
    return atoms


def read(folder: Path, files: list[str]) -> list[Entry]:
    entries = []
    for file in files:
        failed = file.endswith(FAILED)
        rung = file.removesuffix(FAILED if failed else ".extxyz")
        for index, atoms in enumerate(ase.io.iread(folder / file, index=":", format="extxyz")):
            entries.append(_entry(atoms, rung, failed, f"{file} frame {index}"))
    return entries


def _entry(atoms: Atoms, rung: str, failed: bool, where: str) -> Entry:
    required = REQUIRED + (("status", "message") if failed else ("REF_energy",))
    missing = [key for key in required if key not in atoms.info]
    if not failed and "REF_forces" not in atoms.arrays:
        missing.append("REF_forces")
    if missing:
        raise ReleaseError(f"{where}: no {missing[0]!r}")
    info = atoms.info
    stress = info.get("REF_stress")
    if stress is not None and np.shape(stress) != (6,):
        raise ReleaseError(f"{where}: REF_stress has shape {np.shape(stress)}, not (6,)")
    structure = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    structure.info.update(charge=int(info["charge"]), spin=int(info["spin"]))
    return Entry(
        structure_id=str(info["structure_id"]), rung=rung, split=str(info["split"]),
        status=str(info["status"]) if failed else "ok",
        energy=float("nan") if failed else float(info["REF_energy"]),
        forces=None if failed else np.asarray(atoms.arrays["REF_forces"], dtype=float),
        stress=None if stress is None else np.asarray(stress, dtype=float),
        atoms=structure,
    )
