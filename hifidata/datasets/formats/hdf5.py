"""HDF5 release: one group per atomic-number sequence, its structures stacked into arrays.

The shape of the ANI-1x and SPICE files: a reader gets a group's ``positions`` and a rung's
``energy`` as whole arrays, with no per-frame records. docs/release-format.md has the layout;
the tables below are that layout, used both to write and to check a file.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from hifidata.datasets.card import reduced_formula as card_formula
from hifidata.datasets.formats import Entry
from hifidata.datasets.release_data import UNITS, ReleaseData, ReleaseError, RungData

FORMAT = "hifidata-release-hdf5"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
TEXT = h5py.string_dtype()  # variable-length UTF-8

# dataset -> (kind, shape, units). kind: "f" float, "i" int, "u" unsigned, "b" bool, "text"
# any string; shape in m (structures of the group) and n (atoms); units None: no attribute
STRUCTURE_LAYOUT: dict[str, tuple[str, tuple, str | None]] = {
    "atomic_numbers": ("u", ("n",), None),
    "structure_id": ("text", ("m",), None),
    "positions": ("f", ("m", "n", 3), "Å"),
    "cell": ("f", ("m", 3, 3), "Å"),
    "pbc": ("b", ("m", 3), None),
    "charge": ("i", ("m",), "e"),
    "spin": ("i", ("m",), "2S+1"),
    "split": ("text", ("m",), None),
    "config_type": ("text", ("m",), None),
    "origin": ("text", ("m",), None),
}
RUNG_LAYOUT: dict[str, tuple[str, tuple, str | None]] = {
    "energy": ("f", ("m",), "eV"),
    "forces": ("f", ("m", "n", 3), "eV/Å"),
    "stress": ("f", ("m", 6), "eV/Å³"),
    "status": ("text", ("m",), None),
    "message": ("text", ("m",), None),
}
GROUP_ATTRS = ("chemical_formula_hill", "chemical_formula_reduced", "elements", "nsites")


# -- writing ---------------------------------------------------------------------------------
def write(
    data: ReleaseData,
    folder: Path,
    name: str,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write ``<name>.h5`` into ``folder``; ``progress(n)`` after each rung of each group,
    with the labels it held."""
    file_name = f"{name}.h5"
    with h5py.File(Path(folder) / file_name, "w") as f:
        _write_header(f, data, name)
        structures = f.create_group("structures")
        for group_name, rows in _group_rows(data.numbers).items():
            _write_group(structures.create_group(group_name), data, rows, progress)
    return [file_name]


def _write_header(f: h5py.File, data: ReleaseData, name: str) -> None:
    f.attrs.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        name=name,
        rungs=json.dumps(list(data.rungs)),
        units=json.dumps(UNITS, ensure_ascii=False),
    )
    methods = f.create_group("methods")
    for rung in data.rungs.values():
        group = methods.create_group(rung.name)
        group.attrs.update(method_id=rung.method_id, definition=json.dumps(rung.definition))


