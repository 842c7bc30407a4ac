"""Energy-landscape slices: judge a model by the shape of its energy surface along a coordinate.

A test-set MAE averages over the structures someone happened to sample; a slice asks the model
one pointed question: as two atoms (or two molecules) approach or separate, does the energy rise,
fall and level off where the reference's does? ``distance_scan`` and ``grid_scan`` build the
structures, the caller labels them with a rung's engine, and ``Slice`` holds the model's curve
and the reference curves side by side.

Every curve is taken relative to its own minimum: models of different rungs (or a pretrained
MLIP) sit on different absolute energy scales, and a constant offset says nothing about the
shape. Energies in eV, distances in Å, errors in meV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.neighborlist import natural_cutoffs, neighbor_list

from hifidata import plots
from hifidata.training.models import Model

#: Two atoms are covalently bonded within this multiple of the sum of covalent radii (as in
#: sampling.ase_md.bonds_kept): an O–H bond of water is 0.96 Å against 0.97 Å for the bare sum, so
#: without a margin a slightly stretched bond would split its molecule into two fragments.
BOND_FACTOR = 1.2


def distance_scan(atoms: Atoms, i: int, j: int, values: Sequence[float]) -> list[Atoms]:
    """Copies of ``atoms`` with the distance between atoms ``i`` and ``j`` set to each value (Å).

    The fragment holding ``j`` (its covalently bonded component, natural cutoffs × 1.2) moves
    rigidly along the i→j axis, so molecules keep their own geometry while their separation
    changes. When ``i`` and ``j`` are in the same fragment (a bond or an intramolecular
    distance; in a covalent solid everything is one fragment) only atom ``j`` moves. Fragments
    come from ``atoms`` as given, not from each scanned structure. ``info`` (charge, spin) is
    kept, and ``info["scan"]`` is ``{"coordinate": "d(i,j)", "value": v}``.
    """
    _check_pair(atoms, i, j)
    moved = moved_atoms(atoms, i, j)
    scan = []
    for value in _distances(values, "values"):
        out = _without_calculator(atoms)
        _set_distance(out, i, j, value, moved)
        out.info["scan"] = {"coordinate": coordinate_label(i, j), "value": value}
        scan.append(out)
    return scan


def grid_scan(
    atoms: Atoms,
    first: tuple[int, int],
    values_1: Sequence[float],
    second: tuple[int, int],
    values_2: Sequence[float],
) -> list[list[Atoms]]:
    """A 2-D grid: ``grid[a][b]`` has d(first) = ``values_1[a]`` and d(second) = ``values_2[b]``.

    The two distances are set in sequence, each as in ``distance_scan`` with fragments taken
    from ``atoms`` as given. Limits: it is a grid in two distances, not a relaxed surface
    (every other coordinate stays frozen); and setting the second distance must not move
    exactly one atom of the first pair, or it would undo the first distance (ValueError). Pairs
    in different molecules, or a bond of one molecule with the intermolecular distance, work.
    ``info["scan"]`` is ``{"coordinate": [label_1, label_2], "value": [v1, v2]}``.
    """
    (i, j), (k, m) = first, second
    _check_pair(atoms, i, j)
    _check_pair(atoms, k, m)
    moved_1, moved_2 = moved_atoms(atoms, i, j), moved_atoms(atoms, k, m)
    if (i in moved_2) != (j in moved_2):
        raise ValueError(
            f"setting d({k},{m}) moves atoms {sorted(moved_2)}, which holds one atom of "
            f"({i},{j}) but not the other: the second distance would change the first"
        )
    labels = [coordinate_label(i, j), coordinate_label(k, m)]
    grid = []
    for v1 in _distances(values_1, "values_1"):
        row = []
        for v2 in _distances(values_2, "values_2"):
            out = _without_calculator(atoms)
            _set_distance(out, i, j, v1, moved_1)
            _set_distance(out, k, m, v2, moved_2)
            out.info["scan"] = {"coordinate": labels, "value": [v1, v2]}
            row.append(out)
        grid.append(row)
    return grid


def coordinate_label(i: int, j: int) -> str:
    return f"d({i},{j})"


def moved_atoms(atoms: Atoms, i: int, j: int) -> set[int]:
    """The atoms that move when d(i, j) is set: j's covalent fragment, or j alone if it holds i."""
    fragment = fragment_of(atoms, j)
    return {j} if i in fragment else fragment


