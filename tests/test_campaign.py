"""A whole campaign with real engines, resumed after it finished and after a kill."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from ase.io import read
from chgnet.model.model import CHGNet
from conftest import tiny_spec, write_spec
from typer.testing import CliRunner

from hifidata.calculators import pyscf as pyscf_engine
from hifidata.cli import app
from hifidata.datasets.store import Store
from hifidata.datasets.verify import verify_release
from hifidata.errors import HifidataError
from hifidata.flows.campaign import run_campaign

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_db")]


@pytest.fixture
def engine_calls(monkeypatch):
    """Counts every PySCF label and every CHGNet forward pass made in this process."""
    calls: Counter = Counter()
    compute, forward = pyscf_engine.compute, CHGNet.forward

    def counted_compute(*args, **kwargs):
        calls["pyscf"] += 1
        return compute(*args, **kwargs)

    def counted_forward(self, *args, **kwargs):
        calls["chgnet"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(pyscf_engine, "compute", counted_compute)
    monkeypatch.setattr(CHGNet, "forward", counted_forward)
    return calls


@pytest.fixture
def finished(finished_campaign):
    return finished_campaign


def test_every_stage_delivers(finished):
    _, status = finished
    stages = status["stages"]
    assert stages["explore"]["by_protocol"] == {"seed": 1, "md": 20, "rattle": 30}

    store = Store(status["store"])
    dft, ccsdt = store.selection("dft"), store.selection("ccsdt")
    assert len(dft.selected_ids) == 10 and len(dft.pool_ids) == 51
    assert set(ccsdt.pool_ids) == set(dft.selected_ids)  # the second pick is from the first
    assert len(ccsdt.selected_ids) == 5
    assert 0 < stages["select"]["dft"]["coverage"] <= 1
    assert stages["label"]["dft"]["ok"] == 10 and stages["label"]["ccsdt"]["ok"] == 5

    assert set(status["models"]) == {"finetune-dft", "delta-ccsdt-minus-dft", "ccsdt-composite"}
    assert status["final_model"].endswith("ccsdt-composite")
    metrics = {(m["model"], m["rung"]): m for m in stages["evaluate"]}
    for model in ("chgnet-0.3.0", "finetune-dft", "ccsdt-composite"):
        for rung in ("dft", "ccsdt"):
            errors = metrics[model, rung]
            assert errors["n_structures"] >= 1
            assert np.isfinite(errors["energy_mae_meV_per_atom"])
            assert 0 < errors["force_mae_meV_per_A"] < 5000
    assert Path(status["parity_plot"]).stat().st_size > 10_000

    deploy = stages["deploy"]
    assert deploy["steps"] == 40 and deploy["stable"] is True
    assert deploy["replicas"] == deploy["stable_replicas"] == 2
    campaign_dir = Path(status["store"]).parent
    assert len(deploy["trajectories"]) == 2
    for trajectory in deploy["trajectories"]:  # the batched engine's frames, one file each
        frames = read(campaign_dir / trajectory, index=":")
        assert [f.info["step"] for f in frames] == [10, 20, 30, 40]
    card = json.loads((campaign_dir / deploy["artifact"] / "model_card.json").read_text())
    assert card["torchscript"] is None  # the final model here is a CHGNet composite
    assert card["verification"]["passed"] is True


def test_the_release_matches_the_store(finished):
    _, status = finished
    release = Path(status["release"])
    for line in (release / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == digest
    assert verify_release(release)["entries"] == {"extxyz": 15, "hdf5": 15, "asedb": 15}
    card = json.loads((release / "dataset-card.json").read_text())
    assert card["units"]["forces"] == "eV/Å"
    assert {r["name"]: r["nconfigurations"] for r in card["rungs"]} == {"dft": 10, "ccsdt": 5}
    ccsdt = next(r for r in card["rungs"] if r["name"] == "ccsdt")
    assert ccsdt["method"]["basis_set"] == "6-31g" and ccsdt["method"]["frozen_core"] is True
    assert card["sampler"]["explore"]["model"] == "chgnet-0.3.0"
    assert card["chemical_formulas"][0]["chemical_formula_reduced"] == "H2O"

    store = Store(status["store"])
    labels = store.labels(store.method_id("ccsdt"))
    split = store.record("split", "campaign")
    frames = read(release / "ccsdt.extxyz", index=":")  # in store order, not label order
    assert sorted(f.info["structure_id"] for f in frames) == sorted(labels.structure_ids)
    labels = labels.for_ids([f.info["structure_id"] for f in frames])
    for frame, energy, forces in zip(frames, labels.energy, labels.forces, strict=True):
        assert frame.info["REF_energy"] == energy  # written in full precision
        np.testing.assert_allclose(frame.arrays["REF_forces"], forces, atol=1e-8)
        # the split the models trained with is the release's
        assert frame.info["split"] == split[frame.info["structure_id"]]
        assert "REF_energy_dft" in frame.info  # every ccsdt structure has a dft label


def test_the_documented_snippets_load_the_release(finished, monkeypatch):
    """Every python block of docs/release-format.md runs as is in the campaign folder."""
    _, status = finished
    monkeypatch.chdir(Path(status["release"]).parent)
    text = (Path(__file__).resolve().parents[1] / "docs/release-format.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, "docs/release-format.md", "exec"), {})


def test_a_finished_campaign_computes_nothing_again(finished, engine_calls):
    spec_path, before = finished
    after = run_campaign(spec_path)
    assert engine_calls == Counter()  # no label, no MLIP call: everything came from the store
    for key in ("stages", "models", "final_model", "release"):
        assert after[key] == before[key]


def test_status_and_predict_from_the_command_line(finished, tmp_path):
    _, status = finished
    runner = CliRunner()
    result = runner.invoke(app, ["status", status["store"], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["stages"]["label"]["ccsdt"]["ok"] == 5

    structures = Path(status["release"]) / "ccsdt.extxyz"
    out = tmp_path / "pred.xyz"
    result = runner.invoke(app, ["predict", status["final_model"], str(structures),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    predicted = read(out, index=":")
    reference = read(structures, index=":")
    assert len(predicted) == len(reference)
    for atoms in predicted:
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces().shape == (6, 3)
    # the composite predicts at the CCSD(T) rung's absolute scale, not CHGNet's
    offset = [p.get_potential_energy() - r.info["REF_energy"]
              for p, r in zip(predicted, reference, strict=True)]
    assert abs(np.mean(offset)) < 1.0


def test_md_and_export_of_the_final_model_from_the_command_line(finished, tmp_path):
    """`hifidata md` runs the campaign's final model (a Δ composite) on the batched engine,
    from the model folder and from its exported artifact, with the same numbers."""
    _, status = finished
    runner = CliRunner()
    seeds = Path(status["store"]).parent / "water-dimer.xyz"
    energies = {}
    artifact = tmp_path / "artifact"
    result = runner.invoke(app, ["export-model", status["final_model"], "--out", str(artifact)])
    assert result.exit_code == 0, result.output
    for name, model in (("model", status["final_model"]), ("artifact", str(artifact))):
        out = tmp_path / f"{name}.h5"
        result = runner.invoke(app, ["md", model, str(seeds), "-T", "300", "--steps", "20",
                                     "--replicas", "2", "--every", "10", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "ns/day" in result.output and "stable" in result.output
        with h5py.File(out) as file:
            assert sorted(file) == ["replica_000", "replica_001"]
            energies[name] = file["replica_001/energy"][:]
    np.testing.assert_allclose(energies["artifact"], energies["model"], atol=1e-6)


def test_a_killed_campaign_resumes_without_repeating_a_label(tmp_path, engine_calls):
    spec_path = write_spec(tmp_path, tiny_spec())
    store_path = tmp_path / "water-dimer.h5"
    process = subprocess.Popen(
        [sys.executable, "-m", "hifidata.cli", "run", str(spec_path), "--until", "label"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        labeled = _wait_for_labels(store_path, at_least=3, timeout=600)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    store = Store(store_path)
    stored = sum(len(store.labeled_ids(m["method_id"])) for m in store.methods())
    assert stored >= labeled >= 3

    run_campaign(spec_path, until="label")

    assert engine_calls["pyscf"] == 15 - stored  # only what the killed run had not stored
    status = run_campaign(spec_path, until="label")
    assert {n: s["ok"] for n, s in status["stages"]["label"].items()} == {"dft": 10, "ccsdt": 5}


def _wait_for_labels(store_path: Path, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not store_path.exists():
            continue
        store = Store(store_path)
        count = sum(len(store.labeled_ids(m["method_id"])) for m in store.methods())
        if count >= at_least:
            return count
    raise AssertionError(f"fewer than {at_least} labels after {timeout} s")


def test_a_spec_that_rewrites_history_is_refused(finished, tmp_path):
    spec_path, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(spec_path.parent, copy)
    spec = yaml.safe_load((copy / spec_path.name).read_text())
    spec["ladder"][0]["select"]["clusters"] = 9
    (copy / spec_path.name).write_text(yaml.safe_dump(spec))
    before = hashlib.sha256((copy / "water-dimer.h5").read_bytes()).hexdigest()
    with pytest.raises(HifidataError, match="'dft' was selected with other settings"):
        run_campaign(copy / spec_path.name)
    assert hashlib.sha256((copy / "water-dimer.h5").read_bytes()).hexdigest() == before
