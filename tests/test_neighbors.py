"""Torch neighbor lists (hifidata.deploy.neighbors) against ASE's neighbor_list('ijS') as the
independent reference: the same sets of (i, j, shift), exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list

from hifidata.deploy import neighbors
from hifidata.deploy.neighbors import VerletList, edge_vectors, neighbor_pairs

CUTOFF = 5.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stack(atoms_list: list[Atoms], dtype=torch.float64):
    """positions, cells, pbc, system of a batch, as the MD engine holds them."""
    positions = torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=dtype)
    cells = torch.tensor(np.array([a.cell.array for a in atoms_list]), dtype=dtype)
    pbc = torch.tensor(np.array([a.pbc for a in atoms_list]))
    system = torch.cat([torch.full((len(a),), k) for k, a in enumerate(atoms_list)])
    return positions, cells, pbc, system


def as_list(i, j, shifts) -> list[tuple[int, ...]]:
    rounded = shifts.round().long().tolist()
    assert torch.equal(shifts, shifts.round())  # integer-valued
    return [(a, b, *s) for a, b, s in zip(i.tolist(), j.tolist(), rounded, strict=True)]


def as_set(i, j, shifts) -> set[tuple[int, ...]]:
    pairs = as_list(i, j, shifts)
    assert len(set(pairs)) == len(pairs)  # no pair twice
    return set(pairs)


def ase_set(atoms_list: list[Atoms], cutoff: float) -> set[tuple[int, ...]]:
    """ASE's pairs of every system, with indices offset into the batch."""
    pairs, offset = set(), 0
    for atoms in atoms_list:
        i, j, shifts = neighbor_list("ijS", atoms, cutoff)
        pairs |= {
            (a + offset, b + offset, *s) for a, b, s in zip(i, j, shifts.tolist(), strict=True)
        }
        offset += len(atoms)
    return {tuple(int(x) for x in p) for p in pairs}


def torch_set(atoms_list, cutoff, dtype=torch.float64, **kwargs) -> set[tuple[int, ...]]:
    return as_set(*neighbor_pairs(*stack(atoms_list, dtype), cutoff, **kwargs))


def paths(atoms_list, cutoff, **kwargs) -> dict[str, int]:
    neighbors.path_counts.clear()
    neighbor_pairs(*stack(atoms_list), cutoff, **kwargs)
    return dict(neighbors.path_counts)


def silicon(repeat: int, seed: int = 0) -> Atoms:
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    return atoms


def triclinic(seed: int = 0) -> Atoms:
    """Three atoms in a skewed cell about half the cutoff across: many images, self-images."""
    cell = [[3.0, 0.0, 0.0], [1.2, 2.8, 0.0], [0.7, -0.9, 2.6]]
    frac = np.random.default_rng(seed).random((3, 3))
    return Atoms("SiCO", scaled_positions=frac, cell=cell, pbc=True)


def slab(size=(3, 3, 3), zero_c: bool = False) -> Atoms:
    atoms = fcc111("Al", size=size, vacuum=5.0)
    atoms.rattle(0.05, seed=2)
    atoms.pbc = [True, True, False]
    if zero_c:  # a slab may also carry no vector at all along its non-periodic axis
        atoms.cell[2] = 0.0
    return atoms


def cluster() -> Atoms:
    """1000 Si atoms without a cell: binned on the bounding box."""
    atoms = silicon(5)
    atoms.pbc = False
    atoms.cell[:] = 0.0
    return atoms


@pytest.mark.parametrize("method", ["auto", "all_pairs"])
def test_large_cubic_cell_uses_cell_list(method):
    atoms = [silicon(4)]  # 512 atoms, 21.7 Å: 3 bins of ≥ 6 Å per axis
    assert torch_set(atoms, 6.0, method=method) == ase_set(atoms, 6.0)
    expected = "cell_list" if method == "auto" else "all_pairs"
    assert paths(atoms, 6.0, method=method) == {expected: 1}


def test_small_triclinic_cell_has_many_images_and_self_images():
    atoms = [triclinic()]
    found = torch_set(atoms, CUTOFF)
    assert found == ase_set(atoms, CUTOFF)
    assert any(i == j for i, j, *_ in found)  # an atom's own periodic images
    assert max(abs(p[4]) for p in found) == 2  # ceil(5 / h_c) images along c, h_c = 2.6 Å
    assert paths(atoms, CUTOFF) == {"all_pairs": 1}
    with pytest.raises(ValueError, match="3 cell-list bins"):
        neighbor_pairs(*stack(atoms), CUTOFF, method="cell_list")


@pytest.mark.parametrize("zero_c", [False, True])
def test_slab_has_no_images_along_its_open_axis(zero_c):
    atoms = [slab(zero_c=zero_c)]
    found = torch_set(atoms, CUTOFF)
    assert found == ase_set(atoms, CUTOFF)
    assert all(p[4] == 0 for p in found)
    assert any(p[2] != 0 for p in found)  # but images along a


