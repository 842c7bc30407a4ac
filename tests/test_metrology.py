"""Metrology: errors per model and rung, with reference energies aligned on training labels."""

import re

import numpy as np
import pytest

from hifidata.training.landscape import (
    Slice,
    distance_scan,
    grid_scan,
    scan_slice,
    slice_errors,
    slice_plot,
)
from hifidata.training.metrology import (
    Parity,
    compare,
    errors_by_element,
    errors_by_origin,
    markdown_table,
    parity_plot,
    write_report,
)
from hifidata.training.models import torch_threads
from hifidata.training.stability import (
    StabilityResult,
    StabilityRun,
    md_stability,
    stability_plot,
)


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


# --- error tables ------------------------------------------------------------------------


def known_parity(n_atoms, energy_error, force_error, symbols=(), origins=()):
    """A Parity whose labels are zero, so the predictions are the errors (eV, eV/Å)."""
    n_atoms = np.asarray(n_atoms)
    force_error = np.asarray(force_error, dtype=float)
    return Parity(
        "m", "dft", n_atoms, np.zeros(len(n_atoms)), np.asarray(energy_error, dtype=float),
        np.zeros_like(force_error), force_error, list(symbols), list(origins),
    )


def test_errors_by_element_match_hand_computed_numbers():
    # water (O H H) then OH: force errors in eV/Å, components known one by one
    errors = [[0.003, 0, 0], [0.001, 0.001, 0.001], [-0.002, 0, 0], [0, 0, -0.006], [0, 0, 0.004]]
    parity = known_parity([3, 2], [0, 0], errors)
    table = errors_by_element(parity, [["O", "H", "H"], ["O", "H"]])
    assert list(table) == ["H", "O"]  # by atomic number
    # O components (meV/Å): 3 0 0 0 0 -6; H: 1 1 1 -2 0 0 0 0 4
    assert table["O"]["atoms"] == 2 and table["H"]["atoms"] == 3
    assert table["O"]["force_mae_meV_per_A"] == pytest.approx(1.5)
    assert table["O"]["force_rmse_meV_per_A"] == pytest.approx(np.sqrt(45 / 6))
    assert table["H"]["force_mae_meV_per_A"] == pytest.approx(1.0)
    assert table["H"]["force_rmse_meV_per_A"] == pytest.approx(np.sqrt(23 / 9))
    flat = known_parity([3, 2], [0, 0], errors, symbols=["O", "H", "H", "O", "H"])
    assert errors_by_element(flat) == table  # the Parity's own per-atom symbols
    with pytest.raises(ValueError, match="4 symbols for 5 force rows"):
        errors_by_element(flat, ["O", "H", "H", "O"])


def test_errors_by_origin_group_by_protocol_and_temperature():
    origins = [
        {"protocol": "md", "temperature": 400, "seed": 0},
        {"protocol": "md", "temperature": 400.0, "seed": 1},
        {"protocol": "rattle", "seed": 2},
        {"protocol": "md", "temperature": 600},
        {"protocol": "ramp", "temperature": 812.5, "schedule": [300, 1000]},
    ]
    forces = np.zeros((11, 3))
    forces[0, 0] = 0.003  # md 400 K: one component of 3 meV/Å among 12
    forces[4:7] = 0.001  # rattle: every component 1 meV/Å
    parity = known_parity([2, 2, 3, 2, 2], [0.002, -0.004, 0.003, 0.0, 0.0], forces,
                          origins=origins)
    table = errors_by_origin(parity)
    assert list(table) == ["md 400 K", "md 600 K", "ramp", "rattle"]
    assert table["md 400 K"]["structures"] == 2 and table["md 400 K"]["atoms"] == 4
    assert table["md 400 K"]["energy_mae_meV_per_atom"] == pytest.approx(1.5)  # 1 and 2
    assert table["md 400 K"]["force_mae_meV_per_A"] == pytest.approx(0.25)
    assert table["rattle"]["energy_mae_meV_per_atom"] == pytest.approx(1.0)
    assert table["rattle"]["force_mae_meV_per_A"] == pytest.approx(1.0)
    assert table["md 600 K"]["energy_mae_meV_per_atom"] == 0
    with pytest.raises(ValueError, match="2 origins for 5 structures"):
        errors_by_origin(parity, origins[:2])


