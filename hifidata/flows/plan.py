"""`hifidata plan`: what each rung of a campaign is expected to cost, before anything runs.

Plain functions (no Prefect flow): they read the spec and, when it exists, its store (read-only,
never written), and return one row per rung. The cost model of each rung is the store's fit of
its method's timings when there are any, else the prior of hifidata.sampling.costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from hifidata.datasets.store import Store
from hifidata.sampling.costs import cost_model, label_seconds, size_of
from hifidata.spec import Rung, Spec, load_spec

SIZE_UNITS = {"pyscf": "basis functions", "cp2k": "atoms", "espresso": "atoms"}


def plan_campaign(spec_path: str | Path) -> list[dict[str, Any]]:
    """One row per rung: labels planned, done and left, the typical size, predicted seconds per
    label and CPU-hours left, and where the cost model comes from (raises SpecError)."""
    spec = load_spec(spec_path)
    store = Store(spec.store_path) if spec.store_path.is_file() else None
    seeds = spec.seed_structures()
    planned: dict[str, int] = {}
    rows = []
    for rung in spec.ladder:
        rows.append(_plan_rung(spec, rung, store, seeds, planned))
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Labels left and CPU-hours left over all rungs."""
    return {
        "labels_remaining": sum(r["remaining"] for r in rows),
        "cpu_hours": sum(r["cpu_hours"] for r in rows),
        "labels_done": sum(r["done"] for r in rows),
    }


def _plan_rung(spec: Spec, rung: Rung, store: Store | None, seeds: list[Atoms],
               planned: dict[str, int]) -> dict[str, Any]:
    method = rung.resolved
    mid = method.method_id
    pick = rung.select
    wanted = pick.clusters * pick.per_cluster
    if pick.source != "candidates":  # DIRECT cannot pick more than its pool holds
        wanted = min(wanted, planned[pick.source])
    selection = _selection(store, rung.name)
    note = ""
    if selection is not None:
        wanted = len(selection)
    planned[rung.name] = wanted
    labeled: dict[str, str] = {}
    if store is not None and mid in {m["method_id"] for m in store.methods()}:
        labeled = store.labeled_ids(mid)
    ok = {sid for sid, status in labeled.items() if status == "ok"}
    if selection is not None:
        done = len(ok & set(selection))
        failed = sum(1 for sid in selection if labeled.get(sid, "ok") != "ok")
    else:
        done, failed = min(len(ok), wanted), 0
    # quarantine is final: a failed label is not computed again
    remaining = max(wanted - done - failed, 0)

    structures, where = _typical_structures(spec, rung, store, seeds, selection, labeled)
    if not structures:  # every structure is above max_atoms: the seeds still tell the size
        structures, where = seeds, "seeds"
        note = f"no seed has at most {_max_atoms(spec, rung)} atoms; sized from all seeds"
    sizes = [size_of(a, method.engine, method.params) for a in structures]
    model = cost_model(method.engine, method.params, store, mid, size=float(np.median(sizes)))
    core_seconds = label_seconds(model, structures, method.engine, method.params)
    per_label = float(np.mean(core_seconds))  # DIRECT picks across the pool, so its mean
    cores = rung.threads * rung.ranks
    cpu_hours = remaining * per_label / 3600.0
    budget = pick.budget_hours  # a CPU-hour cap: allocate() fills it
    if budget is not None:  # what the labels done spent (as predicted) is gone
        left = max(float(budget) * 3600.0 - done * per_label, 0.0)
        remaining = min(remaining, int(left // per_label))
        cpu_hours = remaining * per_label / 3600.0
        planned[rung.name] = min(wanted, done + failed + remaining)
    return {
        "rung": rung.name,
        "engine": method.engine,
        "method": method.describe(),
        "method_id": mid,
        "planned": wanted,
        "done": done,
        "failed": failed,
        "remaining": remaining,
        "typical_size": float(np.median(sizes)),
        "size_unit": SIZE_UNITS[method.engine],
        "sized_from": where,
        "threads": rung.threads,
        "ranks": rung.ranks,
        "seconds_per_label": per_label / cores,  # wall, if the run scales ideally over cores
        "core_seconds_per_label": per_label,
        "cpu_hours": cpu_hours,
        "budget_hours": budget,
        "source": model.describe(),
        "model": model.as_dict(),
        "note": note,
    }


def _selection(store: Store | None, name: str) -> list[str] | None:
    if store is None or name not in store.selection_names():
        return None
    return store.selection(name).selected_ids


def _typical_structures(spec: Spec, rung: Rung, store: Store | None, seeds: list[Atoms],
                        selection: list[str] | None,
                        labeled: dict[str, str]) -> tuple[list[Atoms], str]:
    """The structures whose sizes a rung's labels will have: its selection's (those left to
    label first), else its pool in the store, else the seeds; within max_atoms."""
    if selection is not None:
        left = [sid for sid in selection if sid not in labeled] or selection
        return store.structures(left), "selection"
    pool: list[Atoms] = []
    source = rung.select.source
    if store is not None and source != "candidates" and source in store.selection_names():
        pool, where = store.structures(store.selection(source).selected_ids), f"selection {source}"
    elif store is not None and store.structure_ids():
        pool, where = store.structures(), "candidates"
    if not pool:
        pool, where = seeds, "seeds"
    limit = _max_atoms(spec, rung)
    if limit:
        pool = [a for a in pool if len(a) <= limit]
    return pool, where


def _max_atoms(spec: Spec, rung: Rung) -> int | None:
    """The smallest max_atoms along the chain of pools a rung picks from."""
    limits = []
    while True:
        if rung.select.max_atoms:
            limits.append(rung.select.max_atoms)
        if rung.select.source == "candidates":
            return min(limits) if limits else None
        rung = spec.rung(rung.select.source)
