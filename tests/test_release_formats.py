"""The HDF5 and ASE-database release formats, checked against the store's labels with plain
h5py and plain ase.db; and the layout violations their read() must reject."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import ase.db
import h5py
import numpy as np
import pytest
from ase.collections import s22
from releases import labeled_store

from hifidata.datasets.formats import asedb, hdf5
from hifidata.datasets.release_data import ReleaseData, ReleaseError, RungData, collect
from hifidata.datasets.store import Store
from hifidata.structures import structure_id

NAME = "demo"
SPLITS = {"train", "validation", "test"}
# the datasets that hold a physical quantity, and their units (docs/release-format.md)
STRUCTURE_UNITS = {"positions": "Å", "cell": "Å", "charge": "e", "spin": "2S+1"}
RUNG_UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("formats") / "store.h5"
    labeled_store(path).close()
    return Store(path)


@pytest.fixture(scope="module")
def data(store):
    return collect(store)


@pytest.fixture(scope="module")
def release(data, tmp_path_factory):
    """The release folder with both formats, and what each write reported to progress."""
    folder = tmp_path_factory.mktemp("release")
    progress = {}
    for module in (hdf5, asedb):
        counts: list[int] = []
        assert module.write(data, folder, NAME, counts.append) == [
            f"{NAME}.{'h5' if module is hdf5 else 'db'}"
        ]
        progress[module] = counts
    return folder, progress


@pytest.fixture(scope="module")
def expected(store):
    """(structure_id, rung) -> the store's label: status, energy, forces, stress, message."""
    labels = {}
    for method in store.methods():
        found = store.labels(method["method_id"])
        for i, sid in enumerate(found.structure_ids):
            labels[sid, method["name"]] = {
                "status": found.status[i],
                "energy": found.energy[i],
                "forces": np.asarray(found.forces[i]),
                "stress": found.stress[i],
                "message": found.message[i],
            }
    return labels


def test_the_store_has_what_these_tests_rely_on(expected):
    statuses = [label["status"] for label in expected.values()]
    assert len(expected) == 10 and statuses.count("ok") == 9
    assert statuses.count("invalid_structure") == 1


def test_progress_counts_every_label(release, expected):
    _, progress = release
    for counts in progress.values():
        assert sum(counts) == len(expected) and all(n > 0 for n in counts)


# -- HDF5, read with plain h5py --------------------------------------------------------------
def _groups(folder: Path):
    """(group name, group) for every structure group of the release's HDF5 file."""
    f = h5py.File(folder / f"{NAME}.h5", "r")
    return f, list(f["structures"].items())


def test_hdf5_labels_equal_the_store(release, expected):
    f, groups = _groups(release[0])
    found = {}
    with f:
        for _, group in groups:
            ids = [s.decode() for s in group["structure_id"][()]]
            for rung in ("hf", "mp2", "cp2k"):
                labels = group[rung]
                status = labels["status"].asstr()[()]
                for k, sid in enumerate(ids):
                    if status[k]:
                        found[sid, rung] = (
                            status[k],
                            labels["energy"][k],
                            labels["forces"][k],
                            labels["stress"][k],
                            labels["message"].asstr()[k],
                        )
    assert set(found) == set(expected)
    for key, (status, energy, forces, stress, message) in found.items():
        label = expected[key]
        assert status == label["status"] and message == label["message"]
        if status == "ok":
            assert energy == label["energy"]
            assert np.array_equal(forces, label["forces"])
            assert np.array_equal(stress, label["stress"], equal_nan=True)
        else:
            assert np.isnan(energy) and np.isnan(forces).all() and np.isnan(stress).all()


def test_hdf5_stress_only_for_the_periodic_cell(release, expected):
    f, groups = _groups(release[0])
    with f:
        si = dict(groups)["Si2"]
        assert np.isfinite(si["cp2k/stress"][0]).all()
        assert np.isnan(dict(groups)["H4O2"]["hf/stress"][()]).all()
    (si_label,) = [v for (sid, rung), v in expected.items() if rung == "cp2k"]
    assert np.isfinite(si_label["stress"]).all()