def test_compare_keeps_symbols_and_origins(water_dimer):
    rng = np.random.default_rng(2)
    data = labeled([water_dimer.copy() for _ in range(2)], rng)
    model = ShiftedLabels(data, {1: 0.0, 8: 0.0}, force_error=0.01)
    test = {k: v for k, v in data.items() if k != "ids"}
    test["origins"] = [{"protocol": "md", "temperature": 300}, {"protocol": "rattle"}]
    empty = {"structures": [], "energy": [], "forces": []}
    parity = compare(model, "m", "dft", empty, test)
    assert parity.symbols == ["O", "H", "H"] * 4
    assert set(errors_by_origin(parity)) == {"md 300 K", "rattle"}
    assert errors_by_element(parity)["O"]["force_mae_meV_per_A"] == pytest.approx(10)


def test_markdown_table_formats_and_marks_missing_values():
    text = markdown_table([{"a": 1.234, "b": "x|y"}, {"a": float("nan")}],
                          [("a", "A", ".1f"), ("b", "B")])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| 1.2 | x\\|y |", "| – | – |"]


# --- MD stability -----------------------------------------------------------------------

PULL = 1.0  # eV/Å


class Collapsing:
    """A model that pulls atoms 0 and 1 (an O–H bond) together with a constant force and
    nothing else: the pair closes within ~10 fs, while the heat this releases (~0.4 eV) keeps
    the temperature below the runaway limit, so the close-contact monitor is what fires."""

    def predict(self, structures, batch_size=64):
        energies, forces = [], []
        for atoms in structures:
            vector = atoms.positions[1] - atoms.positions[0]
            distance = np.linalg.norm(vector)
            f = np.zeros((len(atoms), 3))
            f[0], f[1] = PULL * vector / distance, -PULL * vector / distance
            energies.append(PULL * distance)
            forces.append(f)
        return {"energy": np.array(energies), "forces": forces}


def test_a_collapsing_model_fails_by_close_contact_early(water_dimer, tmp_path):
    result = md_stability(Collapsing(), [water_dimer], [300, 600], replicas=2, steps=200)
    assert [(r.temperature, r.seed) for r in result.runs] == [
        (300, 0), (300, 1), (600, 0), (600, 1)]
    for run in result.runs:
        assert not run.stable and "close contact: atoms 0 and 1" in run.stopped
        assert 0 < run.time_to_failure_ps < result.run_length_ps == pytest.approx(0.1)
        assert run.time_to_failure_ps == pytest.approx(run.steps_done * 0.5 / 1000)
    summary = result.summary()
    assert summary[300]["fraction_stable"] == 0 and summary[600]["runs"] == 2
    failures = [r.time_to_failure_ps for r in result.runs if r.temperature == 300]
    assert summary[300]["min_time_to_failure_ps"] == pytest.approx(min(failures))
    assert summary[300]["mean_time_to_failure_ps"] == pytest.approx(np.mean(failures))
    assert stability_plot(result, tmp_path / "s.png").stat().st_size > 5000


def known_stability():
    """Run length 1 ps; 300 K: two stable runs; 600 K: one stable, failures at 0.2, 0.4 ps."""
    def run(t, seed, failed_at=None):
        return StabilityRun(0, t, seed, failed_at is None, None if failed_at is None else
                            "step 1: close contact", 2000 if failed_at is None else
                            int(failed_at * 2000), failed_at or 1.0, failed_at)
    runs = [run(300, 0), run(300, 1), run(600, 0), run(600, 1, 0.2), run(600, 2, 0.4)]
    return StabilityResult(runs, steps=2000, timestep=0.5)


def test_stability_summary_counts_only_failed_runs_in_time_to_failure():
    summary = known_stability().summary()
    assert summary[300] == {"runs": 2, "stable": 2, "fraction_stable": 1.0,
                            "mean_time_to_failure_ps": None, "min_time_to_failure_ps": None,
                            "simulated_ps": 2.0}
    assert summary[600]["fraction_stable"] == pytest.approx(1 / 3)
    assert summary[600]["mean_time_to_failure_ps"] == pytest.approx(0.3)
    assert summary[600]["min_time_to_failure_ps"] == pytest.approx(0.2)
    assert summary[600]["simulated_ps"] == pytest.approx(1.6)


