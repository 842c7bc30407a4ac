"""ASE database release: one SQLite row per label (structure × rung), ok or failed.

``ase.db.connect("release/x.db").select(rung="ccsdt", split="train")`` gives the rows of one
rung; an ok row carries energy, forces and (periodic structures) stress as ASE properties, so
``row.toatoms().get_potential_energy()`` works. docs/release-format.md has the keys.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ase.db
import numpy as np
from ase import Atoms
from ase.db.core import now
from ase.db.row import AtomsRow

from hifidata.datasets.formats import Entry
from hifidata.datasets.release_data import UNITS, ReleaseData, ReleaseError, RungData

FORMAT = "hifidata-release-asedb"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
# "charge" and the like are ase.db's own columns (ase.db.core.reserved_keys, numeric_keys)
KEYS = (
    "rung",
    "split",
    "origin",
    "config_type",
    "status",
    "structure_id",
    "method_id",
    "total_charge",
    "multiplicity",
)
PROGRESS_EVERY = 1000
SQLITE_MAGIC = b"SQLite format 3\x00"


# -- writing ---------------------------------------------------------------------------------
def write(
    data: ReleaseData,
    folder: Path,
    name: str,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write ``<name>.db`` into ``folder``, one row per label, structure by structure (its
    rungs in ladder order); ``progress(n)`` every 1000 rows."""
    file_name = f"{name}.db"
    path = Path(folder) / file_name
    path.unlink(missing_ok=True)  # ase.db would append to an old file
    db = ase.db.connect(path, type="db", use_lock_file=False)
    written = 0
    with db:  # one transaction: SQLite commits once, at the end
        db.metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "rungs": list(data.rungs),
            "units": UNITS,
        }
        for i, rung in _labels(data):
            try:
                db.write(
                    _row(data, rung, i),
                    key_value_pairs=_keys(data, rung, i),
                    data={"origin": data.origins[i], "message": rung.message[i]},
                )
            except ValueError as error:  # ase.db refuses a text value that reads as a number
                raise ReleaseError(
                    f"{path}: structure {data.structure_ids[i]}, rung {rung.name}: {error}"
                ) from None
            written += 1
            if progress is not None and written % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
    if progress is not None and written % PROGRESS_EVERY:
        progress(written % PROGRESS_EVERY)
    return [file_name]


def _labels(data: ReleaseData) -> Iterator[tuple[int, RungData]]:
    for i in range(len(data)):
        for rung in data.rungs.values():
            if rung.status[i]:
                yield i, rung


def _row(data: ReleaseData, rung: RungData, i: int) -> AtomsRow:
    """The row as ase.db stores it. Built directly, not from Atoms with a calculator: ase.db
    then compares the calculator's atoms with the row's at every property, which took half
    the write time."""
    row: dict[str, Any] = {
        "numbers": np.asarray(data.numbers[i]),
        "positions": np.asarray(data.positions[i], dtype=np.float64),
        "cell": np.asarray(data.cell[i], dtype=np.float64),
        "pbc": np.asarray(data.pbc[i], dtype=bool),
        "unique_id": _unique_id(data.structure_ids[i], rung.method_id),
        "ctime": now(),
        "user": "hifidata",
    }
    if rung.status[i] == "ok":
        row.update(
            calculator="unknown",
            calculator_parameters={},
            energy=float(rung.energy[i]),
            forces=np.asarray(rung.forces[i]),
        )
        if np.isfinite(rung.stress[i]).all():
            row["stress"] = np.asarray(rung.stress[i], dtype=np.float64)
    return AtomsRow(row)


def _unique_id(structure_id: str, method_id: str) -> str:
    # the same label keeps its unique_id in every release (ase.db's own are random)
    return hashlib.sha256(f"{structure_id}:{method_id}".encode()).hexdigest()[:32]


def _keys(data: ReleaseData, rung: RungData, i: int) -> dict[str, str | int]:
    return {
        "rung": rung.name,
        "split": data.split[i],
        "origin": data.config_type(i),
        "config_type": data.config_type(i),
        "status": rung.status[i],
        "structure_id": data.structure_ids[i],
        "method_id": rung.method_id,
        "total_charge": int(data.charge[i]),
        "multiplicity": int(data.spin[i]),
    }


# -- reading and checking --------------------------------------------------------------------
def read(folder: Path, files: list[str]) -> list[Entry]:
    """Every row of ``files`` as an Entry, checking the documented keys: ReleaseError on the
    first row or metadata that breaks them."""
    entries: list[Entry] = []
    for file_name in files:
        entries += _read_file(Path(folder) / file_name)
    return entries