def test_hdf5_structures_round_trip(release, store):
    f, groups = _groups(release[0])
    with f:
        for _, group in groups:
            ids = [s.decode() for s in group["structure_id"][()]]
            for k, atoms in enumerate(store.structures(ids)):
                assert np.array_equal(group["atomic_numbers"][()], atoms.numbers)
                assert np.array_equal(group["positions"][k], atoms.positions)
                assert np.array_equal(group["cell"][k], atoms.cell.array)
                assert np.array_equal(group["pbc"][k], atoms.pbc)
                assert group["charge"][k] == atoms.info["charge"]
                assert group["spin"][k] == atoms.info["spin"]
            origins = [json.loads(o) for o in group["origin"].asstr()[()]]
            assert origins == store.origins(ids)
            assert list(group["config_type"].asstr()[()]) == [o["protocol"] for o in origins]
            assert {s.decode() for s in group["split"][()]} <= SPLITS


def test_hdf5_physical_datasets_carry_units(release):
    f, groups = _groups(release[0])
    with f:
        assert json.loads(f.attrs["units"])["forces"] == "eV/Å"
        assert f.attrs["format"] == "hifidata-release-hdf5" and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["rungs"]) == ["hf", "mp2", "cp2k"]
        for _, group in groups:
            for key, units in STRUCTURE_UNITS.items():
                assert group[key].attrs["units"] == units
            for rung in ("hf", "mp2", "cp2k"):
                for key, units in RUNG_UNITS.items():
                    assert group[rung][key].attrs["units"] == units
            assert "units" not in group["structure_id"].attrs


def test_hdf5_nan_where_a_rung_has_no_label(release):
    f, groups = _groups(release[0])
    with f:
        water = dict(groups)["H4O2"]
        status = water["mp2/status"].asstr()[()]
        assert list(status).count("ok") == 3 and list(status).count("") == 2
        unlabeled = status == ""
        assert np.isnan(water["mp2/energy"][()][unlabeled]).all()
        assert np.isnan(water["mp2/forces"][()][unlabeled]).all()
        # a rung that labels none of a group's structures still has its subgroup
        assert (water["cp2k/status"].asstr()[()] == "").all()
        assert np.isnan(water["cp2k/energy"][()]).all()


def test_hdf5_keeps_the_failed_label(release):
    f, groups = _groups(release[0])
    with f:
        broken = dict(groups)["HO"]
        assert broken["hf/status"].asstr()[0] == "invalid_structure"
        assert "9 electrons" in broken["hf/message"].asstr()[0]
        assert np.isnan(broken["hf/energy"][0])


def test_hdf5_group_attributes(release):
    f, groups = _groups(release[0])
    with f:
        assert sorted(name for name, _ in groups) == ["H4O2", "HO", "Si2"]
        water, si = dict(groups)["H4O2"], dict(groups)["Si2"]
        assert water.attrs["chemical_formula_reduced"] == "H2O"
        assert si.attrs["chemical_formula_reduced"] == "Si"
        assert json.loads(water.attrs["elements"]) == ["H", "O"]
        assert water.attrs["nsites"] == 6 and water["positions"].shape == (5, 6, 3)


