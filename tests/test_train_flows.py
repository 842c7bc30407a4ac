"""`hifidata train`, `hifidata evaluate` and `hifidata predict --rung` on a labeled store.

One tiny campaign labels water dimers (PBE/6-31G and CCSD(T)/6-31G, real PySCF); the recipes
then run from the command line as a user outside a campaign would run them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from conftest import tiny_spec, write_spec
from typer.testing import CliRunner

from hifidata.calculators import pyscf as pyscf_engine
from hifidata.cli import app
from hifidata.datasets.store import Store
from hifidata.flows.campaign import run_campaign
from hifidata.training import load_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_db")]
runner = CliRunner()


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeled")
    status = run_campaign(write_spec(folder, tiny_spec()), until="label")
    return Path(status["store"])


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_multifidelity_from_the_command_line_predicts_each_rung(labeled, tmp_path):
    result = invoke("train", labeled, "--recipe", "multifidelity", "--epochs", "2")
    assert result.exit_code == 0, result.output
    store = Store(labeled)
    record = store.record("model", "multifidelity-dft-ccsdt")
    assert record["recipe"] == "multifidelity" and record["rungs"] == ["dft", "ccsdt"]
    assert store.record("final_model", "campaign")["name"] == "multifidelity-dft-ccsdt"
    folder = store.resolve(record["path"])
    assert json.loads((folder / "model.json").read_text())["kind"] == "sevennet"

    structures = tmp_path / "dimers.xyz"
    labels = store.labels(store.method_id("dft")).ok()
    from ase.io import write

    write(structures, store.structures(labels.structure_ids[:4]))
    energies = {}
    for rung in ("dft", "ccsdt"):
        out = tmp_path / f"{rung}.xyz"
        result = invoke("predict", folder, structures, "--out", out, "--rung", rung)
        assert result.exit_code == 0, result.output
        energies[rung] = np.array([a.get_potential_energy() for a in read(out, ":")])
    # PBE and CCSD(T) sit eV apart in absolute energy: each modality keeps its own scale
    assert np.abs(energies["dft"] - energies["ccsdt"]).min() > 0.5
    np.testing.assert_allclose(energies["dft"], labels.energy[:4], atol=0.5)

    result = invoke("predict", folder, structures, "--out", tmp_path / "x.xyz", "--rung", "mp2")
    assert result.exit_code != 0 and "no rung 'mp2'" in str(result.exception or result.output)


def test_delta_recipe_and_its_base_rung(labeled, tmp_path):
    result = invoke("train", labeled, "--recipe", "delta", "--rung", "dft", "--high", "ccsdt",
                    "--epochs", "2")
    assert result.exit_code == 0, result.output
    store = Store(labeled)
    composite = store.resolve(store.record("model", "ccsdt-composite")["path"])
    base = store.resolve(store.record("model", "finetune-dft")["path"])
    structures = store.structures(store.labels(store.method_id("dft")).structure_ids[:3])
    as_dft = load_model(composite, rung="dft").predict(structures)["energy"]
    np.testing.assert_allclose(as_dft, load_model(base).predict(structures)["energy"])
    as_cc = load_model(composite).predict(structures)["energy"]
    assert np.abs(as_cc - as_dft).min() > 0.1


def test_evaluate_writes_a_report_and_labels_the_scan_once(labeled, monkeypatch):
    assert invoke("train", labeled, "--recipe", "finetune", "--rung", "dft",
                  "--epochs", "2").exit_code == 0
    calls = Counter()
    compute = pyscf_engine.compute

    def counted(*args, **kwargs):
        calls["pyscf"] += 1
        return compute(*args, **kwargs)

    monkeypatch.setattr(pyscf_engine, "compute", counted)
    args = ["evaluate", labeled, "finetune-dft", "--temperatures", "300,500", "--replicas", "2",
            "--steps", "30", "--scan", "0,3:2.7:3.3:3", "--scan-rungs", "dft"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert calls["pyscf"] == 3  # the three scan points, labeled by the dft rung's engine
    store = Store(labeled)
    record = store.record("evaluation", "finetune-dft")
    report = store.resolve(record["report"])
    assert report.parent.parent == store.resolve(store.record("model", "finetune-dft")["path"])
    text = report.read_text()
    for section in ("dft", "ccsdt", "MD stability", "d(0,3)", "stability.png", "slices.png"):
        assert section in text, section
    assert set(record["stability"]) == {"300", "500"}
    assert record["stability"]["300"]["runs"] == 2
    scan = [o for o in store.origins() if o.get("protocol") == "scan"]
    assert len(scan) == 3
    assert record["slices"][0]["dft"]["points"] == 3
    # unchanged model and settings: the report is current, nothing is computed again
    calls.clear()
    assert invoke(*args).exit_code == 0
    assert calls["pyscf"] == 0


@pytest.mark.parametrize("args, message", [
    (["train", "{store}", "--recipe", "nope"], "--recipe: 'nope' is not one of"),
    (["train", "{store}", "--recipe", "finetune", "--rung", "mp2"], "no rung named 'mp2'"),
    (["train", "{store}", "--recipe", "delta", "--rung", "dft"], "needs --high"),
    (["evaluate", "{store}", "finetune-dft", "--scan", "0,99:2:3:3"], "not in the first seed"),
    (["evaluate", "{store}", "finetune-dft", "--scan", "0-3"], "expected I,J:START:END:POINTS"),
    (["evaluate", "{store}", "no-such-model"], "no model at no-such-model"),
])
def test_bad_options_fail_in_one_line_and_write_nothing(labeled, args, message):
    before = digest(labeled)
    argv = [a.replace("{store}", str(labeled)) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code != 0
    assert message in str(result.exception), (result.exception, result.output)
    assert digest(labeled) == before
