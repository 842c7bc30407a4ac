"""The Quantum ESPRESSO engine, with the real pw.x: against a hand-written pw.x run, forces and
stress against finite differences, the k-point grid against Monkhorst–Pack's, failure classes
produced for real (and out-of-memory by injection), and what is and is not a method's identity."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.dft.kpoints import monkhorst_pack
from ase.units import Bohr, Ry

from hifidata.calculators import espresso as engine
from hifidata.calculators.base import (
    EngineCrashed,
    InvalidStructure,
    LabelTimeout,
    Method,
    Run,
    ScfNotConverged,
    label,
)
from hifidata.calculators.process import Finished
from hifidata.structures import with_charge_and_spin

PSEUDOS = engine.PACKAGED_PSEUDOS
#: small and fast: 2-atom Si, 25 Ry, 2×2×2 k-points (about 1 s per pw.x run on one core)
SMALL = {"ecutwfc": 25, "kpoints": [2, 2, 2]}
#: tight SCF, so that finite differences of energies resolve 1e-4 eV/Å
TIGHT = {**SMALL, "conv_thr": 1e-11}


def silicon(shift=(0.03, -0.04, 0.02), charge: int = 0, spin: int | None = None) -> Atoms:
    """The 2-atom primitive cell of diamond Si, the second atom moved off its site (Å)."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[1] += shift
    return with_charge_and_spin(atoms, charge, spin)


def compute(atoms: Atoms, params: dict, workdir: Path, **extra):
    """The engine's compute on resolved params, in ``workdir`` (kept for the test to read)."""
    settings = {**engine.resolve(params), "time_limit": None, **extra}
    return engine.compute(atoms, settings, Run(threads=1, ranks=1, workdir=workdir))


def energy(atoms: Atoms, params: dict, tmp_path: Path) -> float:
    workdir = Path(tmp_path) / f"run-{len(list(Path(tmp_path).iterdir()))}"
    return compute(atoms, params, workdir).energy


# ------------------------------------------------------------------ against pw.x run by hand


HAND_WRITTEN = """\
&control
  calculation = 'scf'
  pseudo_dir = '{pseudo_dir}'
  outdir = './tmp'
  tprnfor = .true.
  tstress = .true.
/
&system
  ibrav = 0, nat = 2, ntyp = 1
  ecutwfc = 25.0, ecutrho = 100.0
  nosym = .true.
/
&electrons
  conv_thr = 1.0d-10
/
ATOMIC_SPECIES
  Si  28.0855  Si.upf
CELL_PARAMETERS angstrom
  0.000  2.715  2.715
  2.715  0.000  2.715
  2.715  2.715  0.000
ATOMIC_POSITIONS angstrom
  Si  0.00  0.00  0.00
  Si  1.39  1.32  1.38
K_POINTS automatic
  2 2 2 1 1 1
"""


