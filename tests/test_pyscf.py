"""The PySCF engine: forces against finite differences, energies against published Psi4 values,
against other PySCF solvers and PySCF run by hand, structure checks, params and SCF rescue."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ase import Atoms
from ase.units import Bohr, Hartree
from pyscf import cc, dft, gto, lib, scf

from hifidata.calculators import pyscf as engine
from hifidata.calculators.base import InvalidStructure, Method, Run, label
from hifidata.structures import with_charge_and_spin

# Tight SCF so that finite differences of energies resolve 1e-6 eV/Å.
TIGHT = {"conv_tol": 1e-12}
DFT_RUNG = {
    "theory": "dft", "xc": "revpbe0", "dispersion": "d3bj", "basis": "def2-svp",
    "density_fit": True, **TIGHT,
}
CCSD_T_RUNG = {"theory": "ccsd(t)", "basis": "6-31g", "frozen_core": True, **TIGHT}


def water() -> Atoms:
    """A slightly asymmetric water (Å): no component of the force vanishes by symmetry."""
    positions = [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.05, -0.7300, -0.4800]]
    return with_charge_and_spin(Atoms("OH2", positions=positions), 0, 1)


def hydroxyl() -> Atoms:
    """The OH radical, a doublet."""
    return with_charge_and_spin(Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.98]]), 0, 2)


def amidogen() -> Atoms:
    """NH2, a doublet with a non-degenerate ground state (2B1), slightly asymmetric.

    Open-shell finite differences use NH2, not OH: OH's ground state is 2Π, so UKS singles out
    one of two degenerate π orbitals, and the DFT grid is not invariant under the rotation that
    mixes them. The SCF then picks a differently oriented hole from one displaced geometry to the
    next, at energies ~1e-8 Ha apart: enough to spoil a finite difference by up to 1e-4 Ha/Bohr.
    """
    positions = [[0.0, 0.0, 0.14], [0.0, 0.80, -0.49], [0.03, -0.78, -0.50]]
    return with_charge_and_spin(Atoms("NH2", positions=positions), 0, 2)


def energy(atoms: Atoms, params: dict) -> float:
    return engine.compute(atoms, engine.resolve(params), Run()).energy


def finite_difference_force(atoms: Atoms, params: dict, index: int, axis: int) -> float:
    """-dE/dx (eV/Å) by the five-point central stencil with h = 1e-3 Å.

    Its truncation error is O(h^4), negligible here, where the two-point stencil's O(h^2) is
    ~3e-5 eV/Å for these molecules: too close to the ~8e-5 eV/Å that leaving out the DFT grid
    response costs. What remains is SCF noise: energies converged to 1e-12 Ha give ~1e-8 eV/Å.
    """
    h = 1e-3

    def displaced(step: float) -> float:
        moved = atoms.copy()
        moved.positions[index, axis] += step
        return energy(moved, params)

    derivative = (
        -displaced(2 * h) + 8 * displaced(h) - 8 * displaced(-h) + displaced(-2 * h)
    ) / (12 * h)
    return -derivative


# The analytic gradient carries the error of the converged density (conv_tol_grad = sqrt(conv_tol)
# = 1e-6, first order in the gradient) and of the CC amplitudes (< 1e-7 Ha/Bohr): 2e-5 eV/Å
# (4e-7 Ha/Bohr) bounds both with margin, and is far below any unit or sign error.
FORCE_TOLERANCE = 2e-5


@pytest.mark.parametrize(
    ("rung", "components"),
    [
        pytest.param(DFT_RUNG, [(0, 2), (1, 1), (2, 0)], id="revpbe0-d3bj-def2svp-df"),
        pytest.param(CCSD_T_RUNG, [(0, 2), (1, 1), (2, 0)], id="ccsd(t)-fc-631g"),
        pytest.param({"theory": "mp2", "basis": "6-31g", **TIGHT}, [(1, 2)], id="mp2-fc"),
    ],
)
def test_forces_equal_finite_differences_of_energies(rung, components):
    atoms = water()
    forces = engine.compute(atoms, engine.resolve(rung), Run()).forces
    for index, axis in components:
        expected = finite_difference_force(atoms, rung, index, axis)
        assert forces[index, axis] == pytest.approx(expected, abs=FORCE_TOLERANCE), (index, axis)
    assert np.abs(forces.sum(axis=0)).max() < 1e-5  # no net force on an isolated molecule


# Psi4's test suite, psi4/psi4 tests/cc13b/input.dat and output.ref: RHF-CCSD(T)/6-31G water,
# all electrons, R = 1.0 Å, A = 104.5°, in Psi4's standard frame (output.ref prints it in Bohr).
PSI4_CC13B_BOHR = [
    ("O", 0.0, 0.0, -0.129476890157),
    ("H", 0.0, -1.494186750504, 1.027446102928),
    ("H", 0.0, 1.494186750504, 1.027446102928),
]
PSI4_CC13B_NUCLEAR_REPULSION = 8.801465529972067  # Ha, output.ref
PSI4_CC13B_CCSD_T_ENERGY = -76.120707900785604  # Ha, output.ref "CCSD(T) total energy"
PSI4_CC13B_GRADIENT = np.array(  # Ha/Bohr, input.dat ref_vals (5-point finite differences)
    [
        [0.0, 0.0, -0.02788939642641],
        [0.0, -0.00904503210340, 0.01394469821321],
        [0.0, 0.00904503210340, 0.01394469821321],
    ]
)


def psi4_cc13b_water() -> Atoms:
    symbols = [row[0] for row in PSI4_CC13B_BOHR]
    bohr = np.array([row[1:] for row in PSI4_CC13B_BOHR])
    return with_charge_and_spin(Atoms(symbols, positions=bohr * Bohr), 0, 1)


def test_ccsd_t_energy_and_gradient_equal_psi4_reference():
    atoms = psi4_cc13b_water()
    by_hand = gto.M(atom=[(s, xyz) for s, *xyz in PSI4_CC13B_BOHR], unit="Bohr", verbose=0)
    assert by_hand.energy_nuc() == pytest.approx(PSI4_CC13B_NUCLEAR_REPULSION, abs=1e-9)

    params = {"theory": "ccsd(t)", "basis": "6-31g", "frozen_core": False, "conv_tol": 1e-11}
    result = engine.compute(atoms, engine.resolve(params), Run())
    # observed: 4e-12 Ha and 8e-8 Ha/Bohr (Psi4's own finite differences, given to 1e-8)
    assert result.energy / Hartree == pytest.approx(PSI4_CC13B_CCSD_T_ENERGY, abs=1e-7)
    gradient = -result.forces / (Hartree / Bohr)
    np.testing.assert_allclose(gradient, PSI4_CC13B_GRADIENT, atol=1e-6)


# Psi4's test suite, psi4/psi4 tests/cc-module/input.dat: conventional RHF-CCSD(T)/cc-pVDZ of HF
# (H-F 0.917 Å) with frozen core ("true") and all electrons ("false"), "CCSD(T) TOTAL ENERGY".
PSI4_CC_MODULE_CCSD_T = {True: -100.22814697381621, False: -100.23009130169265}


def hydrogen_fluoride() -> Atoms:
    return with_charge_and_spin(Atoms("HF", positions=[[0, 0, 0], [0, 0, 0.917]]), 0, 1)


@pytest.mark.parametrize("frozen_core", [True, False], ids=["fc", "ae"])
def test_ccsd_t_energy_of_hf_equals_psi4_reference(frozen_core):
    params = {"theory": "ccsd(t)", "basis": "cc-pvdz", "frozen_core": frozen_core, **TIGHT}
    energy_hartree = energy(hydrogen_fluoride(), params) / Hartree
    # observed: 2e-10 Ha; Psi4's test itself compares to 1e-7
    assert energy_hartree == pytest.approx(PSI4_CC_MODULE_CCSD_T[frozen_core], abs=1e-7)


def test_rccsd_t_equals_generalized_spin_orbital_ccsd_t():
    """A second route: the spin-orbital GCCSD(T) code on the same closed shell, by hand."""
    atoms = water()
    ours = energy(atoms, CCSD_T_RUNG) / Hartree

    mol = gto.M(atom=[(a.symbol, a.position) for a in atoms], basis="6-31g", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-12
    mf.kernel()
    gcc = cc.GCCSD(mf.to_ghf(), frozen=2)  # O 1s, both spins
    gcc.conv_tol = 1e-10
    gcc.kernel()
    assert ours == pytest.approx(gcc.e_tot + gcc.ccsd_t(), abs=1e-8)


def test_label_energy_and_forces_are_pyscf_numbers_in_ev_and_ev_per_angstrom():
    atoms = water()
    params = {"theory": "dft", "xc": "pbe0", "basis": "6-31g", **TIGHT}
    result = label(atoms, Method.resolve("pyscf", params))
    assert result.ok, result.message

    # PySCF by hand, in its own units (Å in, Hartree and Hartree/Bohr out)
    mol = gto.M(atom=[(a.symbol, a.position) for a in atoms], basis="6-31g", verbose=0)
    mf = dft.RKS(mol, xc="pbe0")
    mf.conv_tol = 1e-12
    e_tot = mf.kernel()
    gradients = mf.nuc_grad_method()
    gradients.grid_response = True
    gradient = gradients.kernel()
    assert result.energy == pytest.approx(e_tot * 27.211386, rel=1e-7)  # CODATA eV per Hartree
    assert result.energy == pytest.approx(e_tot * Hartree, abs=1e-6)
    np.testing.assert_allclose(result.forces, -gradient * Hartree / Bohr, atol=1e-5)
    report = result.provenance["report"]
    assert report["scf_converged"] and report["reference"] == "rhf"
    assert result.provenance["engine_version"] == engine.version()


def test_open_shell_dft_label_of_the_hydroxyl_radical():
    result = label(hydroxyl(), Method.resolve("pyscf", {"theory": "dft", "xc": "pbe0",
                                                         "basis": "6-31g"}))
    assert result.ok, result.message
    report = result.provenance["report"]
    assert report["scf_method"] == "UKS" and report["reference"] == "uhf"
    assert report["spin_square"] == pytest.approx(0.75, abs=0.01)  # a doublet
    assert result.forces.shape == (2, 3)
    assert result.forces[1, 2] == pytest.approx(-result.forces[0, 2], abs=1e-6)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"theory": "dft", "xc": "pbe0", "basis": "6-31g", **TIGHT}, id="uks"),
        pytest.param({"theory": "ccsd", "basis": "6-31g", **TIGHT}, id="uccsd-fc"),
    ],
)
def test_open_shell_force_equals_finite_difference(params):
    atoms = amidogen()
    result = engine.compute(atoms, engine.resolve(params), Run())
    assert result.info["reference"] == "uhf"
    expected = finite_difference_force(atoms, params, 1, 1)
    assert result.forces[1, 1] == pytest.approx(expected, abs=FORCE_TOLERANCE)


# --------------------------------------------------------------------------- check and resolve


def test_check_rejects_an_element_the_basis_lacks():
    positions = [[0, 0, 0], [0, 0, 2], [0, 0, -2]]
    xenon_fluoride = with_charge_and_spin(Atoms("XeF2", positions=positions))
    with pytest.raises(InvalidStructure, match="basis 'cc-pvdz' has no functions for element Xe"):
        engine.check(xenon_fluoride, engine.resolve({"theory": "hf", "basis": "cc-pvdz"}))
    failed = label(xenon_fluoride, Method.resolve("pyscf", {"theory": "hf", "basis": "cc-pvdz"}))
    assert failed.status == "invalid_structure" and "Xe" in failed.message


def test_check_rejects_open_shell_ccsd_t_and_periodic_structures():
    with pytest.raises(InvalidStructure, match="closed-shell"):
        engine.check(hydroxyl(), engine.resolve(CCSD_T_RUNG))
    with pytest.raises(InvalidStructure, match="rhf needs a closed shell"):
        engine.check(hydroxyl(), engine.resolve({"theory": "hf", "basis": "6-31g",
                                                 "reference": "rhf"}))
    periodic = water()
    periodic.set_cell([10, 10, 10])
    periodic.pbc = True
    with pytest.raises(InvalidStructure, match="molecules only"):
        engine.check(periodic, engine.resolve({"theory": "hf", "basis": "6-31g"}))
    engine.check(water(), engine.resolve(CCSD_T_RUNG))  # the closed shell passes


def test_resolve_fills_every_default_and_normalizes_case():
    resolved = engine.resolve({"theory": "CCSD(T)", "basis": "cc-pVDZ"})
    assert resolved == {
        "theory": "ccsd(t)", "basis": "cc-pvdz", "reference": "auto", "frozen_core": True,
        "density_fit": False, "conv_tol": 1e-9, "max_cycle": 100, "max_memory_mb": 4000,
    }
    dft_rung = engine.resolve({"theory": "dft", "basis": "def2-SVP", "xc": "revPBE0",
                               "dispersion": "D3BJ", "density_fit": True, "conv_tol": "1e-10"})
    assert dft_rung["xc"] == "revpbe0" and dft_rung["dispersion"] == "d3bj"
    assert dft_rung["grids_level"] == 3 and dft_rung["grid_response"] is True
    assert dft_rung["auxbasis"] is None and dft_rung["conv_tol"] == 1e-10
    assert "frozen_core" not in dft_rung and "nlc_grids_level" not in dft_rung
    assert engine.resolve(resolved) == resolved  # idempotent: resolving twice changes nothing
    fc, ae = (Method.resolve("pyscf", {"theory": "mp2", "basis": "6-31g", "frozen_core": f})
              for f in (True, False))
    assert fc.method_id != ae.method_id


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"theory": "hf", "basis": "6-31g", "smearing": 0.1}, "smearing"),
        ({"theory": "cisd", "basis": "6-31g"}, "cisd"),
        ({"basis": "6-31g"}, "theory"),
        ({"theory": "hf"}, "basis"),
        ({"theory": "hf", "basis": "no-such-basis"}, "basis"),
        ({"theory": "dft", "basis": "6-31g"}, "xc"),
        ({"theory": "dft", "basis": "6-31g", "xc": "no-such-functional"}, "xc"),
        ({"theory": "dft", "basis": "6-31g", "xc": "b3lyp-d3bj"}, "xc"),
        ({"theory": "dft", "basis": "6-31g", "xc": "pbe0", "dispersion": "d9"}, "dispersion"),
        ({"theory": "hf", "basis": "6-31g", "frozen_core": True}, "frozen_core"),
        ({"theory": "ccsd", "basis": "6-31g", "density_fit": True}, "density_fit"),
        ({"theory": "ccsd(t)", "basis": "6-31g", "reference": "uhf"}, "reference"),
        ({"theory": "hf", "basis": "6-31g", "max_cycle": 0}, "max_cycle"),
        ({"theory": "hf", "basis": "6-31g", "conv_tol": -1}, "conv_tol"),
        ({"theory": "hf", "basis": "6-31g", "level_shift": 0.2}, "level_shift"),
        ({"theory": "hf", "basis": "6-31g", "auxbasis": "def2-universal-jkfit"}, "auxbasis"),
    ],
)
def test_resolve_rejects_bad_params_naming_the_key(params, key):
    with pytest.raises(ValueError, match=key.replace("(", r"\(")) as error:
        engine.resolve(params)
    assert "\n" not in str(error.value)


def test_compute_accepts_rescue_settings_that_resolve_leaves_out():
    params = engine.resolve({"theory": "hf", "basis": "6-31g"})
    ladder = engine.rescues(params, "scf_not_converged")
    assert [set(step) for step in ladder] == [{"max_cycle", "level_shift", "damp"},
                                              {"second_order", "level_shift", "damp"}]
    assert ladder[0]["max_cycle"] >= 300
    plain = engine.compute(water(), params, Run()).energy
    step = dict(params)
    for change in ladder:  # cumulative, as base.label applies them
        step.update(change)
        assert engine.compute(water(), step, Run()).energy == pytest.approx(plain, abs=1e-6)


# ------------------------------------------------------------------------------ rescue, threads


def test_scf_rescue_turns_a_non_converging_label_into_ok():
    method = Method.resolve("pyscf", {"theory": "hf", "basis": "6-31g", "max_cycle": 2})
    result = label(water(), method)
    assert result.ok, result.message
    first, *_ = result.provenance["attempts"]
    assert first["failure"] == "scf_not_converged" and "2 iterations" in first["message"]
    assert result.provenance["input"]["level_shift"] == 0.25  # what finally converged
    assert result.method_id == method.method_id  # a rescue is provenance, not identity
    default = Method.resolve("pyscf", {"theory": "hf", "basis": "6-31g"})
    assert method.method_id == default.method_id  # max_cycle is how it runs, not the number


def test_a_label_whose_every_attempt_fails_ends_scf_not_converged(monkeypatch):
    monkeypatch.setattr(engine, "rescues", lambda params, failure: [])  # fault injection: no ladder
    method = Method.resolve("pyscf", {"theory": "hf", "basis": "6-31g", "max_cycle": 1})
    result = label(water(), method)
    assert result.status == "scf_not_converged"
    assert "did not converge" in result.message and "Ha" in result.message
    assert [a["failure"] for a in result.provenance["attempts"]] == ["scf_not_converged"]


def test_a_time_limit_stops_the_label_as_a_timeout_and_the_ladder_doubles_it():
    method = Method.resolve("pyscf", {"theory": "ccsd", "basis": "6-31g", "time_limit": 1e-3})
    result = label(water(), method)
    assert result.status == "timeout" and "time limit" in result.message
    assert np.isnan(result.energy) and result.forces is None  # no number from a stopped run
    _, second = result.provenance["attempts"]
    assert second["changed"] == {"time_limit": 2e-3, "restart_wavefunction": True}
    untimed = Method.resolve("pyscf", {"theory": "ccsd", "basis": "6-31g"})
    assert method.method_id == untimed.method_id


def test_a_restart_starts_from_the_orbitals_the_previous_attempt_saved(tmp_path):
    params = engine.resolve({"theory": "hf", "basis": "6-31g"})
    first = engine.compute(water(), params, Run(workdir=tmp_path))
    again = engine.compute(water(), {**params, "restart_wavefunction": True}, Run(workdir=tmp_path))
    assert again.info["restarted"] and not first.info["restarted"]
    assert again.info["scf_iterations"] <= 2 < first.info["scf_iterations"]
    assert again.energy == pytest.approx(first.energy, abs=1e-7)


def test_thread_count_is_per_thread_and_restored():
    """compute sets OpenMP threads for its own thread only and restores them afterwards."""
    before = lib.num_threads()
    engine.compute(water(), engine.resolve({"theory": "hf", "basis": "sto-3g"}), Run())
    assert lib.num_threads() == before

    seen: dict[str, int] = {}
    inside, release = threading.Event(), threading.Event()

    def worker() -> None:
        with lib.with_omp_threads(1):
            inside.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(timeout=10)
    seen["main_while_worker_has_one"] = lib.num_threads()
    release.set()
    thread.join()
    assert seen["main_while_worker_has_one"] == before
