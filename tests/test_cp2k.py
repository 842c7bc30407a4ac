"""The CP2K engine, run for real: a hand-written input, finite differences, failure classes.

Small and fast: a primitive 2-atom Si cell at a low cutoff (k-points 2×2×2) and a water molecule
in a small box. CP2K runs with one thread (``Run()``'s default).
"""

from __future__ import annotations

import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.units import Hartree

from hifidata.calculators import cp2k as engine
from hifidata.calculators.base import (
    EngineCrashed,
    InvalidStructure,
    LabelTimeout,
    Method,
    OutOfMemory,
    Run,
    ScfNotConverged,
    label,
)
from hifidata.calculators.process import Finished
from hifidata.structures import with_charge_and_spin

A = 2.715  # half the cubic lattice constant of Si (5.43 Å)
SI_POSITIONS = [[0.0, 0.0, 0.0], [1.4075, 1.3375, 1.3875]]  # the second atom off its site
#: low cutoff, tight SCF: fast, and energies to 1e-8 Ha
SI_RUNG = {"cutoff": 200, "rel_cutoff": 40, "kpoints": [2, 2, 2], "eps_scf": 1e-9}
#: finite differences resolve 1e-5 eV/Å with tighter integral screening
TIGHT_RUNG = {**SI_RUNG, "eps_default": 1e-12}
GAMMA_RUNG = {"cutoff": 150, "rel_cutoff": 30}  # the cheapest run, for the failure classes


def silicon() -> Atoms:
    cell = [[0.0, A, A], [A, 0.0, A], [A, A, 0.0]]
    return with_charge_and_spin(Atoms("Si2", positions=SI_POSITIONS, cell=cell, pbc=True), 0, 1)


def water() -> Atoms:
    positions = [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.05, -0.7300, -0.4800]]
    return with_charge_and_spin(Atoms("OH2", positions=positions), 0, 1)


def energy(atoms: Atoms, params: dict) -> float:
    return engine.compute(atoms, Method.resolve("cp2k", params).params, Run()).energy


HAND_WRITTEN = """
&GLOBAL
  PROJECT by_hand
  RUN_TYPE ENERGY
&END GLOBAL
&FORCE_EVAL
  METHOD Quickstep
  &DFT
    BASIS_SET_FILE_NAME BASIS_MOLOPT
    POTENTIAL_FILE_NAME GTH_POTENTIALS
    &MGRID
      CUTOFF 200
      REL_CUTOFF 40
    &END MGRID
    &QS
      EPS_DEFAULT 1.0E-10
    &END QS
    &KPOINTS
      SCHEME MONKHORST-PACK 2 2 2
    &END KPOINTS
    &SCF
      SCF_GUESS ATOMIC
      EPS_SCF 1.0E-9
      MAX_SCF 100
      &DIAGONALIZATION
      &END DIAGONALIZATION
      &MIXING
        METHOD PULAY_MIXING
        ALPHA 0.3
      &END MIXING
    &END SCF
    &XC
      &XC_FUNCTIONAL PBE
      &END XC_FUNCTIONAL
    &END XC
  &END DFT
  &SUBSYS
    &CELL
      A 0.000 2.715 2.715
      B 2.715 0.000 2.715
      C 2.715 2.715 0.000
    &END CELL
    &COORD
      Si 0.0000 0.0000 0.0000
      Si 1.4075 1.3375 1.3875
    &END COORD
    &KIND Si
      BASIS_SET DZVP-MOLOPT-SR-GTH-q4
      POTENTIAL GTH-PBE-q4
    &END KIND
  &END SUBSYS
&END FORCE_EVAL
"""


