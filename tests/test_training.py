"""Training: reference energies, fine-tuning, Δ-learning, the model directory.

Real CHGNet and real PySCF labels on rattled water dimers: HF/STO-3G is the "low" rung and
HF/6-31G the "high" one (their forces differ by ~1.4 eV/Å, far more than the models' errors, so
a Δ-model that learns anything shows up clearly).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from dimers import energy_difference_and_mean_force, hf_label, rattled_dimers

from hifidata.errors import ModelError
from hifidata.training import (
    CompositeModel,
    compose,
    finetune_chgnet,
    fit_reference_energies,
    load_model,
    train_delta,
)
from hifidata.training.models import mean_absolute_errors

N_TRAIN = 12


@pytest.fixture(scope="module")
def data():
    structures = rattled_dimers(16)
    labels = {}
    for level, basis in (("low", "sto-3g"), ("high", "6-31g")):
        results = [hf_label(atoms, basis) for atoms in structures]
        labels[level] = ([e for e, _ in results], [f for _, f in results])
    return structures, labels


def split(data, level):
    structures, labels = data
    energies, forces = labels[level]
    train = (structures[:N_TRAIN], energies[:N_TRAIN], forces[:N_TRAIN])
    val = (structures[N_TRAIN:], energies[N_TRAIN:], forces[N_TRAIN:])
    return train, val


@pytest.fixture(scope="module")
def finetuned(data):
    train, val = split(data, "low")
    return finetune_chgnet(*train, *val, epochs=8, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def composite(data, finetuned):
    structures, labels = data
    (low_e, low_f), (high_e, high_f) = labels["low"], labels["high"]
    delta_e = [h - lo for h, lo in zip(high_e, low_e, strict=True)]
    delta_f = [h - lo for h, lo in zip(high_f, low_f, strict=True)]
    delta = train_delta(
        structures[:N_TRAIN], delta_e[:N_TRAIN], delta_f[:N_TRAIN], epochs=40, batch_size=4,
    )
    return compose(finetuned, delta, metadata={"rung": "high"})


def test_fit_reference_energies_recovers_per_element_energies():
    truth = {1: -13.6, 6: -1030.2, 8: -2041.5}
    formulas = ["H2O", "H2", "O2", "CH4", "CO2", "H2O2", "C2H6", "CH3OH"]
    structures = [Atoms(f, positions=np.zeros((len(Atoms(f)), 3))) for f in formulas]
    energies = [sum(truth[z] for z in atoms.numbers) for atoms in structures]
    fitted = fit_reference_energies(structures, energies)
    assert fitted.keys() == truth.keys()
    for z, energy in truth.items():
        assert fitted[z] == pytest.approx(energy, abs=1e-8)


def test_fit_reference_energies_one_composition_gives_minimum_norm():
    structures = rattled_dimers(3)
    energies = [-4150.0, -4150.2, -4149.9]
    fitted = fit_reference_energies(structures, energies)
    # H4O2 only fixes 4 e_H + 2 e_O; the minimum-norm solution lies along (4, 2)
    assert 4 * fitted[1] + 2 * fitted[8] == pytest.approx(np.mean(energies))
    assert fitted[1] / fitted[8] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one energy per structure"):
        fit_reference_energies(structures, energies[:2])


def test_finetuning_lowers_training_errors(data, finetuned):
    train, _ = split(data, "low")
    # epochs=0: the pretrained CHGNet with its reference energies refitted, nothing trained
    baseline = finetune_chgnet(*train, epochs=0)
    before = mean_absolute_errors(baseline, *train)
    after = mean_absolute_errors(finetuned, *train)
    assert after["energy_mae"] < before["energy_mae"]
    assert after["forces_mae"] < 0.8 * before["forces_mae"]
    assert finetuned.species == ["H", "O"]
    assert finetuned.metadata["metrics"]["train"]["forces_mae"] == pytest.approx(
        after["forces_mae"], rel=1e-6)
    assert 1 <= finetuned.metadata["training"]["best_epoch"] <= 8


def test_early_stopping_keeps_the_best_epoch_and_reports_progress(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # chgnet's Trainer writes to the working directory if let
    train, val = split(data, "low")
    seen = []
    # learning rate 0: the loss never improves after epoch 1, so patience 2 stops at epoch 3
    model = train_delta(
        *[part[:4] for part in train], *val, epochs=20, patience=2, learning_rate=0.0,
        progress=lambda *args: seen.append(args), out_dir=tmp_path / "delta",
        keep_checkpoints=True,
    )
    assert model.metadata["training"]["epochs_run"] == 3
    assert model.metadata["training"]["best_epoch"] == 1
    assert [s[:2] for s in seen] == [(1, 20), (2, 20), (3, 20)]
    assert all(s[3] is not None and s[2] > 0 for s in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["delta"]
    written = {p.name for p in (tmp_path / "delta").iterdir()}
    assert written == {"model.json", "chgnet.pth", "checkpoints"}
    assert any((tmp_path / "delta" / "checkpoints").glob("bestE_*.pth.tar"))


def test_labels_must_match_the_structures(data):
    (structures, energies, forces), _ = split(data, "low")
    with pytest.raises(ValueError, match="need one of each"):
        train_delta(structures, energies[:-1], forces, epochs=1)
    with pytest.raises(ValueError, match=r"structure 2: forces have shape \(3, 3\)"):
        train_delta(structures, energies, [*forces[:2], forces[2][:3], *forces[3:]], epochs=1)


def test_delta_model_brings_the_composite_closer_to_the_high_level(data, finetuned, composite):
    structures, energies, forces = split(data, "high")[0]
    base_only = mean_absolute_errors(finetuned, structures, energies, forces)
    combined = mean_absolute_errors(composite, structures, energies, forces)
    assert combined["forces_mae"] < 0.7 * base_only["forces_mae"]
    # the total-energy gap between the basis sets (~56 eV) would make any Δ look good:
    # compare relative energies, each model's mean error taken out
    def spread(model):
        error = model.predict(structures)["energy"] - np.asarray(energies)
        return np.abs(error - error.mean()).mean()

    assert spread(composite) < 0.7 * spread(finetuned)


def test_composite_forces_are_minus_the_energy_gradient(data, composite):
    atoms = data[0][0]
    half_step = 0.02  # Å
    # CHGNet adds the composition energy (~ -690 eV/atom here) in float32, so each total energy
    # is rounded to N × spacing(E/N) ≈ 4e-4 eV, and a difference of two to that over 2h
    energy = composite.predict([atoms])["energy"][0]
    spacing = float(np.spacing(np.float32(abs(energy) / len(atoms))))
    rounding = len(atoms) * spacing / (2 * half_step)
    for atom, axis in [(0, 0), (1, 2), (3, 1), (5, 0)]:
        difference, mean_force = energy_difference_and_mean_force(composite, atoms, atom, axis,
                                                                  half_step, points=21)
        assert difference == pytest.approx(mean_force, abs=1.5 * rounding + 1e-3)


def test_composite_round_trip_and_calculator(tmp_path, data, composite):
    structures = data[0]
    composite.save(tmp_path / "model")
    document = json.loads((tmp_path / "model" / "model.json").read_text())
    assert document["format"] == "hifidata-model" and document["kind"] == "composite"
    assert document["species"] == ["H", "O"] and document["metadata"] == {"rung": "high"}
    base_document = json.loads((tmp_path / "model" / "base" / "model.json").read_text())
    assert base_document["kind"] == "chgnet"
    assert set(base_document["reference_energies"]) == {"H", "O"}
    assert base_document["units"] == {"energy": "eV", "forces": "eV/Å"}

    loaded = load_model(tmp_path / "model", device="cpu")
    assert isinstance(loaded, CompositeModel)
    before, after = composite.predict(structures), loaded.predict(structures)
    np.testing.assert_allclose(after["energy"], before["energy"], rtol=0, atol=1e-6)
    for f_before, f_after in zip(before["forces"], after["forces"], strict=True):
        np.testing.assert_allclose(f_after, f_before, rtol=0, atol=1e-6)

    # a saved chgnet model is a base to fine-tune further (the next campaign iteration)
    (train, energies, forces), _ = split(data, "low")
    base_dir = str(tmp_path / "model" / "base")
    again = finetune_chgnet(train[:4], energies[:4], forces[:4], base=base_dir, epochs=1)
    assert again.metadata["hyperparameters"]["base"] == base_dir

    atoms = structures[0].copy()
    atoms.calc = loaded.calculator()
    # one structure per call: compare with a batch of one (float32 sums depend on the batch)
    alone = composite.predict([atoms])
    assert atoms.get_potential_energy() == pytest.approx(alone["energy"][0], abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), alone["forces"][0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "absent", "no model at"),
        (lambda d: d, "not a hifidata model directory"),
        (lambda d: _write(d / "model.json", '{"format": "other"}').parent, "not written by"),
        (lambda d: _write(d / "model.json", "{broken").parent, "not valid JSON"),
        (lambda d: _write(d / "weights.pth", "x"), "is a file"),
        (lambda d: _write(d / "model.json", json.dumps(
            {"format": "hifidata-model", "version": 1, "kind": "chgnet"})).parent,
         "no weights file"),
    ],
)
def test_loading_a_foreign_directory_names_the_reason(tmp_path, make, reason):
    with pytest.raises(ModelError, match=reason) as error:
        load_model(make(tmp_path))
    assert "\n" not in str(error.value)


def _write(path, text):
    path.write_text(text)
    return path


def born_mayer(atoms: Atoms, a: float = 10.0, rho: float = 0.6) -> tuple[float, np.ndarray]:
    """E = Σ a·exp(−r_ij/ρ) over pairs between the two molecules (eV, Å): a known, smooth Δ."""
    positions, energy = atoms.positions, 0.0
    forces = np.zeros_like(positions)
    for i in range(3):
        for j in range(3, 6):
            d = positions[j] - positions[i]
            r = np.linalg.norm(d)
            e = a * np.exp(-r / rho)
            energy += e
            forces[j] += e / rho * d / r  # −dE/dr_j, repulsive: pushes j away from i
            forces[i] -= e / rho * d / r
    return energy, forces


@pytest.mark.slow
def test_delta_model_recovers_a_known_pair_potential():
    structures = rattled_dimers(40, seed=3)
    pairs = [born_mayer(atoms) for atoms in structures]
    energies, forces = [e for e, _ in pairs], [f for _, f in pairs]
    n = 32
    model = train_delta(structures[:n], energies[:n], forces[:n], epochs=120, seed=0)
    held_out = mean_absolute_errors(model, structures[n:], energies[n:], forces[n:])
    # the Δ varies by ~0.25 eV and 0.2 eV/Å over these dimers: recovering it means errors far
    # below that spread (a per-element constant alone would leave all of it). Measured: 2 % of
    # the energy spread and 11 % of the force spread.
    spread_e = np.abs(np.asarray(energies[n:]) - np.mean(energies[:n])).mean()
    spread_f = np.abs(np.concatenate(forces[n:])).mean()
    assert spread_e > 0.1 and spread_f > 0.1
    assert held_out["energy_mae"] < 0.15 * spread_e
    assert held_out["forces_mae"] < 0.25 * spread_f


def test_finetuning_learns_stress_where_every_structure_has_one():
    from ase.build import bulk

    from hifidata.calculators.mlip import predict_batch, pretrained_chgnet

    rng = np.random.default_rng(0)
    cells = []
    for _ in range(8):
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.set_cell(atoms.cell @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))),
                       scale_atoms=True)
        atoms.rattle(0.03, seed=int(rng.integers(1000)))
        cells.append(atoms)
    # labels from another model: the r2SCAN CHGNet's stresses differ from 0.3.0's
    reference = predict_batch(pretrained_chgnet("chgnet-r2scan"), cells, stress=True)
    labels = (cells, reference["energy"], reference["forces"])

    def stress_error(model):
        predicted = predict_batch(model.network, cells, stress=True)["stress"]
        return np.abs(np.array(predicted) - np.array(reference["stress"])).mean()

    before = finetune_chgnet(*labels, epochs=0)
    after = finetune_chgnet(*labels, epochs=15, learning_rate=2e-3, batch_size=4,
                            stress_weight=1.0, stresses=reference["stress"])
    assert stress_error(after) < 0.7 * stress_error(before)
    # a validation set without stresses cannot be scored on them
    with pytest.raises(ValueError, match="stress labels"):
        finetune_chgnet(*labels, *labels, epochs=1, stresses=reference["stress"])
