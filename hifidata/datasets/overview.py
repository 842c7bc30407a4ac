"""What the dashboard shows of a campaign store, as JSON-ready dicts.

:func:`overview` reads a store once (read-only; the campaign may be writing it) and returns
every panel: stage progress, labels per rung with their throughput and cost, the failure
table, the PCA coverage of every selection, element frequencies, model metrics per evaluation,
MD stability, releases and links to the Prefect UI. :func:`summary` is the light version the
index page shows for each campaign of a folder.

Large arrays are thinned here, not in the browser: a coverage layer keeps at most
``MAX_POINTS`` points (an evenly spaced subset; the counts are of all of them) and a
throughput curve at most ``MAX_CURVE`` points.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from ase.data import chemical_symbols

from hifidata.calculators.base import cores_of
from hifidata.datasets.maps import MAX_Z, table_position
from hifidata.datasets.status import rescue_step
from hifidata.datasets.store import Store
from hifidata.spec import STAGES

MAX_POINTS = 3000  # per coverage layer: SVG scatter stays quick in a browser
MAX_CURVE = 400  # points per throughput curve
MAX_FAILURES = 500  # rows of the failure table (the total is given)


class ProvenanceCache:
    """What the overview needs of each label's provenance (start time, cores, failed
    attempts), kept between reads of one store: label rows never change (the store is
    append-only), so reading a growing store again decodes only the rows added since."""

    def __init__(self) -> None:
        self.store: tuple | None = None
        self.rows: list[tuple[str | None, int, list]] = []

    def read(self, store: Store) -> tuple[dict[str, Any], list[tuple[str | None, int, list]]]:
        """The store's label rows (store.label_rows) and every row's (started, cores,
        attempts)."""
        identity = (str(store.path.resolve()), store.info().get("created"))
        if identity != self.store:
            self.store, self.rows = identity, []
        rows = store.label_rows(provenance_from=len(self.rows))
        if len(rows["status"]) < len(self.rows):  # not the store it was: start again
            self.rows = []
            rows = store.label_rows()
        self.rows = self.rows + [_provenance(text) for text in rows["provenance"]]
        return rows, self.rows


def overview(store: Store, cache: ProvenanceCache | None = None) -> dict[str, Any]:
    """Every panel of the dashboard for ``store``; ``cache`` keeps what was decoded of the
    labels' provenance for the next call on the same store."""
    spec = store.record("run", "spec") or {}
    methods = store.methods()
    rows, infos = (cache or ProvenanceCache()).read(store)
    latest = _latest_labels(rows)
    selections = {name: store.selection(name, arrays=("embedding", "explained_variance"))
                  for name in store.selection_names()}
    rungs = _rung_order(spec, methods, selections)
    labels = {name: _rung_labels(rows, infos, latest.get(_method_id(methods, name), {}),
                                 selections.get(name)) for name in rungs}
    stages = _stages(store, spec, labels)
    data = {
        "campaign": _campaign(store, spec, stages),
        "stages": stages,
        "rungs": [{"name": name, **_method_summary(methods, name), **labels[name]["summary"]}
                  for name in rungs],
        "throughput": {name: labels[name]["throughput"] for name in rungs},
        "failures": _failures(labels),
        "coverage": [_coverage(selections[name], selections,
                               latest.get(_method_id(methods, name), {}), rows["status"])
                     for name in rungs if name in selections],
        "elements": _elements(store, latest, rows["status"]),
        "models": _models(store),
        "releases": _releases(store),
        "prefect": _prefect(store),
    }
    _stage_details(data)
    return data


