"""A campaign whose labels fail: real SCF failures rescued, injected ones classified and
quarantined, and the campaign finishes around them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import tiny_spec, write_spec
from typer.testing import CliRunner

from hifidata.calculators import pyscf as pyscf_engine
from hifidata.calculators.base import EngineCrashed, LabelTimeout, OutOfMemory
from hifidata.cli import app
from hifidata.datasets.store import Store
from hifidata.flows.campaign import run_campaign
from hifidata.structures import structure_id

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_db")]


def crash(message: str) -> EngineCrashed:
    error = EngineCrashed(message)
    error.transient = False  # what a malformed input gives: the same every time
    return error


def test_failures_are_rescued_or_quarantined_and_the_campaign_goes_on(tmp_path, monkeypatch):
    spec = tiny_spec()
    spec["ladder"] = spec["ladder"][:1]
    # a real failure for every label: 3 SCF cycles are too few, so every label needs the ladder
    spec["ladder"][0]["method"].update({"max_cycle": 3, "time_limit": 600})
    del spec["train"]  # no model: explore, select, label, release
    path = write_spec(tmp_path, spec)
    run_campaign(path, until="select")
    selected = sorted(Store(tmp_path / "water-dimer.h5").selection("dft").selected_ids)
    roles = dict.fromkeys(selected, "plain")
    roles.update(dict.fromkeys(selected[:2], "oom_once"))
    roles.update(dict.fromkeys(selected[2:4], "crash"))
    roles.update(dict.fromkeys(selected[4:5], "timeout"))

    real, calls = pyscf_engine.compute, Counter()

    def faulty(atoms, params, run):  # faults a real engine won't make on demand
        role = roles[structure_id(atoms)]
        calls[role] += 1
        if role == "oom_once" and params["max_memory_mb"] == 4000:
            raise OutOfMemory("injected: the node ran out of memory")
        if role == "crash":
            raise crash("injected: the engine rejected its input")
        if role == "timeout":
            raise LabelTimeout("injected: ran past its time limit")
        return real(atoms, params, run)

    monkeypatch.setattr(pyscf_engine, "compute", faulty)
    status = run_campaign(path)

    store = Store(status["store"])
    labels = store.labels(store.method_id("dft"))
    by_id = dict(zip(labels.structure_ids, zip(labels.status, labels.provenance, strict=True),
                     strict=True))
    tried = {sid: [a["failure"] for a in json.loads(provenance)["attempts"]]
             for sid, (_, provenance) in by_id.items()}
    for sid, role in roles.items():
        label_status = by_id[sid][0]
        if role == "plain":  # the real SCF failure, rescued by the ladder's first step
            assert label_status == "ok" and tried[sid] == ["scf_not_converged"]
        elif role == "oom_once":  # less memory, then the real SCF failure, then ok
            assert label_status == "ok"
            assert tried[sid] == ["out_of_memory", "scf_not_converged"]
        elif role == "crash":  # not transient: one attempt, quarantined
            assert label_status == "engine_crashed" and tried[sid] == ["engine_crashed"]
        else:  # the ladder doubles the limit once, then gives up
            assert label_status == "timeout" and tried[sid] == ["timeout", "timeout"]
    assert calls["crash"] == 2 and calls["timeout"] == 2

    rung = status["stages"]["label"]["dft"]
    assert rung["ok"] == 7 and rung["failed"] == {"engine_crashed": 2, "timeout": 1}
    assert rung["rescued"] == {"scf_not_converged": 5, "out_of_memory": 2}
    quarantined = {f["structure_id"]: f for f in status["failures"]}
    assert set(quarantined) == set(selected[2:5])
    assert quarantined[selected[4]]["rescues_tried"] == [
        "time_limit=1200.0, restart_wavefunction=True"
    ]

    card = json.loads((tmp_path / "release" / "dataset-card.json").read_text())
    assert {r["name"]: r["nconfigurations"] for r in card["rungs"]} == {"dft": 7}
    assert card["rungs"][0]["failures"] == {"engine_crashed": 2, "timeout": 1}

    # quarantine is final: a second run labels nothing
    calls.clear()
    run_campaign(path)
    assert not calls

    shown = CliRunner().invoke(app, ["status", status["store"]], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "quarantined labels (3)" in shown.output and "7 rescued" in shown.output
    as_json = CliRunner().invoke(app, ["status", status["store"], "--json"])
    listed = {f["structure_id"]: f for f in json.loads(as_json.output)["failures"]}
    assert listed[selected[2]]["message"] == "injected: the engine rejected its input"


def test_an_engine_program_dies_with_the_process_that_started_it(tmp_path):
    """SIGKILL of a labeling process (no chance to clean up) still ends its engine program,
    started from a worker thread as the label stage starts them."""
    script = (
        "import threading, pathlib\n"
        "from hifidata.calculators.process import run_program\n"
        f"t = threading.Thread(target=run_program, args=(['sleep', '60'], "
        f"pathlib.Path({str(tmp_path)!r})))\n"
        "t.start(); t.join()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        child = _wait_for(lambda: _children(parent.pid), timeout=60)[0]
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_for(lambda: not _alive(child), timeout=10)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid), "sleep"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:  # a zombie waiting for init to reap it counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)
    return result
