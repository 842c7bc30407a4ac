"""The dashboard: its endpoints hold the store's numbers; it is safe; a real browser shows them
live. The campaign is the shared tiny one (real PySCF labels, CHGNet models), copied."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.collections import s22
from browser import chromium, screenshot, wait_for
from cli_batch import run_cli_calls
from starlette.testclient import TestClient

from hifidata.calculators.base import Label, Method, ScfNotConverged, label
from hifidata.dashboard.app import LOOPBACK_HOSTS, create_app, serving
from hifidata.datasets.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_db")]

SCRIPT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.fixture
def campaign(finished_campaign, tmp_path) -> Path:
    """A copy of the finished tiny campaign's folder (tests write to it); its store."""
    spec_path, _ = finished_campaign
    folder = tmp_path / "campaigns" / "water"
    shutil.copytree(spec_path.parent, folder, ignore=shutil.ignore_patterns("*.lock"))
    return folder / "water-dimer.h5"


def client_for(path: Path, hosts: list[str] | None = None) -> TestClient:
    return TestClient(create_app(path, refresh_seconds=0.5, allowed_hosts=hosts))


def overview_of(client: TestClient, cid: str = "water-dimer") -> dict:
    response = client.get(f"/api/c/{cid}/overview")
    assert response.status_code == 200, response.text
    return response.json()


def cores(provenance: str) -> int:
    info = json.loads(provenance)
    return int(info.get("threads") or 1) * int(info.get("ranks") or 1)


def test_the_overview_holds_the_store_numbers(campaign):
    data = overview_of(client_for(campaign))
    store = Store(campaign)

    rungs = {r["name"]: r for r in data["rungs"]}
    assert list(rungs) == ["dft", "ccsdt"]  # the spec's ladder order
    for name, rung in rungs.items():
        labels = store.labels(store.method_id(name))
        selected = store.selection(name).selected_ids
        assert rung["ok"] == labels.status.count("ok") > 0
        assert rung["quarantined"] == len(labels) - rung["ok"]
        assert rung["selected"] == len(selected)
        assert rung["pending"] == len(set(selected) - set(labels.structure_ids))
        hours = sum(w * cores(p) for w, p in zip(labels.wall_time, labels.provenance,
                                                  strict=True)) / 3600
        assert rung["cpu_hours"] == pytest.approx(hours, rel=1e-12)
        curve = data["throughput"][name]
        assert curve["labels"][-1] == len(labels) and curve["ok"][-1] == rung["ok"]
        assert curve["time"] == sorted(curve["time"])

    assert [s["state"] for s in data["stages"]] == ["done"] * 3 + ["skipped"] + ["done"] * 4
    timings = store.record("timings", "last_run")
    assert {s["name"]: s["seconds"] for s in data["stages"] if s["name"] in timings} == timings
    assert data["campaign"]["state"] == "finished"
    # the tests' throw-away Prefect server counts as a server: its UI links each stage's run
    stages = store.records("stage")
    assert data["prefect"]["stages"]["label"].endswith(
        f"/runs/flow-run/{stages['label']['flow_run_id']}")
    assert data["prefect"]["campaign"].endswith(store.record("run", "prefect")["flow_run_id"])

    for coverage in data["coverage"]:
        selection = store.selection(coverage["rung"])
        layers = coverage["layers"]
        assert layers["pool"]["count"] == len(selection.pool_ids)
        assert layers["selected"]["count"] == len(selection.selected_ids)
        embedding = selection.arrays["embedding"]
        np.testing.assert_allclose(layers["pool"]["x"], embedding[:, 0], atol=1e-5)
        np.testing.assert_allclose(layers["pool"]["y"], embedding[:, 1], atol=1e-5)
        labeled = set(store.labels(store.method_id(coverage["rung"])).ok().structure_ids)
        assert layers["labeled ok"]["count"] == len(labeled & set(selection.pool_ids))

    elements = {e["symbol"]: e for e in data["elements"]["table"]}
    structures = store.structures()
    ok_ids = {sid for m in store.methods() for sid in store.labels(m["method_id"]).ok()
              .structure_ids}
    assert elements["O"]["candidates"] == sum("O" in a.get_chemical_symbols()
                                              for a in structures)
    assert elements["H"]["labeled"] == len(ok_ids) and elements["C"]["candidates"] == 0