def test_label_equals_a_hand_written_input(tmp_path: Path) -> None:
    """Same cell, independently written input (other mixing, kind names with -q4): same energy."""
    (tmp_path / "by_hand.inp").write_text(HAND_WRITTEN)
    done = subprocess.run(
        ["cp2k", "-i", "by_hand.inp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
    )
    by_hand = float(
        done.stdout.split("ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]:")[1].split()[0]
    )

    result = label(silicon(), Method.resolve("cp2k", SI_RUNG))
    assert result.ok, result.message
    assert result.energy / Hartree == pytest.approx(by_hand, abs=1e-8)
    assert result.provenance["report"]["n_kpoints"] == 4  # 2×2×2 MP, k and -k counted once
    assert result.stress.shape == (6,)


@pytest.mark.slow
def test_forces_and_stress_are_derivatives_of_the_energy() -> None:
    """Central differences: -dE/dx for a force component, (1/V) dE/dε for two stresses.
    The seven CP2K runs (one thread each) go two at a time, one per core."""
    atoms = silicon()
    step = 1e-3
    moved = []  # (+, -) pairs: the displaced atom, then the two strains
    for sign in (1, -1):
        shifted = atoms.copy()
        shifted.positions[1, 0] += sign * step
        moved.append(shifted)
    for i, j in ((0, 0), (1, 2)):
        for sign in (1, -1):
            strain = np.zeros((3, 3))
            strain[i, j] = strain[j, i] = sign * step if i == j else sign * step / 2
            deformed = atoms.copy()
            deformed.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
            moved.append(deformed)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reference = pool.submit(engine.compute, atoms, Method.resolve("cp2k", TIGHT_RUNG).params,
                                Run())
        energies = list(pool.map(lambda a: energy(a, TIGHT_RUNG), moved))
        result = reference.result()

    numeric = -(energies[0] - energies[1]) / (2 * step)
    assert result.forces[1, 0] == pytest.approx(numeric, abs=1e-3)
    volume = atoms.get_volume()
    for k, voigt in enumerate((0, 3)):
        plus, minus = energies[2 + 2 * k], energies[3 + 2 * k]
        numeric = (plus - minus) / (2 * step) / volume
        assert result.stress[voigt] == pytest.approx(numeric, abs=1e-5)  # eV/Å³ (1e-5 = 1.6 MPa)


def test_molecule_runs_isolated_without_stress() -> None:
    result = label(water(), Method.resolve("cp2k", {"cutoff": 250, "vacuum": 3.5}))
    assert result.ok, result.message
    assert result.stress is None
    assert result.forces.shape == (3, 3)
    assert math.isfinite(result.energy)
    assert result.energy == pytest.approx(-468.5, abs=1.0)  # PBE/GTH valence energy of water


def test_too_few_scf_steps_fail_and_the_ladder_rescues() -> None:
    method = Method.resolve("cp2k", {**GAMMA_RUNG, "max_scf": 3, "scf": "diagonalization"})
    with pytest.raises(ScfNotConverged, match="NOT converged"):
        engine.compute(silicon(), method.params, Run())

    result = label(silicon(), method)
    assert result.ok, result.message
    first = result.provenance["attempts"][0]
    assert first["failure"] == "scf_not_converged"
    assert result.provenance["input"]["restart_wavefunction"] is True
    assert result.provenance["input"]["max_scf"] >= 200
    assert result.provenance["report"]["restarted_from"] == "hifidata-RESTART.wfn"


def test_tiny_time_limit_is_a_timeout_and_no_number() -> None:
    method = Method.resolve("cp2k", {**TIGHT_RUNG, "time_limit": 2})
    with pytest.raises(LabelTimeout):
        engine.compute(silicon(), method.params, Run())
    result = label(silicon(), method)
    assert result.status == "timeout"
    assert math.isnan(result.energy) and result.forces is None
    assert result.provenance["attempts"][-1]["changed"]["time_limit"] == 4.0


def test_impossible_charge_is_an_invalid_structure() -> None:
    # 28 electrons in all, but the pseudopotentials leave 8 in the valence: +9 is impossible
    atoms = with_charge_and_spin(silicon(), 9, 2)
    with pytest.raises(InvalidStructure, match="valence electrons"):
        engine.check(atoms, Method.resolve("cp2k", GAMMA_RUNG).params)
    assert label(atoms, Method.resolve("cp2k", GAMMA_RUNG)).status == "invalid_structure"


def test_input_cp2k_refuses_is_a_non_transient_crash_with_its_message(monkeypatch) -> None:
    """An xc that resolve would refuse, smuggled past it: CP2K's own ABORT message comes back."""
    monkeypatch.setitem(engine.FUNCTIONALS, "NOSUCHXC", ("NOSUCHXC", None))
    params = {**Method.resolve("cp2k", GAMMA_RUNG).params, "xc": "NOSUCHXC", "potential": "GTH-PBE"}
    with pytest.raises(EngineCrashed, match="invalid value for enumeration") as caught:
        engine.compute(silicon(), params, Run())
    assert not caught.value.transient
    result = label(silicon(), Method("cp2k", params))
    assert result.status == "engine_crashed" and "NOSUCHXC" in result.message
    assert len(result.provenance["attempts"]) == 1  # not retried


@pytest.mark.parametrize(
    ("returncode", "output", "expected", "transient"),
    [
        (-9, "", OutOfMemory, True),
        (1, "forrtl: severe (41): insufficient virtual memory", OutOfMemory, True),
        (-11, "", EngineCrashed, True),
        (
            0,
            " ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]:  -7.8\n PROGRAM ENDED AT",
            EngineCrashed,
            True,
        ),
    ],
)
def test_failures_from_the_process_are_classified(
    monkeypatch, returncode, output, expected, transient
) -> None:
    """Memory and signals by injection (a real out-of-memory is not worth producing here)."""
    monkeypatch.setattr(
        engine, "run_program", lambda *args, **kwargs: Finished(returncode, output, 0.1)
    )
    with pytest.raises(expected) as caught:
        engine.compute(silicon(), Method.resolve("cp2k", GAMMA_RUNG).params, Run())
    assert caught.value.transient is transient
    result = label(silicon(), Method.resolve("cp2k", GAMMA_RUNG))
    assert result.status == expected.failure_class and result.forces is None
    retries = len(engine.rescues(result.provenance["input"], expected.failure_class))
    assert len(result.provenance["attempts"]) == 1 + retries


def test_check_refuses_what_cp2k_cannot_take() -> None:
    params = Method.resolve("cp2k", GAMMA_RUNG).params
    slab = silicon()
    slab.pbc = [True, True, False]
    with pytest.raises(InvalidStructure, match="mixed"):
        engine.check(slab, params)
    uranium = with_charge_and_spin(Atoms("U", cell=[5, 5, 5], pbc=True), 0, 1)
    with pytest.raises(InvalidStructure, match="element U has no"):
        engine.check(uranium, params)
    with pytest.raises(InvalidStructure, match="k-points need"):
        engine.check(water(), Method.resolve("cp2k", {"kpoints": [2, 2, 2]}).params)


def test_resolve_fills_defaults_and_refuses_bad_params() -> None:
    params = engine.resolve({})
    assert params["xc"] == "PBE" and params["potential"] == "GTH-PBE"
    assert params["basis"] == "DZVP-MOLOPT-SR-GTH" and params["scf"] == "auto"
    assert params["cutoff"] == 400 and params["rel_cutoff"] == 50 and params["kpoints"] is None
    assert engine.resolve({"kpoints": [2, 2, 2]})["scf"] == "diagonalization"
    assert engine.resolve({"smearing": 300})["scf"] == "diagonalization"
    assert engine.resolve({"kpoints": "gamma"}) == engine.resolve({"kpoints": [1, 1, 1]}) == params
    assert engine.resolve({"xc": "blyp", "dispersion": "D3BJ"})["potential"] == "GTH-BLYP"
    for bad, match in [
        ({"xc": "B3LYP"}, "unknown cp2k xc"),
        ({"basis": "NO-SUCH-BASIS"}, "no element has"),
        ({"cutof": 300}, "unknown cp2k parameter"),
        ({"cutoff": -1}, "positive"),
        ({"kpoints": [2, 2]}, "kpoints"),
        ({"kpoints": [2, 2, 2], "scf": "ot"}, "ot supports neither"),
        ({"dispersion": "d4"}, "unknown dispersion"),
        ({"xc": "LDA", "dispersion": "d3"}, "no parameters"),
        ({"max_scf": 0}, "max_scf"),
        ({"restart_wavefunction": True}, "rescue ladder"),
    ]:
        with pytest.raises(ValueError, match=match):
            engine.resolve(bad)


def test_run_settings_are_not_identity() -> None:
    base = Method.resolve("cp2k", {"cutoff": 300})
    other = Method.resolve(
        "cp2k",
        {"cutoff": 300, "max_scf": 7, "outer_scf": 0, "scf": "diagonalization", "time_limit": 60},
    )
    assert base.method_id == other.method_id
    assert Method.resolve("cp2k", {"cutoff": 350}).method_id != base.method_id
    assert Method.resolve("cp2k", {"cutoff": 300, "eps_scf": 1e-8}).method_id != base.method_id


def test_rescue_ladders() -> None:
    gamma = engine.resolve({})
    ladder = engine.rescues(gamma, "scf_not_converged")
    assert ladder[0]["restart_wavefunction"] is True and ladder[0]["max_scf"] >= 200
    assert ladder[1]["scf"] == "diagonalization"
    assert engine.rescues(gamma, "scf_not_converged")[2]["scf"] == "ot"
    assert engine.rescues({**gamma, "scf": "ot"}, "scf_not_converged")[2]["mixing_alpha"] == 0.05
    assert all("smearing" not in step for step in ladder)  # smearing would change the number
    kpoints = engine.resolve({"kpoints": [2, 2, 2]})
    assert all(step.get("scf") != "ot" for step in engine.rescues(kpoints, "scf_not_converged"))
    assert engine.rescues({**gamma, "time_limit": 10.0}, "timeout") == [
        {"time_limit": 20.0, "restart_wavefunction": True}
    ]
    assert engine.rescues(gamma, "out_of_memory") == []
    assert engine.rescues(gamma, "engine_crashed") == [{}]


def test_version() -> None:
    assert engine.version().startswith("20")
