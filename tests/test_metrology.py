"""Metrology: errors per model and rung, with reference energies aligned on training labels."""

import numpy as np
import pytest

from hifidata.training.metrology import compare, parity_plot


class ShiftedLabels:
    """A stand-in model: the labels plus a per-element offset and known force noise."""

    def __init__(self, labels, per_element, force_error):
        self.labels, self.per_element, self.force_error = labels, per_element, force_error

    def predict(self, structures):
        energy, forces = [], []
        for atoms in structures:
            i = self.labels["ids"].index(id(atoms))
            shift = sum(self.per_element[z] for z in atoms.numbers)
            energy.append(self.labels["energy"][i] + shift)
            forces.append(self.labels["forces"][i] + self.force_error)
        return {"energy": np.array(energy), "forces": forces}


def labeled(structures, rng):
    return {
        "structures": structures,
        "ids": [id(a) for a in structures],
        "energy": rng.normal(-2000, 1, len(structures)),
        "forces": [rng.normal(0, 1, (len(a), 3)) for a in structures],
    }


def test_offsets_per_element_are_aligned_away_and_errors_are_in_mev(water_dimer, tmp_path):
    rng = np.random.default_rng(0)
    structures = [water_dimer.copy() for _ in range(8)]
    data = labeled(structures, rng)
    model = ShiftedLabels(data, {1: -13.6, 8: -2040.0}, force_error=0.05)
    train = {k: v[:5] for k, v in data.items() if k != "ids"}
    test = {k: v[5:] for k, v in data.items() if k != "ids"}
    parity = compare(model, "shifted", "dft", train, test)
    errors = parity.errors()
    assert errors["n_structures"] == 3
    assert errors["energy_mae_meV_per_atom"] == pytest.approx(0, abs=1e-6)
    assert errors["force_mae_meV_per_A"] == pytest.approx(50)
    assert parity_plot([parity], tmp_path / "p.png").stat().st_size > 5000


def test_without_training_labels_nothing_is_aligned(water_dimer):
    rng = np.random.default_rng(1)
    data = labeled([water_dimer.copy() for _ in range(2)], rng)
    model = ShiftedLabels(data, {1: 0.001, 8: 0.0}, force_error=0.0)
    empty = {"structures": [], "energy": [], "forces": []}
    test = {k: v for k, v in data.items() if k != "ids"}
    errors = compare(model, "m", "dft", empty, test).errors()
    assert errors["energy_mae_meV_per_atom"] == pytest.approx(4 * 0.001 / 6 * 1000)