def test_label_equals_pw_x_run_by_hand(tmp_path):
    (tmp_path / "si.in").write_text(HAND_WRITTEN.format(pseudo_dir=PSEUDOS))
    output = subprocess.run(
        ["pw.x", "-in", "si.in"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    by_hand = float(re.search(r"!\s+total energy\s+=\s+(\S+) Ry", output).group(1))
    block = output.split("Forces acting on atoms")[1].splitlines()[2:4]
    forces_by_hand = np.array([line.split()[-3:] for line in block], dtype=float)

    atoms = silicon(shift=(0.0325, -0.0375, 0.0225))  # Si at (1.39, 1.32, 1.38) Å
    method = Method.resolve("espresso", {**SMALL, "conv_thr": 1e-10})
    result = label(atoms, method)
    assert result.ok, result.message
    assert result.energy / Ry == pytest.approx(by_hand, abs=1.5e-8)  # the printed digits
    np.testing.assert_allclose(result.forces / (Ry / Bohr), forces_by_hand, atol=2e-8)
    report = result.provenance["report"]
    assert report["qe_version"].startswith("6.") and report["n_kpoints"] == 4
    assert report["pseudopotentials"] == {
        "Si": {"file": "Si.upf", "sha256": method.params["pseudo_sha256"]["Si"]}
    }


# -------------------------------------------------------------- derivatives of the energy


def test_forces_are_the_energy_derivative(tmp_path):
    atoms, h = silicon(), 2e-3
    forces = compute(atoms, TIGHT, tmp_path / "ref").forces
    # two atoms: the forces sum to zero, so atom 0's three components are all there is
    numerical = []
    for axis in range(3):
        moved = []
        for step in (h, -h):
            displaced = atoms.copy()
            displaced.positions[0, axis] += step
            moved.append(energy(displaced, TIGHT, tmp_path))
        numerical.append(-(moved[0] - moved[1]) / (2 * h))
    np.testing.assert_allclose(forces[0], numerical, atol=1e-3)
    np.testing.assert_allclose(forces.sum(axis=0), 0, atol=1e-6)


def strained_energy(atoms, params, tmp_path, i, j, step):
    """Energy of ``atoms`` under the symmetric strain ε_ij = ε_ji = step/2 (ε_ii = step)."""
    strain = np.eye(3)
    strain[i, j] += step / 2 if i != j else step
    if i != j:
        strain[j, i] += step / 2
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    return energy(strained, params, tmp_path)


@pytest.mark.parametrize("components", [[(0, 0), (1, 2)]])
def test_stress_is_the_strain_derivative(tmp_path, components):
    # pw.x's stress is the derivative at a fixed cutoff, while a strained cell keeps its cutoff
    # and so changes its plane-wave set: finite differences carry a Pulay stress that falls with
    # the cutoff (for this Si: 3e-3 eV/Å³ at 25 Ry, 1e-4 at 40 Ry, 2e-5 at 60 Ry). 40 Ry keeps
    # it well inside the tolerance (3e-4 eV/Å³ = 0.05 GPa).
    params, h = {**TIGHT, "ecutwfc": 40}, 1e-3
    atoms = silicon()
    stress = compute(atoms, params, tmp_path / "ref").stress
    voigt = {(0, 0): 0, (1, 1): 1, (2, 2): 2, (1, 2): 3, (0, 2): 4, (0, 1): 5}
    for i, j in components:
        plus = strained_energy(atoms, params, tmp_path, i, j, h)
        minus = strained_energy(atoms, params, tmp_path, i, j, -h)
        numerical = (plus - minus) / (2 * h) / atoms.get_volume()  # ASE: σ = (1/V) dE/dε
        assert stress[voigt[i, j]] == pytest.approx(numerical, abs=3e-4)


def test_with_smearing_the_energy_is_the_free_energy(tmp_path):
    # 6000 K spreads Si's occupations across its gap, so -TS is far above the tolerance: the
    # forces are the derivative of the free energy F = E - TS, the energy pw.x marks with '!'
    params, atoms, h = {**TIGHT, "smearing": 6000}, silicon(), 2e-3
    result = compute(atoms, params, tmp_path / "ref")
    assert abs(result.info["smearing_energy"]) > 1e-3
    free, internal = [], []
    for step in (h, -h):
        displaced = atoms.copy()
        displaced.positions[0, 0] += step
        moved = compute(displaced, params, tmp_path / f"{step:+g}")
        free.append(moved.energy)
        internal.append(moved.energy - moved.info["smearing_energy"])  # E = F + TS
    assert result.forces[0, 0] == pytest.approx(-(free[0] - free[1]) / (2 * h), abs=1e-3)
    # the internal energy's derivative is off by d(TS)/dx, about 0.15 eV/Å here
    assert abs(result.forces[0, 0] + (internal[0] - internal[1]) / (2 * h)) > 0.05


def test_d3bj_energy_forces_and_stress(tmp_path):
    params, atoms, h = {**TIGHT, "dispersion": "d3bj"}, silicon(), 2e-3
    result = compute(atoms, params, tmp_path / "ref")
    plain = compute(atoms, TIGHT, tmp_path / "plain")
    assert result.info["dispersion_energy"] < 0
    assert result.energy - plain.energy == pytest.approx(result.info["dispersion_energy"], abs=1e-6)
    moved = []
    for step in (h, -h):
        displaced = atoms.copy()
        displaced.positions[0, 1] += step
        moved.append(energy(displaced, params, tmp_path))
    assert result.forces[0, 1] == pytest.approx(-(moved[0] - moved[1]) / (2 * h), abs=1e-3)


def test_kpoints_are_the_monkhorst_pack_grid(tmp_path):
    atoms = silicon()
    compute(atoms, {**SMALL, "kpoints": [3, 2, 2]}, tmp_path)
    text = (tmp_path / "pw-1.out").read_text()
    alat = float(re.search(r"lattice parameter \(alat\)\s+=\s+(\S+)", text).group(1)) * Bohr
    # printed in 2π/alat (alat to 5 digits); ASE's reciprocal cell has no 2π
    printed = re.findall(r"k\(\s*\d+\) = \(\s*(\S+)\s+(\S+)\s+(\S+)\), wk", text)
    cartesian = np.array(printed[:6], dtype=float) / alat
    fractional = cartesian @ atoms.cell.array.T
    expected = monkhorst_pack((3, 2, 2))  # Γ-centred along 3, off Γ along 2

    def same_point(k, q):  # up to a reciprocal lattice vector, and k ≡ -k (time reversal)
        return any(np.allclose(d, np.round(d), atol=1e-4) for d in (k - q, k + q))

    assert len(fractional) == 6  # 12 grid points, pairs k and -k
    for k in fractional:
        assert any(same_point(k, q) for q in expected)


def test_spin_polarized_cation(tmp_path):
    cation = silicon(charge=1)  # 7 valence electrons: a doublet
    result = compute(cation, SMALL, tmp_path)
    assert result.info["n_electrons"] == 7
    assert "nspin = 2" in re.sub(r"\s+", " ", (tmp_path / "pw-1.in").read_text())


# ----------------------------------------------------------------------------- failures


def test_scf_not_converged_raises_and_the_ladder_rescues_it(tmp_path):
    with pytest.raises(ScfNotConverged, match="did not converge in 3 iterations"):
        compute(silicon(), {**SMALL, "electron_maxstep": 3}, tmp_path / "direct")

    converged = label(silicon(), Method.resolve("espresso", SMALL))
    result = label(silicon(), Method.resolve("espresso", {**SMALL, "electron_maxstep": 3}))
    assert result.ok, result.message
    [failed] = result.provenance["attempts"]
    assert failed["failure"] == "scf_not_converged"
    assert failed["changed"] == {}
    assert result.provenance["input"]["restart"] is True
    assert result.provenance["input"]["mixing_beta"] == 0.3
    assert result.provenance["report"]["restarted_from"] == ["startingpot", "startingwfc"]
    assert result.method_id == converged.method_id  # the rescue is not identity
    assert result.energy == pytest.approx(converged.energy, abs=1e-6)


def test_scf_ladder_second_step_is_cumulative():
    # an SCF that only converges with the second step's settings (injected), run for real
    def hard_scf(atoms, params, run):
        if params.get("diagonalization") != "cg":
            raise ScfNotConverged("injected: converges with cg only")
        return engine.compute(atoms, params, run)

    method = Method.resolve("espresso", SMALL)
    result = label(silicon(), method, compute=hard_scf)
    assert result.ok, result.message
    assert [a["failure"] for a in result.provenance["attempts"]] == ["scf_not_converged"] * 2
    final = result.provenance["input"]
    assert final["restart"] is True and final["electron_maxstep"] == 200  # from step 1
    assert final["mixing_mode"] == "local-tf" and final["mixing_beta"] == 0.1  # step 2


def test_pw_x_stops_itself_before_the_time_limit_and_the_ladder_restarts(tmp_path):
    params = {"ecutwfc": 30, "kpoints": [4, 4, 4]}
    start = time.perf_counter()
    reference = label(silicon(), Method.resolve("espresso", params))
    whole = time.perf_counter() - start
    assert reference.ok

    # half the time: pw.x's max_seconds (half the limit below 20 s) stops it mid-SCF
    method = Method.resolve("espresso", {**params, "time_limit": whole})
    result = label(silicon(), method)
    assert result.ok, result.message
    [failed] = result.provenance["attempts"]
    assert failed["failure"] == "timeout" and "max_seconds" in failed["message"]
    assert result.provenance["input"]["time_limit"] == pytest.approx(2 * whole)
    assert result.provenance["report"]["restarted_from"] == ["restart_mode"]
    assert result.energy == pytest.approx(reference.energy, abs=1e-5)


def test_hard_time_limit_is_a_timeout(tmp_path):
    with pytest.raises(LabelTimeout):
        compute(silicon(), SMALL, tmp_path, time_limit=0.05)
    result = label(silicon(), Method.resolve("espresso", {**SMALL, "time_limit": 0.05}))
    assert result.status == "timeout" and np.isnan(result.energy) and result.forces is None


def test_impossible_charge_is_an_invalid_structure():
    atoms = silicon(charge=10, spin=1)  # 28 electrons, but 8 valence electrons - 10
    result = label(atoms, Method.resolve("espresso", SMALL))
    assert result.status == "invalid_structure"
    assert "-2 valence electrons" in result.message


def test_structures_pw_x_cannot_take():
    method = Method.resolve("espresso", SMALL)
    molecule = with_charge_and_spin(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), 0, 1)
    slab = silicon()
    slab.pbc = [True, True, False]
    for atoms in (molecule, slab):
        with pytest.raises(InvalidStructure, match="periodic cells"):
            engine.check(atoms, method.params)
    only_h = Method.resolve("espresso", {**SMALL, "pseudopotentials": {"H": "H.upf"}})
    with pytest.raises(InvalidStructure, match="no pseudopotential for Si"):
        engine.check(silicon(), only_h.params)


def test_input_pw_x_rejects_is_a_permanent_crash(monkeypatch):
    original = engine._input_data

    def with_bad_key(atoms, settings, restart):
        data = original(atoms, settings, restart)
        data["system"]["not_a_keyword"] = 1
        return data

    monkeypatch.setattr(engine, "_input_data", with_bad_key)
    result = label(silicon(), Method.resolve("espresso", SMALL))
    assert result.status == "engine_crashed"
    assert "read_namelists" in result.message and "not_a_keyword" in result.message
    assert len(result.provenance["attempts"]) == 1  # not retried
    assert result.forces is None


def test_missing_pseudopotential_file_is_a_permanent_crash(tmp_path, monkeypatch):
    folder = tmp_path / "pseudos"
    shutil.copytree(PSEUDOS, folder)
    settings = {**engine.resolve({**SMALL, "pseudo_dir": str(folder)}), "time_limit": None}
    (folder / "Si.upf").unlink()
    with pytest.raises(ValueError, match=r"no file Si\.upf"):  # compute re-resolves first...
        engine.compute(silicon(), settings, Run(workdir=tmp_path / "run"))
    # ...and past resolve, pw.x's own message
    monkeypatch.setattr(engine, "_settings", lambda params: {**params, "restart": False})
    with pytest.raises(EngineCrashed, match="readpp") as caught:
        engine.compute(silicon(), settings, Run(workdir=tmp_path / "run2"))
    assert caught.value.transient is False


def test_out_of_memory_and_signals_by_injection(monkeypatch):
    def killed(*args, **kwargs):
        return Finished(returncode=-9, output="", wall_time=0.1)

    monkeypatch.setattr(engine, "run_program", killed)
    result = label(silicon(), Method.resolve("espresso", SMALL))
    assert result.status == "out_of_memory" and result.forces is None
    assert [a["changed"] for a in result.provenance["attempts"]] == [
        {},
        {"diagonalization": "cg"},
    ]

    bar = " " + "%" * 78 + "\n"
    box = f"{bar}     Error in routine allocate_fft (1):\n     cannot allocate\n{bar}"
    monkeypatch.setattr(engine, "run_program", lambda *a, **k: Finished(1, box, 0.1))
    assert label(silicon(), Method.resolve("espresso", SMALL)).status == "out_of_memory"

    monkeypatch.setattr(engine, "run_program", lambda *a, **k: Finished(-11, "", 0.1))
    result = label(silicon(), Method.resolve("espresso", SMALL))
    assert result.status == "engine_crashed" and "SIGSEGV" in result.message
    assert len(result.provenance["attempts"]) == 2  # one plain retry


# ----------------------------------------------------------------------------- resolve


def test_resolve_defaults():
    params = engine.resolve({})
    assert params["xc"] == "PBE" and params["pseudo_dir"] == str(PSEUDOS)
    assert params["ecutwfc"] == 40.0 and params["ecutrho"] == 160.0
    assert params["kpoints"] is None and params["smearing"] is None
    assert params["conv_thr"] == 1e-9 and params["dispersion"] is None
    assert params["pseudopotentials"]["Cu"] == "Cu-sp.upf"
    assert len(params["pseudo_sha256"]) == len(params["pseudopotentials"]) == 15
    assert engine.resolve(params) == params  # its own output resolves to itself
    for gamma in (None, "gamma", "Gamma", [1, 1, 1]):
        assert engine.resolve({"kpoints": gamma})["kpoints"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ecut": 30}, "unknown espresso parameter 'ecut'"),
        ({"kpoints": [2, 2]}, "'kpoints'"),
        ({"kpoints": "dense"}, "'kpoints'"),
        ({"ecutwfc": -1}, "'ecutwfc'"),
        ({"ecutwfc": 40, "ecutrho": 100}, "at least 4 × ecutwfc"),
        ({"xc": "PBEsol"}, "does not match"),
        ({"dispersion": "d4"}, "unknown dispersion"),
        ({"mixing_beta": 1.5}, "'mixing_beta'"),
        ({"electron_maxstep": 2.5}, "'electron_maxstep'"),
        ({"mixing_mode": "broyden"}, "'mixing_mode'"),
        ({"restart": True}, "rescue ladder"),
        ({"pseudopotentials": {"Si": "Nope.upf"}}, "no file Nope.upf"),
        ({"pseudopotentials": {"Si": "O.upf"}}, "for O, not Si"),
        ({"pseudopotentials": {"Xx": "O.upf"}}, "not an element"),
        ({"pseudo_dir": "/no/such/folder"}, "no folder"),
        ({"smearing": "hot"}, "'smearing'"),
    ],
)
def test_resolve_rejects(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        engine.resolve(params)


def test_ambiguous_folder_needs_a_mapping(tmp_path):
    shutil.copytree(PSEUDOS, tmp_path / "p")
    shutil.copy(PSEUDOS / "Si.upf", tmp_path / "p" / "Si-other.upf")
    with pytest.raises(ValueError, match="2 files for Si"):
        engine.resolve({"pseudo_dir": str(tmp_path / "p")})
    mapped = engine.resolve(
        {"pseudo_dir": str(tmp_path / "p"), "pseudopotentials": {"Si": "Si.upf"}}
    )
    assert mapped["pseudopotentials"] == {"Si": "Si.upf"}


def test_identity_is_the_pseudopotentials_content_not_run_settings(tmp_path):
    base = Method.resolve("espresso", SMALL)
    copy = tmp_path / "copy"
    shutil.copytree(PSEUDOS, copy)
    run_settings = {
        "electron_maxstep": 300,
        "mixing_beta": 0.2,
        "mixing_mode": "local-tf",
        "diagonalization": "cg",
        "pseudo_dir": str(copy),
        "time_limit": 60,
    }
    assert Method.resolve("espresso", {**SMALL, **run_settings}).method_id == base.method_id
    for changed in (
        {"ecutwfc": 30},
        {"kpoints": [3, 3, 3]},
        {"smearing": 300},
        {"conv_thr": 1e-10},
        {"dispersion": "d3"},
    ):
        assert Method.resolve("espresso", {**SMALL, **changed}).method_id != base.method_id

    silicon_file = copy / "Si.upf"
    silicon_file.chmod(0o644)
    text = silicon_file.read_bytes()
    silicon_file.write_bytes(text.replace(b'author="anonymous"', b'author="anonymouz"'))
    edited = Method.resolve("espresso", {**SMALL, "pseudo_dir": str(copy)})
    assert edited.method_id != base.method_id
    assert edited.params["pseudo_sha256"]["Si"] != base.params["pseudo_sha256"]["Si"]
    assert edited.params["pseudo_sha256"]["O"] == base.params["pseudo_sha256"]["O"]
    with pytest.raises(ValueError, match=r"Si\.upf differ"):  # a stored method meets new files
        Method.resolve("espresso", {**base.params, "pseudo_dir": str(copy)})


def test_rescue_ladders():
    params = Method.resolve("espresso", {**SMALL, "time_limit": 100}).params
    assert engine.rescues(params, "timeout") == [{"time_limit": 200.0, "restart": True}]
    assert engine.rescues(params, "engine_crashed") == [{}]
    assert engine.rescues(params, "invalid_structure") == []
    for step in engine.rescues(params, "scf_not_converged"):
        assert set(step) <= set(engine.RUN_SETTINGS)  # never the number: no smearing