def _group_rows(numbers: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Group name -> the structures (rows) with that atomic-number sequence, in store order."""
    rows: dict[bytes, list[int]] = {}
    for i, z in enumerate(numbers):
        rows.setdefault(_sequence(z), []).append(i)
    names = group_names(list(rows))
    return {names[sequence]: np.array(found) for sequence, found in rows.items()}


def group_names(sequences: list[bytes]) -> dict[bytes, str]:
    """The group name of each atomic-number sequence (uint8 bytes): its Hill formula, with
    the sequence's hash appended to every ordering of a formula that has more than one."""
    hill = {sequence: hill_formula(sequence) for sequence in sequences}
    orderings = Counter(hill.values())
    return {
        sequence: formula if orderings[formula] == 1 else f"{formula}.{sequence_hash(sequence)}"
        for sequence, formula in hill.items()
    }


def sequence_hash(sequence: bytes) -> str:
    """First 8 hex digits of the SHA-256 of the atomic numbers as uint8: stable across
    releases, unlike a counter."""
    return hashlib.sha256(sequence).hexdigest()[:8]


def hill_formula(sequence: bytes) -> str:
    return Atoms(numbers=np.frombuffer(sequence, np.uint8)).get_chemical_formula("hill")


def reduced_formula(sequence: bytes) -> str:
    """OPTIMADE's chemical_formula_reduced of an atomic-number sequence."""
    return card_formula(Counter(np.frombuffer(sequence, np.uint8).tolist()))


def _sequence(numbers: np.ndarray) -> bytes:
    return np.asarray(numbers, dtype=np.uint8).tobytes()


def _group_attrs(sequence: bytes) -> dict[str, Any]:
    numbers = np.frombuffer(sequence, np.uint8)
    return {
        "chemical_formula_hill": hill_formula(sequence),
        "chemical_formula_reduced": reduced_formula(sequence),
        "elements": json.dumps(sorted({chemical_symbols[z] for z in numbers})),
        "nsites": len(numbers),
    }


def _write_group(
    group: h5py.Group,
    data: ReleaseData,
    rows: np.ndarray,
    progress: Callable[[int], None] | None,
) -> None:
    numbers = np.asarray(data.numbers[rows[0]], dtype=np.uint8)
    group.attrs.update(_group_attrs(numbers.tobytes()))
    columns = {
        "atomic_numbers": numbers,
        "structure_id": np.array([data.structure_ids[i] for i in rows], dtype="S64"),
        "positions": np.stack([data.positions[i] for i in rows]).astype(np.float64),
        "cell": data.cell[rows].astype(np.float64),
        "pbc": data.pbc[rows].astype(bool),
        "charge": data.charge[rows].astype(np.int32),
        "spin": data.spin[rows].astype(np.int32),
        "split": np.array([data.split[i] for i in rows], dtype="S10"),
        "config_type": np.array([data.config_type(i) for i in rows], dtype=TEXT),
        "origin": np.array([json.dumps(data.origins[i], sort_keys=True) for i in rows], dtype=TEXT),
    }
    _write_datasets(group, columns, STRUCTURE_LAYOUT)
    for rung in data.rungs.values():
        _write_datasets(
            group.create_group(rung.name), _rung_columns(rung, rows, len(numbers)), RUNG_LAYOUT
        )
        labeled = int(rung.labeled()[rows].sum())
        if progress is not None and labeled:
            progress(labeled)


def _rung_columns(rung: RungData, rows: np.ndarray, n_atoms: int) -> dict[str, np.ndarray]:
    forces = np.full((len(rows), n_atoms, 3), np.nan)
    for k, i in enumerate(rows):
        if rung.forces[i] is not None:
            forces[k] = rung.forces[i]
    return {
        "energy": rung.energy[rows].astype(np.float64),
        "forces": forces,
        "stress": rung.stress[rows].astype(np.float64),
        "status": np.array([rung.status[i] for i in rows], dtype=TEXT),
        "message": np.array([rung.message[i] for i in rows], dtype=TEXT),
    }


def _write_datasets(group: h5py.Group, columns: dict[str, np.ndarray], layout: dict) -> None:
    for key, array in columns.items():
        dataset = group.create_dataset(key, data=array)
        units = layout[key][2]
        if units is not None:
            dataset.attrs["units"] = units


# -- reading and checking --------------------------------------------------------------------
def read(folder: Path, files: list[str]) -> list[Entry]:
    """Every label in ``files`` (one Entry per structure and rung with a label), checking
    the documented layout: ReleaseError on the first thing that breaks it."""
    entries: list[Entry] = []
    for file_name in files:
        entries += _read_file(Path(folder) / file_name)
    return entries


def _read_file(path: Path) -> list[Entry]:
    if not path.is_file():
        raise ReleaseError(f"{path}: missing")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ReleaseError(f"{path}: not an HDF5 file ({error})") from None
    with f:
        rungs = _check_header(path, f)
        structures = _child(path, f, "structures", h5py.Group)
        groups = {key: _child(path, structures, key, h5py.Group) for key in structures}
        sequences = {key: _check_group_attrs(path, group) for key, group in groups.items()}
        _check_group_names(path, sequences)
        entries: list[Entry] = []
        seen: set[str] = set()  # structure ids of the groups read so far
        for group in groups.values():
            entries += _read_group(path, group, rungs, seen)
        return entries


def _fail(path: Path, what: str) -> ReleaseError:
    return ReleaseError(f"{path}: {what}")


def _child(path: Path, parent: h5py.Group, key: str, kind: type) -> Any:
    item = parent.get(key)
    if not isinstance(item, kind):
        what = "group" if kind is h5py.Group else "dataset"
        where = f"{parent.name.rstrip('/')}/{key}"
        raise _fail(path, f"no {what} {where}" if item is None else f"{where} is not a {what}")
    return item


def _attr(path: Path, obj: h5py.HLObject, key: str) -> Any:
    if key not in obj.attrs:
        raise _fail(path, f"{obj.name} has no attribute {key!r}")
    value = obj.attrs[key]
    return value.decode() if isinstance(value, bytes) else value


def _json_attr(path: Path, obj: h5py.HLObject, key: str, kind: type) -> Any:
    try:
        value = json.loads(_attr(path, obj, key))
    except (TypeError, ValueError):
        raise _fail(path, f"{obj.name} attribute {key!r} is not JSON") from None
    if not isinstance(value, kind):
        raise _fail(path, f"{obj.name} attribute {key!r} is not a JSON {kind.__name__}")
    return value


def _check_header(path: Path, f: h5py.File) -> list[str]:
    """The rung names, after checking the root attributes and the methods group."""
    if _attr(path, f, "format") != FORMAT:
        raise _fail(path, f"format {_attr(path, f, 'format')!r}, expected {FORMAT!r}")
    if _attr(path, f, "format_version") != FORMAT_VERSION:
        version = _attr(path, f, "format_version")
        raise _fail(path, f"format_version {version!r}, this hifidata reads {FORMAT_VERSION}")
    _attr(path, f, "name")
    rungs = _json_attr(path, f, "rungs", list)
    if not rungs or not all(isinstance(rung, str) for rung in rungs):
        raise _fail(path, f"attribute 'rungs' is not a list of rung names: {rungs!r}")
    if _json_attr(path, f, "units", dict) != UNITS:
        raise _fail(path, f"units {_attr(path, f, 'units')}, expected {json.dumps(UNITS)}")
    methods = _child(path, f, "methods", h5py.Group)
    for key in methods:
        if key not in rungs:
            raise _fail(path, f"/methods/{key}: unknown rung (rungs: {', '.join(rungs)})")
    for rung in rungs:
        method = _child(path, methods, rung, h5py.Group)
        _attr(path, method, "method_id")
        _json_attr(path, method, "definition", dict)
    return rungs


def _check_group_attrs(path: Path, group: h5py.Group) -> bytes:
    """The group's atomic-number sequence, after checking the attributes that describe it."""
    numbers = _dataset(path, group, "atomic_numbers", STRUCTURE_LAYOUT, 0, None)
    if numbers.ndim != 1 or len(numbers) == 0:
        raise _fail(path, f"{group.name}/atomic_numbers has shape {numbers.shape}, expected (n,)")
    if numbers.max() >= len(chemical_symbols):
        raise _fail(path, f"{group.name}/atomic_numbers holds {numbers.max()}: no such element")
    sequence = numbers.astype(np.uint8).tobytes()
    expected = _group_attrs(sequence)
    for key in GROUP_ATTRS:
        value = _attr(path, group, key)
        if value != expected[key] and not (key == "elements" and _same_elements(value, expected)):
            raise _fail(
                path,
                f"{group.name} attribute {key}={value!r}, its atomic_numbers "
                f"make {expected[key]!r}",
            )
    return sequence


def _same_elements(value: Any, expected: dict[str, Any]) -> bool:
    # the layout allows an array of str as well as a JSON list
    items = [v.decode() if isinstance(v, bytes) else v for v in np.atleast_1d(value)]
    return items == json.loads(expected["elements"])


def _check_group_names(path: Path, sequences: dict[str, bytes]) -> None:
    if len(set(sequences.values())) != len(sequences):
        raise _fail(path, "two groups hold the same atomic-number sequence")
    expected = group_names(list(sequences.values()))
    for key, sequence in sequences.items():
        if key != expected[sequence]:
            raise _fail(path, f"group /structures/{key} should be named {expected[sequence]!r}")


def _dataset(
    path: Path, group: h5py.Group, key: str, layout: dict, m: int, n: int | None
) -> np.ndarray:
    """The dataset's values, after checking its kind, shape and units against ``layout``
    (``n`` None: the shape is checked by the caller)."""
    dataset = _child(path, group, key, h5py.Dataset)
    kind, shape, units = layout[key]
    where = dataset.name
    if not _kind_matches(dataset.dtype, kind):
        raise _fail(path, f"{where} has dtype {dataset.dtype}, expected kind {kind!r}")
    if n is not None:
        expected = tuple(m if s == "m" else n if s == "n" else s for s in shape)
        if dataset.shape != expected:
            raise _fail(path, f"{where} has shape {dataset.shape}, expected {expected}")
    if units is not None:
        if "units" not in dataset.attrs:
            raise _fail(path, f"{where} has no 'units' attribute (expected {units!r})")
        if _attr(path, dataset, "units") != units:
            raise _fail(
                path, f"{where} has units {_attr(path, dataset, 'units')!r}, expected {units!r}"
            )
    if kind == "text":
        return np.array(dataset.asstr()[()], dtype=object)
    return dataset[()]


def _kind_matches(dtype: np.dtype, kind: str) -> bool:
    if kind == "text":
        return h5py.check_string_dtype(dtype) is not None
    return dtype.kind == kind


def _read_group(path: Path, group: h5py.Group, rungs: list[str], seen: set[str]) -> list[Entry]:
    n = len(group["atomic_numbers"])
    ids = _child(path, group, "structure_id", h5py.Dataset)
    m = ids.shape[0] if ids.ndim else -1  # a scalar fails the shape check below
    columns = {key: _dataset(path, group, key, STRUCTURE_LAYOUT, m, n) for key in STRUCTURE_LAYOUT}
    for sid in columns["structure_id"]:
        if sid in seen:
            raise _fail(path, f"structure {sid} is in the file twice ({group.name})")
        seen.add(sid)
    bad = sorted(set(columns["split"]) - set(SPLITS))
    if bad:
        raise _fail(path, f"{group.name}/split holds {bad[0]!r} (splits: {', '.join(SPLITS)})")
    for key in group:
        if isinstance(group[key], h5py.Group) and key not in rungs:
            raise _fail(path, f"{group.name}/{key}: unknown rung (rungs: {', '.join(rungs)})")
    entries: list[Entry] = []
    for rung in rungs:
        labels = _child(path, group, rung, h5py.Group)
        rung_columns = {key: _dataset(path, labels, key, RUNG_LAYOUT, m, n) for key in RUNG_LAYOUT}
        _check_nan_convention(path, labels.name, rung_columns)
        entries += _entries(rung, columns, rung_columns)
    return entries


def _check_nan_convention(path: Path, where: str, columns: dict[str, np.ndarray]) -> None:
    """Values where a label is ok, NaN elsewhere; stress whole or NaN."""
    ok = columns["status"] == "ok"
    m = len(ok)
    energy = columns["energy"]
    forces_ok = np.isfinite(columns["forces"].reshape(m, -1)).all(axis=1)
    forces_nan = np.isnan(columns["forces"].reshape(m, -1)).all(axis=1)
    stress = columns["stress"]
    for name, broken in (
        ("energy", np.where(ok, ~np.isfinite(energy), ~np.isnan(energy))),
        ("forces", np.where(ok, ~forces_ok, ~forces_nan)),
        ("stress", ~(np.isfinite(stress).all(axis=1) | np.isnan(stress).all(axis=1))),
        ("stress", ~ok & ~np.isnan(stress).all(axis=1)),
    ):
        if broken.any():
            row = int(np.flatnonzero(broken)[0])
            raise _fail(
                path,
                f"{where}/{name} row {row} (status {columns['status'][row]!r}) "
                "breaks the convention: finite where ok, NaN elsewhere",
            )


def _entries(
    rung: str, columns: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> list[Entry]:
    entries = []
    for k in np.flatnonzero(labels["status"] != ""):
        ok = labels["status"][k] == "ok"
        stress = labels["stress"][k]
        entries.append(
            Entry(
                structure_id=columns["structure_id"][k],
                rung=rung,
                split=columns["split"][k],
                status=labels["status"][k],
                energy=float(labels["energy"][k]),
                forces=labels["forces"][k].copy() if ok else None,
                stress=None if np.isnan(stress).all() else stress.copy(),
                atoms=_atoms(columns, k),
            )
        )
    return entries


def _atoms(columns: dict[str, np.ndarray], k: int) -> Atoms:
    atoms = Atoms(
        numbers=columns["atomic_numbers"],
        positions=columns["positions"][k],
        cell=columns["cell"][k],
        pbc=columns["pbc"][k],
    )
    atoms.info.update(charge=int(columns["charge"][k]), spin=int(columns["spin"][k]))
    return atoms
