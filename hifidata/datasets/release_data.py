"""What a release holds, gathered from a store once and handed to every format writer.

Columns, one entry per structure (in store order), and per rung the labels of those
structures: a structure that a rung did not label has ``status == ""`` and NaN energy. The
writers (hifidata.datasets.formats) only reshape these arrays; nothing here knows a format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from hifidata.datasets.splits import recorded_split, split_of
from hifidata.datasets.store import Store
from hifidata.errors import HifidataError

#: units of every release file and the card
UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "positions": "Å", "cell": "Å"}
#: the split settings a store without a campaign spec gets (the spec's defaults)
DEFAULT_SPLIT = {"test_fraction": 0.2, "validation_fraction": 0.15, "seed": 0}


class ReleaseError(HifidataError):
    """A release cannot be written, or a written one fails verification."""


@dataclass
class RungData:
    """One rung's labels of every structure of the release (row i = structure i)."""

    name: str
    method_id: str
    definition: dict[str, Any]  # the canonical method: engine and every setting
    status: list[str]  # "ok", a failure class, or "" where the rung has no label
    energy: np.ndarray  # (n,) eV; NaN unless ok
    forces: list[np.ndarray | None]  # (atoms, 3) eV/Å; None unless ok
    stress: np.ndarray  # (n, 6) eV/Å³, Voigt xx yy zz yz xz xy, ASE sign; NaN if none
    message: list[str]  # the failure message ("" when ok)
    provenance: list[str]  # the label's provenance JSON ("" where no label)

    def ok(self) -> np.ndarray:
        return np.array([s == "ok" for s in self.status], dtype=bool)

    def labeled(self) -> np.ndarray:
        return np.array([s != "" for s in self.status], dtype=bool)


@dataclass
class ReleaseData:
    """Structures (columns) and, per rung in ladder order, their labels."""

    structure_ids: list[str]
    numbers: list[np.ndarray]
    positions: list[np.ndarray]  # Å
    cell: np.ndarray  # (n, 3, 3) Å
    pbc: np.ndarray  # (n, 3) bool
    charge: np.ndarray  # (n,) e
    spin: np.ndarray  # (n,) 2S+1
    origins: list[dict[str, Any]]
    split: list[str]  # train / validation / test
    rungs: dict[str, RungData]

    def __len__(self) -> int:
        return len(self.structure_ids)

    def atoms(self, i: int) -> Atoms:
        """Structure ``i`` as ase.Atoms (info: charge, spin), without labels."""
        atoms = Atoms(numbers=self.numbers[i], positions=self.positions[i], cell=self.cell[i],
                      pbc=self.pbc[i])
        atoms.info.update(charge=int(self.charge[i]), spin=int(self.spin[i]))
        return atoms

    def config_type(self, i: int) -> str:
        """How the structure was made (the origin's protocol: md, rattle, seed, imported…)."""
        return str(self.origins[i].get("protocol", "unknown"))


def collect(store: Store, rungs: Sequence[str] | None = None, only_ok: bool = False,
            split: dict[str, Any] | None = None) -> ReleaseData:
    """Every structure that one of ``rungs`` labeled (ok only with ``only_ok``), with the
    labels of all ``rungs``. ``rungs``: names, default every rung of the store in ladder
    order. ``split``: test_fraction, validation_fraction, seed (default: the campaign's)."""
    methods = store_rungs(store)
    names = list(rungs) if rungs else list(methods)
    unknown = [name for name in names if name not in methods]
    if unknown:
        raise ReleaseError(f"{store.path}: no rung named {unknown[0]!r} "
                           f"(rungs: {', '.join(methods) or 'none'})")
    labels = {name: store.labels(methods[name]["method_id"]) for name in names}
    keep = {sid for name in names for sid, status in
            zip(labels[name].structure_ids, labels[name].status, strict=True)
            if status == "ok" or not only_ok}
    ids = [sid for sid in store.structure_ids() if sid in keep]
    if not ids:
        raise ReleaseError(f"{store.path}: no {'ok ' if only_ok else ''}labels to release "
                           f"in {', '.join(names) or 'any rung'}")
    structures = store.structures(ids)
    settings = split_settings(store) if split is None else split
    recorded = recorded_split(store, settings)
    return ReleaseData(
        structure_ids=ids,
        numbers=[a.numbers for a in structures],
        positions=[a.positions for a in structures],
        cell=np.array([a.cell.array for a in structures]).reshape(-1, 3, 3),
        pbc=np.array([a.pbc for a in structures], dtype=bool).reshape(-1, 3),
        charge=np.array([a.info["charge"] for a in structures], dtype=int),
        spin=np.array([a.info["spin"] for a in structures], dtype=int),
        origins=store.origins(ids),
        split=[recorded.get(sid) or split_of(sid, settings["test_fraction"],
                                             settings["validation_fraction"], settings["seed"])
               for sid in ids],
        rungs={name: _rung(name, methods[name], labels[name], ids, only_ok)
               for name in names},
    )


def store_rungs(store: Store) -> dict[str, dict[str, Any]]:
    """Rung name -> its latest registered method, in the campaign's ladder order (cheapest
    first), then any other rung (imported ones) in the order it was first registered."""
    latest: dict[str, dict[str, Any]] = {}
    for method in store.methods():
        latest[method["name"]] = method  # a rung redefined later wins, in its first place
    ladder = [r.get("name") for r in (store.record("run", "spec") or {}).get("ladder") or []]
    order = {name: i for i, name in enumerate(ladder)}  # the campaign's ladder, where known
    return dict(sorted(latest.items(), key=lambda item: order.get(item[0], len(order))))


def split_settings(store: Store) -> dict[str, Any]:
    """The split settings the campaign trained with (its spec's train block), else the
    defaults."""
    train = ((store.record("run", "spec") or {}).get("train") or {})
    return {key: train.get(key, default) for key, default in DEFAULT_SPLIT.items()}


def _rung(name: str, method: dict, labels, ids: list[str], only_ok: bool) -> RungData:
    where = {sid: i for i, sid in enumerate(labels.structure_ids)}
    n = len(ids)
    data = RungData(name, method["method_id"], method["definition"], [""] * n,
                    np.full(n, np.nan), [None] * n, np.full((n, 6), np.nan), [""] * n,
                    [""] * n)
    for row, sid in enumerate(ids):
        i = where.get(sid)
        if i is None or (only_ok and labels.status[i] != "ok"):
            continue
        data.status[row] = labels.status[i]
        data.message[row] = labels.message[i]
        data.provenance[row] = labels.provenance[i]
        if labels.status[i] == "ok":
            data.energy[row] = labels.energy[i]
            data.forces[row] = np.asarray(labels.forces[i])
            data.stress[row] = labels.stress[i]
    return data


def engine_versions(rung: RungData) -> list[str]:
    """The engine versions found in the provenance of a rung's labels."""
    versions = set()
    for text in rung.provenance:
        if text:
            versions.add(str(json.loads(text).get("engine_version", "?")))
    return sorted(versions)
