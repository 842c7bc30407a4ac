"""A periodic campaign with real CP2K and Quantum ESPRESSO, and the cross-code audit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import EXAMPLES
from typer.testing import CliRunner

from hifidata.cli import app
from hifidata.datasets.store import Store
from hifidata.errors import HifidataError
from hifidata.flows.campaign import run_campaign
from hifidata.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_db")]


def small_silicon(folder: Path) -> Path:
    """The silicon example cut to seconds: 8-atom cells, low cutoffs, a few labels."""
    spec = yaml.safe_load((EXAMPLES / "silicon.yaml").read_text())
    spec["explore"]["protocols"] = [
        {"kind": "npt", "temperatures": [600], "pressures": [0, 5], "steps": 10,
         "timestep": 2.0, "sample_every": 5},
        {"kind": "strain", "count": 6, "max_strain": 0.03},
        {"kind": "vacancy", "count": 1},
        {"kind": "interstitial", "count": 2},
        {"kind": "slab", "count": 1, "max_atoms": 32},
        {"kind": "cluster", "count": 1, "radius": 4.0},  # Si17: kept out of the pool below
        {"kind": "rattle", "count": 8, "stdev": 0.08, "parents": ["seed", "strain", "vacancy"]},
    ]
    spec["ladder"][0]["method"].update(cutoff=200, rel_cutoff=30, kpoints=[2, 2, 2])
    spec["ladder"][0]["select"] = {"from": "candidates", "clusters": 4, "max_atoms": 8}
    spec["ladder"][1]["method"].update(ecutwfc=25, kpoints=[2, 2, 2])
    spec["ladder"][1]["select"] = {"from": "pbe", "clusters": 2}
    del spec["train"]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "silicon.xyz", folder / "silicon.xyz")
    path = folder / "silicon.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_example_loads_and_every_engine_accepts_its_seeds():
    spec = load_spec(EXAMPLES / "silicon.yaml")  # runs cp2k's and espresso's checks on Si8, Si64
    assert [(r.name, r.engine) for r in spec.ladder] == [("pbe", "cp2k"), ("pbe-qe", "espresso")]
    assert spec.audit[0].methods == ["pbe", "pbe-qe"]


def test_cp2k_labels_audited_by_quantum_espresso(tmp_path):
    status = run_campaign(small_silicon(tmp_path))
    explored = status["stages"]["explore"]["by_protocol"]
    assert explored["npt"] == 8  # 2 seeds × 2 pressures × 2 frames
    assert explored["interstitial"] == 2 and explored["slab"] == 1 and explored["cluster"] == 1
    labels = status["stages"]["label"]
    assert labels["pbe"]["ok"] == 4 and labels["pbe-qe"]["ok"] == 2

    store = Store(status["store"])
    cp2k, qe = (store.labels(store.method_id(n)).ok() for n in ("pbe", "pbe-qe"))
    assert all(np.isfinite(cp2k.stress).all(axis=1))  # crystals come with a stress

    # the audit's numbers, recomputed here from the labels in the store
    ids = qe.structure_ids
    a, b = cp2k.for_ids(ids), qe.for_ids(ids)
    difference = np.concatenate([fa - fb for fa, fb in zip(a.forces, b.forces, strict=True)])
    record = store.record("audit", "pbe-vs-pbe-qe")
    summary = record["summary"]
    forces = summary["forces_eV_per_A"]["all"]
    assert forces["mae"] == pytest.approx(np.abs(difference).mean(), rel=1e-12)
    assert forces["mae"] < 0.1  # the same functional: GTH vs PseudoDojo, Gaussian vs plane waves
    n = np.array([len(s) for s in store.structures(ids)])
    shift = summary["energy"]["reference_shift_eV"]["Si"]
    residual = (a.energy - b.energy - shift * n) / n * 1000
    assert summary["energy"]["relative_max_meV_per_atom"] == pytest.approx(
        np.abs(residual).max(), abs=1e-6)
    assert np.isfinite(shift) and abs(shift) < 5  # eV/atom: different pseudopotentials
    assert summary["stress_GPa"]["structures"] == 2
    assert np.isfinite(summary["stress_GPa"]["mae"]) and summary["stress_GPa"]["mae"] < 5
    report = Path(status["store"]).parent / record["report"]
    assert "# Audit: pbe-qe against pbe" in report.read_text()
    assert status["stages"]["audit"]["pbe-vs-pbe-qe"]["structures"] == 2

    # the command: audit every CP2K structure, labeling the two QE lacks
    result = CliRunner().invoke(app, ["audit", status["store"], "--methods", "pbe", "pbe-qe",
                                      "--count", "4"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "pbe-qe against pbe: 4 structures" in result.output
    assert len(store.labels(store.method_id("pbe-qe")).ok()) == 4
    again = json.loads(CliRunner().invoke(app, ["status", status["store"], "--json"]).output)
    assert again["stages"]["audit"]["pbe-vs-pbe-qe"]["structures"] == 4
    unknown = CliRunner().invoke(app, ["audit", status["store"], "--methods", "pbe", "pbe-x"])
    assert isinstance(unknown.exception, HifidataError)
    assert "no rung named 'pbe-x'" in str(unknown.exception)


def test_audit_input_errors_are_one_line(tmp_path):
    args = [str(tmp_path / "nothing.h5"), "--methods", "a", "b"]
    result = subprocess.run([sys.executable, "-m", "hifidata.cli", "audit", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no such file" in result.stderr
    assert result.stderr.count("\n") == 1