def _stage_details(data: dict[str, Any]) -> None:
    """A line per stage saying how far it got, from the other panels' numbers."""
    models, releases = data["models"], data["releases"]
    deploy = models["deploy"]
    details = {
        "explore": f"{data['elements']['structures']:,} structures",
        "select": ", ".join(f"{c['rung']} {c['layers']['selected']['count']:,}/"
                            f"{c['layers']['pool']['count']:,}" for c in data["coverage"]),
        "label": ", ".join(f"{r['name']} {r['ok']:,} ok" for r in data["rungs"]),
        "train": f"{len(models['trained'])} model" + "s" * (len(models["trained"]) != 1)
        if models["trained"] else "",
        "evaluate": f"final: {models['final']}" if models["final"] else "",
        "deploy": (f"{deploy['stable_replicas']}/{deploy['replicas']} stable"
                   if deploy.get("replicas") else ""),
        "release": f"v{releases[-1]['version']}" if releases and releases[-1]["version"]
        else "",
    }
    for stage in data["stages"]:
        stage["detail"] = details.get(stage["name"], "")


def summary(store: Store) -> dict[str, Any]:
    """One index-page row: name, state, structures, labels ok / quarantined / pending."""
    spec = store.record("run", "spec") or {}
    methods = store.methods()
    rows = store.label_rows(provenance_from=None)
    latest = _latest_labels(rows)
    selected = {n: set(store.selection(n, arrays=()).selected_ids)
                for n in store.selection_names()}
    status = rows["status"]
    ok = sum(status[r] == "ok" for rows_ in latest.values() for r in rows_.values())
    failed = sum(status[r] != "ok" for rows_ in latest.values() for r in rows_.values())
    pending = sum(len(ids - set(latest.get(_method_id(methods, name), {})))
                  for name, ids in selected.items())
    stages = _stages(store, spec, None)
    return {**_campaign(store, spec, stages), "structures": len(store.structure_ids()),
            "labels_ok": ok, "quarantined": failed, "pending": pending}


# -- campaign and stages -------------------------------------------------------------------
def _campaign(store: Store, spec: dict, stages: list[dict]) -> dict[str, Any]:
    writer = store.writer()
    running = [s["name"] for s in stages if s["state"] == "running"]
    finished = bool(stages) and all(s["state"] in ("done", "skipped") for s in stages)
    if running and writer and writer["alive"] is False:
        state = "interrupted"
    elif running or (writer and writer["alive"] and not finished):  # (between two stages)
        state = "running"
    elif any(s["state"] == "failed" for s in stages):
        state = "failed"
    elif finished:
        state = "finished"
    else:
        state = "stopped" if any(s["state"] == "done" for s in stages) else "new"
    stat = store.path.stat()
    return {
        "name": spec.get("name", store.path.stem),
        "description": spec.get("description") or "",
        "store": store.path.name,
        "created": store.info().get("created"),
        "updated": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds"),
        "bytes": stat.st_size,
        "state": state,
        "stage": running[0] if running else None,
        "writer": writer,
    }


def _stages(store: Store, spec: dict, labels: dict | None) -> list[dict[str, Any]]:
    """Each stage's state from its records (running / done / failed), else from what the
    store holds (stores written before stages were recorded), with a line of detail."""
    recorded = store.records("stage")
    found = {
        "explore": bool(store.records("explore")), "select": bool(store.selection_names()),
        "label": bool(store.methods()), "audit": bool(store.records("audit")),
        "train": bool(store.records("model")), "evaluate": bool(store.records("evaluation")),
        "deploy": store.record("deploy", "campaign") is not None,
        "release": store.record("release", "campaign") is not None,
    }
    # stages a spec leaves out (no train block, no audits) are skipped, not pending
    unused = {"audit"} if spec and not spec.get("audit") else set()
    if spec and not spec.get("train"):
        unused |= {"train", "evaluate", "deploy"}
    out = []
    for name in STAGES:
        record = recorded.get(name, {})
        state = record.get("state") or ("done" if found[name] else "pending")
        if name in unused and not found[name]:  # (an audit stage with no audits still runs)
            state = "skipped"
        entry = {"name": name, "state": state, **{k: record.get(k) for k in (
            "started", "finished", "seconds", "error", "flow_run_id")}}
        if name == "label" and labels is not None:
            selected = sum(v["summary"]["selected"] for v in labels.values())
            settled = selected - sum(v["summary"]["pending"] for v in labels.values())
            entry["fraction"] = settled / selected if selected else None
        out.append(entry)
    return out


