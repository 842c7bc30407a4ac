"""The cross-code comparison on labels whose disagreement is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.units import GPa

from hifidata.datasets.audit import Pairs, compare, plot, report
from hifidata.datasets.store import LabelSet

SHIFT = {"Si": -3.25, "O": 1.5}  # eV per atom, A − B


def structures(rng) -> list[Atoms]:
    out = []
    for n_si, n_o in [(8, 0), (7, 0), (4, 8), (6, 4), (8, 2), (2, 4)]:
        atoms = Atoms(["Si"] * n_si + ["O"] * n_o, positions=rng.uniform(0, 6, (n_si + n_o, 3)),
                      cell=[6, 6, 6], pbc=True)
        out.append(atoms)
    return out


def labelset(ids, energy, forces, stress) -> LabelSet:
    n = len(ids)
    return LabelSet("m", list(ids), ["ok"] * n, np.asarray(energy), list(forces),
                    np.asarray(stress), np.ones(n), [""] * n, ["{}"] * n)


@pytest.fixture
def known():
    rng = np.random.default_rng(0)
    atoms = structures(rng)
    ids = [f"s{i}" for i in range(len(atoms))]
    energy_a = rng.normal(-100, 5, len(atoms))
    forces_a = [rng.normal(0, 1, (len(a), 3)) for a in atoms]
    # B: every Si force component off by exactly ±0.02 eV/Å, every O component by ±0.05
    offsets = [np.where((a.numbers == 14)[:, None], 0.02, 0.05) * rng.choice([-1, 1], (len(a), 3))
               for a in atoms]
    forces_b = [f - d for f, d in zip(forces_a, offsets, strict=True)]
    counts = {el: np.array([a.get_chemical_symbols().count(el) for a in atoms]) for el in SHIFT}
    energy_b = energy_a - sum(SHIFT[el] * counts[el] for el in SHIFT)  # A − B = Σ n μ exactly
    stress_a = rng.normal(0, 0.01, (len(atoms), 6))
    stress_b = stress_a - 0.5 * GPa
    stress_b[0] = np.nan  # a method without stress for one structure
    a = labelset(ids, energy_a, forces_a, stress_a)
    b = labelset(ids[::-1], energy_b[::-1], forces_b[::-1], stress_b[::-1])  # other order
    origins = [{"protocol": "rattle", "step": i} for i in range(len(atoms))]
    return Pairs.of(("cp2k", "qe"), a, b, atoms, origins), offsets


def test_force_and_energy_disagreement_match_the_construction(known):
    pairs, offsets = known
    summary = compare(pairs)
    forces = summary["forces_eV_per_A"]
    assert forces["Si"]["mae"] == pytest.approx(0.02) and forces["Si"]["max"] == pytest.approx(0.02)
    assert forces["O"]["rmse"] == pytest.approx(0.05)
    every = np.abs(np.concatenate(offsets)).ravel()
    assert forces["all"]["mae"] == pytest.approx(every.mean())
    assert forces["all"]["components"] == every.size
    shifts = summary["energy"]["reference_shift_eV"]
    assert shifts["Si"] == pytest.approx(SHIFT["Si"]) and shifts["O"] == pytest.approx(SHIFT["O"])
    assert summary["energy"]["relative_max_meV_per_atom"] == pytest.approx(0, abs=1e-8)
    stress = summary["stress_GPa"]
    assert stress["structures"] == 5  # the one without a stress from B is left out
    assert stress["mae"] == pytest.approx(0.5) and stress["pressure_mae"] == pytest.approx(0.5)


def test_a_relative_energy_error_is_what_the_reference_fit_cannot_absorb(known):
    pairs, _ = known
    bumped = pairs.energy[1].copy()
    bumped[2] += 0.12  # one structure 120 meV off in B, beyond any per-element shift
    pairs.energy = (pairs.energy[0], bumped)
    summary = compare(pairs)
    assert summary["energy"]["relative_max_meV_per_atom"] > 1
    n = np.array([len(a) for a in pairs.structures])
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in (8, 14)]
                       for a in pairs.structures])
    coefficients, *_ = np.linalg.lstsq(counts, pairs.energy[0] - bumped, rcond=None)
    residual = (pairs.energy[0] - bumped - counts @ coefficients) / n * 1000
    assert summary["energy"]["relative_rmse_meV_per_atom"] == pytest.approx(
        np.sqrt(np.mean(residual**2)))


def test_report_and_plot(known, tmp_path):
    pairs, _ = known
    summary = compare(pairs)
    picture = plot(pairs, summary, tmp_path / "audit.png")
    assert picture.stat().st_size > 10_000
    failures = [{"method": "qe", "structure_id": "abc" * 8, "status": "timeout",
                 "message": "pw.x ran past its time limit | of 1 s"}]
    text = report(summary, picture.name, failures)
    assert "| Si | 105 | 0.0200 | 0.0200 | 0.0200 |" in text  # 35 Si atoms × 3
    assert "timeout" in text and "| of 1 s" not in text  # table cells stay cells
    assert "audit.png" in text and text.count("\n| `s") == 5  # the worst five


def test_no_common_labels_is_an_error():
    rng = np.random.default_rng(1)
    atoms = structures(rng)[:2]
    a = labelset(["x", "y"], [1.0, 2.0], [np.zeros((len(x), 3)) for x in atoms], np.zeros((2, 6)))
    b = labelset(["z"], [1.0], [np.zeros((8, 3))], np.zeros((1, 6)))
    with pytest.raises(ValueError, match="no ok labels in common"):
        compare(Pairs.of(("a", "b"), a, b, atoms, [{}, {}]))
