"""The batched MD engine (hifidata.deploy.md): conservation, canonical sampling, batching,
periodic wrapping, NPT, monitors and trajectories. Analytic potentials are checked against
ASE's own calculators; the trained-model potentials against the models' own predict, on
graphs from ASE's neighbor list (potentials.atoms_graph), not the engine's own."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.io import read

from hifidata.deploy.md import MDSettings, Replica, run_md
from hifidata.deploy.potentials import (
    ChgnetPotential,
    HarmonicRepulsion,
    LennardJones,
    atoms_graph,
    potential_for,
)
from hifidata.deploy.trajectory import open_trajectory
from hifidata.training.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGON = {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5}  # eV, Å (a textbook argon)


def argon(repeat: int = 2, rattle: float = 0.05, seed: int = 0) -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def ase_argon() -> AseLennardJones:
    """ASE's own Lennard-Jones calculator with the same argon parameters: the reference."""
    return AseLennardJones(epsilon=ARGON["epsilon"], sigma=ARGON["sigma"], rc=ARGON["cutoff"])


def total_energies(result) -> np.ndarray:
    return np.array([f.info["energy"] + f.get_kinetic_energy() for f in result.frames])


# -- potentials against independent references ------------------------------------------------


def test_lennard_jones_matches_ase_energy_forces_and_stress():
    atoms = argon(rattle=0.2)
    reference = atoms.copy()
    reference.calc = ase_argon()
    graph = atoms_graph([atoms], ARGON["cutoff"], dtype=torch.float64)
    out = LennardJones(**ARGON)(graph, stress=True)
    assert float(out.energy[0]) == pytest.approx(reference.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(out.forces.numpy(), reference.get_forces(), atol=1e-10)
    np.testing.assert_allclose(out.stress[0].numpy(), reference.get_stress(voigt=False),
                               atol=1e-10)


def test_sevennet_potential_matches_the_model_predict():
    model = load_model("7net-0", device="cpu")
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.05, seed=1)
    water = molecule("H2O")
    expected = model.predict([si, water])
    out = potential_for(model)(atoms_graph([si, water], model.cutoff), stress=True)
    np.testing.assert_allclose(out.energy.numpy(), expected["energy"], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(out.forces.numpy(), np.concatenate(expected["forces"]),
                               atol=1e-4)
    voigt = out.stress[0].numpy()[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    np.testing.assert_allclose(voigt, expected["stress"][0], atol=1e-5)


def test_multifidelity_potential_predicts_the_chosen_rung():
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.05, seed=2)
    energies = {}
    for modal in ("PBE", "R2SCAN"):
        model = load_model("7net-mf-0", device="cpu").with_modal(modal)
        out = potential_for(model)(atoms_graph([si], model.cutoff))
        assert float(out.energy[0]) == pytest.approx(model.predict([si])["energy"][0], abs=1e-4)
        energies[modal] = float(out.energy[0])
    assert abs(energies["PBE"] - energies["R2SCAN"]) > 0.1  # two different surfaces


def test_chgnet_potential_matches_its_ase_calculator():
    from hifidata.calculators.mlip import MLIPCalculator, pretrained_chgnet

    network = pretrained_chgnet()
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.rattle(0.05, seed=3)
    out = ChgnetPotential(network)(atoms_graph([si], 2.0), stress=True)
    reference = si.copy()
    reference.calc = MLIPCalculator(network)
    assert float(out.energy[0]) == pytest.approx(reference.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(out.forces.numpy(), reference.get_forces(), atol=1e-5)


# -- integrators ----------------------------------------------------------------------------------


def test_nve_conserves_energy_and_wrapping_and_rebuilds_keep_the_forces_right():
    """Hot argon, atoms crossing the cell faces: every frame's energy equals ASE's LJ on the
    wrapped frame (so the unwrapped positions and the rebuilt neighbor lists are right), and
    the total energy stays put."""
    potential = LennardJones(**ARGON)
    settings = MDSettings(ensemble="nve", timestep=2.0, sample_every=10, skin=0.5)
    replica = Replica(argon(rattle=0.0), temperature=300.0, seed=4)
    (result,) = run_md(potential, [replica], 600, settings, keep_frames=True)
    assert result.stable and len(result.frames) == 60
    calculator = ase_argon()
    for frame in result.frames:
        assert frame.info["energy"] == pytest.approx(calculator.get_potential_energy(frame),
                                                     abs=1e-9)
    fractional = np.array([f.get_scaled_positions() for f in result.frames])
    assert np.abs(np.diff(fractional, axis=0)).max() > 0.5  # some atom crossed a face
    totals = total_energies(result)
    drift = np.polyfit(np.array(result.frame_steps) * 2e-3, totals, 1)[0] / len(replica.atoms)
    assert abs(drift) < 1e-4  # eV/atom/ps
    assert np.ptp(totals) / len(replica.atoms) < 1e-3


@pytest.mark.parametrize("ensemble", ["langevin", "csvr"])
def test_thermostat_samples_the_canonical_kinetic_energy(ensemble):
    """Soft spheres at 300 K: the kinetic energy of N_f degrees of freedom is Gamma
    distributed, mean N_f kT/2 and variance N_f (kT)²/2. Each replica is an independent
    estimate, so the tolerance is a few standard errors across replicas."""
    temperature, n_replicas = 300.0, 24
    replicas = []
    for seed in range(n_replicas):
        # a simple cubic lattice 1.8 Å apart: every atom overlaps its 6 neighbours by 0.2 Å
        box = bulk("Ar", "sc", a=1.8).repeat(2)
        box.rattle(0.05, seed=seed)
        replicas.append(Replica(box, temperature, seed=seed))
    settings = MDSettings(ensemble=ensemble, timestep=5.0, friction=0.01,
                          thermostat_time=100.0, sample_every=10, check_every=100,
                          min_distance=0.01)
    results = run_md(HarmonicRepulsion(stiffness=1.0, cutoff=2.0), replicas, 4000, settings,
                     keep_frames=True)
    kt = units.kB * temperature
    dof = 3 * 8 - 3
    means, variances = [], []
    for result in results:
        kinetic = np.array([f.get_kinetic_energy() for f in result.frames[50:]])
        means.append(kinetic.mean() / (dof * kt / 2))
        variances.append(kinetic.var() / (dof * kt**2 / 2))
    for values in (means, variances):
        mean, error = np.mean(values), np.std(values) / np.sqrt(len(values))
        assert abs(mean - 1) < max(4 * error, 0.02), (ensemble, mean, error)


def test_nve_does_not_thermostat():
    """The control: NVE from a cold start stays far from the target variance test."""
    box = argon(rattle=0.0)
    (result,) = run_md(LennardJones(**ARGON), [Replica(box, 50.0, seed=1)], 200,
                       MDSettings(ensemble="nve", timestep=2.0, sample_every=10),
                       keep_frames=True)
    kinetic = np.array([f.get_kinetic_energy() for f in result.frames])
    dof = 3 * len(box) - 3
    # a perfect lattice from 50 K velocities shares kinetic with potential energy: ≈ T/2
    assert kinetic.mean() / (dof * units.kB * 50.0 / 2) < 0.8


def test_npt_reaches_the_target_pressure():
    """Argon under 0.2 and 1.0 GPa: the mean pressure, computed independently by ASE's LJ
    calculator with the ideal-gas term from each frame, matches the target, and the higher
    pressure gives the smaller volume."""
    settings = MDSettings(ensemble="npt", timestep=4.0, thermostat_time=100.0,
                          barostat_time=400.0, compressibility=0.05, sample_every=20)
    replicas = [Replica(argon(seed=s), 60.0, seed=s, pressure=p)
                for p in (0.2, 1.0) for s in range(2)]
    results = run_md(LennardJones(**ARGON), replicas, 3000, settings, keep_frames=True)
    calculator = ase_argon()
    volumes, pressures = {}, {}
    for replica, result in zip(replicas, results, strict=True):
        assert result.stable, result.stopped
        for frame in result.frames[len(result.frames) // 3:]:
            frame.calc = calculator
            stress = frame.get_stress(include_ideal_gas=True)
            pressures.setdefault(replica.pressure, []).append(-stress[:3].mean() / units.GPa)
        volumes.setdefault(replica.pressure, []).append(np.mean(result.volumes[10:]))
    # one replica's mean scatters by ±0.05 GPa over this run (4 replicas × 6000 steps gave
    # 0.206 ± 0.016 and 1.010 ± 0.016 GPa), so the pair's mean is within 0.1 GPa
    for target, values in pressures.items():
        assert np.mean(values) == pytest.approx(target, abs=0.1)
    assert max(volumes[1.0]) < min(volumes[0.2])


def test_batched_replicas_follow_their_single_trajectories():
    """Same seed, same trajectory, whatever else shares the batch: exactly for a float64
    potential, to float32 rounding for SevenNet."""
    si = bulk("Si", "diamond", 5.43, cubic=True)
    water = molecule("H2O")
    for potential, structures, steps, tolerance in (
        (LennardJones(**ARGON), [argon(seed=0), argon(repeat=1, seed=1)], 100, 1e-9),
        (potential_for(load_model("7net-0", device="cpu")), [si, water], 40, 1e-4),
    ):
        replicas = [Replica(s, 300.0 + 100 * k, seed=10 + k) for k, s in enumerate(structures)]
        settings = MDSettings(ensemble="langevin", timestep=1.0, sample_every=steps)
        together = run_md(potential, replicas, steps, settings, keep_frames=True)
        for replica, batched in zip(replicas, together, strict=True):
            (alone,) = run_md(potential, [replica], steps, settings, keep_frames=True)
            np.testing.assert_allclose(batched.frames[-1].positions, alone.frames[-1].positions,
                                       atol=tolerance)
        moved = np.abs(together[0].frames[-1].positions - structures[0].positions).max()
        assert moved > 10 * tolerance


def test_nve_drift_with_sevennet_is_small():
    """7net-0 on 8-atom silicon, 0.5 fs steps: the total energy drift (float32 model)."""
    si = bulk("Si", "diamond", 5.43, cubic=True)
    settings = MDSettings(ensemble="nve", timestep=0.5, sample_every=10)
    potential = potential_for(load_model("7net-0", device="cpu"))
    (result,) = run_md(potential, [Replica(si, 300.0, seed=0)], 400, settings,
                       keep_frames=True)
    totals = total_energies(result)
    times_ps = np.array(result.frame_steps) * 0.5e-3
    drift = np.polyfit(times_ps, totals, 1)[0] / len(si)
    # measured: 7e-10 eV/atom/ps, the total spread 6 µeV/atom over the 0.2 ps
    assert abs(drift) < 5e-5  # eV/atom/ps
    kinetic = [f.get_kinetic_energy() for f in result.frames]
    assert np.ptp(kinetic) > 20 * np.ptp(totals)  # energy moves between kinds, not away


# -- monitors and output --------------------------------------------------------------------------


def test_monitors_stop_only_the_broken_replica():
    squeezed = Atoms("H2", positions=[[0, 0, 0], [0.3, 0, 0]])
    pushed_apart = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    fine = argon(repeat=1)
    replicas = [Replica(squeezed, 300.0), Replica(pushed_apart, 300.0), Replica(fine, 50.0)]
    settings = MDSettings(ensemble="nve", timestep=1.0, check_every=1, sample_every=50,
                          min_distance=0.5, runaway_factor=1e6)
    # soft spheres wider than the H–H bond push the molecule apart: a torn bond
    potential = HarmonicRepulsion(stiffness=5.0, cutoff=2.5)
    results = run_md(potential, replicas, 200, settings)
    assert "close contact: atoms 0 and 1" in results[0].stopped
    assert results[0].steps_done == 1
    assert "bond H0–H1 broke" in results[1].stopped
    assert results[2].stable and results[2].steps_done == 200
    assert len(results[2].energies) == 4


def test_temperature_runaway_stops_a_replica():
    hot = argon(repeat=1)
    hot.set_velocities(np.random.default_rng(0).normal(0, 0.1, (len(hot), 3)))  # thousands K
    (result,) = run_md(LennardJones(**ARGON), [Replica(hot, 5.0)], 50,
                       MDSettings(ensemble="nve", check_every=10))
    assert "temperature runaway" in result.stopped


def test_trajectories_in_extxyz_and_hdf5(tmp_path):
    replicas = [Replica(argon(repeat=1, seed=s), 100.0, seed=s) for s in range(2)]
    settings = MDSettings(ensemble="csvr", timestep=2.0, sample_every=10)
    with open_trajectory(tmp_path / "run.extxyz", 2) as writer:
        results = run_md(LennardJones(**ARGON), replicas, 30, settings, writer)
    frames = read(tmp_path / "run-r001.extxyz", index=":")
    assert len(frames) == 3
    assert [f.info["step"] for f in frames] == [10, 20, 30]
    assert frames[-1].get_potential_energy() == pytest.approx(results[1].energies[-1])
    with open_trajectory(tmp_path / "run.h5", 2) as writer:
        run_md(LennardJones(**ARGON), replicas, 30, settings, writer)
    with h5py.File(tmp_path / "run.h5") as file:
        group = file["replica_000"]
        assert group["positions"].shape == (3, 4, 3)
        assert group["energy"].attrs["units"] == "eV"
        np.testing.assert_allclose(group["energy"][:], results[0].energies, atol=1e-9)
    with pytest.raises(ValueError, match="exists"):
        open_trajectory(tmp_path / "run.h5", 2)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown ensemble"):
        MDSettings(ensemble="nvt")
    with pytest.raises(ValueError, match="NPT needs a periodic"):
        run_md(LennardJones(**ARGON), [Replica(molecule("H2O"), 300.0)], 1,
               MDSettings(ensemble="npt"))
    with pytest.raises(ValueError, match="knows no"):
        run_md(potential_for(load_model("7net-mf-0", device="cpu")),
               [Replica(Atoms("Og2", positions=[[0, 0, 0], [2, 0, 0]]), 300.0)], 1)


# -- the command line -----------------------------------------------------------------------------


def test_md_command_runs_a_multifidelity_model_at_a_chosen_rung(tmp_path):
    from typer.testing import CliRunner

    from hifidata.cli import app

    structure = tmp_path / "si.extxyz"
    bulk("Si", "diamond", 5.43, cubic=True).write(structure)
    out = tmp_path / "run.extxyz"
    result = CliRunner().invoke(app, [
        "md", "7net-mf-0", str(structure), "-T", "300", "-T", "600", "--steps", "20",
        "--every", "10", "--ensemble", "csvr", "--rung", "R2SCAN", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ns/day" in result.output and "atom·steps/s" in result.output
    frames = read(tmp_path / "run-r001.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [10, 20]
    # the R2SCAN modality, not PBE: the written energy is the R2SCAN surface's
    model = load_model("7net-mf-0", rung="R2SCAN")
    assert frames[-1].get_potential_energy() == pytest.approx(
        model.predict([frames[-1]])["energy"][0], abs=1e-4)


def test_md_command_bad_inputs_are_one_line_errors(tmp_path):
    from cli_batch import run_cli_calls

    cuda = (["--device", "cuda"], "no CUDA device")
    if torch.cuda.is_available():
        cuda = (["--device", "cuda:99"], "no CUDA device is available with that index")
    cases = [cuda, (["--ensemble", "npt"], "NPT needs a periodic structure"),
             (["--ensemble", "nvt"], "unknown ensemble"), (["--rung", "CCSDT"], "no rung 'CCSDT'")]
    structure = tmp_path / "water.xyz"
    molecule("H2O").write(structure)
    out = tmp_path / "t.h5"
    base = ["md", "7net-mf-0", str(structure), "-T", "300", "--steps", "5", "--out", str(out)]
    results = run_cli_calls([[*base, *args] for args, _ in cases])
    for (args, message), (code, stderr) in zip(cases, results, strict=True):
        assert code == 2, (args, stderr)
        assert stderr.strip().count("\n") == 0 and message in stderr, (args, stderr)
    assert not out.exists()