# -- labels ---------------------------------------------------------------------------------
def _latest_labels(rows: dict[str, Any]) -> dict[str, dict[str, int]]:
    """method_id -> structure_id -> row of its latest label."""
    latest: dict[str, dict[str, int]] = defaultdict(dict)
    for row, (sid, mid) in enumerate(zip(rows["structure_id"], rows["method_id"], strict=True)):
        latest[mid][sid] = row
    return latest


def _method_id(methods: list[dict], name: str) -> str | None:
    matches = [m["method_id"] for m in methods if m["name"] == name]
    return matches[-1] if matches else None


def _rung_order(spec: dict, methods: list[dict], selections: dict) -> list[str]:
    """The spec's ladder first (its order), then rungs only the store knows."""
    ladder = [rung["name"] for rung in spec.get("ladder", [])]
    return list(dict.fromkeys([*ladder, *(m["name"] for m in methods), *selections]))


def _method_summary(methods: list[dict], name: str) -> dict[str, Any]:
    mid = _method_id(methods, name)
    definition = next((m["definition"] for m in methods if m["method_id"] == mid), {})
    shown = ("method", "theory", "xc", "functional", "basis", "basis_set", "cutoff", "ecutwfc",
             "kpoints", "dispersion", "model")
    return {"method_id": mid, "engine": definition.get("engine"),
            "settings": {k: definition[k] for k in shown if definition.get(k) is not None}}


def _rung_labels(rows: dict, infos: list[tuple], latest: dict[str, int],
                 selection) -> dict[str, Any]:
    """Counts, cost and throughput of one rung's labels."""
    ids, where = list(latest), np.fromiter(latest.values(), dtype=np.int64, count=len(latest))
    status = [rows["status"][r] for r in where]
    started, cores, tried = zip(*(infos[r] for r in where), strict=True) if len(where) else (
        (), (), ())
    good = np.array([s == "ok" for s in status], dtype=bool)
    cores = np.array(cores, dtype=float)
    core_seconds = np.nan_to_num(np.asarray(rows["wall_time"], dtype=float)[where]) * cores
    attempts = Counter(a.get("failure", "?") for t in tried for a in t)  # rescued ones too
    attempts.update(s for s, t in zip(status, tried, strict=True) if s != "ok" and not t)
    failed = np.flatnonzero(~good)
    selected = list(selection.selected_ids) if selection is not None else []
    failures = [{
        "structure_id": ids[k], "class": status[k], "message": rows["message"][where[k]],
        "rescues": [rescue_step(a) for a in tried[k][1:]],
        "attempts": [{"class": a.get("failure"), "message": a.get("message", "")}
                     for a in tried[k]],
        "started": started[k],
    } for k in failed]
    return {
        "summary": {
            "selected": len(selected), "ok": int(good.sum()),
            "rescued": sum(1 for k in np.flatnonzero(good) if tried[k]),
            "quarantined": len(failed),
            "quarantined_by_class": dict(Counter(status[k] for k in failed)),
            "failed_attempts_by_class": dict(attempts),
            "pending": len(set(selected) - set(latest)),
            "cpu_hours": float(core_seconds.sum()) / 3600,
            "cpu_hours_failed": float(core_seconds[failed].sum()) / 3600,
            "mean_core_seconds": float(core_seconds[good].mean()) if good.any() else None,
        },
        "throughput": _throughput(list(started), core_seconds / np.maximum(cores, 1), good),
        "failures": failures,
    }


def _provenance(text: str) -> tuple[str | None, int, list]:
    """(started, cores, failed attempts) of one label. orjson: decoding every label's
    provenance is most of the overview's time on a big store; orjson (Prefect's) does it
    4× faster than json."""
    try:
        info = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    return info.get("started"), cores_of(info), info.get("attempts") or []


