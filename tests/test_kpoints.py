"""K-point grids from a spacing: the same sampling density for a cell and its supercell."""

from __future__ import annotations

import pytest
from ase.build import bulk

from hifidata.calculators.kpoints import mesh, resolve_kpoints


def test_canonical_forms():
    assert resolve_kpoints(None) is None and resolve_kpoints("Gamma") is None
    assert resolve_kpoints([1, 1, 1]) is None  # one method, however it is written
    assert resolve_kpoints((2, 3, 4)) == [2, 3, 4]
    assert resolve_kpoints({"spacing": 1}) == {"spacing": 1.0}
    for bad in ([2, 2], "dense", {"spacing": 0}, {"spacing": 0.5, "shift": 1}, [2, True, 2]):
        with pytest.raises(ValueError, match="'kpoints'"):
            resolve_kpoints(bad)


def test_a_spacing_gives_a_supercell_the_grid_of_its_cell():
    cell = bulk("Si", "diamond", a=5.431, cubic=True)  # |b| = 2π/5.431 = 1.157 Å⁻¹
    assert mesh(cell, {"spacing": 0.6}) == [2, 2, 2]
    assert mesh(cell, {"spacing": 0.3}) == [4, 4, 4]
    assert mesh(cell.repeat(2), {"spacing": 0.6}) is None  # 0.579 Å⁻¹: Γ only
    assert mesh(cell.repeat((2, 1, 1)), {"spacing": 0.3}) == [2, 4, 4]
    assert mesh(cell, [3, 3, 3]) == [3, 3, 3] and mesh(cell, None) is None


@pytest.mark.parametrize(("engine", "params"), [
    ("cp2k", {"cutoff": 150, "rel_cutoff": 30}),
    ("espresso", {"ecutwfc": 20}),
])
def test_engines_run_the_grid_a_spacing_gives(engine, params):
    from hifidata.calculators.base import Method, label

    atoms = bulk("Si", "diamond", a=5.431)  # primitive: |b| = 2π√3/a = 2.004 Å⁻¹
    atoms.positions[1] += [0.05, -0.03, 0.02]
    atoms.info = {"charge": 0, "spin": 1}
    by_spacing = label(atoms, Method.resolve(engine, {**params, "kpoints": {"spacing": 0.8}}))
    by_grid = label(atoms, Method.resolve(engine, {**params, "kpoints": [3, 3, 3]}))
    assert by_spacing.ok and by_grid.ok, (by_spacing.message, by_grid.message)
    assert by_spacing.energy == pytest.approx(by_grid.energy, abs=1e-8)
    assert by_spacing.method_id != by_grid.method_id  # the rule is the identity, not the grid
