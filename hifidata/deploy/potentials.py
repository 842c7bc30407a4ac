"""Potentials for the batched MD engine: a batch of systems as tensors in, energies, forces and
stresses out, all on one device.

``Graph`` is what every potential sees: the atoms of B systems stacked (``system`` says which
atom belongs to which), their cells, and the directed edges within the potential's cutoff with
their vectors, built on the device by hifidata.deploy.neighbors. A ``Potential`` maps a Graph
to an ``Output``. Units: Å, eV, eV/Å, eV/Å³; stress follows ASE's sign (``atoms.get_stress()``:
negative under compression), as a 3×3 per system.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list
from ase.stress import voigt_6_to_full_3x3_stress


@dataclass
class Graph:
    """B systems with N atoms in all and E directed edges (both i→j and j→i are listed)."""

    numbers: torch.Tensor  # (N,) int64 atomic numbers
    positions: torch.Tensor  # (N, 3) Å, not necessarily wrapped into the cell
    cells: torch.Tensor  # (B, 3, 3) Å, rows are lattice vectors; zeros for a molecule
    pbc: torch.Tensor  # (B, 3) bool
    system: torch.Tensor  # (N,) int64: the system each atom belongs to, ascending
    i: torch.Tensor  # (E,) int64 edge source (centre)
    j: torch.Tensor  # (E,) int64 edge destination (neighbour)
    shifts: torch.Tensor  # (E, 3) integer-valued: vectors = r_j - r_i + shifts @ cells[system[i]]
    vectors: torch.Tensor  # (E, 3) Å

    @property
    def n_systems(self) -> int:
        return int(self.cells.shape[0])

    @property
    def n_atoms(self) -> torch.Tensor:
        """(B,) int64 atoms per system."""
        return torch.bincount(self.system, minlength=self.n_systems)

    @property
    def volumes(self) -> torch.Tensor:
        """(B,) Å³ cell volumes (0 for a molecule)."""
        return torch.linalg.det(self.cells).abs()


@dataclass
class Output:
    energy: torch.Tensor  # (B,) eV
    forces: torch.Tensor  # (N, 3) eV/Å
    stress: torch.Tensor | None = None  # (B, 3, 3) eV/Å³, ASE's sign; None when not asked


class Potential(ABC):
    """Energies, forces and (on request) stresses of a Graph."""

    #: Å: the Graph handed to ``__call__`` holds every pair closer than this
    cutoff: float
    device: torch.device
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def __call__(self, graph: Graph, stress: bool = False) -> Output: ...

    def check_species(self, numbers: set[int]) -> None:
        """ValueError naming the elements this potential cannot describe (none by default)."""
        return None


# -- trained models -------------------------------------------------------------------------


class SevennetPotential(Potential):
    """A SevenNet network (fine-tuned, multi-fidelity with its chosen modality, or pretrained)
    fed directly with the engine's edges: no ASE graph, no copy to the host."""

    def __init__(self, model):
        self.network = model.network
        self.cutoff = model.cutoff
        self.device = next(self.network.parameters()).device
        self.modal_index = None if model.modal is None else self.network.modal_map[model.modal]

    def check_species(self, numbers: set[int]) -> None:
        _check_known(numbers, set(self.network.type_map or {}), "the SevenNet model")

    def __call__(self, graph: Graph, stress: bool = False) -> Output:
        import sevenn._keys as KEY

        data = {
            KEY.NODE_FEATURE: graph.numbers,
            KEY.ATOMIC_NUMBERS: graph.numbers,
            KEY.EDGE_IDX: torch.stack([graph.i, graph.j]),
            KEY.EDGE_VEC: graph.vectors.detach().to(self.dtype),
            KEY.BATCH: graph.system,
            KEY.NUM_ATOMS: graph.n_atoms,
            KEY.CELL_VOLUME: graph.volumes.to(self.dtype),
        }
        network = self.network
        network.set_is_batch_data(True)
        evaluate_modal = network.eval_modal_map
        if self.modal_index is not None:
            # sevenn maps modality names per graph from a Python list; the index tensor skips it
            data[KEY.MODAL_TYPE] = torch.full((graph.n_systems,), self.modal_index,
                                              dtype=torch.int64, device=graph.numbers.device)
            network.eval_modal_map = False
        try:
            out = network(data)
        finally:
            network.eval_modal_map = evaluate_modal
        energy = out[KEY.PRED_TOTAL_ENERGY].detach().reshape(-1)
        if KEY.PRED_FORCE not in out:  # no edge anywhere: nothing pulls anything
            forces = torch.zeros_like(graph.positions, dtype=energy.dtype)
        else:
            forces = out[KEY.PRED_FORCE].detach()
        result = Output(energy, forces)
        if stress:
            # sevenn's stress is −σ in the order xx yy zz xy yz zx
            s = -out[KEY.PRED_STRESS].detach().reshape(-1, 6)
            result.stress = torch.stack([
                torch.stack([s[:, 0], s[:, 3], s[:, 5]], -1),
                torch.stack([s[:, 3], s[:, 1], s[:, 4]], -1),
                torch.stack([s[:, 5], s[:, 4], s[:, 2]], -1),
            ], 1)
        return result