def test_big_layers_are_thinned_and_keep_their_counts(campaign, monkeypatch):
    from hifidata.datasets import overview as module

    monkeypatch.setattr(module, "MAX_POINTS", 7)
    monkeypatch.setattr(module, "MAX_CURVE", 4)
    data = module.overview(Store(campaign))
    pool = data["coverage"][0]["layers"]["pool"]
    embedding = Store(campaign).selection("dft").arrays["embedding"]
    assert pool["count"] == len(embedding) > 7 and len(pool["x"]) <= 7
    step = -(-len(embedding) // 7)  # an evenly spaced subset, the first point included
    np.testing.assert_allclose(pool["x"], embedding[::step, 0], atol=1e-5)
    curve = data["throughput"]["dft"]
    assert len(curve["labels"]) == 4 and curve["labels"][-1] == len(
        Store(campaign).labels(Store(campaign).method_id("dft")))


def test_model_metrics_and_parity_agree_with_the_evaluation(campaign):
    data = overview_of(client_for(campaign))
    store = Store(campaign)
    record = store.record("evaluation", "campaign")
    models = data["models"]
    assert models["evaluations"][-1]["metrics"] == record["metrics"]
    assert models["final"] == "ccsdt-composite"
    assert {m["name"] for m in models["trained"]} == set(store.records("model"))
    assert models["stability"]["300"]["runs"] == 2
    assert models["deploy"]["replicas"] == 2
    # the parity points give back the recorded errors (the test split is small: none thinned)
    metrics = {(m["model"], m["rung"]): m for m in record["metrics"]}
    for parity in models["parity"]["parities"]:
        expected = metrics[parity["model"], parity["rung"]]
        error = np.subtract(parity["energy_pred"], parity["energy_true"]) * 1000
        assert len(error) == expected["n_structures"]
        assert np.mean(np.abs(error)) == pytest.approx(expected["energy_mae_meV_per_atom"],
                                                       abs=2e-3)
        force = np.subtract(parity["force_pred"], parity["force_true"]) * 1000
        assert np.mean(np.abs(force)) == pytest.approx(expected["force_mae_meV_per_A"], abs=2e-3)


def test_the_release_panel_has_the_files_checksums(campaign):
    data = overview_of(client_for(campaign))
    release = data["releases"][-1]
    folder = campaign.parent / "release"
    card = json.loads((folder / "dataset-card.json").read_text())
    assert release["version"] == card["version"] == "1.0.0"
    assert release["labels"] == {r["name"]: r["nconfigurations"] for r in card["rungs"]}
    files = {f["name"]: f for f in release["files"]}
    assert set(files) == {p.name for p in folder.iterdir()} - {"SHA256SUMS"}
    for name, entry in files.items():
        content = (folder / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["bytes"] == len(content)


def test_the_index_lists_every_store_of_a_folder(campaign, tmp_path):
    other = campaign.parent.parent / "empty" / "fresh.h5"
    Store(other, "a").close()  # a campaign that has not started: a row of zeros
    client = client_for(campaign.parent.parent)
    rows = {row["id"]: row for row in client.get("/api/campaigns").json()}
    assert set(rows) == {"water-water-dimer", "empty-fresh"}  # release HDF5 files are no stores
    store = Store(campaign)
    ok = sum(store.labels(m["method_id"]).status.count("ok") for m in store.methods())
    assert rows["water-water-dimer"]["labels_ok"] == ok
    assert rows["water-water-dimer"]["structures"] == len(store.structure_ids())
    assert rows["empty-fresh"]["state"] == "new" and rows["empty-fresh"]["structures"] == 0
    html = client.get("/").text
    assert 'href="/c/water-water-dimer"' in html and f'data-key="labels_ok">{ok}<' in html
    page = client.get("/c/empty-fresh")
    assert page.status_code == 200 and "fresh.h5" in page.text
    # one store: its page is the front page
    response = client_for(campaign).get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"].endswith(
        "/c/water-dimer")


def test_every_asset_is_served_locally(campaign):
    client = client_for(campaign)
    page = client.get("/c/water-dimer").text
    assert "http://" not in page and "https://" not in page
    for name in ("plotly.min.js", "dashboard.js", "dashboard.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and len(response.content) > 1000
        assert f'/static/{name}"' in page
    assert "Plotly" in client.get("/static/plotly.min.js").text[:5000]
    for text in (client.get("/static/dashboard.js").text, client.get("/static/dashboard.css").text):
        assert "http://" not in text and "https://" not in text


def test_the_page_follows_the_store_with_etags(campaign):
    client = client_for(campaign)
    first = client.get("/api/c/water-dimer/overview")
    etag = first.headers["etag"]
    assert client.get("/api/c/water-dimer/overview",
                      headers={"If-None-Match": etag}).status_code == 304
    store = Store(campaign, "a")
    sid = _unlabeled(store, "dft")
    store.add_labels([_failed(store, sid, "dft", "engine_crashed", "segfault")])
    # the writer holds the store (its flock, seen in /proc/locks); every stage is done, so
    # the campaign stays finished (a writer between two stages makes it running)
    held = overview_of(client)["campaign"]
    assert held["writer"]["alive"] is True and held["state"] == "finished"
    store.close()
    after = client.get("/api/c/water-dimer/overview", headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["etag"] != etag
    rung = next(r for r in after.json()["rungs"] if r["name"] == "dft")
    before = next(r for r in first.json()["rungs"] if r["name"] == "dft")
    assert rung["quarantined"] == before["quarantined"] + 1
    assert rung["quarantined_by_class"]["engine_crashed"] >= 1
    assert after.json()["campaign"]["writer"]["alive"] is False


WRITER = """
import sys, time
from hifidata.calculators.base import Label
from hifidata.datasets.store import Store
store = Store(sys.argv[1], "a")
mid = store.method_id("ccsdt")
labeled = set(store.labels(mid).structure_ids)
todo = [sid for sid in store.structure_ids() if sid not in labeled][:30]
for sid in todo:
    store.add_labels([Label(sid, mid, "timeout", message="killed at the time limit")])
    time.sleep(0.02)
print(len(todo))
"""


def test_reading_while_a_campaign_writes(campaign):
    """Another process appends 30 labels (one file session each) while the dashboard reads
    as fast as it can: every answer is whole, counts never go back, the writer never waits."""
    client = client_for(campaign)
    start = overview_of(client)
    before = next(r for r in start["rungs"] if r["name"] == "ccsdt")["quarantined"]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(campaign)],
                              stdout=subprocess.PIPE, text=True)
    seen = []
    while writer.poll() is None:
        rungs = {r["name"]: r for r in overview_of(client)["rungs"]}
        seen.append(rungs["ccsdt"]["quarantined"])
    assert writer.returncode == 0 and int(writer.stdout.read()) == 30
    final = next(r for r in overview_of(client)["rungs"] if r["name"] == "ccsdt")
    assert final["quarantined"] == before + 30
    assert final["quarantined_by_class"]["timeout"] == 30
    assert seen == sorted(seen) and len(seen) > 2 and len(set(seen)) > 1


def test_nothing_outside_the_stores_is_served(campaign):
    client = client_for(campaign.parent.parent)
    secret = Path(__file__).read_text()[:200]
    for url in ("/static/..%2Fapp.py", "/static/../app.py", "/static/%2e%2e/%2e%2e/cli.py",
                "/c/..%2F..%2Fetc%2Fpasswd", "/api/c/..%2Fwater%2Fwater-dimer/overview",
                "/api/c/water%2Fwater-dimer.h5/overview", "/c/water-water-dimer/../../conftest.py",
                "/static/" + str(Path(__file__).resolve())):
        response = client.get(url)
        assert response.status_code == 404, url
        assert secret not in response.text and "root:" not in response.text
    assert client.post("/api/c/water-water-dimer/overview").status_code == 405  # read-only
    page = client.get("/c/water-water-dimer")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    # bound to loopback, other Host names (DNS rebinding) get nothing
    guarded = client_for(campaign, LOOPBACK_HOSTS)
    assert guarded.get("/api/c/water-dimer/overview",
                       headers={"host": "evil.example"}).status_code == 400
    assert guarded.get("/api/c/water-dimer/overview",
                       headers={"host": "127.0.0.1:8050"}).status_code == 200


def test_strings_from_the_store_are_escaped(campaign):
    store = Store(campaign, "a")
    store.put_record("run", "spec", {**store.record("run", "spec"), "name": SCRIPT})
    store.add_labels([_failed(store, _unlabeled(store, "dft"), "dft", "engine_crashed", SCRIPT)])
    store.close()
    client = client_for(campaign.parent.parent)
    html = client.get("/").text
    assert SCRIPT not in html and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    failures = client.get("/api/c/water-water-dimer/overview").json()["failures"]["rows"]
    assert SCRIPT in [f["message"] for f in failures]  # data stays data; the page escapes it


def test_bad_paths_give_one_line(tmp_path):
    not_a_store = tmp_path / "notes.h5"
    not_a_store.write_text("hello")
    results = run_cli_calls([["dashboard", str(tmp_path / "missing")],
                             ["dashboard", str(not_a_store)]])
    for (code, stderr), reason in zip(results, ("no such store or folder",
                                                "not a readable HDF5 file"), strict=True):
        assert code == 2
        assert reason in stderr and len(stderr.strip().splitlines()) == 1


def test_the_page_in_a_browser_shows_the_store_and_follows_it_live(campaign):
    """Headless Chromium: the numbers shown are the store's, every plot draws, and labels
    written while the page is open appear without a reload (one real PySCF label, one whose
    engine failed with markup in its message, which must show as text)."""
    store = Store(campaign)
    with serving(campaign, refresh_seconds=0.5) as url, chromium() as browser:
        browser.get(url + "/")
        wait_for(lambda: browser.execute_script("return document.body.dataset.renders"),
                 what="the first render")

        def shown(key: str) -> str:
            return browser.execute_script(
                "return document.querySelector(arguments[0])?.textContent",
                f'[data-key="{key}"]')

        for method in store.methods():
            labels = store.labels(method["method_id"])
            name = method["name"]
            assert shown(f"rung.{name}.ok") == str(labels.status.count("ok"))
            assert shown(f"rung.{name}.quarantined") == str(len(labels) -
                                                             labels.status.count("ok"))
            assert shown(f"rung.{name}.selected") == str(len(store.selection(name)
                                                             .selected_ids))
        assert shown("stage.train") == "done" and shown("stage.audit") == "skipped"
        assert shown("release.version") == "1.0.0"
        cells = browser.execute_script(
            "return [...document.querySelectorAll('#ptable .el.on')].map("
            "e => [e.dataset.symbol, Number(e.dataset.count)])")
        ok_ids = {sid for m in store.methods()
                  for sid in store.labels(m["method_id"]).ok().structure_ids}
        assert dict(cells) == {"H": len(ok_ids), "O": len(ok_ids)}

        points = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('.plot')].map(p => "
            "[p.id, p.querySelectorAll('svg.main-svg path.point, svg.main-svg g.trace path')"
            ".length]))")
        assert set(points) >= {"plot-labels", "plot-throughput", "plot-cost", "plot-mae",
                               "plot-parity", "plot-coverage-0", "plot-coverage-1"}
        assert all(count > 0 for count in points.values()), points
        coverage_points = browser.execute_script(
            "return document.querySelectorAll('#plot-coverage-0 path.point').length")
        selection = store.selection("dft")
        assert coverage_points >= len(selection.pool_ids) + len(selection.selected_ids)
        screenshot(browser, "dashboard.png")

        # live: a real PySCF label of a candidate the dft rung has not labeled ...
        browser.execute_script("window.__same_page = true")
        renders = int(browser.execute_script("return document.body.dataset.renders"))
        ok_before = int(shown("rung.dft.ok"))
        writer = Store(campaign, "a")
        sid = _unlabeled(writer, "dft")
        method = _method(writer, "dft")
        new = label(writer.structures([sid])[0], method)
        assert new.ok
        writer.add_labels([new])
        wait_for(lambda: shown("rung.dft.ok") == str(ok_before + 1), timeout=30,
                 what="the new label on the page")
        # ... and one whose engine fails every rescue with markup in the message
        failed = _failed_through_rescues(writer, "dft", SCRIPT)
        writer.close()
        wait_for(lambda: browser.execute_script(
            "return document.querySelector(`tr[data-structure='${arguments[0]}']`)",
            failed.structure_id), timeout=30, what="the failure row")
        assert browser.execute_script("return window.__same_page") is True  # never reloaded
        assert int(browser.execute_script("return document.body.dataset.renders")) > renders
        assert browser.execute_script("return window.__xss") is None
        row = browser.execute_script(
            "const r = document.querySelector(`tr[data-structure='${arguments[0]}']`);"
            "return [...r.children].map(c => c.textContent)", failed.structure_id)
        assert row[2] == "scf_not_converged" and row[3] == SCRIPT
        assert "→" in row[4]  # the rescue steps tried, in order
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        screenshot(browser, "dashboard-live.png")


