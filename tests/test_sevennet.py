"""SevenNet: fine-tuning 7net-0, multi-fidelity 7net-MF-0, the sevennet model directory.

Real SevenNet (the checkpoints shipped in the sevenn wheel) and real PySCF labels on rattled
water dimers: HF/STO-3G is the "low" rung and HF/6-31G the "high" one (their forces differ by
~1.4 eV/Å and their total energies by ~56 eV, far more than a briefly trained model's errors).
The stress path trains on strained 2-atom silicon cells labeled by the pretrained CHGNet.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.collections import s22
from ase.stress import full_3x3_to_voigt_6_stress
from dimers import energy_difference_and_mean_force, hf_label, rattled_dimers

from hifidata.errors import ModelError
from hifidata.training import load_model
from hifidata.training.finetune import LabeledSet
from hifidata.training.models import mean_absolute_errors
from hifidata.training.sevennet import (
    SevennetModel,
    finetune_sevennet,
    load_base,
    train_multifidelity,
)

N_TRAIN = 6


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[LabeledSet, LabeledSet]]:
    structures = rattled_dimers(8)
    sets = {}
    for rung, basis in (("low", "sto-3g"), ("high", "6-31g")):
        energies, forces = zip(*(hf_label(atoms, basis) for atoms in structures), strict=True)
        sets[rung] = (
            LabeledSet(structures[:N_TRAIN], energies[:N_TRAIN], forces[:N_TRAIN]),
            LabeledSet(structures[N_TRAIN:], energies[N_TRAIN:], forces[N_TRAIN:]),
        )
    return sets


@pytest.fixture(scope="module")
def base() -> SevennetModel:
    network, config = load_base("7net-0", "cpu")
    return SevennetModel(network, config, ["H", "O"])


@pytest.fixture(scope="module")
def finetuned(data, tmp_path_factory):
    train, val = data["low"]
    out = tmp_path_factory.mktemp("sevennet") / "model"
    seen = []
    model = finetune_sevennet(
        train, val, epochs=4, device="cpu", out_dir=out, keep_checkpoints=True,
        metadata={"rung": "low"}, progress=lambda *args: seen.append(args),
    )
    return model, out, seen


@pytest.fixture(scope="module")
def multifidelity(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sevennet-mf") / "model"
    # e3nn normalizes each linear layer by 1/sqrt(fan-in), so the modality weights (starting
    # at zero) need many steps to separate the rungs: 3e-3 and batches of 2 get there in 10
    model = train_multifidelity(data, epochs=10, learning_rate=3e-3, batch_size=2,
                                device="cpu", out_dir=out)
    return model, out


def test_finetuning_lowers_training_errors(data, finetuned):
    model, _, seen = finetuned
    train, _ = data["low"]
    # epochs=0: the pretrained 7net-0 with its reference energies refitted, nothing trained
    baseline = finetune_sevennet(train, epochs=0, device="cpu")
    before = mean_absolute_errors(baseline, *train[:3])
    after = mean_absolute_errors(model, *train[:3])
    assert after["energy_mae"] < before["energy_mae"]
    assert after["forces_mae"] < 0.8 * before["forces_mae"]
    assert model.species == ["H", "O"] and model.modalities is None and model.modal is None
    assert model.rungs == ["low"]
    assert model.metadata["metrics"]["train"]["forces_mae"] == pytest.approx(
        after["forces_mae"], rel=1e-6)
    training = model.metadata["training"]
    assert training["watched"] == "val_loss" and 1 <= training["best_epoch"] <= 4
    assert [s[:2] for s in seen] == [(epoch, 4) for epoch in range(1, training["epochs_run"] + 1)]
    assert all(s[2] > 0 and s[3] is not None for s in seen)
    assert len(training["epoch_seconds"]) == training["epochs_run"]
    assert model.metadata["hyperparameters"]["train_stress"] is False


def test_reference_fit_recovers_a_per_element_offset(base):
    # compositions that tell H from O (H4O2 alone only fixes 4 e_H + 2 e_O)
    structures = [molecule("H2O"), molecule("H2"), molecule("H2O2"), s22["Water_dimer"].copy()]
    predicted = base.predict(structures)
    offset = {"H": -13.5, "O": -2035.0}  # a code whose absolute energies are not VASP's
    energies = [e + sum(offset[s] for s in atoms.get_chemical_symbols())
                for e, atoms in zip(predicted["energy"], structures, strict=True)]
    fitted = finetune_sevennet(LabeledSet(structures, energies, predicted["forces"]),
                               epochs=0, device="cpu")
    for element, shift in offset.items():
        moved = fitted.reference_energies[element] - base.reference_energies[element]
        assert moved == pytest.approx(shift, abs=2e-3)  # float32 shifts near 2000 eV
    np.testing.assert_allclose(fitted.predict(structures)["energy"], energies, atol=3e-3)


def test_round_trip_and_sevenn_calculator(data, finetuned):
    from sevenn.calculator import SevenNetCalculator

    model, path, _ = finetuned
    structures = data["low"][0].structures
    document = json.loads((path / "model.json").read_text())
    assert document["kind"] == "sevennet" and document["weights"] == "sevennet.pth"
    assert document["cutoff"] == 5.0 and document["n_parameters"] > 800_000
    assert document["modalities"] is None and document["modal"] is None
    assert set(document["reference_energies"]) == {"H", "O"}
    assert document["units"]["stress"] == "eV/Å³" and document["metadata"]["rung"] == "low"
    assert sorted(p.name for p in path.iterdir()) == ["checkpoints", "model.json", "sevennet.pth"]
    assert any((path / "checkpoints").glob("checkpoint_epoch*.pth"))

    loaded = load_model(path, device="cpu", rung="low")  # its own rung: the model itself
    assert isinstance(loaded, SevennetModel) and loaded.rungs == ["low"]
    before, after = model.predict(structures), loaded.predict(structures)
    np.testing.assert_allclose(after["energy"], before["energy"], rtol=0, atol=1e-6)
    for f_before, f_after in zip(before["forces"], after["forces"], strict=True):
        np.testing.assert_allclose(f_after, f_before, rtol=0, atol=1e-6)
    assert after["stress"] == [None] * len(structures)  # molecules have no stress

    # the weights without hifidata: sevenn's own calculator on sevennet.pth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no tensor product accelerator"
        calculator = SevenNetCalculator(path / "sevennet.pth", device="cpu")
    atoms = structures[0].copy()
    atoms.calc = calculator
    # float32 sums in another order: a total near -4100 eV is resolved to ~5e-4 eV
    assert atoms.get_potential_energy() == pytest.approx(before["energy"][0], abs=2e-3)
    np.testing.assert_allclose(atoms.get_forces(), before["forces"][0], rtol=0, atol=1e-4)

    with pytest.raises(ModelError, match=r"predicts rungs \['low'\]; no rung 'high'"):
        load_model(path, device="cpu", rung="high")


def test_forces_are_minus_the_energy_gradient(data, finetuned):
    model = finetuned[0]
    atoms = data["low"][0].structures[0]
    # The PySCF-level shift (~ -690 eV/atom) leaves float32 totals resolved to ~5e-4 eV; a
    # constant per element adds nothing to the forces, so differentiate a copy without it.
    network = copy.deepcopy(model.network)
    network._modules["rescale_atomic_energy"].shift.data.zero_()
    unshifted = SevennetModel(network, model.config, model.species)
    np.testing.assert_allclose(unshifted.predict([atoms])["forces"][0],
                               model.predict([atoms])["forces"][0], rtol=0, atol=1e-5)
    for atom, axis in [(0, 0), (1, 2), (3, 1), (5, 0)]:
        difference, mean_force = energy_difference_and_mean_force(unshifted, atoms, atom, axis,
                                                                  half_step=0.01)
        assert abs(mean_force) > 0.01
        assert difference == pytest.approx(mean_force, abs=2e-3)


def test_multifidelity_predicts_each_rung(data, multifidelity):
    model, _ = multifidelity
    assert model.modalities == ["R2SCAN", "PBE", "low", "high"]  # new rungs appended
    assert model.modal == "high" and model.rungs == ["low", "high"]
    assert model.metadata["rungs"] == ["low", "high"]
    assert model.metadata["default_rung"] == "high"
    assert set(model.reference_energies) == {"R2SCAN", "PBE", "low", "high"}
    structures = data["low"][0].structures
    predictions = {rung: model.with_modal(rung).predict(structures) for rung in data}
    labels = {rung: data[rung][0] for rung in data}
    forces = {rung: np.concatenate(p["forces"]) for rung, p in predictions.items()}
    assert np.abs(forces["low"] - forces["high"]).mean() > 0.1

    def relative(energies):  # total energies differ by ~56 eV: compare their shapes
        energies = np.asarray(energies, dtype=float)
        return energies - energies.mean()

    for rung, other in (("low", "high"), ("high", "low")):
        own_f, other_f = (np.concatenate(labels[r].forces) for r in (rung, other))
        assert np.abs(forces[rung] - own_f).mean() < np.abs(forces[rung] - other_f).mean()
        energy = predictions[rung]["energy"]
        assert np.abs(energy - np.asarray(labels[rung].energies)).mean() < 0.5
        own_e, other_e = (relative(labels[r].energies) for r in (rung, other))
        assert (np.abs(relative(energy) - own_e).mean()
                < np.abs(relative(energy) - other_e).mean())
    with pytest.raises(ValueError, match=r"no modality 'ccsdt'.*'low', 'high'"):
        model.with_modal("ccsdt")


def test_multifidelity_loading_switches_rungs(data, multifidelity):
    from sevenn.calculator import SevenNetCalculator

    model, path = multifidelity
    document = json.loads((path / "model.json").read_text())
    assert document["modalities"] == ["R2SCAN", "PBE", "low", "high"]
    assert document["modal"] == "high"
    assert set(document["reference_energies"]["low"]) == {"H", "O"}
    structures = data["low"][1].structures
    # no rung: the default one
    default = load_model(path, device="cpu")
    assert default.modal == "high"
    np.testing.assert_allclose(default.predict(structures)["energy"],
                               model.predict(structures)["energy"], rtol=0, atol=1e-6)
    low = load_model(path, device="cpu", rung="low")
    assert low.modal == "low"
    expected = model.with_modal("low").predict(structures)["energy"]
    np.testing.assert_allclose(low.predict(structures)["energy"], expected, rtol=0, atol=1e-6)
    with pytest.raises(ModelError, match=r"predicts rungs \['low', 'high'\]; no rung 'PBE'"):
        load_model(path, device="cpu", rung="PBE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        calculator = SevenNetCalculator(path / "sevennet.pth", modal="low", device="cpu")
    atoms = structures[0].copy()
    atoms.calc = calculator
    assert atoms.get_potential_energy() == pytest.approx(expected[0], abs=2e-3)


def strained_silicon(count: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(count):
        atoms = bulk("Si", "diamond", a=5.43)
        strain = rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
        cells.append(atoms)
    return cells


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # CHGNet's
def test_stress_is_trained_and_follows_ase_convention():
    from hifidata.calculators.mlip import predict_batch, pretrained_chgnet

    cells = strained_silicon(8)
    labels = predict_batch(pretrained_chgnet("chgnet-0.3.0", "cpu"), cells, stress=True)
    train = LabeledSet(cells[:6], labels["energy"][:6], labels["forces"][:6],
                       labels["stress"][:6])
    val = LabeledSet(cells[6:], labels["energy"][6:], labels["forces"][6:], labels["stress"][6:])
    model = finetune_sevennet(train, val, epochs=2, device="cpu")
    assert model.metadata["hyperparameters"]["train_stress"] is True
    assert np.isfinite(model.metadata["metrics"]["val"]["stress_mae"])

    atoms = cells[0]
    stress = model.predict([atoms, molecule("H2O")])["stress"]
    assert stress[1] is None and np.shape(stress[0]) == (6,)
    # ASE's convention: σ = (1/V) dE/dε, the strain applied as cell → cell (1 + ε)
    step = 1e-3
    strained = []
    for i in range(3):
        for j in range(3):
            for sign in (1, -1):
                strain = np.zeros((3, 3))
                strain[i, j] += sign * step / 2
                strain[j, i] += sign * step / 2
                cell = atoms.copy()
                cell.set_cell(atoms.cell @ (np.eye(3) + strain), scale_atoms=True)
                strained.append(cell)
    energies = model.predict(strained)["energy"].reshape(3, 3, 2)
    gradient = (energies[..., 0] - energies[..., 1]) / (2 * step)
    finite_difference = full_3x3_to_voigt_6_stress(gradient / atoms.get_volume())
    assert np.abs(stress[0]).max() > 1e-3  # strained by up to 3 %: clearly nonzero
    np.testing.assert_allclose(stress[0], finite_difference, rtol=0, atol=5e-5)


def test_bad_inputs_name_the_reason(data):
    train, _ = data["low"]
    stresses = [np.zeros(6)] + [None] * (len(train.structures) - 1)
    with pytest.raises(ValueError, match="structure 0 is not periodic but has a stress"):
        finetune_sevennet(LabeledSet(*train[:3], stresses), epochs=0, device="cpu")
    with pytest.raises(ValueError, match="no modalities; start from 7net-mf-0"):
        train_multifidelity({"low": (train, None)}, base="7net-0", epochs=0, device="cpu")
    with pytest.raises(ValueError, match=r"default_rung 'x' is not one of the rungs \['low'\]"):
        train_multifidelity({"low": (train, None)}, default_rung="x", device="cpu")
    with pytest.raises(ValueError, match="unknown SevenNet base 'nonsense'"):
        finetune_sevennet(train, base="nonsense", epochs=0, device="cpu")