class PredictPotential(Potential):
    """Any model with ``predict(structures)`` -> {"energy", "forces"[, "stress"]} (a hifidata
    Model of a kind this module has no direct path for): the structures go to the host and
    through one ``predict`` call per step. Stresses only when ``predict`` gives them."""

    cutoff = 0.0

    def __init__(self, model, device: str | torch.device = "cpu"):
        self.model = model
        self.device = torch.device(device)

    def predict(self, structures: list[Atoms], stress: bool) -> dict:
        return self.model.predict(structures, batch_size=max(1, len(structures)))

    def __call__(self, graph: Graph, stress: bool = False) -> Output:
        out = self.predict(graph_structures(graph), stress)
        device = graph.positions.device
        result = Output(
            torch.as_tensor(np.asarray(out["energy"], dtype=float), device=device),
            torch.from_numpy(np.concatenate(out["forces"]).astype(float)).to(device),
        )
        if stress:
            if "stress" not in out:
                raise ValueError(f"{type(self.model).__name__} gives no stress (NPT needs it)")
            result.stress = torch.from_numpy(np.stack([
                np.zeros((3, 3)) if s is None else voigt_6_to_full_3x3_stress(s)
                for s in out["stress"]
            ])).to(device)
        return result


class ChgnetPotential(PredictPotential):
    """A CHGNet network. CHGNet builds its own crystal and bond graphs (pymatgen, on the host)
    from the structures, so this potential needs no edges and pays a host round trip per step;
    all systems still go through one model call."""

    def __init__(self, network):
        super().__init__(network, next(network.parameters()).device)

    def predict(self, structures: list[Atoms], stress: bool) -> dict:
        from hifidata.calculators.mlip import predict_batch

        return predict_batch(self.model, structures, batch_size=len(structures), stress=stress)


class CompositePotential(Potential):
    """base + Δ: the sum of two potentials on the same Graph (the wider cutoff of the two;
    each part sees only the pairs within its own)."""

    def __init__(self, base: Potential, delta: Potential):
        self.base, self.delta = base, delta
        self.cutoff = max(base.cutoff, delta.cutoff)
        self.device = base.device

    def check_species(self, numbers: set[int]) -> None:
        self.base.check_species(numbers)
        self.delta.check_species(numbers)

    def __call__(self, graph: Graph, stress: bool = False) -> Output:
        parts = [part(within(graph, part.cutoff), stress) for part in (self.base, self.delta)]
        energy = sum(p.energy.double() for p in parts)
        forces = sum(p.forces.double() for p in parts)
        total = None
        if stress:
            total = sum(p.stress.double() for p in parts)
        return Output(energy, forces, total)


def potential_for(model) -> Potential:
    """The Potential of a hifidata Model (training.models): SevenNet fed with the engine's
    edges, CHGNet, a composite of two, or any other model through its ``predict``."""
    kind = getattr(model, "kind", None)
    if kind == "sevennet":
        return SevennetPotential(model)
    if kind == "chgnet":
        return ChgnetPotential(model.network)
    if kind == "composite":
        return CompositePotential(potential_for(model.base), potential_for(model.delta))
    if hasattr(model, "predict"):
        return PredictPotential(model)
    raise ValueError(f"no MD potential for {type(model).__name__}: it has no predict")