def test_large_slab_uses_cell_list():
    atoms = [slab(size=(8, 8, 7))]  # 448 atoms, 3 bins per periodic axis, 2 across the slab
    assert torch_set(atoms, 6.0) == ase_set(atoms, 6.0)
    assert paths(atoms, 6.0) == {"cell_list": 1}


@pytest.mark.parametrize("method", ["auto", "cell_list"])
def test_molecule(method):
    atoms = [molecule("CH3CH2OH")]
    assert torch_set(atoms, 3.0, method=method) == ase_set(atoms, 3.0)


def test_large_molecule_bins_its_bounding_box():
    atoms = [cluster()]
    assert torch_set(atoms, 6.0) == ase_set(atoms, 6.0)
    assert paths(atoms, 6.0) == {"cell_list": 1}


def test_heterogeneous_batch_offsets_indices_per_system():
    ethanol = molecule("CH3CH2OH")
    small_si = [silicon(1, seed=k) for k in range(2)]  # same size: searched as one group
    atoms = [ethanol, triclinic(1), silicon(4), ethanol, slab(zero_c=True), *small_si]
    found = torch_set(atoms, 6.0)
    assert found == ase_set(atoms, 6.0)
    assert paths(atoms, 6.0) == {"cell_list": 1, "all_pairs": 6}
    system_of = np.repeat(np.arange(len(atoms)), [len(a) for a in atoms])
    assert all(system_of[i] == system_of[j] for i, j, *_ in found)
    assert {system_of[i] for i, *_ in found} == set(range(len(atoms)))


def test_systems_without_atoms_are_skipped():
    ethanol = molecule("CH3CH2OH")
    positions, cells, pbc, system = stack([ethanol, ethanol])
    system = system + system  # systems 0 and 2 hold the atoms; system 1 (and 3) none
    cells, pbc = torch.cat([cells, cells]), torch.cat([pbc, pbc])
    assert as_set(*neighbor_pairs(positions, cells, pbc, system, 3.0)) == ase_set(
        [ethanol, ethanol], 3.0
    )


@pytest.mark.parametrize("atoms", [triclinic(2), silicon(4, seed=3), slab(zero_c=True)])
def test_unwrapped_positions(atoms):
    """Atoms moved by whole lattice vectors (an MD run that does not wrap): the shifts must hold
    for the positions as given, as ASE's do."""
    moved = np.zeros((len(atoms), 3))
    moved[::2] = [2, -3, 1]
    moved[1::3] = [-1, 0, 4]
    atoms = atoms.copy()
    atoms.positions += (moved * atoms.pbc) @ atoms.cell.array
    assert np.abs(atoms.get_scaled_positions(wrap=False)[:, atoms.pbc]).max() > 1.5
    positions, cells, pbc, system = stack([atoms])
    i, j, shifts = neighbor_pairs(positions, cells, pbc, system, CUTOFF)
    assert as_set(i, j, shifts) == ase_set([atoms], CUTOFF)
    vectors = edge_vectors(positions, cells, system, i, j, shifts)
    ours = dict(zip(as_list(i, j, shifts), vectors, strict=True))
    theirs = zip(*neighbor_list("ijSD", atoms, CUTOFF), strict=True)
    for a, b, s, d in theirs:
        assert np.allclose(ours[(a, b, *s.tolist())].numpy(), d, atol=1e-9)


@pytest.mark.parametrize(
    ("method", "step"), [("all_pairs", "_square_distances"), ("cell_list", "_expand")]
)
def test_small_chunks(monkeypatch, method, step):
    """Candidates examined a few thousand at a time give the same pairs."""
    monkeypatch.setattr(neighbors, "CHUNK", 20000)
    calls = []
    original = getattr(neighbors, step)
    monkeypatch.setattr(neighbors, step, lambda *a: calls.append(1) or original(*a))
    atoms = [silicon(4, seed=5)]
    assert torch_set(atoms, 6.0, method=method) == ase_set(atoms, 6.0)
    assert len(calls) > 10  # one per chunk


def walk_batch() -> list[Atoms]:
    return [silicon(2, seed=6), molecule("CH3CH2OH"), triclinic(3)]


SCALINGS = {12: 1.015, 13: 0.98, 30: 1.02}  # step: NPT-like scaling of cells and positions


def check_walk(dtype, steps: int, seed: int = 7) -> VerletList:
    """Random walk with a few cell scalings: VerletList equals a fresh list at every step."""
    positions, cells, pbc, system = stack(walk_batch(), dtype)
    verlet = VerletList(CUTOFF, skin=1.0)
    rng = torch.Generator().manual_seed(seed)
    for step in range(steps):
        positions = positions + 0.04 * torch.randn(positions.shape, generator=rng, dtype=dtype)
        if step in SCALINGS:  # molecules keep their shape
            scale = SCALINGS[step]
            positions = positions * torch.where(pbc.any(1), scale, 1.0)[system, None].to(dtype)
            cells = cells * scale
        i, j, shifts, vectors = verlet.edges(positions, cells, pbc, system)
        fresh = neighbor_pairs(positions, cells, pbc, system, CUTOFF)
        assert as_set(i, j, shifts) == as_set(*fresh), f"step {step}"
        assert torch.equal(vectors, edge_vectors(positions, cells, system, i, j, shifts))
    frac = torch.linalg.solve(cells[0].T, positions[system == 0].T).T
    assert ((frac < 0) | (frac >= 1)).any()  # some atoms crossed the cell boundary
    return verlet


