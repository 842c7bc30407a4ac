"""Release formats: each module writes a ReleaseData into a folder and reads its entries back.

A format module has

- ``write(data, folder, name, progress=None) -> list[str]``: the files it wrote (names
  relative to ``folder``); ``progress(n)`` is called with the number of entries just written;
- ``read(folder, files) -> list[Entry]``: every label the files hold, raising ReleaseError
  (hifidata.datasets.release_data) on the first thing that breaks the documented layout.

``read`` is what ``hifidata verify`` and ``hifidata diff`` run, so it checks the layout, not
just that the bytes parse. Units everywhere: eV, Å, eV/Å, eV/Å³ (docs/release-format.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from ase import Atoms

FORMATS = ("extxyz", "hdf5", "asedb")


@dataclass
class Entry:
    """One label of one structure as a release file holds it."""

    structure_id: str
    rung: str
    split: str
    status: str  # "ok" or a failure class
    energy: float  # eV; NaN unless ok
    forces: np.ndarray | None  # (atoms, 3) eV/Å; None unless ok
    stress: np.ndarray | None  # (6,) eV/Å³ Voigt, ASE sign; None for molecules
    atoms: Atoms  # the structure (info: charge, spin)


def format_module(name: str) -> ModuleType:
    if name not in FORMATS:
        from hifidata.datasets.release_data import ReleaseError

        raise ReleaseError(f"unknown release format {name!r} (formats: {', '.join(FORMATS)})")
    return importlib.import_module(f"hifidata.datasets.formats.{name}")