@pytest.fixture(scope="module")
def chgnet():
    from hifidata.calculators.mlip import pretrained_chgnet
    from hifidata.training.models import ChgnetModel

    return ChgnetModel(pretrained_chgnet(), ["H", "O"])


def test_pretrained_chgnet_keeps_the_water_dimer_stable_at_300_k(chgnet, water_dimer):
    with torch_threads(1):
        result = md_stability(chgnet, [water_dimer], [300], replicas=2, steps=100)
    assert [r.stable for r in result.runs] == [True, True]
    assert result.summary()[300]["simulated_ps"] == pytest.approx(0.1)
    assert all(r.time_to_failure_ps is None and r.mean_temperature_K > 0 for r in result.runs)


# --- energy-landscape slices ------------------------------------------------------------


def intramolecular(atoms, molecule):
    return atoms.get_all_distances()[np.ix_(molecule, molecule)]


def test_distance_scan_moves_the_other_molecule_rigidly(water_dimer):
    scan = distance_scan(water_dimer, 0, 3, [2.4, 2.91, 4.0])
    for atoms, value in zip(scan, [2.4, 2.91, 4.0], strict=True):
        assert atoms.get_distance(0, 3) == pytest.approx(value, abs=1e-10)
        for molecule in ([0, 1, 2], [3, 4, 5]):
            assert intramolecular(atoms, molecule) == pytest.approx(
                intramolecular(water_dimer, molecule), abs=1e-10)
        assert atoms.info["charge"] == 0 and atoms.info["spin"] == 1
        assert atoms.info["scan"] == {"coordinate": "d(0,3)", "value": value}
    assert np.allclose(scan[0].positions[:3], water_dimer.positions[:3])  # i's side stays
    assert "scan" not in water_dimer.info


def test_distance_scan_within_a_molecule_moves_only_the_second_atom(water_dimer):
    (stretched,) = distance_scan(water_dimer, 3, 4, [1.3])
    assert stretched.get_distance(3, 4) == pytest.approx(1.3)
    moved = np.flatnonzero(np.any(stretched.positions != water_dimer.positions, axis=1))
    assert moved.tolist() == [4]
    with pytest.raises(ValueError, match="positive"):
        distance_scan(water_dimer, 3, 4, [0.0])


def test_grid_scan_sets_both_distances(water_dimer):
    grid = grid_scan(water_dimer, (0, 3), [2.6, 2.9, 3.3], (3, 4), [0.9, 1.1])
    assert [len(row) for row in grid] == [2, 2, 2]
    for row, d1 in zip(grid, [2.6, 2.9, 3.3], strict=True):
        for atoms, d2 in zip(row, [0.9, 1.1], strict=True):
            assert atoms.get_distance(0, 3) == pytest.approx(d1, abs=1e-10)
            assert atoms.get_distance(3, 4) == pytest.approx(d2, abs=1e-10)
            assert atoms.get_distance(3, 5) == pytest.approx(water_dimer.get_distance(3, 5))
            assert atoms.info["scan"]["value"] == [d1, d2]
    # d(4,0) would move molecule 1, i.e. atom 0 of d(0,3) without atom 3
    with pytest.raises(ValueError, match="would change the first"):
        grid_scan(water_dimer, (0, 3), [2.9], (4, 0), [3.0])


def test_slice_errors_compare_curves_relative_to_their_minimum():
    model = np.array([1.0, 0.5, 0.7])  # relative: 0.5 0 0.2
    references = {
        "dft": np.array([10.0, 9.6, 9.6]),  # relative: 0.4 0 0 -> errors 100, 0, 200 meV
        # the label at the minimum failed: both curves re-referenced over points 0 and 2,
        # model 0.3 0, reference 0 0.1 -> errors 300, 100 meV
        "ccsdt": np.array([-5.0, np.nan, -4.9]),
        "none": np.full(3, np.nan),
    }
    slice_ = Slice("d(0,3)", np.array([2.5, 2.9, 3.5]), model, references)
    assert slice_.model == pytest.approx([0.5, 0, 0.2])
    errors = slice_errors(slice_)
    assert errors["dft"] == pytest.approx({"points": 3, "mae_meV": 100, "max_meV": 200})
    assert errors["ccsdt"] == pytest.approx({"points": 2, "mae_meV": 200, "max_meV": 300})
    assert errors["none"]["points"] == 0 and np.isnan(errors["none"]["mae_meV"])
    with pytest.raises(ValueError, match="do not match"):
        Slice("d(0,3)", np.array([1.0, 2.0]), np.zeros(2), {"dft": np.zeros(3)})


