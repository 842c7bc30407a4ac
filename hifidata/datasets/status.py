"""What a campaign store holds, stage by stage: what `hifidata status` and `run` report."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from hifidata.datasets.store import Store

MAX_FAILURES_LISTED = 20


def campaign_status(store: Store) -> dict[str, Any]:
    """Counts per stage and rung, failures, cost, models, evaluation, MD and release."""
    spec = store.record("run", "spec") or {}
    # scan points (hifidata evaluate) are labeled but are not exploration candidates
    origins = [o for o in store.origins() if o.get("protocol") != "scan"]
    explore = store.records("explore")
    models = store.records("model")
    final = (store.record("final_model", "campaign") or {}).get("name")
    labels, failures = _labels(store)
    return {
        "store": str(store.path.resolve()),
        "campaign": spec.get("name", store.path.stem),
        "stages": {
            "explore": {
                "structures": len(origins),
                "by_protocol": dict(Counter(o.get("protocol", "?") for o in origins)),
                "trajectories_stopped_early": sum(1 for r in explore.values() if r.get("stopped")),
            },
            "select": {
                name: {"pool": len(s.pool_ids), "selected": len(s.selected_ids),
                       "principal_components": s.params.get("n_components"),
                       "coverage": s.params.get("coverage")}
                for name, s in ((n, store.selection(n)) for n in store.selection_names())
            },
            "label": labels,
            "audit": {key: _audit(store, record) for key, record in store.records("audit").items()},
            "train": {name: {k: v for k, v in m.items() if k != "fingerprint"}
                      for name, m in models.items()},
            "evaluate": (store.record("evaluation", "campaign") or {}).get("metrics", []),
            "deploy": _without_fingerprint(store.record("deploy", "campaign")),
            "release": _without_fingerprint(store.record("release", "campaign")),
        },
        "models": {name: str(store.resolve(m["path"])) for name, m in models.items()},
        "final_model": str(store.resolve(models[final]["path"])) if final in models else None,
        "parity_plot": _resolved(store, store.record("evaluation", "campaign"), "parity_plot"),
        "reports": {name: {"report": str(store.resolve(r["report"])),
                           "stability": r.get("stability"), "slices": r.get("slices")}
                    for name, r in store.records("evaluation").items() if "report" in r},
        "coverage_maps": [str(store.resolve(p)) for p in
                          (store.record("maps", "campaign") or {}).get("paths", [])],
        "release": _resolved(store, store.record("release", "campaign"), "path"),
        "failures": failures[:MAX_FAILURES_LISTED],
        "failures_total": len(failures),
    }


def _labels(store: Store) -> tuple[dict[str, Any], list[dict[str, str]]]:
    selected = {name: set(store.selection(name).selected_ids) for name in store.selection_names()}
    out, failures = {}, []
    for method in store.methods():
        name = method["name"]
        labels = store.labels(method["method_id"])
        ok = [s == "ok" for s in labels.status]
        wall = np.asarray(labels.wall_time)
        attempts = [json.loads(p or "{}").get("attempts", []) for p in labels.provenance]
        pending = selected.get(name, set()) - set(labels.structure_ids)
        out[name] = {
            "method_id": method["method_id"],
            "method": method["definition"],
            "selected": len(selected.get(name, ())),
            "ok": int(sum(ok)),
            "failed": dict(Counter(s for s in labels.status if s != "ok")),
            # ok labels that needed the rescue ladder, by the failure that started it
            "rescued": dict(Counter(tried[0]["failure"] for tried, good in zip(attempts, ok,
                                                                              strict=True)
                                    if good and tried)),
            "pending": len(pending),
            "wall_time_s": float(wall.sum()),
            "mean_wall_time_s": float(wall[ok].mean()) if any(ok) else None,
        }
        failures += [
            {"rung": name, "structure_id": sid, "status": status, "message": message,
             "rescues_tried": [rescue_step(a) for a in tried[1:]] if len(tried) > 1 else []}
            for sid, status, message, tried in zip(labels.structure_ids, labels.status,
                                                   labels.message, attempts, strict=True)
            if status != "ok"
        ]
    return out, failures


def rescue_step(attempt: dict[str, Any]) -> str:
    """One rescue attempt, e.g. 'max_scf=100, restart_wavefunction=True'."""
    changed = attempt.get("changed") or {}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "plain retry"


def _audit(store: Store, record: dict[str, Any]) -> dict[str, Any]:
    summary = record.get("summary", {})
    return {
        "methods": summary.get("methods"),
        "structures": summary.get("structures"),
        "force_mae_eV_per_A": summary.get("forces_eV_per_A", {}).get("all", {}).get("mae"),
        "relative_energy_mae_meV_per_atom": summary.get("energy", {}).get(
            "relative_mae_meV_per_atom"),
        "report": str(store.resolve(record["report"])) if "report" in record else None,
    }


def _without_fingerprint(record: dict | None) -> dict:
    return {k: v for k, v in (record or {}).items() if k != "fingerprint"}


def _resolved(store: Store, record: dict | None, key: str) -> str | None:
    return str(store.resolve(record[key])) if record and key in record else None


def as_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, default=str)
