"""`hifidata audit` and the campaign's audit stage: two methods on the same configurations.

The audit picks a stratified subset of the structures method A labeled (DIRECT on the features
the campaign's selections stored), labels what B has not labeled yet, writes those labels to
the store like any others, and reports the disagreement (datasets/audit.py) as markdown with a
plot beside the store. With no ``count`` it only compares the pairs the store already holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from threadpoolctl import threadpool_limits

from hifidata.calculators.base import Method
from hifidata.datasets import audit
from hifidata.datasets.store import Store
from hifidata.errors import HifidataError
from hifidata.flows import tasks
from hifidata.flows.progress import reporter

FEATURES_MODEL = "chgnet-0.3.0"  # for structures no selection holds features of


def run_audit(store_path: Path, names: tuple[str, str], count: int | None = None,
              seed: int = 0, workers: int = 2) -> dict[str, Any]:
    """Check the inputs (one-line errors, nothing written), then run the audit flow."""
    if not Path(store_path).is_file():
        raise HifidataError(f"{store_path}: no such file")
    if names[0] == names[1]:
        raise HifidataError("--methods: give two different rungs")
    if count is not None and count < 1:
        raise HifidataError("--count must be at least 1")
    store = Store(store_path)
    reference, _, _ = method_of(store, names[0])
    method_of(store, names[1])
    if not len(store.labels(reference.method_id).ok()):
        raise HifidataError(f"{names[0]} has no ok labels to audit against")
    if workers < 1:
        raise HifidataError("--workers must be at least 1")
    runner = ThreadPoolTaskRunner(max_workers=workers)
    with Store(store_path, "a") as writable:
        return audit_flow.with_options(task_runner=runner)(writable, names, count, seed)


def method_of(store: Store, name: str) -> tuple[Method, int, int]:
    """The rung as the campaign ran it (every setting, threads, ranks), from the store."""
    record = store.record("method", name)
    if record is None:
        known = sorted(store.records("method"))
        raise HifidataError(
            f"{store.path}: no rung named {name!r} was labeled (rungs: {', '.join(known) or '-'})"
        )
    return (Method(record["engine"], record["params"], name), record.get("threads", 1),
            record.get("ranks", 1))


@flow(name="audit")
def audit_flow(store: Store, names: tuple[str, str], count: int | None = None,
               seed: int = 0) -> dict[str, Any]:
    (method_a, _, _), (method_b, threads, ranks) = (method_of(store, n) for n in names)
    store.add_method(method_b)
    reference = store.labels(method_a.method_id).ok()
    if not len(reference):
        raise HifidataError(f"{names[0]} has no ok labels to audit against")
    subset = reference.structure_ids
    if count is None:  # only the pairs the store holds
        labeled = set(store.labels(method_b.method_id).structure_ids)
        subset = [sid for sid in subset if sid in labeled]
    else:
        if count < len(subset):
            subset = _stratified(store, subset, count, seed)
        label_missing(store, subset, method_b, threads, ranks)

    ids = list(subset)
    a = reference.for_ids(ids)
    b = store.labels(method_b.method_id).for_ids(ids)
    pairs = audit.Pairs.of(names, a, b, store.structures(ids), store.origins(ids))
    if not len(pairs):
        raise HifidataError(f"{names[0]} and {names[1]} have no ok labels in common")
    summary = audit.compare(pairs)
    failures = [
        {"method": names[1], "structure_id": sid, "status": status, "message": message}
        for sid, status, message in zip(b.structure_ids, b.status, b.message, strict=True)
        if status != "ok"
    ]
    key = f"{names[0]}-vs-{names[1]}"
    reports = store.path.parent / "reports"
    picture = audit.plot(pairs, summary, reports / f"audit-{key}.png")
    text = audit.report(summary, picture.name, failures)
    markdown = reports / f"audit-{key}.md"
    markdown.write_text(text)
    store.put_record("audit", key, {
        "summary": summary, "structure_ids": ids, "report": store.relative(markdown),
        "plot": store.relative(picture), "failures": len(failures), "count": count,
    })
    reporter().note(
        f"audit: {names[1]} vs {names[0]} on {summary['structures']} structures: force MAE "
        f"{summary['forces_eV_per_A']['all']['mae'] * 1000:.1f} meV/Å, relative energy MAE "
        f"{summary['energy']['relative_mae_meV_per_atom']:.2f} meV/atom ({markdown})"
    )
    return {**summary, "report": str(markdown), "plot": str(picture)}


def _stratified(store: Store, ids: list[str], count: int, seed: int) -> list[str]:
    """``count`` of ``ids`` picked by DIRECT on their features (one per BIRCH cluster)."""
    known: dict[str, np.ndarray] = {}
    for name in store.selection_names():
        selection = store.selection(name)
        known.update(zip(selection.pool_ids, selection.arrays["features"], strict=True))
    missing = [sid for sid in ids if sid not in known]
    if missing:
        computed = tasks.structure_features(store.structures(missing), FEATURES_MODEL, 64)
        known.update(zip(missing, computed, strict=True))
    pick = tasks.direct_pick(np.stack([known[sid] for sid in ids]), count, 1, False, "center",
                             seed)
    return [ids[i] for i in sorted(pick["selected"])]


def label_missing(store: Store, ids: list[str], method: Method, threads: int, ranks: int,
                  title: str = "audit") -> None:
    """Label the ``ids`` that ``method`` has not labeled yet, storing each as it arrives."""
    done = store.labeled_ids(method.method_id)
    todo = [sid for sid in ids if sid not in done]
    if not todo:
        return
    bar = reporter()
    bar.start(title, f"{title}: {method.name} ({method.describe()})", len(todo))
    futures = [
        tasks.label.with_options(task_run_name=f"{method.name}-{sid[:12]}").submit(
            atoms, method, threads, ranks
        )
        for sid, atoms in zip(todo, store.structures(todo), strict=True)
    ]
    with threadpool_limits(limits=1):
        for future in as_completed(futures):
            store.add_labels([future.result()])
            bar.advance(title)
    bar.done(title)
