"""The campaign store: round trip, deduplication, one writer, and surviving crashes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from hifidata.calculators.base import Label, Method
from hifidata.datasets.store import Selection, Store
from hifidata.errors import StoreError
from hifidata.structures import structure_id

METHOD = Method("pyscf", {"theory": "hf", "basis": "sto-3g"}, name="hf")


def rattled(atoms, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        copy = atoms.copy()
        copy.positions += rng.normal(0, 0.05, copy.positions.shape)
        out.append(copy)
    return out


def a_label(sid, energy=-1.0, status="ok", n_atoms=6):
    ok = status == "ok"
    return Label(
        sid, METHOD.method_id, status,
        energy=energy if ok else float("nan"),
        forces=np.arange(n_atoms * 3, dtype=float).reshape(n_atoms, 3) * energy if ok else None,
        message="" if ok else "SCF did not converge in 2 cycles",
        wall_time=1.5, provenance={"engine": "pyscf", "scf_iterations": 12},
    )


def test_round_trip(tmp_path, water_dimer):
    structures = rattled(water_dimer, 5)
    structures[2].info.update(charge=1, spin=2)
    periodic = water_dimer.copy()
    periodic.set_cell([12.0, 13.0, 14.0])
    periodic.set_pbc(True)
    structures.append(periodic)
    origins = [{"protocol": "md", "temperature": 300.0, "step": i, "seed": 1} for i in range(6)]
    with Store(tmp_path / "c.h5", "a") as store:
        ids = store.add_structures(structures, origins)
        store.add_method(METHOD)
        store.add_labels([a_label(ids[0], -2.0), a_label(ids[1], status="scf_not_converged")])
        store.add_selection(Selection("dft", ids, ids[:2], {"features": np.eye(6)}, {"k": 1}))
        store.put_record("model", "m", {"path": "models/m", "metrics": np.array([1.0, 2.0])})

    store = Store(tmp_path / "c.h5")  # read-only, as `hifidata status` opens it
    assert ids == [structure_id(a) for a in structures]
    back = store.structures(ids)
    for original, restored in zip(structures, back, strict=True):
        assert structure_id(restored) == structure_id(original)
        np.testing.assert_array_equal(restored.positions, original.positions)
        np.testing.assert_array_equal(restored.get_pbc(), original.get_pbc())
    assert back[2].info == {"charge": 1, "spin": 2}
    assert store.origins(ids[3:4]) == [origins[3]]
    assert store.methods()[0]["definition"] == METHOD.canonical()

    labels = store.labels(METHOD.method_id)
    assert labels.status == ["ok", "scf_not_converged"]
    assert labels.energy[0] == -2.0 and np.isnan(labels.energy[1])
    np.testing.assert_array_equal(labels.forces[0], a_label(ids[0], -2.0).forces)
    assert labels.forces[1].shape == (0, 3)
    assert np.isnan(labels.stress).all()
    assert labels.message[1].startswith("SCF did not converge")
    assert len(labels.ok()) == 1

    selection = store.selection("dft")
    assert selection.selected_ids == ids[:2]
    np.testing.assert_array_equal(selection.arrays["features"], np.eye(6))
    assert store.record("model", "m")["metrics"] == [1.0, 2.0]
    with pytest.raises(StoreError, match="read-only"):
        store.add_structures(structures[:1])


def test_structures_are_stored_once(tmp_path, water_dimer):
    structures = rattled(water_dimer, 4)
    with Store(tmp_path / "c.h5", "a") as store:
        first = store.add_structures(structures)
        nudged = structures[0].copy()
        nudged.positions += 1e-8  # same structure to 1e-6 Å
        again = store.add_structures([*structures, nudged, structures[1]])
        assert again == [*first, first[0], first[1]]
        assert store.structure_ids() == first


def test_latest_label_wins_and_methods_register_once(tmp_path, water_dimer):
    with Store(tmp_path / "c.h5", "a") as store:
        (sid,) = store.add_structures([water_dimer])
        store.add_method(METHOD)
        store.add_method(METHOD)
        store.add_labels([a_label(sid, status="scf_not_converged")])
        store.add_labels([a_label(sid, -3.0)])
        assert len(store.methods()) == 1
        assert store.labeled_ids(METHOD.method_id) == {sid: "ok"}
        assert store.labels(METHOD.method_id).energy.tolist() == [-3.0]


def test_one_writer_at_a_time(tmp_path, water_dimer):
    with Store(tmp_path / "c.h5", "a"):
        with pytest.raises(StoreError, match="another process is writing"):
            Store(tmp_path / "c.h5", "a")
        Store(tmp_path / "c.h5").structure_ids()  # readers are never blocked
    Store(tmp_path / "c.h5", "a").close()  # the lock goes with the writer


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        Store(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        Store(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a hifidata store"):
        Store(tmp_path / "other.h5", "a")


def test_a_write_that_fails_midway_leaves_the_committed_store(tmp_path, water_dimer, monkeypatch):
    path = tmp_path / "c.h5"
    structures = rattled(water_dimer, 6)
    with Store(path, "a") as store:
        kept = store.add_structures(structures[:3])
        original_setitem = h5py.Dataset.__setitem__
        writes = []

        def disk_full_on_third_write(self, key, value):  # the fault a real disk gives
            writes.append(self.name)
            if len(writes) == 3:
                raise OSError("disk full")
            return original_setitem(self, key, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", disk_full_on_third_write)
        with pytest.raises(OSError, match="disk full"):
            store.add_structures(structures[3:])
        monkeypatch.undo()
        assert store.structure_ids() == kept  # the half-written rows are not there
        later = store.add_structures(structures[3:])  # and the next write reuses their space
        assert store.structure_ids() == kept + later
        assert [structure_id(a) for a in store.structures()] == kept + later


def test_malformed_labels_are_refused_before_anything_is_written(tmp_path, water_dimer):
    with Store(tmp_path / "c.h5", "a") as store:
        (sid,) = store.add_structures([water_dimer])
        wrong = a_label(sid)
        wrong.forces = np.zeros((6, 2))
        with pytest.raises(ValueError, match=r"labels.forces: row 1 has shape \(6, 2\)"):
            store.add_labels([a_label(sid), wrong])
        assert store.labeled_ids(METHOD.method_id) == {}


def test_tables_grow_past_their_first_allocation(tmp_path, water_dimer):
    many = rattled(water_dimer, 3000)  # more rows and atoms than a new store has room for
    with Store(tmp_path / "c.h5", "a") as store:
        ids = store.add_structures(many[:1000], [{"i": i} for i in range(1000)])
        ids += store.add_structures(many[1000:], [{"i": i} for i in range(1000, 3000)])
        store.add_selection(Selection("all", ids, ids[:10]))
        store.put_record("stage", "x", {"note": "ü" * 100_000})  # text past its byte pool
    store = Store(tmp_path / "c.h5")
    assert store.structure_ids() == ids
    assert store.origins(ids[2999:]) == [{"i": 2999}]
    np.testing.assert_array_equal(store.structures(ids[1500:1501])[0].positions,
                                  many[1500].positions)
    assert store.selection("all").selected_ids == ids[:10]
    assert store.record("stage", "x")["note"] == "ü" * 100_000


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from ase.collections import s22
    from hifidata.datasets.store import Store
    path, mode = sys.argv[1], sys.argv[2]
    atoms = s22["Water_dimer"]
    rng = np.random.default_rng(int(sys.argv[3]))
    def batch(n):
        out = []
        for _ in range(n):
            a = atoms.copy(); a.positions += rng.normal(0, 0.05, a.positions.shape); out.append(a)
        return out
    store = Store(path, "a")
    store.add_structures(batch(10))
    print("first write done", flush=True)
    if mode == "between":
        os.kill(os.getpid(), signal.SIGKILL)  # dies between two writes
    while True:  # mode "during": write until killed at a random moment
        store.add_structures(batch(50))
    """
)


def test_a_crash_between_two_writes_leaves_a_readable_store(tmp_path):
    path = tmp_path / "c.h5"
    run = subprocess.run([sys.executable, "-c", WRITER, str(path), "between", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert "first write done" in run.stdout
    store = Store(path)
    assert len(store.structure_ids()) == 10
    assert len(store.structures()) == 10
    with Store(path, "a") as writer:  # the dead writer's lock went with it
        writer.put_record("stage", "after", {"ok": True})


@pytest.mark.slow
def test_kills_during_writes_never_corrupt_the_store(tmp_path):
    """SIGKILL at random moments of a write loop: the store always reads, whole rows only."""
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(3)
    for attempt in range(8):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), "during", str(attempt)],
            stdout=subprocess.PIPE, text=True,
        )
        assert process.stdout.readline().startswith("first write done")
        time.sleep(rng.uniform(0.01, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        store = Store(path)
        ids = store.structure_ids()
        restored = store.structures()
        assert len(ids) == len(set(ids)) >= 10
        assert [structure_id(a) for a in restored] == ids  # every row whole and consistent