# -- analytic pair potentials (test systems; checked against ASE's calculators) ---------------


class PairPotential(Potential):
    """E = ½ Σ_edges φ(r) (every pair listed twice), forces and stress by autograd through the
    edge vectors: dE/dr_j = g, dE/dr_i = −g for the vector r_j − r_i + S·cell, and the stress
    σ = (1/V) Σ vec ⊗ g, the derivative of the energy with respect to a homogeneous strain."""

    dtype = torch.float64

    def __init__(self, cutoff: float, device: str | torch.device = "cpu"):
        self.cutoff = float(cutoff)
        self.device = torch.device(device)

    def pair_energy(self, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, graph: Graph, stress: bool = False) -> Output:
        with torch.enable_grad():
            vectors = graph.vectors.detach().to(self.dtype).requires_grad_(True)
            pair = self.pair_energy(torch.linalg.norm(vectors, dim=-1))
            energy = torch.zeros(graph.n_systems, dtype=self.dtype, device=vectors.device)
            energy = energy.index_add(0, graph.system[graph.i], 0.5 * pair)
            (g,) = torch.autograd.grad(energy.sum(), vectors)
        forces = torch.zeros(graph.positions.shape, dtype=self.dtype, device=vectors.device)
        forces = forces.index_add(0, graph.i, g).index_add(0, graph.j, -g)
        result = Output(energy.detach(), forces)
        if stress:
            virial = torch.zeros(graph.n_systems, 3, 3, dtype=self.dtype, device=vectors.device)
            outer = vectors.detach()[:, :, None] * g[:, None, :]
            virial = virial.index_add(0, graph.system[graph.i], outer)
            volume = graph.volumes.to(self.dtype).clamp(min=1e-12)
            result.stress = virial / volume[:, None, None]
        return result