# -- helpers ---------------------------------------------------------------------------------
def _method(store: Store, rung: str) -> Method:
    definition = next(m for m in store.methods() if m["name"] == rung)["definition"]
    method = Method.resolve(definition["engine"],
                            {k: v for k, v in definition.items() if k != "engine"}, rung)
    assert method.method_id == store.method_id(rung)
    return method


def _unlabeled(store: Store, rung: str) -> str:
    labeled = set(store.labels(store.method_id(rung)).structure_ids)
    return next(sid for sid in store.structure_ids() if sid not in labeled)


def _failed(store: Store, sid: str, rung: str, status: str, message: str) -> Label:
    """A failed label as the store keeps it (an engine fault cannot be had on demand)."""
    return Label(structure_id=sid, method_id=store.method_id(rung), energy=float("nan"),
                 forces=None, status=status, message=message, provenance={})


def _failed_through_rescues(store: Store, rung: str, message: str) -> Label:
    """The real label path (rescue ladder included) with an engine that never converges."""
    def never(atoms, params, run):
        raise ScfNotConverged(message)

    atoms = s22["Water_dimer"].copy()
    atoms.info = {"charge": 0, "spin": 1}
    atoms.rattle(0.05, seed=7)
    store.add_structures([atoms], [{"protocol": "rattle", "test": True}])
    result = label(atoms, _method(store, rung), compute=never)
    assert result.status == "scf_not_converged"
    assert Counter(a["failure"] for a in result.provenance["attempts"])["scf_not_converged"] > 1
    store.add_labels([result])
    return result
