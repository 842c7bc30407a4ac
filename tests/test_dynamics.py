"""Batched exploration MD: lockstep batching, NVT ladder, NPT, ramps, guards (real CHGNet)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.stress import full_3x3_to_voigt_6_stress

from hifidata.calculators.batching import run_lockstep
from hifidata.calculators.mlip import (
    MLIPCalculator,
    batch_predictor,
    model_cutoff,
    predict_batch,
    pretrained_chgnet,
    to_structure,
)
from hifidata.sampling import dynamics
from hifidata.sampling.ase_md import MDJob, run_md, run_md_batched
from hifidata.sampling.explore import md_trajectory
from hifidata.structures import structure_id


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny graphs on a shared 2-core box: a second intra-op thread only spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return pretrained_chgnet("chgnet-0.3.0", "cpu")


def silicon():
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


def in_thread(function, timeout: float = 120.0):
    """Run ``function`` in a thread: its return value or exception, or fail on a deadlock."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "deadlock: the batched run never returned"
    return outcome


def test_a_batched_ladder_matches_one_structure_at_a_time(model, water_dimer):
    done = []
    ladder = dynamics.nvt([water_dimer], model, [200, 600], steps=10, md_seeds=[0, 1],
                          sample_every=5, model_name="chgnet-0.3.0", device="cpu",
                          progress=done.append)
    assert len(ladder) == 4 and sum(done) == 40  # one trajectory per (seed, T, MD seed)
    keys = [(c.origins[0]["temperature"], c.origins[0]["seed"]) for c in ladder]
    assert keys == [(200, 0), (200, 1), (600, 0), (600, 1)]
    calculator = MLIPCalculator(model)
    for candidates in ladder:
        origin = candidates.origins[0]
        assert candidates.stopped is None and [o["step"] for o in candidates.origins] == [5, 10]
        assert origin["protocol"] == "md" and origin["parent"] == structure_id(water_dimer)
        single = md_trajectory(water_dimer, calculator, origin["temperature"], steps=10,
                               sample_every=5, seed=origin["seed"], model="chgnet-0.3.0")
        assert single.origins == candidates.origins
        for batched, alone in zip(candidates.structures, single.structures, strict=True):
            np.testing.assert_allclose(batched.positions, alone.positions, atol=1e-4)
            assert batched.info == {"charge": 0, "spin": 1}
    # seeded replicas, batch order by replica index: the same run twice is the same
    again = dynamics.nvt([water_dimer], model, [200, 600], steps=10, md_seeds=[0, 1],
                         sample_every=5, device="cpu")
    for first, second in zip(ladder, again, strict=True):
        for a, b in zip(first.structures, second.structures, strict=True):
            np.testing.assert_array_equal(a.positions, b.positions)
    # different seeds and temperatures do give different trajectories
    assert not np.allclose(ladder[0].structures[-1].positions, ladder[1].structures[-1].positions)


def test_stress_is_the_strain_derivative_of_the_energy(model):
    atoms = silicon()
    atoms.set_cell(atoms.cell.array @ np.diag([0.97, 1.0, 1.02]), scale_atoms=True)
    atoms.positions += np.random.default_rng(0).normal(0, 0.03, atoms.positions.shape)
    atoms.calc = MLIPCalculator(model)
    stress = atoms.get_stress()  # Voigt xx yy zz yz xz xy, eV/Å³
    h, strained = 2e-3, []
    for a, b in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        for sign in (1, -1):
            epsilon = np.zeros((3, 3))
            epsilon[a, b] = epsilon[b, a] = sign * h / (1 if a == b else 2)
            other = atoms.copy()
            other.set_cell(atoms.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)
            strained.append(other)
    energies = np.array(predict_batch(model, strained, forces=False)["energy"]).reshape(6, 2)
    finite = (energies[:, 0] - energies[:, 1]) / (2 * h) / atoms.get_volume()
    assert np.abs(stress[:3]).max() > 0.02  # a strained cell: a real test of sign and size
    np.testing.assert_allclose(stress, finite, atol=2e-4)
    # the batched predictor gives the same stress; a molecule has none
    batched = batch_predictor(model)([atoms, atoms.copy()])
    np.testing.assert_allclose(batched["stress"][0], stress, atol=1e-5)
    assert predict_batch(model, [_water()], stress=True)["stress"] == [None]


def test_one_backward_pass_agrees_with_chgnets_own_prediction(model, water_dimer):
    """Forces from fractional-coordinate gradients, stress from lattice gradients: the same
    numbers as CHGNet's predict_structure ("s" in GPa, ASE's sign), on a triclinic cell too."""
    triclinic = bulk("Si", "diamond", a=5.431)  # fcc primitive cell
    triclinic.positions += np.random.default_rng(1).normal(0, 0.05, triclinic.positions.shape)
    structures = [triclinic, silicon(), water_dimer]
    ours = predict_batch(model, structures, stress=True, features=True)
    cutoff = model_cutoff(model)
    theirs = model.predict_structure([to_structure(a, cutoff) for a in structures], task="efs",
                                     return_crystal_feas=True)
    for k, (atoms, reference) in enumerate(zip(structures, theirs, strict=True)):
        assert ours["energy"][k] == pytest.approx(float(reference["e"]) * len(atoms), abs=1e-4)
        np.testing.assert_allclose(ours["forces"][k], reference["f"], atol=1e-4)
        np.testing.assert_allclose(ours["features"][k], reference["crystal_fea"], atol=1e-5)
        if atoms.pbc.all():
            expected = full_3x3_to_voigt_6_stress(reference["s"]) * units.GPa
            np.testing.assert_allclose(ours["stress"][k], expected, atol=1e-5)
    energies_only = predict_batch(model, structures, forces=False)
    assert energies_only["forces"] == []
    np.testing.assert_allclose(energies_only["energy"], ours["energy"], atol=1e-5)


