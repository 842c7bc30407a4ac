"""Shared fixtures: the water dimer, a throw-away Prefect database, a tiny campaign spec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from ase.collections import s22
from prefect_server import start_prefect_server, stop_prefect_server

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def water_dimer():
    atoms = s22["Water_dimer"].copy()
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


@pytest.fixture(scope="session")
def prefect_db():
    """Flows in tests write to a temporary Prefect database, not the user's ~/.prefect."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_spec(**overrides) -> dict:
    """A campaign that runs every stage with real engines in well under a minute."""
    spec = yaml.safe_load((EXAMPLES / "water-dimer.yaml").read_text())
    spec["explore"]["protocols"] = [
        {"kind": "md", "temperatures": [300, 600], "steps": 40, "sample_every": 4, "seeds": [0]},
        {"kind": "rattle", "count": 30, "stdev": 0.06, "seed": 1},
    ]
    spec["ladder"][0]["method"] = {"theory": "dft", "xc": "pbe", "basis": "6-31g",
                                   "density_fit": True}
    spec["ladder"][0]["select"] = {"from": "candidates", "clusters": 10}
    spec["ladder"][1]["method"] = {"theory": "ccsd(t)", "basis": "6-31g", "frozen_core": True}
    spec["ladder"][1]["select"] = {"from": "dft", "clusters": 5}
    spec["train"]["recipe"] = "delta"  # CHGNet-only: the multi-fidelity SevenNet is slower
    spec["train"].pop("multifidelity", None)
    spec["train"]["finetune"] = {"rung": "dft", "epochs": 3, "batch_size": 4}
    spec["train"]["delta"] = {"low": "dft", "high": "ccsdt", "epochs": 3, "batch_size": 2}
    spec["evaluate"] = {"stability": {"temperatures": [300], "replicas": 2, "steps": 40}}
    spec["deploy"] = {"steps": 40, "sample_every": 10, "replicas": 2}
    for key, value in overrides.items():
        spec[key] = value
    return spec


def write_spec(folder: Path, spec: dict, seeds: str | None = None) -> Path:
    """The spec and its seed file in ``folder``; ``seeds`` replaces the seed xyz text."""
    folder.mkdir(parents=True, exist_ok=True)
    seed_text = seeds if seeds is not None else (EXAMPLES / "water-dimer.xyz").read_text()
    (folder / "water-dimer.xyz").write_text(seed_text)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (`prefect server start`, SQLite) on 127.0.0.1, as users run it.

    Its scheduler loops every second so a scheduled deployment fires within a test. Tests
    use it through ``prefect_api``.
    """
    url, process = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    try:
        yield url
    finally:
        stop_prefect_server(process)


@pytest.fixture
def prefect_api(prefect_server, monkeypatch):
    """This test's flows, and the subprocesses it starts, report to the real server."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect keeps one events worker per process, bound to the server it first saw: without
    # a fresh one, events would go to the throw-away server of an earlier test
    EventsWorker.drain_all(timeout=10, at_exit=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server
        EventsWorker.drain_all(timeout=10, at_exit=False)


@pytest.fixture(scope="session")
def finished_campaign(tmp_path_factory, prefect_db):
    """One tiny campaign, run to the end once for every test that reads a finished campaign
    (test_campaign, test_dashboard): (spec path, the run's status). Copy its folder before
    writing to it."""
    from hifidata.flows.campaign import run_campaign

    folder = tmp_path_factory.mktemp("campaign")
    spec_path = write_spec(folder, tiny_spec())
    status = run_campaign(spec_path)
    return spec_path, status


@pytest.fixture
def one_torch_thread():
    """Small tensors gain nothing from a second torch thread, and on a busy 2-core machine two
    threads wait for each other: model calls took seconds instead of milliseconds."""
    from hifidata.training.models import torch_threads

    with torch_threads(1):
        yield

