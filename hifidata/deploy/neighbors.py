"""Neighbor lists built with torch on the device (CPU or CUDA) for the batched MD engine.

Conventions are ASE's ``neighbor_list('ijS', atoms, cutoff)``, as in
hifidata.deploy.potentials.Graph: B systems stacked, ``system`` (N,) the ascending system index
of every atom, ``cells`` (B, 3, 3) with lattice vectors as rows (zeros for a molecule), ``pbc``
(B, 3). An edge (i, j, S) means ``r_j - r_i + S @ cells[system[i]]`` is shorter than the
cutoff. The list is full (i→j and j→i both appear), indices are global (into the stacked
positions), and i == j is dropped only for S == 0: when a cell is smaller than the cutoff an
atom's own periodic images are its neighbours. Axes without pbc get no images.

Positions need not be wrapped (MD does not wrap every step). The search wraps them into the cell
(fractional coordinates in [0, 1) along periodic axes), finds pairs, then adds the wrapping's
integer offsets back into S, so the shifts hold for the positions as given. Non-periodic axes
whose cell vector is zero are filled in by ``complete_cells`` so every cell can be inverted.

Two algorithms, picked per system:

* all pairs × images: every atom against every atom and every image shift within
  ``ceil(cutoff / h_a)`` cells along each periodic axis a (h_a = V / |b × c| is the distance
  between lattice planes; after wrapping no farther image can be in range). Systems of the same
  size and image counts are batched together, and candidates are examined ``CHUNK`` at a time so
  memory stays bounded. Cheap for small systems and the only choice for cells smaller than 3
  cutoffs.
* cell list: bins in fractional coordinates at least one cutoff wide (measured perpendicular to
  the lattice planes), so a neighbour lies in one of the 27 bins around (and including) an
  atom's own. Only half of them are searched (the later atoms of the own bin and 13 of the 26
  others); each pair found is then listed in both directions. Along periodic axes the
  neighbouring bin index wraps and the wrap becomes the image shift; along non-periodic axes
  the bins span the atoms' bounding box. Atoms are sorted by bin and the candidates of every
  (atom, neighbouring bin) are expanded with ``repeat_interleave``: no Python loop over atoms,
  no padding, cost linear in N. Needs ≥ 3 bins along each periodic axis (fewer would visit a
  bin twice, and one image per side must suffice); used for systems of
  ``CELL_LIST_MIN_ATOMS`` or more when it examines clearly fewer candidates than all pairs.

Candidates are kept with a small margin above the cutoff; the final test recomputes every vector
from the positions as given with ``edge_vectors`` (the same arithmetic VerletList uses), so both
agree bit for bit on which pairs are inside the cutoff.

``VerletList`` keeps a list built with cutoff + skin and rebuilds it only when atoms or cells
have moved enough that a pair outside it could have come within the cutoff.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch

Tensor = torch.Tensor
Method = Literal["auto", "all_pairs", "cell_list"]

#: candidate pairs (atom pairs × images) examined at once by all pairs on a CPU: bounds the
#: temporary memory and keeps it in cache (larger and smaller chunks measured slower); a cell
#: list's candidate carries about 4× more temporaries (indices, gathered positions), so it takes
#: a quarter as many
CHUNK = 2**18
#: the same on a GPU, where each chunk costs kernel launches and a host synchronisation
CUDA_CHUNK = 2**22
#: systems smaller than this always use all pairs
CELL_LIST_MIN_ATOMS = 400
#: a cell list examines candidates more slowly than all pairs; it must win by this factor
CELL_LIST_ADVANTAGE = 2.0

#: systems handled by each algorithm since import (a hook for tests and benchmarks)
path_counts: Counter[str] = Counter()

# an atom's own bin (first) and the 13 of its 26 neighbouring bins whose first non-zero offset
# is positive: the other 13 are the same bin pairs seen from the other side
_HALF_SHELL = torch.cartesian_prod(*[torch.arange(-1, 2)] * 3)[13:]


def complete_cells(cells: Tensor) -> Tensor:
    """(B, 3, 3) cells whose zero rows (non-periodic axes of molecules, slabs, wires) are
    replaced by unit vectors orthogonal to the other rows, so that every cell is invertible."""
    missing = cells.norm(dim=-1) < 1e-8  # (B, 3)
    n_missing = missing.sum(-1)
    eye = torch.eye(3, dtype=cells.dtype, device=cells.device)
    out = torch.where((n_missing == 3)[:, None, None], eye, cells)
    # one row present: fill the first missing row with a unit vector perpendicular to it
    present = (out * (~missing)[..., None]).sum(1)
    axis = eye[present.abs().argmin(-1)]
    perp = torch.nn.functional.normalize(torch.linalg.cross(present, axis), dim=-1)
    first = missing & (missing.cumsum(-1) == 1) & (n_missing == 2)[:, None]
    out = torch.where(first[..., None], perp[:, None, :], out)
    # now at most one row is missing: the normal of the other two
    last = missing & ~first & (n_missing < 3)[:, None]
    normal = torch.nn.functional.normalize(_plane_normals(out), dim=-1)
    return torch.where(last[..., None], normal, out)


def perpendicular_heights(cells: Tensor) -> Tensor:
    """(B, 3) distances between neighbouring lattice planes, h_a = V / |b × c| and cyclic, of
    complete cells: a pair closer than r differs by less than r / h_a in fractional coordinate a."""
    volume = torch.linalg.det(cells).abs()
    return volume[:, None] / _plane_normals(cells).norm(dim=-1)


def edge_vectors(
    positions: Tensor, cells: Tensor, system: Tensor, i: Tensor, j: Tensor, shifts: Tensor
) -> Tensor:
    """(E, 3) r_j - r_i + shifts @ cells[system[i]]; differentiable wrt positions and cells."""
    rows = cells.reshape(-1, 9)
    if rows.shape[0] > 1:  # each edge's own cell; a single cell is just broadcast
        rows = rows.index_select(0, system.index_select(0, i))
    # written out rather than a matmul: the same arithmetic for any E, so results are bitwise
    # reproducible between a fresh list and a filtered Verlet list
    offset = shifts[:, 0:1] * rows[:, 0:3] + shifts[:, 1:2] * rows[:, 3:6]
    offset = offset + shifts[:, 2:3] * rows[:, 6:9]
    return positions.index_select(0, j) - positions.index_select(0, i) + offset


def neighbor_pairs(
    positions: Tensor,
    cells: Tensor,
    pbc: Tensor,
    system: Tensor,
    cutoff: float,
    method: Method = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Every directed pair closer than ``cutoff`` within each system, in no particular order.

    Returns i, j (E,) int64 global atom indices and shifts (E, 3) of the positions' dtype holding
    integers, with r_j - r_i + shifts @ cells[system[i]] the pair vector. ``method`` forces an
    algorithm ("cell_list" raises ValueError for a system with fewer than 3 bins along a
    periodic axis); "auto" picks one per system.
    """
    if method not in ("auto", "all_pairs", "cell_list"):
        raise ValueError(f"unknown method {method!r}")
    with torch.no_grad():
        positions, cells = positions.detach(), cells.detach()
        pbc = pbc.to(torch.bool)
        full = complete_cells(cells)
        _check_periodic_axes(full, cells, pbc)
        reach = _reach(positions, cutoff)
        frac, wrapped, offsets = _wrap(positions, full, pbc, system)
        plan = _plan(frac, full, pbc, system, reach)
        # exact test chunk by chunk: small temporaries stay in cache
        parts = [
            _exact(part, positions, cells, system, offsets, cutoff)
            for part in _search(plan, frac, wrapped, cells, reach, method)
        ]
        if not parts:
            empty = torch.zeros(0, dtype=torch.long, device=positions.device)
            return empty, empty, positions.new_zeros(0, 3)
        i, j, shifts = (torch.cat(column) for column in zip(*parts, strict=True))
        return i, j, shifts


