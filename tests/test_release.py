"""Dataset releases: extxyz round trip, the card and its schema, verify, versions and diff."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from ase.io import read
from releases import labeled_store, waters
from typer.testing import CliRunner

from hifidata.calculators.base import Label, Method, label
from hifidata.cli import app
from hifidata.datasets.card import SCHEMA, reference_energies
from hifidata.datasets.release import export_release, write_manifest
from hifidata.datasets.release_data import ReleaseError
from hifidata.datasets.store import Store
from hifidata.datasets.verify import diff_releases, verify_release

FORMATS = ["extxyz", "hdf5", "asedb"]


def hifidata(*args) -> subprocess.CompletedProcess:
    """The installed command line, as a user runs it (one-line errors, exit status 2)."""
    return subprocess.run([sys.executable, "-m", "hifidata.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("release") / "store.h5"
    labeled_store(path).close()
    return path


@pytest.fixture(scope="module")
def release(store_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "release"
    export_release(Store(store_path), out, formats=FORMATS, name="waters",
                   authors=[{"name": "A. Tester", "orcid": "0000-0002-1825-0097"}])
    return out


def store_labels(store_path: Path, rung: str):
    store = Store(store_path)
    return store.labels(store.method_id(rung))


def test_extxyz_holds_the_store_numbers_with_the_other_rungs_suffixed(store_path, release):
    hf, mp2 = store_labels(store_path, "hf"), store_labels(store_path, "mp2")
    frames = read(release / "mp2.extxyz", index=":")
    assert [f.info["structure_id"] for f in frames] == mp2.structure_ids
    hf_energy = dict(zip(hf.structure_ids, hf.energy, strict=False))
    for frame, energy, forces in zip(frames, mp2.energy, mp2.forces, strict=True):
        assert frame.info["REF_energy"] == energy
        np.testing.assert_allclose(frame.arrays["REF_forces"], forces, atol=1e-8)
        assert frame.info["REF_energy_hf"] == hf_energy[frame.info["structure_id"]]
        assert frame.info["config_type"] == "rattle" and frame.info["origin_stdev"] == 0.05
        assert not frame.pbc.any() and "REF_stress" not in frame.info
    (si,) = read(release / "cp2k.extxyz", index=":")
    cp2k = store_labels(store_path, "cp2k")
    np.testing.assert_array_equal(si.info["REF_stress"], cp2k.stress[0])
    assert si.pbc.all()
    (failed,) = read(release / "hf.failed.extxyz", index=":")
    assert failed.info["status"] == "invalid_structure" and "REF_energy" not in failed.info


def test_the_card_validates_and_says_how_every_number_was_made(release):
    card = json.loads((release / "dataset-card.json").read_text())
    jsonschema.validate(card, json.loads(SCHEMA.read_text()))  # the schema kept in the repo
    assert card["elements"] == ["H", "O", "Si"] and card["nconfigurations"] == 7
    rungs = {r["name"]: r for r in card["rungs"]}
    assert {n: r["nconfigurations"] for n, r in rungs.items()} == {"hf": 5, "mp2": 3, "cp2k": 1}
    assert rungs["hf"]["failures"] == {"invalid_structure": 1}
    assert rungs["mp2"]["method"]["settings"]["frozen_core"] is True
    assert rungs["cp2k"]["method"]["pseudopotentials"]["potential"] == "GTH-PBE"
    assert rungs["cp2k"]["method"]["software_versions"][0].startswith("20")
    assert rungs["cp2k"]["cauchy_stress_count"] == 1
    # water only: H and O energies are not separable; silicon alone: E / 2 per atom
    assert rungs["hf"]["reference_energies"]["determined"] is False
    si = rungs["cp2k"]["reference_energies"]
    assert si["energies"]["Si"] == pytest.approx(rungs["cp2k"]["energy_mean"] / 2)
    formulas = {f["chemical_formula_reduced"]: f for f in card["chemical_formulas"]}
    assert formulas["H2O"]["chemical_formula_hill"] == "H4O2" and formulas["Si"]["nsites"] == 2
    assert sum(card["splits"]["nconfigurations"].values()) == 7
    readme = (release / "README.md").read_text()
    assert "A. Tester" in readme and "| mp2 | pyscf mp2/sto-3g |" in readme


def test_reference_energies_recover_known_per_element_values():
    from collections import Counter

    rng = np.random.default_rng(0)
    truth = {1: -13.6, 8: -2041.0}
    counts = [Counter({1: int(h), 8: int(o)}) for h, o in rng.integers(1, 6, size=(12, 2))]
    energy = np.array([sum(n * truth[z] for z, n in c.items()) for c in counts])
    found = reference_energies(counts, energy + rng.normal(scale=1e-3, size=len(energy)))
    assert found["determined"] is True
    assert found["energies"]["H"] == pytest.approx(-13.6, abs=0.01)
    assert found["energies"]["O"] == pytest.approx(-2041.0, abs=0.01)


def test_verify_passes_and_finds_a_flipped_byte_a_missing_file_and_a_schema_violation(
        release, tmp_path):
    assert verify_release(release)["entries"] == {"extxyz": 10, "hdf5": 10, "asedb": 10}

    def copy(name: str) -> Path:
        return Path(shutil.copytree(release, tmp_path / name))

    flipped = copy("flipped")
    data = bytearray((flipped / "waters.h5").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "waters.h5").write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=r"waters.h5 does not match its SHA-256"):
        verify_release(flipped)

    missing = copy("missing")
    (missing / "mp2.extxyz").unlink()
    with pytest.raises(ReleaseError, match=r"mp2.extxyz is listed in SHA256SUMS but missing"):
        verify_release(missing)

    schema = copy("schema")
    card = json.loads((schema / "dataset-card.json").read_text())
    card["license"] = "do what you like"
    (schema / "dataset-card.json").write_text(json.dumps(card))
    write_manifest(schema)  # a consistent manifest: only the schema can catch it
    with pytest.raises(ReleaseError, match="dataset card license"):
        verify_release(schema)

    extra = copy("extra")
    (extra / "notes.txt").write_text("unlisted")
    with pytest.raises(ReleaseError, match=r"notes.txt is not in SHA256SUMS"):
        verify_release(extra)

    cli = hifidata("verify", flipped)
    assert cli.returncode == 2 and "waters.h5 does not match" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert CliRunner().invoke(app, ["verify", str(release)]).exit_code == 0


def test_rungs_and_only_ok_choose_what_is_released(store_path, tmp_path):
    out = tmp_path / "mp2-only"
    info = export_release(Store(store_path), out, rungs=["mp2", "hf"], only_ok=True)
    assert info["files"] == ["mp2.extxyz", "hf.extxyz"]  # in the order asked for
    assert info["structures"] == 5  # the failed OH is not in the release
    with pytest.raises(ReleaseError, match="no rung named 'ccsdt'"):
        export_release(Store(store_path), tmp_path / "x", rungs=["ccsdt"])
    with pytest.raises(ReleaseError, match="not empty"):
        export_release(Store(store_path), out)
    assert not (tmp_path / "x").exists()


def test_a_grown_release_keeps_every_split_and_diff_lists_the_changes(store_path, tmp_path):
    grown_path = tmp_path / "grown.h5"
    shutil.copy(store_path, grown_path)
    v1 = tmp_path / "v1"
    export_release(Store(grown_path), v1, formats=["hdf5"])
    with Store(grown_path, "a") as store:  # the campaign grows: 12 more waters, and one fix
        method = Method.resolve("pyscf", {"theory": "hf", "basis": "sto-3g"}, "hf")
        more = waters(12, seed=5)
        store.add_structures(more, [{"protocol": "rattle", "seed": 5}] * len(more))
        store.add_labels([label(a, method) for a in more])
        old = store.labels(store.method_id("cp2k"))  # a corrected label appended (latest wins)
        store.add_labels([Label(old.structure_ids[0], old.method_id, "ok", old.energy[0] + 0.01,
                                old.forces[0], old.stress[0])])
    v2 = tmp_path / "v2"
    info = export_release(Store(grown_path), v2, formats=["hdf5", "extxyz"], extends=v1)
    assert info["version"] == "1.1.0"
    card = json.loads((v2 / "dataset-card.json").read_text())
    assert card["extends"]["version"] == "1.0.0"
    assert card["extends"]["changes"] == {"added": 12, "removed": 0, "relabeled": 1, "moved": 0}
    changes = diff_releases(v1, v2)
    assert {r["rung"] for r in changes["relabeled"]} == {"cp2k"}
    assert changes["relabeled"][0]["energy_change"] == pytest.approx(0.01)
    before = {e["structure_id"] for e in diff_releases(v2, v1)["removed"]}
    assert len(before) == 12  # and the other direction

    shown = CliRunner().invoke(app, ["diff", str(v1), str(v2)])
    assert shown.exit_code == 0 and "12 added" in shown.output and "1 relabeled" in shown.output

    moved = tmp_path / "moved.h5"  # other split settings would move structures: refused
    shutil.copy(grown_path, moved)
    with Store(moved, "a") as store:
        store.put_record("run", "spec", {"train": {"seed": 99}})
    with pytest.raises(ReleaseError, match="would change split"):
        export_release(Store(moved), tmp_path / "v3", formats=["hdf5"], extends=v1)
    assert not (tmp_path / "v3").exists()


def test_export_from_the_command_line(store_path, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "export", str(store_path), "--format", "extxyz", "--format", "asedb", "--out", str(out),
        "--rungs", "hf", "--only-ok", "--version", "2.0.0", "--license", "CC0-1.0",
        "--author", "A. Tester", "--citation", "Tester et al. (2026)"])
    assert result.exit_code == 0, result.output
    card = verify_release(out)["card"]
    assert card["version"] == "2.0.0" and card["license"] == "CC0-1.0"
    assert [f["file"] for f in card["files"]] == ["hf.extxyz", "store.db"]
    bad = hifidata("export", store_path, "--format", "xyz", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "'xyz'" in bad.stderr and not (tmp_path / "bad").exists()