def _water():
    from ase.build import molecule

    return molecule("H2O")


def test_npt_compresses_under_pressure(model):
    seed = silicon()
    runs = dynamics.npt([seed], model, [300], [0.0, 30.0], steps=40, timestep=1.0,
                        barostat_time=100.0, sample_every=10, device="cpu")
    assert [len(c) for c in runs] == [4, 4] and all(c.stopped is None for c in runs)
    volume = [c.origins[-1]["volume"] for c in runs]
    assert volume[1] < 0.95 * seed.get_volume() < volume[0]  # 0 GPa: CHGNet Si a bit larger
    assert volume == pytest.approx([c.structures[-1].get_volume() for c in runs])
    assert {o["protocol"] for o in runs[1].origins} == {"npt"}
    assert runs[1].origins[0]["pressure"] == 30.0
    # the same NPT job one structure at a time
    job = MDJob(seed, 300, 20, pressure=30.0, timestep=1.0, barostat_time=100.0, sample_every=10)
    alone = run_md(job, MLIPCalculator(model))
    np.testing.assert_allclose(alone.volumes, [o["volume"] for o in runs[1].origins[:2]],
                               atol=1e-3)


def test_a_ramp_follows_its_schedule(model, water_dimer):
    (run,) = dynamics.ramp([water_dimer], model, [100, 700, 300], steps=20, sample_every=5,
                           device="cpu")
    assert [o["step"] for o in run.origins] == [5, 10, 15, 20]
    assert [o["temperature"] for o in run.origins] == pytest.approx([400, 700, 500, 300])
    assert run.origins[0]["protocol"] == "ramp"
    assert run.origins[0]["schedule"] == [100, 700, 300]


def test_the_guard_stops_one_replica_while_the_others_go_on(model, water_dimer):
    squeezed = water_dimer.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.45, 0, 0]  # H almost on top of O
    runs = dynamics.nvt([water_dimer, squeezed, water_dimer], model, [300], steps=10,
                        sample_every=2, device="cpu")
    assert runs[1].stopped is not None and runs[1].stopped.startswith("step 2:")
    assert len(runs[1]) == 0
    assert runs[0].stopped is None and runs[2].stopped is None
    assert [len(runs[0]), len(runs[2])] == [5, 5]
    # a huge timestep blows the dimer up: the run stops with the reason, others finish
    jobs = [MDJob(water_dimer, 300, 30, timestep=t, sample_every=1,
                  monitors=dynamics.exploration_monitors(water_dimer, 300))
            for t in (0.5, 25.0)]
    calm, blown = run_md_batched(jobs, batch_predictor(model))
    assert calm.stopped is None and calm.steps_done == 30
    assert blown.stopped is not None and blown.steps_done < 30
    assert any(word in blown.stopped for word in ("broke", "runaway", "close contact"))


def test_an_error_in_the_batched_call_reaches_the_caller(model, water_dimer):
    predict = batch_predictor(model)
    calls = []

    def failing(structures):
        calls.append(len(structures))
        if len(calls) == 3:
            raise RuntimeError("injected model failure")
        return predict(structures)

    jobs = [MDJob(water_dimer, 300, 20, seed=s) for s in range(3)]
    outcome = in_thread(lambda: run_md_batched(jobs, failing))
    assert isinstance(outcome.get("error"), RuntimeError)
    assert "injected model failure" in str(outcome["error"])
    assert calls == [3, 3, 3]  # lockstep: every call served all three replicas

    # a replica that fails on its own (here in a monitor) stops the batch the same way
    def broken_monitor(atoms):
        raise ValueError("monitor failed")

    jobs[1] = MDJob(water_dimer, 300, 20, seed=1, monitors=[broken_monitor])
    outcome = in_thread(lambda: run_md_batched(jobs, predict))
    assert isinstance(outcome.get("error"), ValueError)


def test_retired_replicas_leave_the_batch(water_dimer):
    sizes = []

    def fake(structures):  # no model needed: zero forces
        sizes.append(len(structures))
        return {"energy": [0.0] * len(structures),
                "forces": [np.zeros((len(a), 3)) for a in structures]}

    def job(steps):
        def run(calculator):
            atoms = water_dimer.copy()
            atoms.calc = calculator
            for _ in range(steps):
                atoms.positions += 0.01
                atoms.get_forces()
            return steps
        return run

    assert run_lockstep(fake, [job(3), job(1), job(2)]) == [3, 1, 2]
    assert sizes == [3, 2, 1]
    assert run_lockstep(fake, []) == []
    # ASE calculator bookkeeping: asking again without a change costs no call
    sizes.clear()

    def twice(calculator):
        atoms = water_dimer.copy()
        atoms.calc = calculator
        return atoms.get_potential_energy(), atoms.get_forces().shape

    assert run_lockstep(fake, [twice]) == [(0.0, (6, 3))] and sizes == [1]