def test_chgnet_slices_of_the_water_dimer(chgnet, water_dimer, tmp_path):
    values = [2.2, 2.9, 4.5]
    with torch_threads(1):
        curve = scan_slice(chgnet, distance_scan(water_dimer, 0, 3, values), name="O–O",
                           references={"dft": np.array([np.nan, 0.1, 0.3])})
        grid = scan_slice(chgnet, grid_scan(water_dimer, (0, 3), [2.7, 3.1], (3, 4),
                                            [0.9, 1.0, 1.1]))
    assert curve.coordinate == "d(0,3)" and curve.values.tolist() == values
    assert np.argmin(curve.model) == 1 and curve.model[0] > 0.3  # repulsive wall at 2.2 Å
    assert grid.model.shape == (2, 3) and grid.coordinate == ("d(0,3)", "d(3,4)")
    assert [v.tolist() for v in grid.values] == [[2.7, 3.1], [0.9, 1.0, 1.1]]
    assert slice_plot([curve, grid], tmp_path / "slices.png").stat().st_size > 5000


# --- the report -------------------------------------------------------------------------


def test_write_report_has_every_table_and_links_existing_figures(water_dimer, tmp_path):
    rng = np.random.default_rng(3)
    data = labeled([water_dimer.copy() for _ in range(4)], rng)
    data["origins"] = [{"protocol": "md", "temperature": 400}] * 3 + [{"protocol": "rattle"}]
    model = ShiftedLabels(data, {1: 0.0, 8: 0.0}, force_error=0.02)
    empty = {"structures": [], "energy": [], "forces": []}
    parity = compare(model, "finetuned", "dft", empty,
                     {k: v for k, v in data.items() if k != "ids"})
    slices = [Slice("d(0,3)", np.array([2.5, 2.9, 3.5]), np.array([1.0, 0.5, 0.7]),
                    {"dft": np.array([10.0, 9.6, 9.6])}, name="O–O")]
    stability = known_stability()
    images = {
        "parity": parity_plot([parity], tmp_path / "parity.png"),
        "MD stability": stability_plot(stability, tmp_path / "stability.png"),
        "slices": slice_plot(slices, tmp_path / "slices.png"),
        "missing": tmp_path / "nowhere.png",
    }
    path = write_report(
        tmp_path, model_name="finetuned",
        model_metadata={"recipe": "finetune", "rung": "dft", "n_train": 40, "n_val": 5},
        parities=[parity], by_element={"dft": errors_by_element(parity)},
        by_origin={"dft": errors_by_origin(parity)}, stability=stability, slices=slices,
        images=images,
    )
    text = path.read_text()
    assert path == tmp_path / "report.md"
    for heading in ["# Model report: finetuned", "## Summary", "## Errors per rung",
                    "## Forces per element", "## Errors per origin", "## MD stability",
                    "## Energy-landscape slices", "## Figures"]:
        assert heading in text
    assert "| training structures | 40 |" in text and "| recipe | finetune |" in text
    assert "| finetuned | dft | 4 |" in text
    assert "| dft | O | 8 | 20.0 |" in text  # 8 O atoms, force error 20 meV/Å
    assert "| dft | md 400 K | 3 | 18 |" in text and "| dft | rattle | 1 | 6 |" in text
    assert "| 600 | 3 | 1 | 0.33 | 0.300 | 0.200 | 1.60 |" in text
    assert "| O–O | dft | 3 | 100.0 | 200.0 |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["parity.png", "slices.png", "stability.png"]
    assert all((tmp_path / link).is_file() for link in links)
    assert "Figures not found: missing" in text
