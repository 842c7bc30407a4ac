"""Campaigns at cluster scale, with real parts the tests start themselves: a Prefect server
(`prefect server start`, SQLite), a Dask LocalCluster, a single-node Slurm (tests/slurm.py)
whose jobs are Dask workers, and a scheduled deployment."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import tiny_spec, write_spec
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from slurm import SlurmInfo, slurm  # noqa: F401  (the module-scoped fixture)
from typer.testing import CliRunner

from hifidata.calculators import base
from hifidata.calculators import pyscf as pyscf_engine
from hifidata.cli import app
from hifidata.datasets.overview import overview
from hifidata.datasets.store import Store
from hifidata.errors import HifidataError
from hifidata.flows.campaign import run_campaign
from hifidata.spec import load_spec

pytestmark = pytest.mark.slow


def small_spec(dft: int = 10, ccsdt: int = 5, **execution) -> dict:
    spec = tiny_spec()
    spec["ladder"][0]["select"]["clusters"] = dft
    spec["ladder"][1]["select"]["clusters"] = ccsdt
    spec["execution"] = {"max_workers": 2, **execution}
    return spec


def provenance(store: Store, rung: str) -> list[dict]:
    return [json.loads(p) for p in store.labels(store.method_id(rung)).provenance]


def test_a_campaign_shows_in_the_prefect_server(prefect_api, tmp_path, monkeypatch):
    """Flow runs per stage, a task run per label, progress and failure artifacts, events; and
    the spec's concurrency limit (1 PySCF label at a time) holds although 2 workers could run."""
    spec = small_spec(engines={"pyscf": {"limit": 1}}, failure_rate_alert=0.5)
    spec["ladder"][0]["method"]["time_limit"] = 0.001  # every PBE label times out, for real
    spec_path = write_spec(tmp_path, spec)
    intervals, lock = [], threading.Lock()
    compute = pyscf_engine.compute

    def timed(*args, **kwargs):
        start = time.monotonic()
        try:
            return compute(*args, **kwargs)
        finally:
            with lock:
                intervals.append((start, time.monotonic()))

    monkeypatch.setattr(pyscf_engine, "compute", timed)
    try:
        status = run_campaign(spec_path, until="label")
    finally:
        with get_client(sync_client=True) as client:
            limit = client.read_concurrency_limit_by_tag("pyscf")
            client.delete_concurrency_limit_by_tag("pyscf")
    assert limit.concurrency_limit == 1
    assert status["stages"]["label"]["ccsdt"]["ok"] == 5
    assert status["stages"]["label"]["dft"]["failed"] == {"timeout": 10}
    intervals.sort()
    assert len(intervals) >= 15
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(intervals))

    with get_client(sync_client=True) as client:
        campaign = next(r for r in client.read_flow_runs() if r.name == "water-dimer")
        assert campaign.state.is_completed()
        stages = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[campaign.id])))
        runs = {client.read_flow(r.flow_id).name: r for r in stages}
        assert {"explore", "select", "label"} <= set(runs)
        assert all(run.state.is_completed() for run in runs.values())
        # the dashboard links the campaign's and each stage's run in the server's UI
        links = overview(Store(status["store"]))["prefect"]
        ui = prefect_api.removesuffix("/api")
        assert links["campaign"] == f"{ui}/runs/flow-run/{campaign.id}"
        for stage in ("explore", "select", "label"):
            assert links["stages"][stage] == f"{ui}/runs/flow-run/{runs[stage].id}"
        label_tasks = [t.name for t in _task_runs(client, runs["label"].id)]
        assert sum(name.startswith("dft-") for name in label_tasks) == 10
        assert sum(name.startswith("ccsdt-") for name in label_tasks) == 5

        artifacts = {key: client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))
            for key in ("water-dimer-label-dft", "water-dimer-label-ccsdt",
                        "water-dimer-failures")}
        assert float(artifacts["water-dimer-label-ccsdt"][0].data) == pytest.approx(100.0)
        assert artifacts["water-dimer-failures"][0].type == "table"
        table = json.loads(artifacts["water-dimer-failures"][0].data)
        assert len(table) == 10 and {row["status"] for row in table} == {"timeout"}

        events = _events(client, ["hifidata.label.failure-rate", "hifidata.campaign.finished"])
    alert = next(e for e in events if e.event == "hifidata.label.failure-rate")
    assert alert.payload["rung"] == "dft" and alert.payload["rate"] == 1.0
    finished = next(e for e in events if e.event == "hifidata.campaign.finished")
    assert finished.payload["until"] == "label"