def _throughput(started: list[str | None], wall: np.ndarray, good: np.ndarray
                ) -> dict[str, list]:
    """Labels finished over time (all, and ok): when each label's run ended, cumulated.
    Labels without a start time (imported ones) are left out."""
    starts = [_time(s) for s in started]
    known = np.array([s is not None for s in starts], dtype=bool)
    if not known.any():
        return {"time": [], "labels": [], "ok": []}
    ends = np.array([s.timestamp() for s in starts if s is not None]) + wall[known]
    order = np.argsort(ends, kind="stable")
    ok = np.cumsum(good[known][order])
    keep = np.unique(np.linspace(0, len(order) - 1, min(len(order), MAX_CURVE)).astype(int))
    zone = next(s for s in starts if s is not None).tzinfo
    return {"time": [datetime.fromtimestamp(ends[order[k]], zone).isoformat(timespec="seconds")
                     for k in keep],
            "labels": (keep + 1).tolist(), "ok": ok[keep].tolist()}


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _failures(labels: dict[str, dict]) -> dict[str, Any]:
    rows = [{"rung": name, **f} for name, data in labels.items() for f in data["failures"]]
    return {"total": len(rows), "rows": rows[:MAX_FAILURES]}


# -- coverage and elements ------------------------------------------------------------------
def _coverage(selection, selections: dict, latest: dict[str, int],
              status: list[str]) -> dict[str, Any]:
    """A rung's pool on its PCA embedding (PC1, PC2), with what it selected and labeled."""
    embedding = selection.arrays.get("embedding")
    where = {sid: i for i, sid in enumerate(selection.pool_ids)}
    groups = {
        "pool": np.arange(len(selection.pool_ids)),
        "selected": np.array([where[s] for s in selection.selected_ids if s in where], int),
        "labeled ok": np.array([where[s] for s, r in latest.items()
                                if status[r] == "ok" and s in where], int),
        "quarantined": np.array([where[s] for s, r in latest.items()
                                 if status[r] != "ok" and s in where], int),
    }
    pool_of = next((other for other, s in selections.items()
                    if other != selection.name and s.selected_ids == selection.pool_ids), None)
    variance = np.asarray(selection.arrays.get("explained_variance", []), dtype=float).ravel()
    ratio = (variance / variance.sum()).tolist()[:2] if variance.sum() > 0 else []
    layers = {}
    for name, rows in groups.items():
        layers[name] = {"count": len(rows), **_points(embedding, rows)}
    return {"rung": selection.name, "pool": f"selected for {pool_of}" if pool_of else
            "candidates", "explained_variance_ratio": ratio, "layers": layers,
            "coverage": selection.params.get("coverage"),
            "components": selection.params.get("n_components")}


def _points(embedding: np.ndarray | None, rows: np.ndarray) -> dict[str, list]:
    if embedding is None or len(rows) == 0:
        return {"x": [], "y": []}
    embedding = np.asarray(embedding, dtype=float).reshape(len(embedding), -1)
    step = max(1, int(np.ceil(len(rows) / MAX_POINTS)))
    chosen = np.asarray(rows)[::step]
    x = embedding[chosen, 0]
    # one component: a strip plot against the row, as the coverage PNGs draw it
    y = embedding[chosen, 1] if embedding.shape[1] > 1 else chosen.astype(float)
    return {"x": np.round(x, 5).tolist(), "y": np.round(y, 5).tolist()}


def _elements(store: Store, latest: dict[str, dict[str, int]],
              status: list[str]) -> dict[str, Any]:
    """Structures containing each element: all candidates, and those with an ok label."""
    ids, numbers = store.atomic_numbers()
    labeled = {sid for rows in latest.values() for sid, r in rows.items() if status[r] == "ok"}
    # each (structure, element) pair once: structures containing each element
    sizes = np.fromiter((len(z) for z in numbers), dtype=np.int64, count=len(numbers))
    rows = np.repeat(np.arange(len(ids)), sizes)
    pairs = np.unique(rows * (MAX_Z + 1) + (np.concatenate(numbers) if len(numbers) else rows))
    row_of, z_of = np.divmod(pairs, MAX_Z + 1)
    everything = np.bincount(z_of, minlength=MAX_Z + 1)
    is_labeled = np.array([sid in labeled for sid in ids], dtype=bool)
    ok = np.bincount(z_of[is_labeled[row_of]], minlength=MAX_Z + 1)
    table = []
    for z in range(1, MAX_Z + 1):
        row, column = table_position(z)
        table.append({"symbol": chemical_symbols[z], "z": z, "row": row, "column": column,
                      "candidates": int(everything[z]), "labeled": int(ok[z])})
    return {"structures": len(ids), "labeled_structures": len(labeled & set(ids)),
            "table": table}


