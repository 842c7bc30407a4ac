"""Pretrained universal MLIPs (CHGNet) as ASE calculators, with batched evaluation.

Weights come only from the installed wheels (CHGNet 0.3.0 and r2scan) or a local file: nothing
is downloaded. CHGNet sees every structure as periodic, so a molecule is placed in a cubic box
large enough that no atom sees a periodic image within the model's cutoff; energies then do not
depend on the box.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Lattice, Structure

#: Pretrained models shipped inside the chgnet wheel, by the names specs use.
PRETRAINED = {"chgnet-0.3.0": "0.3.0", "chgnet-r2scan": "r2scan"}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


_quiet_lock = threading.RLock()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow chgnet's own prints (every model construction, dataset and training epoch).

    stdout is one per process: two threads redirecting it at once could restore each other's
    buffer and silence the process for good, so quiet sections take turns.
    """
    with _quiet_lock, contextlib.redirect_stdout(io.StringIO()):
        yield


def load_chgnet(name_or_path: str = "chgnet-0.3.0", device: str | None = None):
    """A CHGNet model: a pretrained name from PRETRAINED or a file written by ``model.save``."""
    from chgnet.model import CHGNet

    device = device or default_device()
    with quiet():
        if name_or_path in PRETRAINED:
            model = CHGNet.load(model_name=PRETRAINED[name_or_path], verbose=False,
                                use_device=device)
        elif Path(name_or_path).is_file():
            model = CHGNet.from_file(name_or_path).to(device)
        else:
            known = ", ".join(PRETRAINED)
            raise ValueError(f"unknown MLIP {name_or_path!r}: use one of {known} or a model file")
    return model.eval()


# CHGNet builds its cell volumes from a tensor that requires grad: harmless, and printed on
# every call of a model in training or MD.
warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")

_shared: dict[tuple[str, str], object] = {}
_shared_lock = threading.Lock()


def pretrained_chgnet(name: str = "chgnet-0.3.0", device: str | None = None):
    """One shared instance per (name, device): loading costs, and inference is read-only.

    Tasks running side by side in threads ask for it at the same moment: the lock makes them
    share one load.
    """
    key = (name, device or default_device())
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_chgnet(*key)
        return _shared[key]


def model_cutoff(model) -> float:
    return float(model.graph_converter.atom_graph_cutoff)


def to_structure(atoms: Atoms, cutoff: float) -> Structure:
    """A pymatgen Structure for the model; molecules (no pbc) go into an isolating box."""
    if atoms.get_pbc().all():
        return Structure(
            Lattice(np.asarray(atoms.get_cell())), atoms.get_chemical_symbols(),
            atoms.get_positions(), coords_are_cartesian=True,
        )
    if atoms.get_pbc().any():
        raise ValueError("CHGNet needs fully periodic or fully non-periodic structures")
    positions = atoms.get_positions()
    extent = positions.max(axis=0) - positions.min(axis=0)
    side = float(extent.max()) + cutoff + 1.0  # every periodic image stays beyond the cutoff
    centered = positions - positions.min(axis=0) + (side - extent) / 2
    return Structure(
        Lattice.cubic(side), atoms.get_chemical_symbols(), centered, coords_are_cartesian=True
    )


def predict_batch(
    model, structures: Sequence[Atoms], batch_size: int = 64, features: bool = False,
    forces: bool = True,
) -> dict[str, list]:
    """Energies (eV), forces (eV/Å) and optionally structure features, many graphs per call.

    Returns {"energy": [float], "forces": [array (n, 3)], "features": [array (F,)]};
    ``forces=False`` skips the backward pass (featurization needs none) and returns no forces.
    """
    if not structures:
        return {"energy": [], "forces": [], "features": []}
    cutoff = model_cutoff(model)
    converted = [to_structure(atoms, cutoff) for atoms in structures]
    predictions = model.predict_structure(
        converted, task="ef" if forces else "e", return_crystal_feas=features,
        batch_size=batch_size,
    )
    if isinstance(predictions, dict):  # one structure in, one dict out
        predictions = [predictions]
    return {
        "energy": [float(p["e"]) * len(a) for p, a in zip(predictions, structures, strict=True)],
        "forces": [np.asarray(p["f"], dtype=float) for p in predictions] if forces else [],
        "features": [np.asarray(p["crystal_fea"], dtype=float) for p in predictions]
        if features else [],
    }


class MLIPCalculator(Calculator):
    """ASE calculator over a CHGNet model; molecules are boxed on every call."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        result = predict_batch(self.model, [self.atoms], batch_size=1)
        self.results = {
            "energy": result["energy"][0],
            "free_energy": result["energy"][0],
            "forces": result["forces"][0],
        }