def test_labels_run_on_a_dask_local_cluster(prefect_api, tmp_path):
    spec_path = write_spec(tmp_path, small_spec(dft=6, ccsdt=2, runner="dask"))
    status = run_campaign(spec_path, until="label")
    assert {n: s["ok"] for n, s in status["stages"]["label"].items()} == {"dft": 6, "ccsdt": 2}
    store = Store(status["store"])
    pids = {p["pid"] for rung in ("dft", "ccsdt") for p in provenance(store, rung)}
    assert len(pids) == 2 and os.getpid() not in pids  # the two worker processes
    # a hand run of the engine in this process gives the same label
    labels = store.labels(store.method_id("ccsdt"))
    atoms = store.structures(labels.structure_ids[:1])[0]
    again = base.label(atoms, load_spec(spec_path).rung("ccsdt").resolved)
    assert again.energy == pytest.approx(labels.energy[0], abs=1e-7)
    np.testing.assert_allclose(again.forces, labels.forces[0], atol=1e-6)


def test_labels_run_as_slurm_jobs(prefect_api, slurm: SlurmInfo, tmp_path):  # noqa: F811
    spec = small_spec(dft=4, ccsdt=2, runner="dask", cluster="slurm", scale={"maximum": 2},
                      job={"cores": 1, "memory": "1GB", "walltime": "00:10:00",
                           "queue": slurm.partition})
    status = run_campaign(write_spec(tmp_path, spec), until="label")
    assert {n: s["ok"] for n, s in status["stages"]["label"].items()} == {"dft": 4, "ccsdt": 2}
    store = Store(status["store"])
    jobs = {p.get("slurm_job_id") for rung in ("dft", "ccsdt") for p in provenance(store, rung)}
    assert None not in jobs and all(job.isdigit() for job in jobs)
    assert list((tmp_path / "logs").glob("*.err")), "dask-jobqueue writes each job's log there"
    # the cluster closed with the stage: no job left in the queue
    queue = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True)
    assert "hifidata" not in queue.stdout


def test_a_scheduled_campaign_runs_and_shows_in_the_server(prefect_api, tmp_path):
    spec_path = write_spec(tmp_path, small_spec())
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hifidata.cli", "schedule", str(spec_path), "--interval", "5",
         "--until", "select", "--name", "every-5s"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        run = _wait_for_completed_run(process, "every-5s", timeout=300)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output = process.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0].decode(errors="replace")
    assert run.state.is_completed(), output[-2000:]
    assert run.parameters["until"] == "select"
    assert Store(tmp_path / "water-dimer.h5").selection_names() == ["ccsdt", "dft"]


def test_schedule_on_a_work_pool_and_bad_schedules(prefect_api, tmp_path):
    from prefect.client.schemas.actions import WorkPoolCreate

    spec_path = write_spec(tmp_path, small_spec())
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="hifidata-test", type="process"))
    runner = CliRunner()
    result = runner.invoke(app, ["schedule", str(spec_path), "--cron", "0 2 * * *",
                                 "--pool", "hifidata-test", "--name", "nightly"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        (deployment,) = client.read_deployments(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["nightly"])))
    assert deployment.work_pool_name == "hifidata-test"
    assert deployment.schedules[0].schedule.cron == "0 2 * * *"
    assert deployment.parameters["spec_path"] == str(spec_path.resolve())

    for args, message in [
        (["--cron", "banana"], "not a cron expression"),
        (["--interval", "0"], "positive number"),
        ([], "give --cron or --interval"),
        (["--cron", "0 2 * * *", "--interval", "1h"], "give --cron or --interval"),
        (["--interval", "1h", "--until", "nowhere"], "stages are"),
    ]:
        result = runner.invoke(app, ["schedule", str(spec_path), *args])
        # main() prints a HifidataError as one line (tests/test_spec.py runs it for real)
        assert isinstance(result.exception, HifidataError), result.output
        assert message in str(result.exception)


# -- helpers -----------------------------------------------------------------------------
def _task_runs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter as Runs

    return client.read_task_runs(flow_run_filter=Runs(id=FlowRunFilterId(any_=[flow_run_id])),
                                 limit=200)


def _events(client, names: list[str], timeout: float = 60.0) -> list:
    """Events reach the server asynchronously (a websocket): wait until both are stored."""
    flt = EventFilter(event=EventNameFilter(name=names), resource=EventResourceFilter(
        id=["hifidata.campaign.water-dimer"]))
    deadline = time.monotonic() + timeout
    while True:
        events = client.read_events(filter=flt, limit=50).events
        if {e.event for e in events} >= set(names) or time.monotonic() > deadline:
            return events
        time.sleep(1)


def _wait_for_completed_run(process, deployment: str, timeout: float):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")
            found = client.read_deployments(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[deployment])))
            if found:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=[deployment])))
                # a run that came due while another ran is cancelled (one writer per store)
                done = [r for r in runs if r.state and r.state.is_final()
                        and not r.state.is_cancelled()]
                if done:
                    return done[0]
            time.sleep(1)
    raise AssertionError(f"no run of {deployment} finished within {timeout} s")
