"""The campaign store: one HDF5 file per campaign, append-only, one writer.

Layout and guarantees are in docs/store-format.md. In short: structures, methods, labels and
records are append-only tables (hifidata.datasets.tables) that a kill at any moment leaves
readable and writable; selections are written whole by rebuilding the file into a copy that
replaces it; a lock file keeps a second writer out; readers open the file read-only without
HDF5 file locking, so `hifidata status` works while a campaign runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase import Atoms

from hifidata import __version__
from hifidata.calculators.base import Label, Method
from hifidata.datasets.tables import Rows, Schema, TableView, append, create_table, rebuild_file
from hifidata.errors import StoreError
from hifidata.structures import charge_of, spin_of, structure_id

FORMAT = "hifidata-store"
FORMAT_VERSION = 1
ID = "S64"  # SHA-256 hex digests

SCHEMAS = {
    "structures": Schema(
        columns={"structure_id": (ID, ()), "cell": ("f8", (3, 3)), "pbc": ("u1", (3,)),
                 "charge": ("i4", ()), "spin": ("i4", ())},
        per_atom={"numbers": ("u1", ()), "positions": ("f8", (3,))},
        texts=("origin",),
    ),
    "methods": Schema(columns={"method_id": (ID, ())}, texts=("name", "engine", "definition")),
    "labels": Schema(
        columns={"structure_id": (ID, ()), "method_id": (ID, ()), "energy": ("f8", ()),
                 "stress": ("f8", (6,)), "wall_time": ("f8", ())},
        per_atom={"forces": ("f8", (3,))},
        texts=("status", "message", "provenance"),
    ),
    "records": Schema(columns={}, texts=("kind", "key", "created", "data")),
}


@dataclass
class LabelSet:
    """The labels of one method: the latest row per structure, in store order."""

    method_id: str
    structure_ids: list[str]
    status: list[str]
    energy: np.ndarray
    forces: list[np.ndarray]
    stress: np.ndarray
    wall_time: np.ndarray
    message: list[str]
    provenance: list[str]

    def __len__(self) -> int:
        return len(self.structure_ids)

    def ok(self) -> LabelSet:
        return self.subset([i for i, s in enumerate(self.status) if s == "ok"])

    def subset(self, rows: Sequence[int]) -> LabelSet:
        rows = list(rows)
        return LabelSet(
            self.method_id,
            [self.structure_ids[i] for i in rows],
            [self.status[i] for i in rows],
            self.energy[rows],
            [self.forces[i] for i in rows],
            self.stress[rows],
            self.wall_time[rows],
            [self.message[i] for i in rows],
            [self.provenance[i] for i in rows],
        )

    def for_ids(self, ids: Sequence[str]) -> LabelSet:
        """The labels of ``ids`` in that order (ids without a label are left out)."""
        where = {sid: i for i, sid in enumerate(self.structure_ids)}
        return self.subset([where[sid] for sid in ids if sid in where])


@dataclass
class Selection:
    """A stratified pick: the pool it chose from, what it chose, and the arrays behind it."""

    name: str
    pool_ids: list[str]
    selected_ids: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


class Store:
    """A campaign store. ``Store(path)`` reads; ``Store(path, "a")`` is the single writer.

    Every write method is one transaction: it is in the file whole, or not at all.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError("mode is 'r' (read) or 'a' (the single writer)")
        self.path = Path(path)
        self.mode = mode
        self._lock_file = None
        if mode == "r":
            self._check_readable()
            return
        if self.path.exists():
            self._check_readable()
        self._take_writer_lock()
        if not self.path.exists():
            self._initialize()

    # -- life cycle ------------------------------------------------------------------------
    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # a copy sent to another process (Prefect ships a flow's parameters with its tasks'
        # context) reads; the writer's lock stays with the writer
        return {**self.__dict__, "mode": "r", "_lock_file": None}

    def _check_readable(self) -> None:
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such store")
        try:
            with self._read() as f:
                if f.attrs.get("format") != FORMAT:
                    raise StoreError(f"{self.path}: not a hifidata store")
                version = int(f.attrs.get("format_version", 0))
        except OSError as error:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({error})") from None
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format {version} is newer than this hifidata "
                f"({FORMAT_VERSION}); upgrade hifidata"
            )

    def _take_writer_lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreError(
                f"{self.path}: another process is writing this store (a campaign still running?)"
            ) from None
        lock.write(f"{os.getpid()} {socket.gethostname()}")  # who writes, for the dashboard
        lock.flush()
        self._lock_file = lock

    def _initialize(self) -> None:
        # built under a temporary name and renamed: a store file is complete or absent
        partial = self.path.with_name(self.path.name + ".partial")
        with h5py.File(partial, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["created"] = utc_now()
            f.attrs["created_by"] = f"hifidata {__version__}"
            for name, schema in SCHEMAS.items():
                create_table(f, name, schema)
            f.create_group("selections")
        os.replace(partial, self.path)

    @contextmanager
    def _read(self) -> Iterator[h5py.File]:
        with h5py.File(self.path, "r", locking=False) as f:
            yield f

    @contextmanager
    def _table(self, name: str) -> Iterator[TableView]:
        with self._read() as f:
            yield TableView(f[name], SCHEMAS[name])

    def _append(self, name: str, rows: Rows) -> None:
        self._writable()
        append(self.path, name, SCHEMAS[name], rows,
               rebuild=lambda needs: rebuild_file(self.path, SCHEMAS, needs))

    def _writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path}: opened read-only")

    # -- structures --------------------------------------------------------------------------
    def add_structures(
        self, structures: Sequence[Atoms], origins: Sequence[Mapping[str, Any]] | None = None
    ) -> list[str]:
        """Store structures not stored yet; return the structure_id of every input structure."""
        self._writable()
        origins = origins if origins is not None else [{}] * len(structures)
        if len(origins) != len(structures):
            raise ValueError("one origin per structure")
        ids = [structure_id(atoms) for atoms in structures]
        known = set(self.structure_ids())
        new = []
        for sid, atoms, origin in zip(ids, structures, origins, strict=True):
            if sid not in known:
                known.add(sid)
                new.append((sid, atoms, origin))
        if new:
            self._append("structures", Rows(
                columns={
                    "structure_id": [sid.encode() for sid, _, _ in new],
                    "cell": [np.asarray(a.get_cell()) for _, a, _ in new],
                    "pbc": [a.get_pbc().astype("u1") for _, a, _ in new],
                    "charge": [charge_of(a) for _, a, _ in new],
                    "spin": [spin_of(a) for _, a, _ in new],
                },
                per_atom={
                    "numbers": [a.get_atomic_numbers() for _, a, _ in new],
                    "positions": [a.get_positions() for _, a, _ in new],
                },
                texts={"origin": [json.dumps(dict(o), sort_keys=True) for _, _, o in new]},
            ))
        return ids

    def structure_ids(self) -> list[str]:
        with self._table("structures") as table:
            return table.ids("structure_id")

    def structures(self, ids: Sequence[str] | None = None) -> list[Atoms]:
        """Structures as ase.Atoms (with info charge and spin), in the order of ``ids``."""
        with self._table("structures") as table:
            rows = _rows_of(table.ids("structure_id"), ids)
            cells, pbcs = table.column("cell"), table.column("pbc").astype(bool)
            charges, spins = table.column("charge"), table.column("spin")
            numbers, positions = table.per_atom("numbers"), table.per_atom("positions")
        out = []
        for row in rows:
            atoms = Atoms(numbers=numbers[row], positions=positions[row], cell=cells[row],
                          pbc=pbcs[row])
            atoms.info.update(charge=int(charges[row]), spin=int(spins[row]))
            out.append(atoms)
        return out

    def origins(self, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        with self._table("structures") as table:
            origins = table.text("origin")
            return [json.loads(origins[r]) for r in _rows_of(table.ids("structure_id"), ids)]

    # -- methods and labels ------------------------------------------------------------------
    def add_method(self, method: Method) -> str:
        """Register a rung (idempotent); return its method_id."""
        self._writable()
        mid = method.method_id
        if mid not in {m["method_id"] for m in self.methods()}:
            self._append("methods", Rows(
                columns={"method_id": [mid.encode()]},
                texts={"name": [method.name], "engine": [method.engine],
                       "definition": [method.canonical_json()]},
            ))
        return mid

    def methods(self) -> list[dict[str, Any]]:
        """Registered rungs: name, method_id, engine and the full definition."""
        with self._table("methods") as table:
            return [
                {"method_id": mid, "name": name, "engine": engine, "definition": json.loads(d)}
                for mid, name, engine, d in zip(
                    table.ids("method_id"), table.text("name"), table.text("engine"),
                    table.text("definition"), strict=True,
                )
            ]

    def method_id(self, name: str) -> str:
        """The method_id of the rung registered last under ``name``."""
        matches = [m["method_id"] for m in self.methods() if m["name"] == name]
        if not matches:
            raise StoreError(f"{self.path}: no rung named {name!r}")
        return matches[-1]

    def add_labels(self, labels: Sequence[Label]) -> None:
        if not labels:
            return
        self._append("labels", Rows(
            columns={
                "structure_id": [lab.structure_id.encode() for lab in labels],
                "method_id": [lab.method_id.encode() for lab in labels],
                "energy": [lab.energy for lab in labels],
                "stress": [np.full(6, np.nan) if lab.stress is None else lab.stress
                           for lab in labels],
                "wall_time": [lab.wall_time for lab in labels],
            },
            per_atom={"forces": [np.zeros((0, 3)) if lab.forces is None else lab.forces
                                 for lab in labels]},
            texts={
                "status": [lab.status for lab in labels],
                "message": [lab.message for lab in labels],
                "provenance": [json.dumps(lab.provenance, default=_json_default)
                               for lab in labels],
            },
        ))

    def labels(self, method_id: str) -> LabelSet:
        """Every structure's latest label for ``method_id`` (ok and failed)."""
        with self._table("labels") as table:
            latest = _latest_rows(table, method_id)
            rows = list(latest.values())
            forces = table.per_atom("forces")
            status, message = table.text("status"), table.text("message")
            provenance = table.text("provenance")
            return LabelSet(
                method_id,
                list(latest),
                [status[r] for r in rows],
                table.column("energy")[rows],
                [forces[r] for r in rows],
                table.column("stress")[rows],
                table.column("wall_time")[rows],
                [message[r] for r in rows],
                [provenance[r] for r in rows],
            )

    def label_rows(self, provenance_from: int | None = 0) -> dict[str, Any]:
        """Every label row of every method, without energies or forces (cheap to read whole):
        structure_id, method_id, status, message, wall_time, and the provenance (JSON text)
        of rows ``provenance_from`` on (rows never change: a reader that has the earlier
        ones need not decode them again; None: no provenance)."""
        with self._table("labels") as table:
            return {
                "structure_id": table.ids("structure_id"), "method_id": table.ids("method_id"),
                "status": table.text("status"), "message": table.text("message"),
                "wall_time": table.column("wall_time"),
                "provenance": ([] if provenance_from is None
                               else table.text("provenance", provenance_from)),
            }

    def atomic_numbers(self) -> tuple[list[str], list[np.ndarray]]:
        """Every structure's id and atomic numbers, in store order (positions are not read)."""
        with self._table("structures") as table:
            return table.ids("structure_id"), table.per_atom("numbers")

    def labeled_ids(self, method_id: str) -> dict[str, str]:
        """structure_id -> status of its latest label for ``method_id``."""
        with self._table("labels") as table:
            status = table.text("status")
            return {sid: status[row] for sid, row in _latest_rows(table, method_id).items()}

    # -- selections --------------------------------------------------------------------------
    def add_selection(self, selection: Selection) -> None:
        """Write a selection whole; a name is written once (selections are part of history)."""
        self._writable()
        if selection.name in self.selection_names():
            raise StoreError(f"{self.path}: selection {selection.name!r} exists already")

        def write(f: h5py.File) -> None:
            group = f["selections"].create_group(selection.name)
            group.create_dataset("pool_ids", data=np.array(selection.pool_ids, dtype=ID))
            group.create_dataset("selected_ids", data=np.array(selection.selected_ids, dtype=ID))
            for name, array in selection.arrays.items():
                group.create_dataset(name, data=np.asarray(array))
            group.attrs["params"] = json.dumps(selection.params, sort_keys=True,
                                               default=_json_default)
            group.attrs["created"] = utc_now()

        rebuild_file(self.path, SCHEMAS, change=write)  # new groups change the file's structure

    def selection_names(self) -> list[str]:
        with self._read() as f:
            return list(f["selections"])

    def selection(self, name: str, arrays: Sequence[str] | None = None) -> Selection:
        """A selection with its arrays, or only those named in ``arrays`` (the features of a
        big pool are large; the dashboard needs the embedding)."""
        with self._read() as f:
            if name not in f["selections"]:
                raise StoreError(f"{self.path}: no selection named {name!r}")
            group = f["selections"][name]
            kept = {
                key: group[key][()] for key in group if key not in ("pool_ids", "selected_ids")
                and (arrays is None or key in arrays)
            }
            return Selection(
                name,
                group["pool_ids"][()].astype(str).tolist(),
                group["selected_ids"][()].astype(str).tolist(),
                kept,
                json.loads(group.attrs["params"]),
            )

    # -- records: stage completions, models, splits, reports ---------------------------------
    def put_record(self, kind: str, key: str, data: Mapping[str, Any]) -> None:
        """Append a JSON record; the latest record of a (kind, key) wins."""
        text = json.dumps(dict(data), sort_keys=True, default=_json_default)
        self._append("records", Rows(columns={}, texts={
            "kind": [kind], "key": [key], "created": [utc_now()], "data": [text]}))

    def records(self, kind: str) -> dict[str, dict[str, Any]]:
        """The latest record of every key of ``kind``, in the order they were first written."""
        with self._table("records") as table:
            out: dict[str, dict[str, Any]] = {}
            for k, key, data in zip(
                table.text("kind"), table.text("key"), table.text("data"), strict=True
            ):
                if k == kind:
                    out[key] = json.loads(data)
            return out

    def record(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.records(kind).get(key)

    def record_history(self, kind: str, key: str | None = None) -> list[dict[str, Any]]:
        """Every record of ``kind`` (and ``key``) ever written, oldest first, each as
        {"key", "created", "data"}: the campaign's history, e.g. one evaluation per run."""
        with self._table("records") as table:
            return [
                {"key": k, "created": created, "data": json.loads(data)}
                for kd, k, created, data in zip(table.text("kind"), table.text("key"),
                                                table.text("created"), table.text("data"),
                                                strict=True)
                if kd == kind and (key is None or k == key)
            ]

    def writer(self) -> dict[str, Any] | None:
        return writer_of(self.path)

    # -- paths of files that belong to the campaign ------------------------------------------
    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the store's folder (records keep campaigns relocatable)."""
        return os.path.relpath(Path(path).resolve(), self.path.parent.resolve())

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()

    def info(self) -> dict[str, Any]:
        with self._read() as f:
            return {key: _plain(value) for key, value in f.attrs.items()}


def writer_of(path: str | os.PathLike) -> dict[str, Any] | None:
    """The pid and host of the last process that opened the store at ``path`` for writing
    (from its lock file), and whether it holds the store now ("alive"; None where that
    cannot be told from here: another host, or no /proc/locks). Reads no HDF5."""
    lock = Path(path).with_name(Path(path).name + ".lock")
    try:
        pid, host = lock.read_text().split()
    except (OSError, ValueError):  # no lock file, or one from before hosts were recorded
        return None
    alive = _holds_lock(int(pid), lock) if host == socket.gethostname() else None
    return {"pid": int(pid), "host": host, "alive": alive}


def _holds_lock(pid: int, lock: Path) -> bool | None:
    """Whether ``pid`` holds a flock on ``lock``, from Linux's /proc/locks (which lists every
    lock with its pid and inode); asking for the lock ourselves could turn a writer away."""
    try:
        inode, table = lock.stat().st_ino, Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.replace("->", "").split()  # "1: FLOCK ADVISORY WRITE pid maj:min:inode …"
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[4] == str(pid) and \
                fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _latest_rows(table: TableView, method_id: str) -> dict[str, int]:
    """structure_id -> row of its latest label for ``method_id``, in order of those rows."""
    latest: dict[str, int] = {}
    for row, (sid, mid) in enumerate(
        zip(table.ids("structure_id"), table.ids("method_id"), strict=True)
    ):
        if mid == method_id:
            latest.pop(sid, None)  # re-inserted: the order follows the latest row
            latest[sid] = row
    return latest


def _rows_of(all_ids: Sequence[str], ids: Sequence[str] | None) -> list[int]:
    if ids is None:
        return list(range(len(all_ids)))
    where = {sid: row for row, sid in enumerate(all_ids)}
    missing = [sid for sid in ids if sid not in where]
    if missing:
        raise StoreError(f"{len(missing)} structure id(s) not in the store, e.g. {missing[0]}")
    return [where[sid] for sid in ids]


def utc_now() -> str:
    """Now, in UTC, to the second: how the store stamps what it records."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a record")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
