"""Trajectory files of the MD engine: extended XYZ (one file per replica) or one HDF5 file.

A frame is an ase.Atoms (wrapped positions, velocities) whose ``info`` holds ``step``,
``time_fs``, ``energy`` (potential, eV), ``temperature_K``, ``replica`` and ``seed``.

extxyz: ``run.extxyz`` for one replica, ``run-r000.extxyz``, ``run-r001.extxyz``, ... for
several; frames are appended as they come, so a killed run keeps what it wrote.

HDF5 (``.h5``/``.hdf5``): group ``replica_000`` ... with ``numbers`` (n,), ``pbc`` (3,) and
growing datasets ``positions`` (F, n, 3) Å, ``velocities`` (F, n, 3) Å/fs, ``cell``
(F, 3, 3) Å, ``energy`` (F,) eV, ``temperature`` (F,) K, ``step`` (F,), ``time`` (F,) fs; each
dataset carries its unit in a ``units`` attribute. The file is flushed after every frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
from ase import Atoms, units
from ase.io import write

EXTXYZ_SUFFIXES = (".extxyz", ".xyz")
HDF5_SUFFIXES = (".h5", ".hdf5")


class TrajectoryWriter(ABC):
    """Frames of many replicas, written as the run makes them."""

    @abstractmethod
    def write(self, replica: int, frame: Atoms) -> None: ...

    def close(self) -> None:
        return None

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_trajectory(path: str | Path, replicas: int) -> TrajectoryWriter:
    """A writer for ``path`` by its suffix; ValueError for an unknown one or an existing file
    (a trajectory is never appended to by accident)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in EXTXYZ_SUFFIXES:
        writer: TrajectoryWriter = ExtxyzTrajectory(path, replicas)
    elif suffix in HDF5_SUFFIXES:
        writer = HDF5Trajectory(path)
    else:
        raise ValueError(f"trajectory {path}: unknown format {suffix or '(no suffix)'}; "
                         f"use {', '.join(EXTXYZ_SUFFIXES + HDF5_SUFFIXES)}")
    return writer


class ExtxyzTrajectory(TrajectoryWriter):
    def __init__(self, path: Path, replicas: int):
        self.paths = ([path] if replicas == 1 else
                      [path.with_name(f"{path.stem}-r{k:03d}{path.suffix}")
                       for k in range(replicas)])
        existing = [p for p in self.paths if p.exists()]
        if existing:
            raise ValueError(f"trajectory {existing[0]} exists; choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, replica: int, frame: Atoms) -> None:
        write(self.paths[replica], frame, format="extxyz", append=True)


class HDF5Trajectory(TrajectoryWriter):
    UNITS: ClassVar[dict[str, str]] = {
        "positions": "Å", "velocities": "Å/fs", "cell": "Å", "energy": "eV", "temperature": "K",
        "step": "", "time": "fs",
    }

    def __init__(self, path: Path):
        import h5py

        if path.exists():
            raise ValueError(f"trajectory {path} exists; choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(path, "w")
        self.file.attrs["format"] = "hifidata-md-trajectory"
        self.file.attrs["version"] = 1

    def write(self, replica: int, frame: Atoms) -> None:
        name = f"replica_{replica:03d}"
        if name not in self.file:
            self._create(name, frame)
        group = self.file[name]
        values = {
            "positions": frame.positions,
            "velocities": frame.get_velocities() * units.fs,  # Å/ASE-time → Å/fs
            "cell": frame.cell[:],
            "energy": frame.info["energy"],
            "temperature": frame.info["temperature_K"],
            "step": frame.info["step"],
            "time": frame.info["time_fs"],
        }
        for key, value in values.items():
            data = group[key]
            data.resize(data.shape[0] + 1, axis=0)
            data[-1] = value
        self.file.flush()

    def _create(self, name: str, frame: Atoms) -> None:
        group = self.file.create_group(name)
        group["numbers"] = frame.numbers
        group["pbc"] = frame.pbc
        group.attrs["seed"] = frame.info.get("seed", 0)
        n = len(frame)
        shapes = {"positions": (n, 3), "velocities": (n, 3), "cell": (3, 3), "energy": (),
                  "temperature": (), "step": (), "time": ()}
        for key, shape in shapes.items():
            dtype = np.int64 if key == "step" else np.float64
            data = group.create_dataset(key, (0, *shape), maxshape=(None, *shape), dtype=dtype,
                                        chunks=(16, *shape))
            data.attrs["units"] = self.UNITS[key]

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()
