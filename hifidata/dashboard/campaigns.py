"""The stores a dashboard serves: found under its PATH, named by URL-safe ids, read on change.

A campaign's overview is read again only when its store file changed (inode, size, mtime),
and one reader at a time per store; the store is opened read-only, so the campaign writing it
is never blocked. A read that meets the file mid-write (it can, between the writer's two
commit steps only the counters are stale, but a rebuild renames the file under a reader) is
retried, and the last good overview is served meanwhile.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hifidata.datasets.overview import ProvenanceCache, overview, summary
from hifidata.datasets.store import Store, writer_of
from hifidata.errors import HifidataError, StoreError

log = logging.getLogger(__name__)

RESCAN_SECONDS = 5.0  # how often a folder is searched again for new stores
READ_TRIES = 3


@dataclass
class _Cached:
    signature: tuple | None = None
    body: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Campaigns:
    """The stores under ``path`` (a store file, or a folder searched for ``*.h5`` stores)."""

    def __init__(self, path: str | Path):
        self.root = Path(path).resolve()
        if not self.root.exists():
            raise HifidataError(f"{path}: no such store or folder")
        if self.root.is_file():
            Store(self.root)  # raises with a one-line reason if it is not a store
        self._paths: dict[str, Path] = {}
        self._scanned = 0.0
        self._scan_lock = threading.Lock()
        self._overviews: dict[str, _Cached] = {}
        self._summaries: dict[str, _Cached] = {}
        self._provenance: dict[str, ProvenanceCache] = {}  # labels' provenance, decoded once

    @property
    def single(self) -> bool:
        return self.root.is_file()

    def paths(self) -> dict[str, Path]:
        """id -> store path, searched again at most every RESCAN_SECONDS."""
        with self._scan_lock:
            if time.monotonic() - self._scanned > RESCAN_SECONDS:
                self._paths = _find_stores(self.root)
                self._scanned = time.monotonic()
            return dict(self._paths)

    def path(self, cid: str) -> Path | None:
        return self.paths().get(cid)

    def overview(self, cid: str) -> tuple[str, bytes] | None:
        """(etag, JSON body) of a campaign's overview; None for an unknown id."""
        cache = self._provenance.setdefault(cid, ProvenanceCache())
        return self._read(cid, self._overviews, lambda store: overview(store, cache))

    def prewarm(self) -> None:
        """Read every store's overview and summary once (a background thread at start)."""
        for cid in self.paths():
            try:
                self.overview(cid)
                self._read(cid, self._summaries, summary)
            except Exception as error:  # a store that vanished: the request path reports it
                log.debug("prewarm of %s: %s", cid, error)

    def summaries(self) -> list[dict[str, Any]]:
        rows = []
        for cid in self.paths():
            read = self._read(cid, self._summaries, summary)
            if read is not None:
                rows.append({"id": cid, **json.loads(read[1])})
        return rows

    def _read(self, cid: str, cache: dict[str, _Cached],
              reader: Callable[[Store], dict]) -> tuple[str, bytes] | None:
        path = self.path(cid)
        if path is None:
            return None
        entry = cache.setdefault(cid, _Cached())
        with entry.lock:
            signature = _signature(path)
            if signature != entry.signature or entry.body is None:
                body = _read_store(path, reader)
                if body is not None:
                    entry.signature, entry.body = signature, body
                elif entry.body is None:
                    entry.body = json.dumps({"error": f"{path.name}: not readable now"}).encode()
            return _etag(entry.signature), entry.body


def _read_store(path: Path, reader: Callable[[Store], dict]) -> bytes | None:
    for attempt in range(READ_TRIES):
        try:
            return json.dumps(reader(Store(path)), default=str).encode()
        except (OSError, KeyError, ValueError, StoreError) as error:
            log.debug("reading %s (try %d): %s", path, attempt + 1, error)
            time.sleep(0.2 * (attempt + 1))
    return None


def _signature(path: Path) -> tuple | None:
    """What changes when the store does: the file, and whether its writer holds it (a killed
    campaign changes no byte of the store, but its page must say so)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    writer = writer_of(path) or {}
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, writer.get("pid"), writer.get("alive")


def _etag(signature: tuple | None) -> str:
    return '"' + "-".join(str(part) for part in signature or ("none",)) + '"'


def _find_stores(root: Path) -> dict[str, Path]:
    """Stores under ``root`` by id (the path below root, URL-safe), hidden folders skipped."""
    if root.is_file():
        return {_slug(root.stem): root}
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.h5")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        try:
            Store(path)
        except StoreError:  # releases' HDF5 files, trajectories: not campaign stores
            continue
        cid = _slug(str(relative.with_suffix("")))
        while cid in found:
            cid += "_"
        found[cid] = path
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip(".-") or "store"