def fragment_of(atoms: Atoms, index: int) -> set[int]:
    """Indices of the covalently bonded component holding atom ``index``."""
    first, second = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=BOND_FACTOR))
    neighbours: dict[int, list[int]] = {}
    for a, b in zip(first.tolist(), second.tolist(), strict=True):
        neighbours.setdefault(a, []).append(b)
    fragment, frontier = {index}, [index]
    while frontier:
        for b in neighbours.get(frontier.pop(), []):
            if b not in fragment:
                fragment.add(b)
                frontier.append(b)
    return fragment


def _set_distance(atoms: Atoms, i: int, j: int, value: float, moved: set[int]) -> None:
    # the minimum-image vector, so a pair across a periodic boundary moves the short way
    vector = atoms.get_distance(i, j, mic=atoms.pbc.any(), vector=True)
    length = float(np.linalg.norm(vector))
    if length < 1e-8:
        raise ValueError(f"atoms {i} and {j} coincide: the i→j direction is undefined")
    positions = atoms.get_positions()
    positions[sorted(moved)] += vector / length * (value - length)
    atoms.set_positions(positions)


def _check_pair(atoms: Atoms, i: int, j: int) -> None:
    for index in (i, j):
        if not 0 <= index < len(atoms):
            raise IndexError(f"atom index {index} is out of range for {len(atoms)} atoms")
    if i == j:
        raise ValueError(f"a distance needs two different atoms, got ({i},{j})")


def _distances(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} is empty: a scan needs at least one distance")
    if any(not np.isfinite(v) or v <= 0 for v in out):
        raise ValueError(f"{name} must be positive distances in Å, got {out}")
    return out


def _without_calculator(atoms: Atoms) -> Atoms:
    out = atoms.copy()  # copies info; a calculator would carry the unscanned results
    out.calc = None
    return out


def scan_energies(
    model: Model, structures: Sequence[Atoms] | Sequence[Sequence[Atoms]]
) -> np.ndarray:
    """The model's energies (eV) of a scan: shape (n,) for a 1-D scan, (n1, n2) for a grid."""
    nested = bool(structures) and not isinstance(structures[0], Atoms)
    flat = [a for row in structures for a in row] if nested else list(structures)
    energies = np.asarray(model.predict(flat)["energy"], dtype=float)
    return energies.reshape(len(structures), -1) if nested else energies


def relative(energies: np.ndarray) -> np.ndarray:
    """``energies`` minus their smallest finite value (all NaN stays all NaN)."""
    energies = np.asarray(energies, dtype=float)
    finite = np.isfinite(energies)
    return energies - energies[finite].min() if finite.any() else energies.copy()


@dataclass
class Slice:
    """A model's energy curve (or surface) along a scan, with reference rungs' curves.

    ``coordinate``: one label ("d(0,3)") or two for a grid; ``values``: the distances (Å), one
    array per coordinate; ``model``: the model's energies (eV), shape (n,) or (n1, n2);
    ``references``: rung name → energies of the same shape, NaN where a label failed or was not
    computed. Every curve is stored relative to its own minimum (set on construction): only the
    shape is compared, never the absolute scale, which differs between rungs and models.
    """

    coordinate: str | tuple[str, str]
    values: np.ndarray | tuple[np.ndarray, np.ndarray]
    model: np.ndarray
    references: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""
    model_name: str = "model"

    def __post_init__(self):
        self.model = relative(self.model)
        self.references = {rung: relative(e) for rung, e in self.references.items()}
        shapes = {rung: e.shape for rung, e in self.references.items()
                  if e.shape != self.model.shape}
        if shapes:
            raise ValueError(f"reference energies {shapes} do not match the model's "
                             f"shape {self.model.shape}")

    @property
    def dimensions(self) -> int:
        return self.model.ndim

    @property
    def labels(self) -> list[str]:
        return [self.coordinate] if isinstance(self.coordinate, str) else list(self.coordinate)

    @property
    def axes(self) -> list[np.ndarray]:
        if self.dimensions == 1:
            return [np.asarray(self.values, dtype=float)]
        return [np.asarray(v, dtype=float) for v in self.values]

    @property
    def title(self) -> str:
        return self.name or " × ".join(self.labels)