def test_verlet_list_along_random_walk():
    verlet = check_walk(torch.float64, steps=50)
    assert 1 < verlet.rebuilds <= 15


def test_verlet_list_rebuild_criteria():
    positions, cells, pbc, system = stack(walk_batch())
    verlet = VerletList(CUTOFF, skin=1.0)
    verlet.edges(positions, cells, pbc, system)
    verlet.edges(positions.clone(), cells.clone(), pbc, system)
    assert verlet.rebuilds == 1  # nothing moved

    def rebuilt_by(new_positions, new_cells, new_pbc=pbc, new_system=system) -> bool:
        before = verlet.rebuilds
        verlet.edges(new_positions, new_cells, new_pbc, new_system)
        return verlet.rebuilds > before

    nudged = positions.clone()
    nudged[70, 0] += 0.4  # under skin / 2
    assert not rebuilt_by(nudged, cells)
    nudged[70, 0] += 0.2  # now 0.6 from the build position
    assert rebuilt_by(nudged, cells)
    # compressing by 5 % with atoms carried along shrinks pairs by at most 0.3 Å: still valid
    periodic = pbc.any(1)[system, None]
    squeeze = torch.where(periodic, 0.95, 1.0)
    assert not rebuilt_by(nudged * squeeze, cells * 0.95)
    squeeze = torch.where(periodic, 0.8, 1.0)  # 20 %: a pair 6 Å apart comes to 4.8 Å
    assert rebuilt_by(nudged * squeeze, cells * 0.8)
    keep = system < 2  # a replica leaves the batch
    assert rebuilt_by(nudged[keep], cells[:2], pbc[:2], system[keep])


def test_gradients_flow_through_vectors():
    positions, cells, pbc, system = stack(walk_batch())
    positions.requires_grad_(True)
    cells.requires_grad_(True)

    def energy(positions, cells):
        vectors = VerletList(CUTOFF).edges(positions, cells, pbc, system)[3]
        return ((1 - vectors.norm(dim=-1) / CUTOFF) ** 2).sum()  # smooth at the cutoff

    energy(positions, cells).backward()
    assert positions.grad.abs().max() > 0.1
    h = 1e-6
    for atom, axis in [(3, 0), (66, 2), (74, 1)]:
        step = torch.zeros_like(positions)
        step[atom, axis] = h
        with torch.no_grad():
            numeric = (energy(positions + step, cells) - energy(positions - step, cells)) / (2 * h)
        assert float(positions.grad[atom, axis]) == pytest.approx(float(numeric), abs=1e-6)
    step = torch.zeros_like(cells)
    step[0, 1, 1] = h
    with torch.no_grad():
        numeric = (energy(positions, cells + step) - energy(positions, cells - step)) / (2 * h)
    assert float(cells.grad[0, 1, 1]) == pytest.approx(float(numeric), abs=1e-6)


def test_float32():
    atoms = [molecule("CH3CH2OH"), triclinic(4), silicon(4, seed=8), slab()]
    positions, cells, pbc, system = stack(atoms, torch.float32)
    i, j, shifts = neighbor_pairs(positions, cells, pbc, system, 6.0)
    assert shifts.dtype == torch.float32 and i.dtype == j.dtype == torch.int64
    found, reference = as_set(i, j, shifts), ase_set(atoms, 6.0)
    # float32 rounding may only decide pairs within a hair of the cutoff
    all_positions = np.concatenate([a.positions for a in atoms])
    all_cells = np.repeat([a.cell.array for a in atoms], [len(a) for a in atoms], axis=0)
    for a, b, *s in found ^ reference:
        d = all_positions[b] - all_positions[a] + np.array(s) @ all_cells[a]
        assert abs(np.linalg.norm(d) - 6.0) < 1e-4
    assert len(found ^ reference) <= 2
    verlet = check_walk(torch.float32, steps=20)  # through two cell scalings
    assert verlet.rebuilds >= 1


def test_wire_with_a_single_tilted_cell_vector():
    positions = np.random.default_rng(9).random((4, 3)) * 2
    cell = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.6, 0.3, 2.5]]
    atoms = [Atoms("H4", positions=positions, cell=cell, pbc=[False, False, True])]
    found = torch_set(atoms, CUTOFF)
    assert found == ase_set(atoms, CUTOFF)
    assert max(p[4] for p in found) == 2  # ceil(5 / |c|) images each side along the wire