# -- models, releases, Prefect --------------------------------------------------------------
def _models(store: Store) -> dict[str, Any]:
    models = store.records("model")
    final = (store.record("final_model", "campaign") or {}).get("name")
    evaluations = [{"created": h["created"], "metrics": h["data"].get("metrics", [])}
                   for h in store.record_history("evaluation", "campaign")]
    latest = store.record("evaluation", "campaign") or {}
    report = store.records("evaluation").get(final or "", {})
    return {
        "final": final,
        "trained": [{"name": name, **{k: m.get(k) for k in (
            "recipe", "rung", "rungs", "n_train", "n_validation")}}
            for name, m in models.items()],
        "evaluations": evaluations,
        "parity": _parity(store, latest.get("parity_points")),
        "stability": report.get("stability"),
        "deploy": {k: v for k, v in (store.record("deploy", "campaign") or {}).items()
                   if k in ("model", "ensemble", "temperature_K", "replicas", "stable_replicas",
                            "stable", "stopped", "time_ps", "ns_per_day", "atom_steps_per_s")},
    }


def _parity(store: Store, relative: str | None) -> dict[str, Any] | None:
    path = _inside(store, relative)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _releases(store: Store) -> list[dict[str, Any]]:
    """Every release the campaign wrote, oldest first; the newest with its files' checksums
    read back from its manifest (older ones were replaced on disk by it)."""
    history = store.record_history("release", "campaign")
    out = []
    for i, entry in enumerate(history):
        data = entry["data"]
        release = {"created": entry["created"], "path": data.get("path"),
                   "version": data.get("version"), "name": data.get("name"),
                   "labels": data.get("labels"), "structures": data.get("structures"),
                   "formats": data.get("formats"), "files": []}
        folder = _inside(store, data.get("path"))
        if i == len(history) - 1 and folder is not None:
            release["files"] = _manifest(folder)
            card = _card(folder)
            release["version"] = release["version"] or card.get("version")
            release["name"] = release["name"] or card.get("name")
            release["license"] = card.get("license")
        out.append(release)
    return out


def _manifest(folder: Path) -> list[dict[str, Any]]:
    """(file, sha256, bytes) from the release's SHA256SUMS."""
    try:
        lines = (folder / "SHA256SUMS").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        digest, _, name = line.partition("  ")
        path = folder / name
        files.append({"name": name, "sha256": digest,
                      "bytes": path.stat().st_size if path.is_file() else None})
    return files


def _card(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "dataset-card.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _inside(store: Store, relative: str | None) -> Path | None:
    """A path a record names, if it lies inside the campaign's folder (records are written by
    the campaign, but the dashboard reads nothing outside the store's own folder)."""
    if not relative:
        return None
    root = store.path.parent.resolve()
    path = store.resolve(relative)
    return path if path.is_relative_to(root) and path.exists() else None


def _prefect(store: Store) -> dict[str, Any] | None:
    """Links into the Prefect UI when the campaign ran against a server."""
    run = store.record("run", "prefect") or {}
    ui = run.get("ui_url")
    if not ui:
        return None
    base = ui.rstrip("/")
    stages = {name: f"{base}/runs/flow-run/{record['flow_run_id']}"
              for name, record in store.records("stage").items() if record.get("flow_run_id")}
    return {"ui": base, "campaign": f"{base}/runs/flow-run/{run['flow_run_id']}"
            if run.get("flow_run_id") else None, "stages": stages}