def _tiny_release(structures) -> ReleaseData:
    """One ok label per structure in a rung "dft", built directly (no engine)."""
    n = len(structures)
    rung = RungData(
        "dft",
        "m" * 64,
        {"engine": "none"},
        ["ok"] * n,
        np.arange(n, dtype=float),
        [np.ones((len(a), 3)) for a in structures],
        np.full((n, 6), np.nan),
        [""] * n,
        [""] * n,
    )
    return ReleaseData(
        structure_ids=[hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
        numbers=[a.numbers for a in structures],
        positions=[a.positions for a in structures],
        cell=np.array([a.cell.array for a in structures]),
        pbc=np.array([a.pbc for a in structures]),
        charge=np.zeros(n, int),
        spin=np.ones(n, int),
        origins=[{"protocol": "seed"}] * n,
        split=["train"] * n,
        rungs={"dft": rung},
    )


def test_hdf5_orderings_of_one_formula_get_hashed_names(tmp_path):
    water = s22["Water_dimer"]
    permuted = water[[1, 2, 0, 3, 4, 5]]  # H H O O H H: same formula, another ordering
    data = _tiny_release([water, permuted, water.copy(), s22["Ammonia_dimer"]])
    hdf5.write(data, tmp_path, NAME)
    with h5py.File(tmp_path / f"{NAME}.h5", "r") as f:
        names = {name: f["structures"][name] for name in f["structures"]}
        hashed = {
            f"H4O2.{hashlib.sha256(bytes(a.numbers.tolist())).hexdigest()[:8]}": a
            for a in (water, permuted)
        }
        assert set(names) == {*hashed, "H6N2"}
        for name, atoms in hashed.items():
            assert np.array_equal(names[name]["atomic_numbers"][()], atoms.numbers)
            assert names[name].attrs["chemical_formula_hill"] == "H4O2"
        assert len(names[next(iter(hashed))]["structure_id"]) == 2
        assert names["H6N2"].attrs["chemical_formula_reduced"] == "H3N"
    assert len(hdf5.read(tmp_path, [f"{NAME}.h5"])) == 4


# -- ASE database, read with plain ase.db ----------------------------------------------------
def test_asedb_rows_equal_the_store(release, expected):
    db = ase.db.connect(release[0] / f"{NAME}.db")
    assert db.count(rung="mp2") == 3 and db.count() == len(expected)
    assert db.metadata["format"] == "hifidata-release-asedb"
    assert db.metadata["rungs"] == ["hf", "mp2", "cp2k"]
    for row in db.select():
        label = expected[row.structure_id, row.rung]
        assert row.status == label["status"] and row.split in SPLITS
        assert row.data["message"] == label["message"]
        assert row.data["origin"]["protocol"] == row.origin == row.config_type
        assert (row.total_charge, row.multiplicity) == (0, 1)
        if row.status == "ok":
            assert row.energy == label["energy"]
            assert row.toatoms().get_potential_energy() == label["energy"]
            assert np.array_equal(row.forces, label["forces"])
            assert (row.get("stress") is not None) == (row.rung == "cp2k")
        else:
            assert row.status == "invalid_structure" and row.get("energy") is None
    (si,) = db.select(rung="cp2k")
    assert np.array_equal(si.stress, expected[si.structure_id, "cp2k"]["stress"])


def test_asedb_structures_round_trip(release, store):
    db = ase.db.connect(release[0] / f"{NAME}.db")
    for row in db.select(rung="hf"):
        (atoms,) = store.structures([row.structure_id])
        assert np.array_equal(row.positions, atoms.positions)
        assert np.array_equal(row.numbers, atoms.numbers)
        assert np.array_equal(row.cell, atoms.cell.array)


# -- read(): the round trip and what it rejects ----------------------------------------------
@pytest.mark.parametrize("module", [hdf5, asedb], ids=["hdf5", "asedb"])
def test_read_gives_the_stores_labels(module, release, expected, data, store):
    folder = release[0]
    files = [f"{NAME}.h5"] if module is hdf5 else [f"{NAME}.db"]
    entries = {(e.structure_id, e.rung): e for e in module.read(folder, files)}
    assert set(entries) == set(expected)
    split = dict(zip(data.structure_ids, data.split, strict=True))
    for key, entry in entries.items():
        label = expected[key]
        assert entry.status == label["status"] and entry.split == split[entry.structure_id]
        (atoms,) = store.structures([entry.structure_id])
        assert np.array_equal(entry.atoms.positions, atoms.positions)
        assert entry.atoms.info == {"charge": 0, "spin": 1}
        assert structure_id(entry.atoms) == entry.structure_id  # what verify checks
        if entry.status == "ok":
            assert entry.energy == label["energy"]
            assert np.array_equal(entry.forces, label["forces"])
        else:
            assert np.isnan(entry.energy) and entry.forces is None
        if entry.rung == "cp2k":
            assert np.array_equal(entry.stress, label["stress"])
        else:
            assert entry.stress is None


def _remove_units(f):
    del f["structures/H4O2/mp2/forces"].attrs["units"]


def _remove_dataset(f):
    del f["structures/Si2/positions"]


def _wrong_format(f):
    f.attrs["format"] = "something-else"


def _wrong_shape(f):
    del f["structures/HO/hf/stress"]
    f["structures/HO/hf"].create_dataset("stress", data=np.full((1, 3), np.nan))
    f["structures/HO/hf/stress"].attrs["units"] = "eV/Å³"


def _unknown_rung(f):
    f.move("structures/H4O2/mp2", "structures/H4O2/ccsdt")


def _nan_convention(f):
    f["structures/H4O2/mp2/energy"][4] = 0.0  # a value where mp2 has no label


def _same_structure_twice(f):
    f["structures/H4O2/structure_id"][1] = f["structures/H4O2/structure_id"][0]


def _misnamed_group(f):
    f.move("structures/H4O2", "structures/H2O")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_remove_units, r"/structures/H4O2/mp2/forces has no 'units'"),
        (_remove_dataset, r"no dataset /structures/Si2/positions"),
        (_wrong_format, r"format 'something-else'"),
        (_wrong_shape, r"/structures/HO/hf/stress has shape \(1, 3\), expected \(1, 6\)"),
        (_unknown_rung, r"ccsdt: unknown rung"),
        (_nan_convention, r"/structures/H4O2/mp2/energy row 4 \(status ''\) breaks"),
        (_same_structure_twice, r"structure [0-9a-f]{64} is in the file twice"),
        (_misnamed_group, r"group /structures/H2O should be named 'H4O2'"),
    ],
)
def test_hdf5_read_rejects(corrupt, message, release, tmp_path):
    shutil.copy(release[0] / f"{NAME}.h5", tmp_path)
    with h5py.File(tmp_path / f"{NAME}.h5", "a") as f:
        corrupt(f)
    with pytest.raises(ReleaseError, match=message) as error:
        hdf5.read(tmp_path, [f"{NAME}.h5"])
    assert str(error.value).startswith(str(tmp_path / f"{NAME}.h5")) and "\n" not in str(
        error.value
    )