def _exact(
    part: tuple[Tensor, Tensor, Tensor],
    positions: Tensor,
    cells: Tensor,
    system: Tensor,
    offsets: Tensor,
    cutoff: float,
) -> tuple[Tensor, ...]:
    """Candidates' shifts made right for the positions as given (wrapped = positions -
    offsets @ cell), then only the pairs closer than the cutoff, tested exactly as VerletList
    tests them."""
    i, j, shifts = part
    shifts = shifts + offsets.index_select(0, i) - offsets.index_select(0, j)
    keep = _within(edge_vectors(positions, cells, system, i, j, shifts), cutoff)
    return _select(keep, i, j, shifts)


def _plane_normals(cells: Tensor) -> Tensor:
    """Row a of the result is the cross product of the other two rows (b × c, c × a, a × b)."""
    return torch.linalg.cross(cells.roll(-1, dims=-2), cells.roll(-2, dims=-2))


def _select(mask: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows where ``mask`` holds (faster on CPU than boolean indexing each tensor)."""
    rows = mask.nonzero().squeeze(1)
    return tuple(t.index_select(0, rows) for t in tensors)


def _within(vectors: Tensor, cutoff: float) -> Tensor:
    x, y, z = vectors.unbind(-1)
    return x * x + y * y + z * z < cutoff * cutoff


def _check_periodic_axes(full: Tensor, cells: Tensor, pbc: Tensor) -> None:
    if bool((pbc & (cells.norm(dim=-1) < 1e-8)).any()):
        raise ValueError("a periodic axis has a zero cell vector")
    if bool((torch.linalg.det(full).abs() < 1e-12).any()):
        raise ValueError("a cell is singular")


def _reach(positions: Tensor, cutoff: float) -> float:
    """The search radius: the cutoff plus a margin for rounding in wrapped coordinates, so that
    only the final test against the positions as given decides."""
    eps = torch.finfo(positions.dtype).eps
    scale = float(positions.abs().max()) if positions.numel() else 0.0
    return cutoff * (1 + 1e-6) + 64 * eps * (scale + cutoff)


def _wrap(positions: Tensor, full: Tensor, pbc: Tensor, system: Tensor):
    """Fractional coordinates wrapped into [0, 1) along periodic axes, the matching Cartesian
    positions, and the integer offsets removed (wrapped = positions - offsets @ cell)."""
    frac = torch.einsum("ni,nij->nj", positions, torch.linalg.inv(full)[system])
    offsets = torch.where(pbc[system], frac.floor(), torch.zeros_like(frac))
    wrapped = positions - torch.einsum("ni,nij->nj", offsets, full[system])
    return frac - offsets, wrapped, offsets


@dataclass
class _System:
    """What the search needs to know about one system, on the host."""

    index: int
    start: int  # global index of its first atom
    size: int
    images: tuple[int, int, int]  # image cells each side per axis; 0 on non-periodic axes
    bins: list[int]  # cell-list bins per axis, each at least one reach wide
    low: Tensor  # (3,) fractional coordinate where bin 0 starts
    span: Tensor  # (3,) fractional extent covered by the bins

    @property
    def periodic(self) -> list[bool]:
        return [k > 0 for k in self.images]


def _plan(frac: Tensor, full: Tensor, pbc: Tensor, system: Tensor, reach: float) -> list[_System]:
    """Sizes, image counts and bin counts of every non-empty system, with one host transfer."""
    n_systems = full.shape[0]
    heights = perpendicular_heights(full)
    sizes = torch.bincount(system, minlength=n_systems)
    index = system[:, None].expand(-1, 3)
    low = frac.new_full((n_systems, 3), math.inf).scatter_reduce(0, index, frac, "amin")
    high = frac.new_full((n_systems, 3), -math.inf).scatter_reduce(0, index, frac, "amax")
    low = torch.where(pbc | (sizes == 0)[:, None], 0.0, low)
    span = torch.where(pbc | (sizes == 0)[:, None], 1.0, high - low).clamp_min(1e-9)
    images = torch.where(pbc, torch.ceil(reach / heights), 0.0)
    # the bounding box of a sparse molecule can be huge: cap before converting to integers
    bins = torch.floor(span * heights / reach).clamp(1, 2**20)
    table = torch.cat([sizes[:, None].to(frac.dtype), images, bins], 1).long().tolist()
    plan, start = [], 0
    for b, (size, *rest) in enumerate(table):
        if size:
            images_b = (rest[0], rest[1], rest[2])
            bins_b = _capped_bins(rest[3:], [k > 0 for k in images_b], size)
            plan.append(_System(b, start, size, images_b, bins_b, low[b], span[b]))
        start += size
    return plan


def _capped_bins(bins: list[int], periodic: list[bool], size: int) -> list[int]:
    """Halve the largest bin count while there are far more bins than atoms (empty bins cost
    memory and time); periodic axes keep at least the 3 bins the cell list needs."""
    bins = list(bins)
    limit = max(27, 2 * size)
    while math.prod(bins) > limit:
        floors = [3 if p else 1 for p in periodic]
        reducible = [a for a in range(3) if bins[a] > floors[a]]
        if not reducible:
            break
        a = max(reducible, key=bins.__getitem__)
        bins[a] = max(floors[a], bins[a] // 2)
    return bins


def _use_cell_list(s: _System, method: Method) -> bool:
    valid = all(nb >= 3 for nb, p in zip(s.bins, s.periodic, strict=True) if p)
    if method == "cell_list" and not valid:
        raise ValueError(f"system {s.index}: fewer than 3 cell-list bins along a periodic axis")
    if method != "auto":
        return method == "cell_list"
    if s.size < CELL_LIST_MIN_ATOMS or not valid:
        return False
    # candidates per atom pair: every image for all pairs, 3 of nb bins per axis for the cell list
    all_pairs = math.prod(2 * k + 1 for k in s.images)
    cell_list = math.prod(min(3, nb) / nb for nb in s.bins)
    return cell_list * CELL_LIST_ADVANTAGE < all_pairs


def _search(plan, frac, wrapped, cells, reach, method) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Candidate (i, j, shift in wrapped coordinates) within reach, per system or group."""
    parts = []
    groups: dict[tuple, list[_System]] = {}
    for s in plan:
        if _use_cell_list(s, method):
            path_counts["cell_list"] += 1
            atoms = slice(s.start, s.start + s.size)
            parts.extend(_cell_list(frac[atoms], wrapped[atoms], cells[s.index], s, reach))
        else:
            groups.setdefault((s.size, s.images), []).append(s)
    for (size, images), members in groups.items():
        path_counts["all_pairs"] += len(members)
        parts.extend(_all_pairs(wrapped, cells, members, size, images, reach))
    return parts


def _chunk(device: torch.device) -> int:
    return CHUNK if device.type == "cpu" else CUDA_CHUNK


def _image_grid(images: tuple[int, int, int], like: Tensor) -> Tensor:
    """(K, 3) every image shift, (0, 0, 0) at index K // 2."""
    axes = [torch.arange(-k, k + 1, dtype=like.dtype, device=like.device) for k in images]
    return torch.cartesian_prod(*axes).reshape(-1, 3)


def _all_pairs(wrapped, cells, members, size, images, reach):
    """All pairs × images for G systems of ``size`` atoms each, ``CHUNK`` candidates at a time."""
    device = wrapped.device
    first = torch.tensor([s.start for s in members], device=device)
    atoms = first[:, None] + torch.arange(size, device=device)  # (G, n) global indices
    positions = wrapped[atoms]  # (G, n, 3)
    grid = _image_grid(images, wrapped)
    translations = torch.einsum("ks,gsc->gkc", grid, cells[[s.index for s in members]])
    n_images, rows = grid.shape[0], len(members) * size
    step = max(1, _chunk(device) // (n_images * size))
    parts = []
    for r0 in range(0, rows, step):
        row = torch.arange(r0, min(rows, r0 + step), device=device)
        g, a = row // size, row % size
        d2 = _square_distances(positions[g], positions[g, a], translations[g])  # (R, K, n)
        d2[torch.arange(len(row), device=device), n_images // 2, a] = math.inf  # i itself, S = 0
        r, k, b = (d2 < reach * reach).nonzero(as_tuple=True)
        parts.append((atoms[g[r], a[r]], atoms[g[r], b], grid[k]))
    return parts


def _square_distances(others: Tensor, centres: Tensor, translations: Tensor) -> Tensor:
    """(R, K, n) |others[r, b] + translations[r, k] - centres[r]|², one component at a time so
    that no (R, K, n, 3) tensor is ever allocated."""
    total = None
    for c in range(3):
        x = others[:, None, :, c] + translations[:, :, None, c]
        x.sub_(centres[:, c, None, None]).square_()
        total = x if total is None else total.add_(x)
    return total


def _cell_list(frac: Tensor, wrapped: Tensor, cell: Tensor, s: _System, reach: float):
    """Candidates of one system through bins at least ``reach`` wide (see module docstring).

    Half shell: each atom looks at later atoms of its own bin and at all atoms of 13 of its 26
    neighbouring bins; every pair is found once and then listed in both directions."""
    nb = torch.tensor(s.bins, device=frac.device)
    ijk = torch.floor((frac - s.low) / s.span * nb).long().clamp(torch.zeros_like(nb), nb - 1)
    order = torch.argsort(_flat_bin(ijk, nb))  # atoms sorted by bin: contiguous neighbours
    positions = wrapped[order]
    periodic = torch.tensor(s.periodic, device=frac.device)
    first, count, image = _slots(ijk[order], nb, math.prod(s.bins), periodic)
    image = image.to(frac.dtype)
    # each slot's centre moved back by the neighbour's image: vector = r_j - centre
    centre = (positions[:, None, :] - image @ cell).reshape(-1, 3)
    image = image.reshape(-1, 3)
    parts = []
    for slots in _chunks(count, _HALF_SHELL.shape[0]):
        slot, j = _expand(slots, first, count)
        d = positions.index_select(0, j) - centre.index_select(0, slot)
        slot, j = _select(_within(d, reach), slot, j)
        i = torch.div(slot, _HALF_SHELL.shape[0], rounding_mode="floor")
        i, j = order.index_select(0, i) + s.start, order.index_select(0, j) + s.start
        shifts = image.index_select(0, slot)
        parts.append((torch.cat([i, j]), torch.cat([j, i]), torch.cat([shifts, -shifts])))
    return parts


def _slots(ijk: Tensor, nb: Tensor, n_bins: int, periodic: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For every (bin-sorted) atom and each bin of its half shell: the first candidate's index,
    the number of candidates (0 past a non-periodic edge), and the image shift that a periodic
    wrap of the bin index implies. Flattened to n * 14 slots, except the (n, 14, 3) images."""
    own = _flat_bin(ijk, nb)
    counts = torch.bincount(own, minlength=n_bins)
    bin_end = torch.cumsum(counts, 0)
    neighbour = ijk[:, None, :] + _HALF_SHELL.to(ijk.device)  # (n, 14, 3)
    image = torch.div(neighbour, nb, rounding_mode="floor")
    inside = (periodic | (image == 0)).all(-1)
    flat = _flat_bin(neighbour - image * nb, nb)
    first = bin_end[flat] - counts[flat]
    count = torch.where(inside, counts[flat], 0)
    # own bin (slot 0): only the atoms after this one, so each pair is met once
    after = torch.arange(1, len(own) + 1, device=ijk.device)
    first[:, 0], count[:, 0] = after, bin_end[own] - after
    return first.reshape(-1), count.reshape(-1), torch.where(periodic, image, 0)


def _flat_bin(ijk: Tensor, nb: Tensor) -> Tensor:
    return (ijk[..., 0] * nb[1] + ijk[..., 1]) * nb[2] + ijk[..., 2]


def _chunks(count: Tensor, slots_per_atom: int) -> list[slice]:
    """Ranges of slots (whole atoms) holding about a quarter ``CHUNK`` candidates each."""
    per_atom = count.reshape(-1, slots_per_atom).sum(1).cumsum(0)
    total = int(per_atom[-1])
    n_chunks = max(1, math.ceil(4 * total / _chunk(count.device)))
    targets = torch.arange(1, n_chunks, device=count.device) * (total / n_chunks)
    cuts = torch.searchsorted(per_atom, targets.to(per_atom.dtype), right=True).tolist()
    bounds = [0, *cuts, per_atom.shape[0]]
    return [slice(a * slots_per_atom, b * slots_per_atom) for a, b in pairwise(bounds)]


def _expand(slots: slice, first: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Every candidate of a range of slots: its slot and its atom j (bin-sorted index)."""
    count = count[slots]
    total = int(count.sum())
    local = torch.repeat_interleave(
        torch.arange(len(count), device=count.device), count, output_size=total
    )
    # j runs from the slot's first atom: first + (candidate index - candidates before the slot)
    base = first[slots] - (torch.cumsum(count, 0) - count)
    j = base.index_select(0, local) + torch.arange(total, device=count.device)
    return local + slots.start, j


@dataclass
class _Build:
    """The state a Verlet list was built from."""

    positions: Tensor  # (N, 3) detached
    cells: Tensor
    pbc: Tensor
    system: Tensor
    full_inverse: Tensor  # inverse of the completed build cells
    frac: Tensor  # build positions in the completed build cells' fractional coordinates
    images: Tensor  # (B, 3) images per side the build needed for cutoff + skin
    i: Tensor
    j: Tensor
    shifts: Tensor


class VerletList:
    """A neighbor list built with ``cutoff + skin`` and reused while it provably still holds
    every pair closer than ``cutoff``; ``edges`` filters it to the current cutoff.

    Rebuild criteria (all checked on every ``edges`` call, each costing O(N)):

    * the first call, or a different number of atoms or systems, pbc, system assignment, device
      or dtype (e.g. a replica was removed from the batch);
    * displacement: each atom's displacement u since the build is measured from its build
      position carried affinely by the cell change, r_build @ inv(C_build) @ C_now (molecules:
      no cell change). A pair left out of the list was at least cutoff + skin apart; its
      distance can shrink by at most 2·max|u| (both atoms move toward each other), hence the
      classic skin / 2 per atom;
    * strain: under the affine map M = inv(C_build) @ C_now a vector of length L keeps at least
      σ_min(M)·L, so a left-out pair is now at least σ_min·(cutoff + skin) - 2·max|u| apart.
      Rebuild when max|u| + (1 - σ_min)·(cutoff + skin) / 2 > skin / 2, per system. This bound
      covers every image, so a rebuild because a perpendicular height shrank until more images
      are needed (also checked, as a cheap guard) follows from it.

    Wrapping positions back into the cell between calls moves atoms by lattice vectors and so
    triggers a rebuild; it costs time, never correctness.
    """

    def __init__(self, cutoff: float, skin: float = 1.0):
        if cutoff <= 0 or skin < 0:
            raise ValueError("cutoff must be positive and skin non-negative")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.rebuilds = 0
        self._build: _Build | None = None

    def edges(
        self, positions: Tensor, cells: Tensor, pbc: Tensor, system: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """i, j, shifts and vectors of every pair now closer than the cutoff; vectors are
        computed from ``positions`` and ``cells`` as given, so gradients flow through them."""
        pbc = pbc.to(torch.bool)
        if self._needs_rebuild(positions, cells, pbc, system):
            self._rebuild(positions, cells, pbc, system)
        b = self._build
        vectors = edge_vectors(positions, cells, system, b.i, b.j, b.shifts)
        keep = _within(vectors.detach(), self.cutoff)
        return _select(keep, b.i, b.j, b.shifts, vectors)

    def _rebuild(self, positions: Tensor, cells: Tensor, pbc: Tensor, system: Tensor) -> None:
        with torch.no_grad():
            positions, cells = positions.detach().clone(), cells.detach().clone()
            reach = self.cutoff + self.skin
            i, j, shifts = neighbor_pairs(positions, cells, pbc, system, reach)
            full = complete_cells(cells)
            inverse = torch.linalg.inv(full)
            frac = torch.einsum("ni,nij->nj", positions, inverse[system])
            images = torch.where(pbc, torch.ceil(reach / perpendicular_heights(full)), 0.0)
        self._build = _Build(
            positions, cells, pbc.clone(), system.clone(), inverse, frac, images, i, j, shifts
        )
        self.rebuilds += 1

    def _needs_rebuild(self, positions: Tensor, cells: Tensor, pbc: Tensor, system: Tensor) -> bool:
        b = self._build
        if b is None or not _same_layout(b, positions, cells, pbc, system):
            return True
        with torch.no_grad():
            positions, cells = positions.detach(), cells.detach()
            if torch.equal(cells, b.cells):
                moved, shrink = positions - b.positions, torch.zeros_like(cells[:, 0, 0])
            else:
                full = complete_cells(cells)
                needed = torch.ceil(self.cutoff / perpendicular_heights(full))
                if bool((pbc & (needed > b.images)).any()):
                    return True
                carried = torch.einsum("ni,nij->nj", b.frac, full[system])
                sigma = torch.linalg.svdvals(b.full_inverse @ full)[:, -1]
                moved = positions - carried
                shrink = (1 - sigma) * (self.cutoff + self.skin) / 2
            largest = torch.zeros_like(shrink).scatter_reduce(
                0, system, moved.square().sum(-1), "amax"
            )
            return bool((largest.sqrt() + shrink > self.skin / 2).any())


def _same_layout(b: _Build, positions: Tensor, cells: Tensor, pbc: Tensor, system: Tensor) -> bool:
    if positions.shape != b.positions.shape or cells.shape != b.cells.shape:
        return False
    if positions.dtype != b.positions.dtype or positions.device != b.positions.device:
        return False
    return torch.equal(pbc, b.pbc) and torch.equal(system, b.system)