def _fail(path: Path, what: str) -> ReleaseError:
    return ReleaseError(f"{path}: {what}")


def _read_file(path: Path) -> list[Entry]:
    if not path.is_file():
        raise _fail(path, "missing")
    with path.open("rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:  # ase.db would make an empty file a db
            raise _fail(path, "not an SQLite database")
    db = ase.db.connect(path, type="db", use_lock_file=False)
    try:
        with db:  # one connection: without it ase.db opens one per row
            rungs = _check_metadata(path, db.metadata)
            entries = [_entry(path, row, rungs) for row in db.select()]
    except sqlite3.DatabaseError as error:
        raise _fail(path, f"not an ASE database ({error})") from None
    _check_unique(path, entries)
    return entries


def _check_unique(path: Path, entries: list[Entry]) -> None:
    seen = set()
    for entry in entries:
        key = (entry.structure_id, entry.rung)
        if key in seen:
            raise _fail(path, f"two rows label structure {key[0]} in rung {key[1]}")
        seen.add(key)


def _check_metadata(path: Path, metadata: dict[str, Any]) -> list[str]:
    """The rung names, after checking the metadata."""
    for key in ("format", "format_version", "name", "rungs", "units"):
        if key not in metadata:
            raise _fail(path, f"metadata has no {key!r}")
    if metadata["format"] != FORMAT:
        raise _fail(path, f"metadata format {metadata['format']!r}, expected {FORMAT!r}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise _fail(
            path,
            f"metadata format_version {metadata['format_version']!r}, this "
            f"hifidata reads {FORMAT_VERSION}",
        )
    rungs = metadata["rungs"]
    if not isinstance(rungs, list) or not rungs or not all(isinstance(r, str) for r in rungs):
        raise _fail(path, f"metadata rungs is not a list of rung names: {rungs!r}")
    if metadata["units"] != UNITS:
        raise _fail(path, f"metadata units {metadata['units']!r}, expected {UNITS!r}")
    return rungs


def _entry(path: Path, row: AtomsRow, rungs: list[str]) -> Entry:
    _check_row(path, row, rungs)
    keys = row.key_value_pairs
    atoms = Atoms(numbers=row.numbers, positions=row.positions, cell=row.cell, pbc=row.pbc)
    atoms.info.update(charge=int(keys["total_charge"]), spin=int(keys["multiplicity"]))
    ok = keys["status"] == "ok"
    stress = row.get("stress")
    return Entry(
        structure_id=keys["structure_id"],
        rung=keys["rung"],
        split=keys["split"],
        status=keys["status"],
        energy=float(row.energy) if ok else float("nan"),
        forces=np.array(row.forces) if ok else None,
        stress=None if stress is None or np.isnan(stress).all() else np.array(stress),
        atoms=atoms,
    )


def _check_row(path: Path, row: AtomsRow, rungs: list[str]) -> None:
    keys = row.key_value_pairs
    for key in KEYS:
        if key not in keys:
            raise _fail(path, f"row {row.id} has no key {key!r}")
        kind = int if key in ("total_charge", "multiplicity") else str
        if not isinstance(keys[key], kind):
            raise _fail(path, f"row {row.id}: {key}={keys[key]!r} is not a {kind.__name__}")
    if keys["rung"] not in rungs:
        raise _fail(
            path, f"row {row.id}: unknown rung {keys['rung']!r} (rungs: {', '.join(rungs)})"
        )
    if keys["split"] not in SPLITS:
        raise _fail(path, f"row {row.id}: split {keys['split']!r} (splits: {', '.join(SPLITS)})")
    for key in ("origin", "message"):
        if key not in row.data:
            raise _fail(path, f"row {row.id} has no data {key!r}")
    if not keys["status"]:
        raise _fail(path, f"row {row.id} has an empty status")
    ok = keys["status"] == "ok"
    if ok and (row.get("energy") is None or row.get("forces") is None):
        raise _fail(path, f"row {row.id} is ok but has no energy or forces")
    if ok and np.shape(row.forces) != (row.natoms, 3):
        raise _fail(
            path,
            f"row {row.id} has forces of shape {np.shape(row.forces)}, expected ({row.natoms}, 3)",
        )
    if not ok and row.get("energy") is not None:
        raise _fail(path, f"row {row.id} has status {keys['status']!r} but an energy")
