"""Exploration protocols and the MD driver with its stability monitors (real CHGNet)."""

from __future__ import annotations

import numpy as np
import pytest

from hifidata.calculators.mlip import MLIPCalculator, pretrained_chgnet
from hifidata.sampling.ase_md import (
    bonds_kept,
    close_contact,
    default_monitors,
    langevin,
    md_summary,
    temperature_runaway,
)
from hifidata.sampling.explore import md_trajectory, rattle, strain, vacancies
from hifidata.structures import structure_id, tightest_pair


def test_rattles_are_seeded_bounded_and_remember_their_parent(water_dimer):
    first = rattle([water_dimer], 50, stdev=0.1, seed=3)
    again = rattle([water_dimer], 50, stdev=0.1, seed=3)
    assert len(first) == 50
    ids = [structure_id(a) for a in first.structures]
    assert ids == [structure_id(a) for a in again.structures]
    assert all(tightest_pair(a)[2] >= 0.8 for a in first.structures)
    displacement = np.concatenate([a.positions - water_dimer.positions for a in first.structures])
    assert displacement.std() == pytest.approx(0.1, rel=0.25)  # σ survives the redraws
    assert {o["parent"] for o in first.origins} == {structure_id(water_dimer)}
    assert first.structures[0].info == {"charge": 0, "spin": 1}


def silicon(repeat: int = 1):
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(repeat)
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


def test_strains_move_atoms_with_the_cell_within_the_bound():
    parent = silicon()
    out = strain([parent], 20, max_strain=0.05, seed=4)
    assert len(out) == 20 and out.origins[0]["protocol"] == "strain"
    for atoms, origin in zip(out.structures, out.origins, strict=True):
        xx, yy, zz, yz, xz, xy = origin["strain_voigt"]
        epsilon = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        assert np.abs(epsilon).max() <= 0.05
        np.testing.assert_allclose(atoms.cell.array, parent.cell.array @ (np.eye(3) + epsilon),
                                   atol=1e-5)  # the origin rounds ε to 1e-6
        np.testing.assert_allclose(atoms.get_scaled_positions(), parent.get_scaled_positions(),
                                   atol=1e-12)
    volumes = [a.get_volume() / parent.get_volume() for a in out.structures]
    assert min(volumes) < 0.99 and max(volumes) > 1.01  # both compressed and stretched
    without_shear = strain([parent], 5, shear=False, seed=4)
    assert all(np.allclose(o["strain_voigt"][3:], 0) for o in without_shear.origins)
    with pytest.raises(ValueError, match="periodic"):
        strain([_molecule()], 1)


def _molecule():
    from ase.build import molecule

    return molecule("H2O")


def test_vacancies_are_one_per_symmetry_distinct_site():
    crystal, big = silicon(), silicon(2)
    out = vacancies([crystal, big], 10, seed=0)
    # diamond Si has one Wyckoff orbit: one vacancy per parent, however many atoms it has
    assert sorted(len(a) for a in out.structures) == [7, 63]
    assert {o["removed"] for o in out.origins} == {"Si"}
    assert all(a.info == {"charge": 0, "spin": 1} for a in out.structures)
    snapshot = crystal.copy()
    snapshot.positions[0] += [0.1, 0.0, 0.05]  # broken symmetry: sites become distinct
    assert len(vacancies([snapshot], 10, seed=0)) > 1


def test_a_rattle_that_always_overlaps_is_an_error(water_dimer):
    with pytest.raises(ValueError, match="lower stdev or min_bond_ratio"):
        rattle([water_dimer], 5, stdev=0.01, seed=0, min_bond_ratio=1.99)


def test_md_trajectory_samples_frames_with_their_origin(water_dimer):
    calculator = MLIPCalculator(pretrained_chgnet("chgnet-0.3.0", "cpu"))
    done = []
    candidates = md_trajectory(water_dimer, calculator, temperature=300, steps=20,
                               sample_every=5, seed=4, model="chgnet-0.3.0", progress=done.append)
    assert candidates.stopped is None
    assert [o["step"] for o in candidates.origins] == [5, 10, 15, 20]
    assert {o["temperature"] for o in candidates.origins} == {300}
    assert candidates.origins[0]["parent"] == structure_id(water_dimer)
    assert sum(done) == 20
    moved = [np.abs(a.positions - water_dimer.positions).max() for a in candidates.structures]
    assert min(moved) > 0 and max(moved) < 0.5


def test_monitors_name_what_went_wrong(water_dimer):
    squeezed = water_dimer.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.3, 0, 0]
    assert "close contact: atoms 0 and 1" in close_contact(0.6)(squeezed)
    assert close_contact(0.6)(water_dimer) is None

    broken = water_dimer.copy()
    broken.positions[1] += [2.0, 0, 0]  # H1 leaves its oxygen
    assert "bond O0–H1 broke" in bonds_kept(water_dimer)(broken)
    assert bonds_kept(water_dimer)(water_dimer) is None
    # the hydrogen bond is not covalent: the dimer may fall apart into two waters
    apart = water_dimer.copy()
    apart.positions[3:] += [3.0, 0, 0]
    assert bonds_kept(water_dimer)(apart) is None

    hot = water_dimer.copy()
    hot.set_velocities(np.full((6, 3), 0.5))
    assert "temperature runaway" in temperature_runaway(300)(hot)


def test_md_stops_at_the_first_unphysical_state(water_dimer):
    calculator = MLIPCalculator(pretrained_chgnet("chgnet-0.3.0", "cpu"))
    # a monitor that fires at a given step stands in for a model going wrong on demand
    steps = []

    def fails_at_step_7(atoms):
        steps.append(1)
        return "injected failure" if len(steps) == 7 else None

    result = langevin(water_dimer, calculator, 300, steps=20, sample_every=5,
                      monitors=[*default_monitors(water_dimer, 300, 0.6), fails_at_step_7])
    assert result.stopped == "step 7: injected failure"
    assert result.steps_done == 7 and len(result.frames) == 1
    summary = md_summary(result, timestep=0.5, n_atoms=6)
    assert summary["stable"] is False and summary["time_ps"] == pytest.approx(0.0035)
