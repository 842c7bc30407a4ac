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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from pymatgen.core import Lattice, Structure

#: Pretrained models shipped inside the chgnet wheel, by the names specs use.
PRETRAINED = {"chgnet-0.3.0": "0.3.0", "chgnet-r2scan": "r2scan"}
#: Pretrained SevenNet checkpoints shipped inside the sevenn wheel (never downloaded); the
#: training recipes and load_model know them (hifidata.training.sevennet).
SEVENNET_PRETRAINED = ("7net-0", "7net-mf-0", "7net-l3i5")


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
    forces: bool = True, stress: bool = False,
) -> dict[str, list]:
    """Energies (eV), forces (eV/Å) and optionally stresses and structure features.

    Many graphs go through the model per call (``batch_size`` at a time), on the model's device
    (CPU or CUDA). Returns {"energy": [float], "forces": [array (n, 3)], "features": [array
    (F,)]}, plus "stress" when ``stress``: one Voigt 6-vector per structure in eV/Å³ with ASE's
    sign convention (``atoms.get_stress()``: negative under compression), None for a molecule,
    which has no cell. ``forces=False`` (and no stress) skips the backward pass and the
    autograd graph (featurization needs neither) and returns no forces.
    """
    if not structures:
        empty: dict[str, list] = {"energy": [], "forces": [], "features": []}
        return {**empty, "stress": []} if stress else empty
    cutoff = model_cutoff(model)
    result: dict[str, list] = {"energy": [], "forces": [], "features": []}
    if stress:
        result["stress"] = []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        graphs = [model.graph_converter(to_structure(atoms, cutoff)) for atoms in chunk]
        periodic = [bool(atoms.pbc.all()) for atoms in chunk]
        out = _evaluate(model, graphs, periodic, features, forces or stress, stress)
        for key, values in out.items():
            result[key] += values
    if not forces:
        result["forces"] = []
    return result


def _evaluate(
    model, graphs: list, periodic: list[bool], features: bool, gradients: bool, stress: bool
) -> dict[str, list]:
    """One forward pass over ``graphs``; forces (and stresses) from ONE backward pass.

    CHGNet's own predict_graph differentiates twice (forces, then stress) and keeps a graph for
    second derivatives (training needs them, MD does not). Here the energy is differentiated
    once with respect to the graphs' fractional coordinates f and lattices L (rows: lattice
    vectors; positions r = f L): forces = -(dE/df) L^-T, and for the strain ε, L → L (1 + ε)
    with f fixed, stress = (1/V) dE/dε = (1/V) Lᵀ (dE/dL), CHGNet's (and ASE's) convention.
    """
    device = next(model.parameters()).device
    model.eval()  # as CHGNet's predict_graph does
    with torch.set_grad_enabled(gradients):
        graphs = [g.to(device) for g in graphs]
        prediction = model(graphs, task="e", return_crystal_feas=features)
        atoms_per_graph = torch.tensor([len(g.atomic_number) for g in graphs], device=device)
        energy = prediction["e"] * (atoms_per_graph if model.is_intensive else 1)
        lattices = [g.lattice for g in graphs]
        inputs = [g.atom_frac_coord for g in graphs] + (lattices if stress else [])
        grads = torch.autograd.grad(energy.sum(), inputs, allow_unused=True) if gradients else ()
    out: dict[str, list] = {"energy": [float(e) for e in energy.detach().cpu()]}
    if features:
        out["features"] = [np.asarray(f, dtype=float)
                           for f in prediction["crystal_fea"].detach().cpu().numpy()]
    if not gradients:
        return out
    out["forces"] = []
    for g, lattice, d_frac in zip(graphs, lattices, grads[: len(graphs)], strict=True):
        if d_frac is None:  # a lone atom: no neighbours, no force
            d_frac = torch.zeros_like(g.atom_frac_coord)
        forces = -d_frac @ torch.linalg.inv(lattice.detach()).T
        out["forces"].append(forces.detach().cpu().numpy().astype(float))
    if stress:
        out["stress"] = []
        for lattice, d_lattice, is_periodic in zip(
            lattices, grads[len(graphs) :], periodic, strict=True
        ):
            if not is_periodic:  # a boxed molecule's "stress" is an artefact of the box
                out["stress"].append(None)
                continue
            lattice = lattice.detach()
            if d_lattice is None:
                d_lattice = torch.zeros_like(lattice)
            sigma = lattice.T @ d_lattice / torch.linalg.det(lattice).abs()
            out["stress"].append(
                full_3x3_to_voigt_6_stress(sigma.detach().cpu().numpy().astype(float))
            )
    return out


def batch_predictor(
    model, stress: bool = True, batch_size: int | None = None
) -> Callable[[Sequence[Atoms]], dict[str, list]]:
    """``predict(structures)`` for lockstep MD (hifidata.calculators.batching): energies, forces
    and, if ``stress``, the stresses of the periodic ones (NPT needs them; they come from the
    same backward pass, nearly free), all in one model call (``batch_size`` None: the whole
    list as one batch)."""

    def predict(structures: Sequence[Atoms]) -> dict[str, list]:
        size = batch_size or max(1, len(structures))
        return predict_batch(model, structures, batch_size=size, stress=stress)

    return predict


class MLIPCalculator(Calculator):
    """ASE calculator over a CHGNet model, one structure per call; molecules are boxed.

    Periodic structures also get the stress (eV/Å³, ASE's convention) with every call: it comes
    from the same backward pass as the forces, and an NPT integrator reads both each step.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.all())
        result = predict_batch(self.model, [self.atoms], batch_size=1, stress=periodic)
        self.results = {
            "energy": result["energy"][0],
            "free_energy": result["energy"][0],
            "forces": result["forces"][0],
        }
        if periodic:
            self.results["stress"] = result["stress"][0]
