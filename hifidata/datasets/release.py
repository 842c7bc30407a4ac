"""Dataset releases: data files in one or more formats, a dataset card (JSON and README.md),
and a SHA-256 manifest of every file. Layout in docs/release.md and docs/release-format.md.

A release is written into ``<out>.partial`` and renamed into place, so it is complete or
absent; one that extends an earlier release records that release's version and manifest
digest and what changed, and refuses to move a structure to another split.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hifidata import __version__
from hifidata.datasets.card import build_card, render_readme, validate_card
from hifidata.datasets.formats import extxyz, format_module
from hifidata.datasets.release_data import ReleaseError, collect, split_settings
from hifidata.datasets.store import Store

CARD = "dataset-card.json"
README = "README.md"
MANIFEST = "SHA256SUMS"
#: what each format's files are called (docs/release-format.md)
FILE_PATTERNS = {"extxyz": ("*.extxyz",), "hdf5": ("*.h5",), "asedb": ("*.db",)}

#: progress(description, entries done, entries in all)
Progress = Callable[[str, int, int], None]


def export_release(
    store: Store,
    out_dir: str | Path,
    formats: Sequence[str] = ("extxyz",),
    rungs: Sequence[str] | None = None,
    only_ok: bool = False,
    version: str | None = None,
    extends: str | Path | None = None,
    license: str = "CC-BY-4.0",
    description: str = "",
    authors: Sequence[dict[str, str]] = (),
    citation: str | None = None,
    doi: str | None = None,
    links: Sequence[str] = (),
    name: str | None = None,
    replace: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write a release of ``store`` to ``out_dir``; returns a summary (files, counts).

    ``rungs``: which rungs (default all, in ladder order); ``only_ok`` leaves failed labels
    out; ``extends``: an earlier release folder this one grows (verified first); ``replace``
    lets an existing ``out_dir`` be replaced whole (otherwise a non-empty one is refused).
    """
    from hifidata.datasets.verify import diff_releases, verify_release

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not replace:
        raise ReleaseError(f"{out_dir} exists and is not empty (choose another --out or "
                           "replace it with --force)")
    for fmt in formats:
        format_module(fmt)  # an unknown format fails before anything is read or written
    spec = store.record("run", "spec") or {}
    name = name or spec.get("name") or store.path.stem
    _check_name(name)
    previous = verify_release(extends) if extends is not None else None
    data = collect(store, rungs, only_ok)
    entries = sum(int(r.labeled().sum()) for r in data.rungs.values()) * len(formats)

    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        files = _write_formats(data, partial, name, formats, progress, entries)
        meta = {
            "name": name,
            "version": version or _next_version(previous),
            "extends": None,
            "description": description or spec.get("description", ""),
            "license": license,
            "authors": list(authors),
            "citation": citation,
            "doi": doi,
            "links": list(links),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "created_by": f"hifidata {__version__}",
            "keys": extxyz.KEYS,
        }
        card = build_card(data, meta, files, spec, _selections(store),
                          store.records("method"), split_settings(store))
        validate_card(card)
        _write_card(partial, card)
        if previous is not None:
            changes = diff_releases(Path(extends), partial)
            _refuse_moves(changes, extends)
            card["extends"] = {"name": previous["card"]["name"],
                               "version": previous["card"]["version"],
                               "manifest_sha256": previous["manifest_sha256"],
                               "changes": changes["counts"]}
            validate_card(card)
            _write_card(partial, card)
        write_manifest(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return {"path": str(out_dir), "files": [f["file"] for f in files], "version": meta["version"],
            "structures": len(data), "extends": card["extends"],
            "labels": {r["name"]: r["nconfigurations"] for r in card["rungs"]}}


def _write_formats(data, folder: Path, name: str, formats: Sequence[str],
                   progress: Progress | None, total: int) -> list[dict[str, Any]]:
    files, done = [], 0
    for fmt in formats:
        def advance(n: int, fmt: str = fmt) -> None:
            nonlocal done
            done += n
            if progress:
                progress(f"release: {fmt}", done, total)

        written = format_module(fmt).write(data, folder, name, advance)
        files += [{"file": f, "format": fmt, "rung": _rung_of(f, fmt),
                   "entries": _entries(data, f, fmt)} for f in written]
    return files


def _rung_of(file: str, fmt: str) -> str | None:
    if fmt != "extxyz":
        return None  # one file holds every rung
    return file.removesuffix(".extxyz").removesuffix(".failed")


def _entries(data, file: str, fmt: str) -> int:
    """Labels in a file: a rung's ok (or failed) ones in extxyz, every label elsewhere."""
    if fmt != "extxyz":
        return sum(int(r.labeled().sum()) for r in data.rungs.values())
    rung = data.rungs[_rung_of(file, fmt)]
    if file.endswith(extxyz.FAILED):
        return int((rung.labeled() & ~rung.ok()).sum())
    return int(rung.ok().sum())


def _write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (folder / README).write_text(render_readme(card))


def _refuse_moves(changes: dict[str, Any], extends: str | Path) -> None:
    moved = changes["moved"]
    if moved:
        raise ReleaseError(
            f"{len(moved)} structure(s) would change split since {extends} (e.g. "
            f"{moved[0]['structure_id'][:12]}: {moved[0]['from']} -> {moved[0]['to']}); "
            "were the split seed or fractions changed?")


def _next_version(previous: dict[str, Any] | None) -> str:
    if previous is None:
        return "1.0.0"
    major, minor, _ = (int(x) for x in previous["card"]["version"].split("-")[0]
                       .split("+")[0].split("."))
    return f"{major}.{minor + 1}.0"


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ReleaseError(f"release name {name!r}: letters, digits, '_', '.', '-' only "
                           "(it names the files)")


def _selections(store: Store) -> dict[str, Any]:
    out = {}
    for selection_name in store.selection_names():
        selection = store.selection(selection_name)
        out[selection_name] = {"pool": len(selection.pool_ids),
                               "selected": len(selection.selected_ids), **selection.params}
    return out


def write_manifest(folder: Path) -> Path:
    """``sha256sum -c SHA256SUMS`` verifies every other file of the release."""
    lines = [f"{sha256_file(path)}  {path.name}"
             for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST]
    manifest = folder / MANIFEST
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file, read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

