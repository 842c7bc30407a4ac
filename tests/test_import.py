"""`hifidata import`: labels computed elsewhere come into a store with their numbers exact.

Real numbers: ASE's EMT on rattled copper cells (energy, forces, stress; written as a plain
extxyz, the keys ASE loads into a SinglePointCalculator) and PySCF HF/STO-3G on rattled water
molecules (written with REF_ keys, as hifidata's releases and MACE's files have them).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.stress import voigt_6_to_full_3x3_stress
from conftest import tiny_spec, write_spec
from typer.testing import CliRunner

from hifidata.calculators.base import Method, label
from hifidata.cli import app
from hifidata.datasets.importer import Keys, import_file, parse_defines
from hifidata.datasets.release_data import collect
from hifidata.datasets.store import Store
from hifidata.errors import HifidataError
from hifidata.spec import load_spec
from hifidata.structures import structure_id

HF = {"theory": "hf", "basis": "sto-3g"}
EMT_DEFINE = ["software=ASE", "version=3.29", "potential=EMT"]


@pytest.fixture(scope="module")
def copper(tmp_path_factory):
    """Three rattled Cu cells and a repeat of the first, EMT numbers as energy=/forces/stress."""
    frames = []
    for seed in range(3):
        atoms = bulk("Cu", cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        numbers = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                   "stress": atoms.get_stress()}
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, **numbers)
        frame.info["config_type"] = "rattle"
        frames.append(frame)
    path = tmp_path_factory.mktemp("copper") / "cu.extxyz"
    write(path, [*frames, frames[0]], format="extxyz")
    return path


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """Three rattled waters: REF_ keys of HF/STO-3G (PySCF) and REF_*_emt keys of EMT."""
    method = Method.resolve("pyscf", HF)
    frames = []
    for seed in range(3):
        atoms = molecule("H2O")
        atoms.rattle(0.03, seed=seed)
        atoms.info.update(charge=0, spin=1)
        result = label(atoms, method)
        assert result.ok, result.message
        emt = atoms.copy()
        emt.calc = EMT()
        atoms.info.update(REF_energy=result.energy, REF_energy_emt=emt.get_potential_energy(),
                          config_type="md")
        atoms.arrays["REF_forces"] = result.forces
        atoms.arrays["REF_forces_emt"] = emt.get_forces()
        frames.append(atoms)
    path = tmp_path_factory.mktemp("water") / "water.extxyz"
    write(path, frames, format="extxyz")
    return path


def file_numbers(path, energy="energy", forces="forces", stress="stress"):
    """structure_id -> (energy, forces, stress) as the file holds them (first frame wins)."""
    out = {}
    for atoms in read(path, index=":"):
        results = atoms.calc.results if atoms.calc is not None else {}
        values = [atoms.info.get(k, atoms.arrays.get(k, results.get(k)))
                  for k in (energy, forces, stress)]
        atoms.info.setdefault("charge", 0)
        out.setdefault(structure_id(atoms), values)
    return out


def rows(store: Store, table: str) -> int:
    with store._table(table) as view:
        return view.rows


def assert_same(store: Store, method_id: str, expected: dict) -> None:
    labels = store.labels(method_id)
    assert sorted(labels.structure_ids) == sorted(expected)
    for i, sid in enumerate(labels.structure_ids):
        energy, forces, stress = expected[sid]
        assert labels.status[i] == "ok"
        assert labels.energy[i] == energy  # exactly: nothing converted, nothing rounded
        np.testing.assert_array_equal(labels.forces[i], forces)
        if stress is None:
            assert np.isnan(labels.stress[i]).all()
        else:
            np.testing.assert_array_equal(labels.stress[i], stress)


def test_external_method_labels_are_the_files_numbers(copper, tmp_path):
    with Store(tmp_path / "s.h5", "a") as store:
        summary = import_file(store, copper, method="emt", define=EMT_DEFINE)
        assert summary["frames"] == 4 and summary["duplicates"] == 1
        assert summary["labels_added"] == summary["structures_added"] == 3
        method = Method.resolve("external", {"software": "ASE", "potential": "EMT"}, "emt")
        assert summary["method_id"] == method.method_id  # the version is provenance
        registered = {m["name"]: m for m in store.methods()}["emt"]
        assert registered["engine"] == "external"
        assert registered["definition"] == {"engine": "external", "software": "ASE",
                                            "potential": "EMT"}
        assert_same(store, method.method_id, file_numbers(copper))
        provenance = json.loads(store.labels(method.method_id).provenance[0])
        assert provenance["engine"] == "imported" and provenance["engine_version"] == "3.29"
        assert provenance["source"] == "cu.extxyz"
        assert provenance["source_sha256"] == hashlib.sha256(copper.read_bytes()).hexdigest()
        assert provenance["keys"] == {"energy": "energy", "forces": "forces", "stress": "stress"}
        assert {o["protocol"] for o in store.origins()} == {"imported"}
        assert store.origins()[0] == {"protocol": "imported", "file": "cu.extxyz", "index": 0,
                                      "config_type": "rattle"}

        counts = rows(store, "structures"), rows(store, "labels")
        again = import_file(store, copper, method="emt")  # registered: no declaration needed
        assert again["labels_added"] == again["structures_added"] == 0
        assert again["skipped_existing"] == 3
        assert (rows(store, "structures"), rows(store, "labels")) == counts


def test_spec_rung_and_key_tiers(water, tmp_path):
    spec = tiny_spec()
    spec["ladder"] = [{**spec["ladder"][0], "name": "hf", "method": HF}]
    spec.pop("train")  # its recipes name the example's rungs
    spec_path = write_spec(tmp_path / "campaign", spec)
    with Store(tmp_path / "s.h5", "a") as store:
        summary = import_file(store, water, method="hf", spec=spec_path)
        campaign_id = load_spec(spec_path).ladder[0].resolved.method_id
        assert summary["method_id"] == campaign_id == Method.resolve("pyscf", HF).method_id
        assert_same(store, campaign_id, file_numbers(water, "REF_energy", "REF_forces", "-"))
        assert store.record("method", "hf")["engine"] == "pyscf"  # what `audit` reruns

        # REF_energy_<method> before REF_energy: the same file holds EMT's numbers too
        emt = import_file(store, water, method="emt", define=EMT_DEFINE)
        assert emt["labels_added"] == 3 and emt["structures_added"] == 0
        assert_same(store, emt["method_id"],
                    file_numbers(water, "REF_energy_emt", "REF_forces_emt", "-"))
        # explicit keys win over every tier
        keyed = import_file(store, water, method="emt-keyed", define=["software=ASE", "a=1"],
                            keys=Keys("REF_energy_emt", "REF_forces_emt"))
        assert_same(store, keyed["method_id"],
                    file_numbers(water, "REF_energy_emt", "REF_forces_emt", "-"))

        with pytest.raises(HifidataError, match="defined differently"):
            import_file(store, water, method="hf", define=["software=PySCF"])
        with pytest.raises(HifidataError, match="no rung named 'ccsdt'"):
            import_file(store, water, method="ccsdt", spec=spec_path)


def test_import_then_export_reproduces_the_numbers(copper, water, tmp_path):
    with Store(tmp_path / "s.h5", "a") as store:
        import_file(store, copper, method="emt", define=EMT_DEFINE)
        import_file(store, water, method="emt", define=EMT_DEFINE)
        data = collect(store)
    expected = {**file_numbers(copper),
                **file_numbers(water, "REF_energy_emt", "REF_forces_emt", "-")}
    rung = data.rungs["emt"]
    assert sorted(data.structure_ids) == sorted(expected)
    frames = []
    for i, sid in enumerate(data.structure_ids):
        energy, forces, stress = expected[sid]
        assert rung.energy[i] == energy
        np.testing.assert_array_equal(rung.forces[i], forces)
        if stress is not None:
            np.testing.assert_array_equal(rung.stress[i], stress)
        frame = data.atoms(i)
        frame.info["REF_energy"] = rung.energy[i]
        frame.arrays["REF_forces"] = rung.forces[i]
        frames.append(frame)
    write(tmp_path / "out.extxyz", frames, format="extxyz")
    written = file_numbers(tmp_path / "out.extxyz", "REF_energy", "REF_forces", "-")
    assert sorted(written) == sorted(expected)  # the same structures, ids and all
    for sid, (energy, forces, _) in written.items():
        assert energy == expected[sid][0]
        np.testing.assert_array_equal(forces, expected[sid][1])


def test_cli_import_then_export(copper, tmp_path):
    store, release = tmp_path / "s.h5", tmp_path / "release"
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(copper), "--store", str(store), "--method",
                                 "emt", *[a for d in EMT_DEFINE for a in ("--define", d)]])
    assert result.exit_code == 0, result.output
    assert "imported 3 labels of emt from 4 frames" in result.output
    result = runner.invoke(app, ["export", str(store), "--format", "extxyz", "--out",
                                 str(release)])
    assert result.exit_code == 0, result.output
    exported = {frame.info["structure_id"]: frame for frame in read(release / "emt.extxyz", ":")}
    expected = file_numbers(copper)
    assert sorted(exported) == sorted(expected)
    for sid, (energy, forces, stress) in expected.items():
        assert exported[sid].info["REF_energy"] == energy
        np.testing.assert_array_equal(exported[sid].arrays["REF_forces"], forces)
        np.testing.assert_array_equal(exported[sid].info["REF_stress"], stress)


def test_seeds_are_campaign_seeds_without_labels(copper, tmp_path):
    with Store(tmp_path / "s.h5", "a") as store:
        summary = import_file(store, copper, mode="seeds")
        assert summary["structures_added"] == 3 and summary["labels_added"] == 0
        assert rows(store, "labels") == 0 and store.methods() == []
        assert store.origins()[1] == {"protocol": "seed", "imported": True, "file": "cu.extxyz",
                                      "index": 1, "config_type": "rattle"}
        assert import_file(store, copper, mode="seeds")["skipped_existing"] == 3
        with pytest.raises(HifidataError, match="structures only"):
            import_file(store, copper, mode="seeds", method="emt")


@pytest.mark.parametrize(("change", "message"), [
    ("nan-energy", r"frame 1: 'energy': the energy must be one finite number"),
    ("forces-shape", r"frame 1: 'forces': forces of shape \(4, 2\); expected \(4, 3\)"),
    ("no-energy", r"frame 1: no energy"),
])
def test_a_bad_frame_leaves_the_store_untouched(copper, tmp_path, change, message):
    frames = read(copper, index=":")
    results = frames[1].calc.results
    if change == "nan-energy":
        results["energy"] = float("nan")
    elif change == "forces-shape":
        results["forces"] = results["forces"][:, :2]
    else:
        del results["energy"]
    bad = tmp_path / "bad.extxyz"
    write(bad, frames, format="extxyz")
    with Store(tmp_path / "s.h5", "a") as store:
        import_file(store, copper, mode="seeds")
        counts = rows(store, "structures"), rows(store, "labels"), rows(store, "methods")
        with pytest.raises(HifidataError, match=message):
            import_file(store, bad, method="emt", define=EMT_DEFINE)
        assert (rows(store, "structures"), rows(store, "labels"),
                rows(store, "methods")) == counts


def test_undeclared_method_and_cli_errors(copper, tmp_path):
    with Store(tmp_path / "s.h5", "a") as store, pytest.raises(
            HifidataError, match=r"method vasp is not in .*s\.h5; declare it with --spec or "
                                 "--define"):
        import_file(store, copper, method="vasp")
    with Store(tmp_path / "s.h5", "a") as store, pytest.raises(HifidataError, match="software"):
        import_file(store, copper, method="vasp", define=["xc=PBE"])
    spec = tmp_path / "not-a-spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "x"}))
    with Store(tmp_path / "s.h5", "a") as store, pytest.raises(HifidataError):
        import_file(store, copper, method="vasp", spec=spec)

    store = tmp_path / "new.h5"
    result = CliRunner().invoke(app, ["import", str(copper), "--store", str(store),
                                      "--method", "vasp"])
    assert isinstance(result.exception, HifidataError)  # main() prints it and exits 2
    assert not store.exists()  # a failed import makes no store


def test_cli_exit_code_is_two_with_one_line(copper, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "hifidata.cli", "import", str(copper), "--store",
         str(tmp_path / "s.h5"), "--method", "vasp"], capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("hifidata: error: method vasp is not in")


def test_ref_keys_with_a_3x3_stress_and_define_values(copper, tmp_path):
    frames = []
    for atoms in read(copper, index=":"):
        results = atoms.calc.results
        frame = atoms.copy()  # no calculator: the numbers only under REF_ keys
        frame.info.update(REF_energy=results["energy"],
                          REF_stress=voigt_6_to_full_3x3_stress(results["stress"]))
        frame.arrays["REF_forces"] = results["forces"]
        frames.append(frame)
    path = tmp_path / "ref.extxyz"
    write(path, frames, format="extxyz")
    assert read(path).info["REF_stress"].shape == (3, 3)
    defines = ["software=VASP", "version=6.40", "xc=PBE", "encut=520", "kpoints=[4, 4, 4]",
               "gga_compat=false"]
    assert parse_defines(defines) == {"software": "VASP", "version": "6.40", "xc": "PBE",
                                      "encut": 520, "kpoints": [4, 4, 4], "gga_compat": False}
    with Store(tmp_path / "s.h5", "a") as store:
        summary = import_file(store, path, method="vasp", define=defines)
        assert_same(store, summary["method_id"], file_numbers(copper))  # Voigt again
        provenance = json.loads(store.labels(summary["method_id"]).provenance[0])
        assert provenance["engine_version"] == "6.40"
        assert provenance["keys"] == {"energy": "REF_energy", "forces": "REF_forces",
                                      "stress": "REF_stress"}


def test_a_multi_rung_release_imports_back_rung_by_rung(copper, water, tmp_path):
    """emt.extxyz holds EMT's labels as REF_ and, on the waters, HF's as REF_*_hf: importing
    it as hf takes the suffixed keys and never EMT's numbers under hf's name."""
    spec = tiny_spec()
    spec["ladder"] = [{**spec["ladder"][0], "name": "hf", "method": HF}]
    spec.pop("train")
    spec_path = write_spec(tmp_path / "campaign", spec)
    with Store(tmp_path / "s.h5", "a") as store:
        import_file(store, copper, method="emt", define=EMT_DEFINE)
        import_file(store, water, method="emt", define=EMT_DEFINE)
        import_file(store, water, method="hf", spec=spec_path)
    release = tmp_path / "release"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "s.h5"), "--out", str(release)])
    assert result.exit_code == 0, result.output
    emt_file, hf_file = release / "emt.extxyz", release / "hf.extxyz"

    with Store(tmp_path / "again.h5", "a") as store:
        summary = import_file(store, emt_file, method="emt", define=EMT_DEFINE)
        assert summary["labels_added"] == 6
        assert_same(store, summary["method_id"], {
            **file_numbers(copper),
            **file_numbers(water, "REF_energy_emt", "REF_forces_emt", "-"),
        })
        with pytest.raises(HifidataError, match=r"frame \d: no energy of hf: its REF_energy "
                                                r"is method_id [0-9a-f]{12}, not hf's"):
            import_file(store, emt_file, method="hf", spec=spec_path)  # the copper frames
        hf = import_file(store, hf_file, method="hf", spec=spec_path)
        assert hf["labels_added"] == 3 and hf["structures_added"] == 0
        assert_same(store, hf["method_id"], file_numbers(water, "REF_energy", "REF_forces", "-"))