def _missing_key(db):
    (row,) = db.select(rung="cp2k")
    db.update(row.id, delete_keys=["split"])


def _wrong_metadata(db):
    db.metadata = {**db.metadata, "format": "hifidata-release-hdf5"}


def _same_label_twice(db):
    (row,) = db.select(rung="cp2k")
    # as Atoms: a new unique_id (ase.db refuses a row's twice)
    db.write(row.toatoms(), key_value_pairs=row.key_value_pairs, data=row.data)


def _ok_without_energy(db):
    (row,) = db.select(status="invalid_structure")
    db.update(row.id, status="ok")  # ok, but with no energy or forces


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_missing_key, r"row \d+ has no key 'split'"),
        (_wrong_metadata, r"metadata format 'hifidata-release-hdf5'"),
        (_ok_without_energy, r"row \d+ is ok but has no energy"),
        (_same_label_twice, r"two rows label structure [0-9a-f]{64} in rung cp2k"),
    ],
)
def test_asedb_read_rejects(corrupt, message, release, tmp_path):
    shutil.copy(release[0] / f"{NAME}.db", tmp_path)
    corrupt(ase.db.connect(tmp_path / f"{NAME}.db", use_lock_file=False))
    with pytest.raises(ReleaseError, match=message):
        asedb.read(tmp_path, [f"{NAME}.db"])


@pytest.mark.parametrize("module", [hdf5, asedb], ids=["hdf5", "asedb"])
def test_read_rejects_a_file_that_is_not_one(module, tmp_path):
    (tmp_path / "x").write_text("not a release")
    with pytest.raises(ReleaseError, match="not an"):
        module.read(tmp_path, ["x"])