class LennardJones(PairPotential):
    """4ε((σ/r)¹² − (σ/r)⁶), shifted to zero at the cutoff: ASE's ``LennardJones(smooth=False)``
    (ε eV, σ Å; cutoff default 3σ)."""

    def __init__(self, epsilon: float = 1.0, sigma: float = 1.0, cutoff: float | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(3 * sigma if cutoff is None else cutoff, device)
        self.epsilon, self.sigma = float(epsilon), float(sigma)
        self.shift = self._bare(torch.tensor(self.cutoff, dtype=torch.float64)).item()

    def _bare(self, r: torch.Tensor) -> torch.Tensor:
        s6 = (self.sigma / r) ** 6
        return 4 * self.epsilon * (s6 * s6 - s6)

    def pair_energy(self, r: torch.Tensor) -> torch.Tensor:
        return self._bare(r) - self.shift


class HarmonicRepulsion(PairPotential):
    """Soft spheres: φ(r) = ½ k (r_c − r)² below the contact distance r_c (the cutoff), zero
    beyond; smooth enough for energy-conserving MD and cheap, a test system for thermostats."""

    def __init__(self, stiffness: float = 1.0, cutoff: float = 2.0,
                 device: str | torch.device = "cpu"):
        super().__init__(cutoff, device)
        self.stiffness = float(stiffness)

    def pair_energy(self, r: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.stiffness * (self.cutoff - r) ** 2


# -- helpers ---------------------------------------------------------------------------------


def within(graph: Graph, cutoff: float) -> Graph:
    """``graph`` with only the edges shorter than ``cutoff`` (itself when none is longer)."""
    if cutoff <= 0:
        return graph
    keep = torch.linalg.norm(graph.vectors, dim=-1) < cutoff
    if bool(keep.all()):
        return graph
    return replace(graph, i=graph.i[keep], j=graph.j[keep], shifts=graph.shifts[keep],
                   vectors=graph.vectors[keep])


def atoms_graph(structures: Sequence[Atoms], cutoff: float, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> Graph:
    """The Graph of ``structures`` with every pair closer than ``cutoff`` (Å), built on the host
    with ASE's neighbour list: the reference the engine's device-side builder is checked by."""
    numbers, positions, cells, pbcs, system = [], [], [], [], []
    edges_i, edges_j, shifts, vectors = [], [], [], []
    offset = 0
    for index, atoms in enumerate(structures):
        i, j, shift = neighbor_list("ijS", atoms, cutoff)
        cell = np.asarray(atoms.cell) if atoms.pbc.any() else np.zeros((3, 3))
        pos = atoms.get_positions()
        vectors.append(pos[j] - pos[i] + shift @ np.asarray(atoms.cell))  # float64, then cast
        edges_i.append(i + offset)
        edges_j.append(j + offset)
        shifts.append(shift)
        numbers.append(atoms.numbers)
        positions.append(pos)
        cells.append(cell)
        pbcs.append(atoms.pbc)
        system.append(np.full(len(atoms), index))
        offset += len(atoms)

    def tensor(parts, kind):
        return torch.as_tensor(np.concatenate(parts), dtype=kind, device=device)

    return Graph(
        numbers=tensor(numbers, torch.int64),
        positions=tensor(positions, dtype),
        cells=torch.as_tensor(np.array(cells), dtype=dtype, device=device),
        pbc=torch.as_tensor(np.array(pbcs), dtype=torch.bool, device=device),
        system=tensor(system, torch.int64),
        i=tensor(edges_i, torch.int64),
        j=tensor(edges_j, torch.int64),
        shifts=tensor(shifts, dtype),
        vectors=tensor(vectors, dtype),
    )


def graph_structures(graph: Graph) -> list[Atoms]:
    """The systems of ``graph`` as ase.Atoms on the host (positions wrapped into periodic
    cells), for potentials that build their own graphs."""
    numbers = graph.numbers.cpu().numpy()
    positions = graph.positions.detach().cpu().double().numpy()
    cells = graph.cells.detach().cpu().double().numpy()
    pbc = graph.pbc.cpu().numpy()
    bounds = np.cumsum(graph.n_atoms.cpu().numpy())[:-1]
    structures = []
    for b, (z, r) in enumerate(zip(np.split(numbers, bounds), np.split(positions, bounds),
                                   strict=True)):
        atoms = Atoms(z, r, cell=cells[b], pbc=pbc[b])
        if atoms.pbc.any():
            atoms.wrap()
        structures.append(atoms)
    return structures


def _check_known(numbers: set[int], known: set[int], what: str) -> None:
    unknown = sorted(numbers - known)
    if unknown:
        names = ", ".join(chemical_symbols[z] for z in unknown)
        raise ValueError(f"{what} knows no {names}")


def check_device(device: str | None) -> None:
    """ValueError for a device name torch cannot use here (cpu, cuda, cuda:N)."""
    if device is None or device == "cpu":
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type != "cuda":
        raise ValueError(f"device {device!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available here (use cpu)")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: no CUDA device is available with that index "
                         f"(this machine has {torch.cuda.device_count()})")


def load_potential(model: str | Path, device: str | None = None, rung: str | None = None
                   ) -> Potential:
    """The Potential of a hifidata model directory, a pretrained MLIP by name (``7net-0``,
    ``chgnet-0.3.0``, ...) or an exported artifact (hifidata.deploy.export); ``rung`` picks
    what a multi-fidelity model (or a composite's base) predicts. ModelError for a bad path,
    ValueError for a device that is not there."""
    from hifidata.training.models import load_model

    check_device(device)
    card = Path(model) / "model_card.json"
    if Path(model).is_dir() and card.is_file():
        from hifidata.deploy.export import load_artifact

        exported = json.loads(card.read_text(encoding="utf-8")).get("rung")
        if rung is not None and rung != exported:
            raise ValueError(f"the artifact {model} was exported for rung {exported!r}, not "
                             f"{rung!r} (export the model again with --rung {rung})")
        loaded = load_artifact(model, device=device)
        return loaded if isinstance(loaded, Potential) else potential_for(loaded)
    return potential_for(load_model(model, device=device, rung=rung))
