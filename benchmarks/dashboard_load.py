"""The dashboard on a big store: how long the page takes to load and to show a new label.

    .venv/bin/python benchmarks/dashboard_load.py [--structures 100000] [--workdir DIR]

Data (the release benchmark's generator, benchmarks/release_export.py): ``--structures``
distinct 6-atom water dimers; rung ``hf`` labels all of them, ``mp2`` every third; 0.5 % of
each rung's labels failed. Both rungs have a selection with a PCA embedding (8 components
of the displacements): ``hf`` picked from all candidates, ``mp2`` from ``hf``'s pick. The
records a finished campaign leaves (spec, stages, models, an evaluation with 2,000-point
parity data) are there too, so every panel has its data.

Measured, side by side in one run (``time.perf_counter``; the browser is headless Chromium,
Debian's, through Selenium):

1. ``overview(store)``, what one page's data costs, and ``summary(store)`` (an index row),
   beside ``hifidata status``'s ``campaign_status`` on the same store;
2. HTTP: the overview endpoint cold (the store read), again (cached) and conditional (304);
3. the page in the browser, from navigation to every panel drawn (plotly included), with the
   server's cache cold and warm;
4. live: one label appended by another writer until the open page shows it (polling every
   0.5 s, so up to 0.5 s of the time is the poll interval).

Measured 2026-11-22 on the 2-core development machine at 100,000 structures (133,338 labels;
the live step of earlier runs had added four): see the table in docs/dashboard.md. First
visit 4.0 s (2.6 s of it the overview request), warm 1.6 s, live 2.6 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from release_export import dimers, make_labels
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import chromium, wait_for

from hifidata.calculators.base import Method
from hifidata.dashboard.app import create_app, serving
from hifidata.datasets.overview import overview, summary
from hifidata.datasets.status import campaign_status
from hifidata.datasets.store import Selection, Store
from hifidata.training.metrology import Parity, write_parity_points


def build(path: Path, n: int, seed: int = 0) -> None:
    hf = Method.resolve("pyscf", {"theory": "hf", "basis": "sto-3g"}, "hf")
    mp2 = Method.resolve("pyscf", {"theory": "mp2", "basis": "sto-3g"}, "mp2")
    structures, displacement = dimers(n, seed, 0.05)
    origins = [{"protocol": "rattle", "seed": seed, "step": i, "stdev": 0.05} for i in range(n)]
    with Store(path, "a") as store:
        ids = store.add_structures(structures, origins)
        for method in (hf, mp2):
            store.add_method(method)
        embedding = PCA(8).fit(displacement.reshape(n, -1))
        pcs = embedding.transform(displacement.reshape(n, -1))
        mp2_rows = np.arange(0, n, 3)
        store.add_selection(Selection("hf", ids, ids, {
            "embedding": pcs, "explained_variance": embedding.explained_variance_}))
        store.add_selection(Selection("mp2", ids, [ids[i] for i in mp2_rows], {
            "embedding": pcs, "explained_variance": embedding.explained_variance_}))
        store.add_labels(make_labels(ids, displacement, hf, np.arange(n), seed + 1))
        store.add_labels(make_labels(ids, displacement, mp2, mp2_rows, seed + 2))
        store.put_record("run", "spec", {"name": "big", "ladder": [{"name": "hf"},
                                                                  {"name": "mp2"}],
                                         "train": {"recipe": "finetune"}, "audit": []})
        for stage in ("explore", "select", "label", "audit", "train", "evaluate"):
            store.put_record("stage", stage, {"state": "done", "seconds": 1.0})
        store.put_record("model", "finetune-hf", {"recipe": "finetune", "rung": "hf",
                                                  "n_train": n // 2, "n_validation": n // 10,
                                                  "path": "models/finetune-hf"})
        rng = np.random.default_rng(seed)
        test = 20_000
        parity = Parity("finetune-hf", "hf", np.full(test, 6), rng.normal(0, 1, test),
                        rng.normal(0, 1, test), rng.normal(0, 1, (6 * test, 3)),
                        rng.normal(0, 1, (6 * test, 3)))
        points = write_parity_points([parity], path.parent / "reports" / "parity.json")
        store.put_record("evaluation", "campaign", {
            "metrics": [{"model": "finetune-hf", "rung": "hf", **parity.errors()}],
            "parity_points": store.relative(points)})


def timed(run, repeats: int = 1) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        best = min(best, time.perf_counter() - start)
    return best, value


def page_load(url: str, browser) -> tuple[float, float, float]:
    """Seconds from navigation to the first complete render of every panel, and within it
    the overview request's and plotly.min.js's (request start to last byte)."""
    browser.get("about:blank")
    browser.get(url)
    wait_for(lambda: browser.execute_script("return document.body.dataset.renders"),
             timeout=300, what="the first render")
    render, api, plotly = browser.execute_script("""
        const took = (part) => performance.getEntriesByType("resource")
            .filter((e) => e.name.includes(part)).map((e) => e.responseEnd - e.startTime)[0];
        return [window.hifidataFirstRenderMs, took("/overview"), took("plotly.min.js")];""")
    return render / 1000, (api or 0) / 1000, (plotly or 0) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hifidata-dashboard-"))
    path = work / "big.h5"
    print(f"{args.structures:,} structures; {os.cpu_count()} CPUs; Python "
          f"{platform.python_version()}; work in {work}", flush=True)
    if not path.exists():
        seconds, _ = timed(lambda: build(path, args.structures))
        print(f"set-up: store built in {seconds:.1f} s ({path.stat().st_size / 1e6:.0f} MB)",
              flush=True)
    rows = []
    t, data = timed(lambda: overview(Store(path)), repeats=2)
    labels = sum(r["ok"] + r["quarantined"] for r in data["rungs"])
    rows.append(("overview(store): a campaign page's data", t))
    rows.append(("summary(store): an index row", timed(lambda: summary(Store(path)), 2)[0]))
    rows.append(("campaign_status(store) (hifidata status), for reference",
                 timed(lambda: campaign_status(Store(path)), 2)[0]))

    from starlette.testclient import TestClient

    client = TestClient(create_app(path))
    url = "/api/c/big/overview"
    t_cold, response = timed(lambda: client.get(url))
    rows.append((f"GET overview, cold ({len(response.content) / 1e6:.2f} MB JSON)", t_cold))
    rows.append(("GET overview, cached", timed(lambda: client.get(url), 3)[0]))
    etag = response.headers["etag"]
    rows.append(("GET overview, unchanged (304)", timed(
        lambda: client.get(url, headers={"If-None-Match": etag}), 3)[0]))

    # prewarm off: the first visit pays the store read (`hifidata dashboard` reads every
    # store in the background at start, so a visit seconds later finds it ready)
    with serving(path, refresh_seconds=0.5, prewarm=False) as base, chromium() as browser:
        for label, load in (("first visit: fresh browser, server cache cold", 1),
                            ("again: browser and server caches warm", 2)):
            render, api, plotly = min(page_load(f"{base}/c/big", browser) for _ in range(load))
            rows.append((f"browser, {label}: every panel drawn", render))
            rows.append(("    of which the overview request", api))
            rows.append(("    of which loading plotly.min.js (4.6 MB)", plotly))
        shown = ("return document.querySelector('[data-key=\"rung.mp2.ok\"]').textContent")
        before = int(browser.execute_script(shown))
        ids = Store(path).labels(Store(path).method_id("mp2")).structure_ids
        missing = next(sid for sid in Store(path).structure_ids() if sid not in set(ids))
        with Store(path, "a") as writer:
            from hifidata.calculators.base import Label

            start = time.perf_counter()
            writer.add_labels([Label(missing, writer.method_id("mp2"), "ok", energy=-1.0,
                                     forces=np.zeros((6, 3)), wall_time=1.0)])
        wait_for(lambda: int(browser.execute_script(shown)) == before + 1, timeout=300,
                 what="the new label")
        rows.append(("live: a new label written until the page shows it",
                     time.perf_counter() - start))

    print(f"\n{args.structures:,} structures, {labels:,} labels\n")
    print("| what | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