def scan_slice(
    model: Model,
    structures: Sequence[Atoms] | Sequence[Sequence[Atoms]],
    references: dict[str, np.ndarray] | None = None,
    name: str = "",
    model_name: str = "model",
) -> Slice:
    """The ``Slice`` of a scan made by ``distance_scan`` or ``grid_scan``: coordinates and
    values read from ``info["scan"]``, energies from ``model``."""
    energies = scan_energies(model, structures)
    if energies.ndim == 1:
        scans = [a.info["scan"] for a in structures]
        coordinate, values = scans[0]["coordinate"], np.array([s["value"] for s in scans])
    else:
        values_1 = [row[0].info["scan"]["value"][0] for row in structures]
        values_2 = [a.info["scan"]["value"][1] for a in structures[0]]
        coordinate = tuple(structures[0][0].info["scan"]["coordinate"])
        values = (np.array(values_1), np.array(values_2))
    return Slice(coordinate, values, energies,
                 {rung: np.asarray(e, dtype=float) for rung, e in (references or {}).items()},
                 name, model_name)


def slice_errors(slice_: Slice) -> dict[str, dict[str, float | int]]:
    """Per reference rung: MAE and max |error| (meV) of the model's relative curve.

    Only points the rung labeled count, and there both curves are re-referenced to their
    minimum over those points, so a missing label at the reference minimum cannot shift the
    whole curve. A rung with no labeled point gets NaN errors.
    """
    errors = {}
    for rung, reference in slice_.references.items():
        labeled = np.isfinite(reference) & np.isfinite(slice_.model)
        n = int(labeled.sum())
        if n == 0:
            errors[rung] = {"points": 0, "mae_meV": float("nan"), "max_meV": float("nan")}
            continue
        difference = relative(slice_.model[labeled]) - relative(reference[labeled])
        errors[rung] = {
            "points": n,
            "mae_meV": float(np.mean(np.abs(difference)) * 1000),
            "max_meV": float(np.max(np.abs(difference)) * 1000),
        }
    return errors


def slice_plot(slices: Sequence[Slice], path: str | Path) -> Path:
    """One PNG, a panel per slice: 1-D, the model's curve over each reference rung's points;
    2-D, a filled contour of the model with the labeled reference points on the same colors."""
    plt = plots.pyplot()
    if not slices:
        raise ValueError("slice_plot needs at least one slice")
    columns = min(len(slices), 2)
    rows = -(-len(slices) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.5 * rows), squeeze=False)
    for ax, slice_ in zip(axes.ravel(), slices, strict=False):
        if slice_.dimensions == 1:
            _plot_curve(ax, slice_)
        else:
            _plot_surface(figure, ax, slice_)
        ax.set_title(slice_.title)
    for ax in axes.ravel()[len(slices):]:
        ax.set_visible(False)
    return plots.save(figure, path)


def _plot_curve(ax, slice_: Slice) -> None:
    (x,) = slice_.axes
    errors = slice_errors(slice_)
    ax.plot(x, slice_.model, "-", color="k", lw=1.5, label=slice_.model_name)
    for rung, reference in slice_.references.items():
        labeled = np.isfinite(reference)  # joined over failed labels, not broken by them
        ax.plot(x[labeled], reference[labeled], "o--", ms=4, lw=0.8,
                label=f"{rung} (MAE {errors[rung]['mae_meV']:.1f} meV)")
    ax.set_xlabel(f"{slice_.labels[0]} [Å]")
    ax.set_ylabel("E − E_min [eV]")
    ax.legend(fontsize=8)


def _plot_surface(figure, ax, slice_: Slice) -> None:
    x, y = slice_.axes
    filled = ax.contourf(x, y, slice_.model.T, levels=14, cmap="viridis")
    levels = filled.levels
    figure.colorbar(filled, ax=ax, label=f"{slice_.model_name} E − E_min [eV]")
    markers, drawn = iter("os^Dv"), False
    for rung, reference in slice_.references.items():
        a, b = np.nonzero(np.isfinite(reference))
        if a.size:
            drawn = True
            ax.scatter(x[a], y[b], c=reference[a, b], cmap="viridis", vmin=levels[0],
                       vmax=levels[-1], edgecolors="w", marker=next(markers, "o"), s=40,
                       label=rung)
    ax.set_xlabel(f"{slice_.labels[0]} [Å]")
    ax.set_ylabel(f"{slice_.labels[1]} [Å]")
    if drawn:
        ax.legend(fontsize=8)
