"""Append-only tables in one HDF5 file that survive a kill at any moment.

HDF5 updates its own structure (chunk indexes, heaps, the end-of-file address) in place, so a
process killed while HDF5 grows a dataset can leave a file that reads but no longer writes.
These tables avoid that by never changing the file's structure on the common path:

- every dataset is allocated up front with room to spare (contiguous, written at creation);
- text is stored as UTF-8 bytes in a preallocated pool, not as HDF5 variable-length strings;
- an append fills free rows, closes the file, then writes the table's ``committed`` counters in
  a second short session, so the counters never reach the disk before the rows they count;
- anything structural (a table outgrowing its room, a new group) rebuilds the whole file into a
  copy and renames it over the original: the file is always the old one or the new one.

A reader reads ``committed`` first and then only the rows it counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

INITIAL_ROWS = 1024
ATOMS_PER_ROW = 16
BYTES_PER_TEXT = 256


@dataclass(frozen=True)
class Schema:
    """Columns of a table: per row, per atom (ragged, sharing one index), and text."""

    columns: Mapping[str, tuple[str, tuple[int, ...]]]
    per_atom: Mapping[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    texts: tuple[str, ...] = ()

    def counters(self) -> list[str]:
        return ["rows", "atoms", *self.texts]


@dataclass
class Rows:
    """Rows to append: equal-length columns, per-atom arrays per row, strings per row."""

    columns: Mapping[str, Sequence | np.ndarray]
    per_atom: Mapping[str, Sequence[np.ndarray]] = field(default_factory=dict)
    texts: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        first = next(iter(self.columns.values()), None)
        if first is None:
            first = next(iter(self.texts.values()))
        return len(first)


class TableView:
    """Read access to one table, limited to its committed rows."""

    def __init__(self, group: h5py.Group, schema: Schema):
        self.group, self.schema = group, schema
        self.committed = dict(zip(schema.counters(), group["committed"][()].tolist(), strict=True))

    @property
    def rows(self) -> int:
        return self.committed["rows"]

    def column(self, name: str) -> np.ndarray:
        return self.group[name][: self.rows]

    def ids(self, name: str) -> list[str]:
        return self.column(name).astype(str).tolist()

    def per_atom(self, name: str) -> list[np.ndarray]:
        values = self.group[name][: self.committed["atoms"]]
        starts, counts = self.column("atom_start"), self.column("atom_count")
        return [values[s : s + c] for s, c in zip(starts, counts, strict=True)]

    def text(self, name: str, first: int = 0) -> list[str]:
        """The text of rows ``first`` on."""
        starts = self.column(f"{name}_start")[first:]
        counts = self.column(f"{name}_count")[first:]
        low = int(starts.min()) if len(starts) else 0
        pool = self.group[f"{name}_bytes"][low : self.committed[name]].tobytes()
        return [pool[s - low : s - low + c].decode() for s, c in zip(starts.tolist(),
                                                                     counts.tolist(),
                                                                     strict=True)]

    def capacity(self) -> dict[str, int]:
        """Allocated room per counter: rows, atoms, and bytes of each text column."""
        schema = self.schema
        first = next(iter(schema.columns)) if schema.columns else f"{schema.texts[0]}_start"
        room = {"rows": self.group[first].shape[0], "atoms": 0}
        if schema.per_atom:
            room["atoms"] = self.group[next(iter(schema.per_atom))].shape[0]
        room |= {name: self.group[f"{name}_bytes"].shape[0] for name in schema.texts}
        return room


def create_table(parent: h5py.Group, name: str, schema: Schema,
                 room: Mapping[str, int] | None = None) -> h5py.Group:
    """An empty table with ``room`` (rows, atoms, bytes per text) allocated and zero-filled."""
    room = dict(room or {})
    rows = room.get("rows", INITIAL_ROWS)
    atoms = room.get("atoms", rows * ATOMS_PER_ROW) if schema.per_atom else 0
    group = parent.create_group(name)

    def allocate(key: str, dtype: Any, shape: tuple[int, ...]) -> None:
        group.create_dataset(key, data=np.zeros(shape, dtype=dtype))  # allocated now, in full

    for key, (dtype, inner) in schema.columns.items():
        allocate(key, dtype, (rows, *inner))
    if schema.per_atom:
        allocate("atom_start", "i8", (rows,))
        allocate("atom_count", "i8", (rows,))
        for key, (dtype, inner) in schema.per_atom.items():
            allocate(key, dtype, (atoms, *inner))
    for key in schema.texts:
        allocate(f"{key}_start", "i8", (rows,))
        allocate(f"{key}_count", "i8", (rows,))
        allocate(f"{key}_bytes", "u1", (room.get(key, rows * BYTES_PER_TEXT),))
    allocate("committed", "i8", (len(schema.counters()),))
    return group


def append(path: Path, name: str, schema: Schema, rows: Rows,
           rebuild: Callable[[Mapping[str, Mapping[str, int]]], None]) -> None:
    """Append ``rows`` to table ``name`` of the file at ``path`` (the writer's side).

    ``rebuild(needs)`` is called first when the table lacks room; it must rebuild the file with
    at least ``needs[name]`` of each counter.
    """
    n = len(rows)
    if n == 0:
        return
    encoded = {key: [s.encode() for s in rows.texts[key]] for key in schema.texts}
    per_atom = {key: [np.asarray(v) for v in rows.per_atom[key]] for key in schema.per_atom}
    atom_counts = (
        np.array([len(v) for v in next(iter(per_atom.values()))], dtype="i8")
        if schema.per_atom else np.zeros(n, dtype="i8")
    )
    for key, (_, inner) in schema.per_atom.items():  # checked before anything is written
        for i, (values, count) in enumerate(zip(per_atom[key], atom_counts, strict=True)):
            if values.shape != (count, *inner):
                raise ValueError(f"{name}.{key}: row {i} has shape {values.shape}, "
                                 f"expected {(int(count), *inner)}")
    with h5py.File(path, "r", locking=False) as f:
        view = TableView(f[name], schema)
        start, room = view.committed, view.capacity()
    needs = {"rows": start["rows"] + n, "atoms": start["atoms"] + int(atom_counts.sum())}
    needs |= {key: start[key] + sum(len(b) for b in encoded[key]) for key in schema.texts}
    if any(needs[key] > room[key] for key in needs):
        rebuild({name: needs})
    # HDF5's own file lock is off for the writer too: the store's .lock file already makes it
    # the only writer, and with HDF5 2.0 a reader opening the file at the wrong moment could
    # make the writer's open fail ("unable to lock file"), killing a running campaign
    with h5py.File(path, "r+", locking=False) as f:  # phase 1: the rows, in free space
        group = f[name]
        r0, r1 = start["rows"], needs["rows"]
        for key in schema.columns:
            group[key][r0:r1] = np.asarray(rows.columns[key])
        if schema.per_atom:
            a0 = start["atoms"]
            group["atom_start"][r0:r1] = a0 + np.cumsum(atom_counts) - atom_counts
            group["atom_count"][r0:r1] = atom_counts
            for key in schema.per_atom:
                if needs["atoms"] > a0:
                    group[key][a0 : needs["atoms"]] = np.concatenate(per_atom[key])
        for key in schema.texts:
            lengths = np.array([len(b) for b in encoded[key]], dtype="i8")
            group[f"{key}_start"][r0:r1] = start[key] + np.cumsum(lengths) - lengths
            group[f"{key}_count"][r0:r1] = lengths
            if needs[key] > start[key]:
                pool = np.frombuffer(b"".join(encoded[key]), dtype="u1")
                group[f"{key}_bytes"][start[key] : needs[key]] = pool
    with h5py.File(path, "r+", locking=False) as f:  # phase 2: the commit, after phase 1
        f[name]["committed"][:] = [needs[key] for key in schema.counters()]


def rebuild_file(path: Path, schemas: Mapping[str, Schema],
                 needs: Mapping[str, Mapping[str, int]] | None = None,
                 change: Callable[[h5py.File], None] | None = None) -> None:
    """Copy the file into a new one (tables with room for ``needs`` × 2), apply ``change`` to
    the copy, and rename the copy over the original."""
    needs = needs or {}
    partial = path.with_name(path.name + ".partial")
    with h5py.File(path, "r", locking=False) as old, \
            h5py.File(partial, "w", locking=False) as new:
        for key, value in old.attrs.items():
            new.attrs[key] = value
        for name, schema in schemas.items():
            view = TableView(old[name], schema)
            room = {key: max(view.capacity()[key], 2 * needs.get(name, {}).get(key, 0))
                    for key in schema.counters()}
            _copy_table(view, create_table(new, name, schema, room))
        for name in old:
            if name not in schemas:
                old.copy(old[name], new, name)
        if change is not None:
            change(new)
    with open(partial, "rb+") as f:  # on disk before it replaces the original
        os.fsync(f.fileno())
    os.replace(partial, path)


def _copy_table(view: TableView, target: h5py.Group) -> None:
    schema, counts = view.schema, view.committed
    rows = counts["rows"]
    for key in schema.columns:
        target[key][:rows] = view.column(key)
    if schema.per_atom:
        for key in ("atom_start", "atom_count"):
            target[key][:rows] = view.column(key)
        for key in schema.per_atom:
            target[key][: counts["atoms"]] = view.group[key][: counts["atoms"]]
    for key in schema.texts:
        for suffix in ("start", "count"):
            target[f"{key}_{suffix}"][:rows] = view.column(f"{key}_{suffix}")
        target[f"{key}_bytes"][: counts[key]] = view.group[f"{key}_bytes"][: counts[key]]
    target["committed"][:] = [counts[key] for key in schema.counters()]
