"""Structure identity (structure_id) and the checks before any engine runs."""

import numpy as np
import pytest

from hifidata.structures import StructureError, check_structure, structure_id


def test_identity_ignores_sub_micro_angstrom_noise_but_not_more(water_dimer):
    base = structure_id(water_dimer)
    nudged = water_dimer.copy()
    nudged.positions[0, 0] += 2e-7  # below the 1e-6 Å rounding
    assert structure_id(nudged) == base
    moved = water_dimer.copy()
    moved.positions[0, 0] += 5e-6
    assert structure_id(moved) != base


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.info.update(charge=1, spin=2),
        lambda a: a.info.update(spin=3),
        lambda a: a.set_pbc(True),
        lambda a: a.set_cell([20, 20, 20]),
        lambda a: a.set_atomic_numbers(a.numbers[::-1]),
    ],
)
def test_identity_sees_everything_that_changes_the_number(water_dimer, change):
    other = water_dimer.copy()
    change(other)
    assert structure_id(other) != structure_id(water_dimer)


def test_negative_zero_is_zero(water_dimer):
    flipped = water_dimer.copy()
    flipped.positions[np.isclose(flipped.positions, 0)] = -0.0
    assert structure_id(flipped) == structure_id(water_dimer)


def test_overlapping_atoms_are_rejected(water_dimer):
    water_dimer.positions[1] = water_dimer.positions[0] + [0.1, 0, 0]
    with pytest.raises(StructureError, match=r"0\.100 Å apart"):
        check_structure(water_dimer)


@pytest.mark.parametrize("charge, spin, ok", [(0, 1, True), (0, 2, False), (1, 2, True),
                                              (0, 3, True), (1, 1, False), (-21, 1, False)])
def test_charge_and_spin_must_fit_the_electron_count(water_dimer, charge, spin, ok):
    water_dimer.info.update(charge=charge, spin=spin)  # 20 electrons when neutral
    if ok:
        check_structure(water_dimer)
    else:
        with pytest.raises(StructureError, match="do not fit"):
            check_structure(water_dimer)
