"""Checking a release (``hifidata verify``) and comparing two (``hifidata diff``).

verify stops at the first problem, in the order a reader would trip over it: the manifest
(every file listed, present and unaltered, nothing unlisted), the card (its JSON schema,
and that it lists exactly the data files there are), then every data file read back through
its format's documented layout, with the entry counts the card promises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hifidata.datasets.card import validate_card
from hifidata.datasets.formats import Entry, format_module
from hifidata.datasets.release import CARD, MANIFEST, README, sha256_file
from hifidata.datasets.release_data import ReleaseError
from hifidata.structures import structure_id

#: a relabel is a label that moved by more than this (files round to 1e-8 eV/Å)
ENERGY_TOLERANCE = 1e-6  # eV
FORCE_TOLERANCE = 1e-6  # eV/Å


def verify_release(folder: str | Path) -> dict[str, Any]:
    """Check a release; raise ReleaseError with the first problem. Returns the card, the
    manifest's digest and the entries per file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder}: no such release folder")
    listed = _check_manifest(folder)
    card = _read_card(folder)
    data_files = {f["file"] for f in card["files"]}
    expected = data_files | {CARD, README}
    if set(listed) != expected:
        odd = sorted(set(listed) ^ expected)[0]
        raise ReleaseError(f"{folder}: {odd} is {'not ' if odd in expected else ''}in the "
                           "card's file list")
    rungs = {r["name"] for r in card["rungs"]}
    counts = {}
    for fmt in dict.fromkeys(f["format"] for f in card["files"]):
        files = [f for f in card["files"] if f["format"] == fmt]
        entries = format_module(fmt).read(folder, [f["file"] for f in files])
        _check_entries(entries, rungs, fmt, folder)
        counts[fmt] = len(entries)
        promised = sum(f["entries"] for f in files)
        if len(entries) != promised:
            raise ReleaseError(f"{folder}: the {fmt} files hold {len(entries)} labels, the "
                               f"card says {promised}")
    return {"card": card, "manifest_sha256": sha256_file(folder / MANIFEST),
            "entries": counts}


def _check_manifest(folder: Path) -> list[str]:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise ReleaseError(f"{folder}: no {MANIFEST}")
    listed = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ReleaseError(f"{manifest} line {number}: not '<sha256>  <file>'")
        path = folder / name
        if not path.is_file():
            raise ReleaseError(f"{folder}: {name} is listed in {MANIFEST} but missing")
        if sha256_file(path) != digest:
            raise ReleaseError(f"{folder}: {name} does not match its SHA-256 in {MANIFEST} "
                               "(altered or damaged)")
        listed.append(name)
    unlisted = sorted(p.name for p in folder.iterdir()
                      if p.name != MANIFEST and p.name not in listed)
    if unlisted:
        raise ReleaseError(f"{folder}: {unlisted[0]} is not in {MANIFEST}")
    return listed


def _read_card(folder: Path) -> dict[str, Any]:
    try:
        card = json.loads((folder / CARD).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReleaseError(f"{folder / CARD}: not readable JSON ({error})") from None
    validate_card(card)
    return card


def _check_entries(entries: list[Entry], rungs: set[str], fmt: str, folder: Path) -> None:
    for entry in entries:
        where = f"{folder}: {fmt} label of {entry.structure_id[:12]} ({entry.rung})"
        if entry.rung not in rungs:
            raise ReleaseError(f"{where}: rung not in the card")
        if entry.split not in ("train", "validation", "test"):
            raise ReleaseError(f"{where}: split {entry.split!r}")
        if entry.status == "ok" and not (
            np.isfinite(entry.energy) and entry.forces is not None
            and entry.forces.shape == (len(entry.atoms), 3) and np.isfinite(entry.forces).all()
        ):
            raise ReleaseError(f"{where}: an ok label without finite energy and forces")
        # extxyz keeps positions to 1e-8 Å, which can move the id's 1e-6 Å rounding
        if fmt != "extxyz" and structure_id(entry.atoms) != entry.structure_id:
            raise ReleaseError(f"{where}: the structure does not hash to its structure_id")


def diff_releases(a: str | Path, b: str | Path) -> dict[str, Any]:
    """What changed from release ``a`` to ``b``: labels added, removed and relabeled (same
    structure and rung, different numbers), and structures whose split changed."""
    old, new = _labels(Path(a)), _labels(Path(b))
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    relabeled = [key for key in sorted(set(old) & set(new)) if _changed(old[key], new[key])]
    splits_old = {sid: e.split for (sid, _), e in old.items()}
    moved = [{"structure_id": sid, "from": splits_old[sid], "to": e.split}
             for (sid, _), e in new.items() if sid in splits_old and splits_old[sid] != e.split]
    moved = list({m["structure_id"]: m for m in moved}.values())
    return {
        "added": [_row(new[k]) for k in added],
        "removed": [_row(old[k]) for k in removed],
        "relabeled": [{**_row(new[k]), "energy_change": new[k].energy - old[k].energy,
                       "status_change": f"{old[k].status} -> {new[k].status}"}
                      for k in relabeled],
        "moved": moved,
        "counts": {"added": len(added), "removed": len(removed),
                   "relabeled": len(relabeled), "moved": len(moved)},
    }


def _labels(folder: Path) -> dict[tuple[str, str], Entry]:
    """(structure_id, rung) -> entry, from the release's first format in the card."""
    card = _read_card(folder)
    fmt = card["files"][0]["format"]
    files = [f["file"] for f in card["files"] if f["format"] == fmt]
    return {(e.structure_id, e.rung): e for e in format_module(fmt).read(folder, files)}


def _changed(old: Entry, new: Entry) -> bool:
    if old.status != new.status:
        return True
    if old.status != "ok":
        return False
    return bool(abs(old.energy - new.energy) > ENERGY_TOLERANCE
                or old.forces.shape != new.forces.shape
                or np.abs(old.forces - new.forces).max(initial=0) > FORCE_TOLERANCE)


def _row(entry: Entry) -> dict[str, Any]:
    return {"structure_id": entry.structure_id, "rung": entry.rung, "status": entry.status,
            "formula": entry.atoms.get_chemical_formula()}
