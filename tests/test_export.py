"""Model export: sevenn's LAMMPS TorchScript run through TorchScriptPotential with the inputs
pair_e3gnn builds, against the model it came from; the model card; the CHGNet fallback.

Real pretrained checkpoints from the installed wheels (7net-0, 7net-mf-0, CHGNet 0.3.0). The
Graphs are built with ASE's neighbour list (potentials.atoms_graph), not the engine's own.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from hifidata.deploy.export import TorchScriptPotential, export_model, load_artifact
from hifidata.deploy.potentials import atoms_graph
from hifidata.errors import ModelError
from hifidata.training.finetune import LabeledSet
from hifidata.training.models import CompositeModel, Model, load_model
from hifidata.training.sevennet import PRETRAINED_MODAL, train_multifidelity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def structures() -> list[Atoms]:
    silicon = bulk("Si", "diamond", a=5.43, cubic=True)
    silicon.rattle(stdev=0.05, seed=1)
    water = molecule("H2O")  # no cell, no pbc: an isolated molecule for both paths
    return [silicon, water]


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "7net-0"
    steps: list[str] = []
    path = export_model("7net-0", out, progress=steps.append)
    return path, steps


@pytest.fixture(scope="module")
def chgnet(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "chgnet"
    return export_model("chgnet-0.3.0", out)


def potential_predict(potential: TorchScriptPotential, structures: list[Atoms]):
    output = potential(atoms_graph(structures, potential.cutoff), stress=True)
    bounds = np.cumsum([len(a) for a in structures])[:-1]
    forces = np.split(output.forces.double().numpy(), bounds)
    return output.energy.double().numpy(), forces, output.stress.double().numpy()


def assert_reproduces(model: Model, potential: TorchScriptPotential, structures: list[Atoms]):
    expected = model.predict(structures)
    energy, forces, stress = potential_predict(potential, structures)
    np.testing.assert_allclose(energy, expected["energy"], atol=1e-4 * len(structures[0]))
    for mine, theirs in zip(forces, expected["forces"], strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-4)
    for atoms, mine, theirs in zip(structures, stress, expected["stress"], strict=True):
        if atoms.pbc.all():
            voigt = mine[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # ASE order xx yy zz yz xz xy
            np.testing.assert_allclose(voigt, theirs, atol=1e-6)
        else:
            assert theirs is None
            assert np.all(mine == 0)  # a molecule has no stress


def test_torchscript_reproduces_7net_0(seven, structures):
    path, steps = seven
    assert (path / "deployed_serial.pt").is_file()
    assert steps and steps[-1] == f"wrote {path}"
    potential = TorchScriptPotential(path / "deployed_serial.pt", device="cpu")
    assert potential.cutoff == 5.0
    assert_reproduces(load_model("7net-0", device="cpu"), potential, structures)


def test_forces_are_minus_the_energy_gradient(seven, structures):
    """Central differences of the file's own energy: independent of sevenn's force path."""
    potential = TorchScriptPotential(seven[0] / "deployed_serial.pt", device="cpu")
    silicon = structures[0]
    _, forces, _ = potential_predict(potential, [silicon])
    step, atom = 5e-3, 3
    for axis in range(3):
        energies = []
        for sign in (1, -1):
            moved = silicon.copy()
            moved.positions[atom, axis] += sign * step
            energies.append(float(potential(atoms_graph([moved], potential.cutoff)).energy[0]))
        numeric = -(energies[0] - energies[1]) / (2 * step)
        assert abs(numeric - forces[0][atom, axis]) < 1e-2


def test_multifidelity_rung_is_exported(tmp_path, structures):
    assert PRETRAINED_MODAL == "PBE"
    path = export_model("7net-mf-0", tmp_path / "mf", rung="PBE")
    card = json.loads((path / "model_card.json").read_text())
    assert card["rung"] == card["modality"] == "PBE"
    assert set(card["rungs"]) == {"PBE", "R2SCAN"}
    potential = load_artifact(path, device="cpu")
    assert isinstance(potential, TorchScriptPotential)
    assert_reproduces(load_model("7net-mf-0", device="cpu", rung="PBE"), potential, structures)


def test_card_and_readme(seven):
    path, _ = seven
    card = json.loads((path / "model_card.json").read_text(encoding="utf-8"))
    assert (card["format"], card["version"]) == ("hifidata-model-card", 1)
    for field in ("name", "kind", "recipe", "created", "hifidata_version", "libraries",
                  "species", "cutoff", "rungs", "rung", "modality", "units", "training",
                  "metrics", "files", "usage", "verification", "torchscript"):
        assert field in card, field
    assert card["kind"] == "sevennet" and card["cutoff"] == 5.0 and "Si" in card["species"]
    assert card["units"] == {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³",
                             "distances": "Å"}
    assert {"torch", "sevenn", "e3nn"} <= set(card["libraries"])
    assert card["created"].endswith("Z")
    assert [f["path"] for f in card["files"]] == ["deployed_serial.pt"]
    for entry in card["files"]:
        data = (path / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    check = card["verification"]
    assert check["passed"] and check["max_abs_force_diff_eV_per_A"] < 1e-4
    assert "max_abs_stress_diff_eV_per_A3" in check
    assert any(line.startswith("pair_coeff * * deployed_serial.pt") for line in
               card["usage"]["lammps"])
    readme = (path / "README.md").read_text(encoding="utf-8")
    assert "pair_style e3gnn" in readme and card["files"][0]["sha256"][:16] in readme
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "deployed_serial.pt",
                                                      "model_card.json"]


def test_refuses_a_non_empty_target_and_leaves_it_untouched(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="taken exists and is not empty"):
        export_model("7net-0", out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_unknown_rung_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelError) as error:
        export_model("7net-mf-0", tmp_path / "out", rung="CCSD(T)")
    assert "CCSD(T)" in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written beside it


def test_unknown_element_is_named(seven):
    potential = TorchScriptPotential(seven[0] / "deployed_serial.pt", device="cpu")
    atoms = Atoms("OgH", positions=[[0, 0, 0], [0, 0, 1.0]])
    with pytest.raises(ValueError, match="knows no Og"):
        potential(atoms_graph([atoms], potential.cutoff))


def test_chgnet_export_is_the_model_directory(chgnet, structures):
    card = json.loads((chgnet / "model_card.json").read_text(encoding="utf-8"))
    assert card["torchscript"] is None and "CrystalGraph" in card["torchscript_reason"]
    assert card["kind"] == "chgnet" and "chgnet" in card["libraries"]
    assert {f["path"] for f in card["files"]} == {"model/model.json", "model/chgnet.pth"}
    copy = load_model(chgnet / "model", device="cpu")
    assert isinstance(load_artifact(chgnet, device="cpu"), Model)
    original = load_model("chgnet-0.3.0", device="cpu")
    np.testing.assert_allclose(copy.predict(structures)["energy"],
                               original.predict(structures)["energy"], atol=1e-6)
    assert "CrystalGraph" in (chgnet / "README.md").read_text(encoding="utf-8")


def test_trained_multifidelity_directory_exports_the_chosen_rung(tmp_path):
    """A hifidata model directory: 7net-MF-0 with two appended modalities, trained one epoch
    on labels from 7net-0 ("low") and the same plus 1 eV ("high", the default rung). Exported
    at "low", the TorchScript file gives the low rung's energies, and the card the training."""
    rng = np.random.default_rng(0)
    waters = []
    for _ in range(3):
        water = molecule("H2O")
        water.positions += rng.normal(scale=0.05, size=water.positions.shape)
        waters.append(water)
    labels = load_model("7net-0", device="cpu").predict(waters)
    data = {rung: (LabeledSet(waters[:2], list(labels["energy"][:2] + offset),
                              labels["forces"][:2]), None)
            for rung, offset in (("low", 0.0), ("high", 1.0))}
    train_multifidelity(data, epochs=1, device="cpu", out_dir=tmp_path / "model",
                        metadata={"name": "mf-test", "method_ids": {"low": "m1", "high": "m2"}})
    path = export_model(tmp_path / "model", tmp_path / "artifact", rung="low")
    card = json.loads((path / "model_card.json").read_text(encoding="utf-8"))
    assert (card["name"], card["recipe"]) == ("mf-test", "multifidelity")
    assert card["species"] == ["H", "O"] and card["rungs"] == ["low", "high"]
    assert card["rung"] == card["modality"] == "low"
    training = card["training"]
    assert training["method_ids"] == {"low": "m1", "high": "m2"}
    assert training["n_train"] == {"low": 2, "high": 2} and training["default_rung"] == "high"
    assert training["train_stress"] is False and training["run"]["best_epoch"] == 1
    assert "train_loss" not in training["run"]  # histories stay in model.json
    assert set(card["metrics"]) == {"low", "high"}
    assert "pair_coeff * * deployed_serial.pt H O" in card["usage"]["lammps"]
    potential = load_artifact(path, device="cpu")
    energy = float(potential(atoms_graph(waters[2:], potential.cutoff)).energy[0])
    low = load_model(tmp_path / "model", device="cpu", rung="low").predict(waters[2:])
    high = load_model(tmp_path / "model", device="cpu").predict(waters[2:])
    assert abs(energy - low["energy"][0]) < 1e-4 < 0.5 < abs(energy - high["energy"][0])


def test_composite_exports_its_directory_or_its_base(tmp_path, structures):
    base, delta = (load_model("chgnet-0.3.0", device="cpu") for _ in range(2))
    base.metadata, delta.metadata = {"rung": "low"}, {"rung": "high", "low": "low"}
    CompositeModel(base, delta, {"rung": "high", "parts": ["a", "b"]}).save(tmp_path / "c")
    whole = export_model(tmp_path / "c", tmp_path / "whole")
    card = json.loads((whole / "model_card.json").read_text(encoding="utf-8"))
    assert card["kind"] == "composite" and card["rungs"] == ["low", "high"]
    assert card["training"]["part_models"]["delta"]["low"] == "low"
    assert isinstance(load_artifact(whole, device="cpu"), CompositeModel)
    low = export_model(tmp_path / "c", tmp_path / "low", rung="low")
    card = json.loads((low / "model_card.json").read_text(encoding="utf-8"))
    assert card["kind"] == "chgnet" and card["rung"] == "low"
    assert (low / "model" / "chgnet.pth").is_file() and not (low / "model" / "base").exists()
