"""Structure-derived exploration: interstitials, substitutions, slabs, clusters, strain modes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from hifidata.sampling.explore import (
    clusters,
    interstitials,
    slabs,
    strain,
    substitutions,
    vacancies,
)
from hifidata.structures import check_structure, structure_id, tightest_pair


def silicon() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


def rocksalt() -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


def water() -> Atoms:
    atoms = molecule("H2O")
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


def ids(candidates) -> list[str]:
    return [structure_id(a) for a in candidates.structures]


def assert_valid(candidates, *parents: Atoms) -> None:
    assert len(candidates) == len(candidates.origins) > 0
    parent_ids = {structure_id(p) for p in parents}
    for atoms, origin in zip(candidates.structures, candidates.origins, strict=True):
        check_structure(atoms)  # no overlap, charge and spin fit the electrons
        assert origin["parent"] in parent_ids
        assert {"protocol", "seed", "step"} <= set(origin)
    assert [o["step"] for o in candidates.origins] == list(range(len(candidates)))


def test_interstitials_add_one_atom_of_the_species_at_a_void():
    si, nacl = silicon(), rocksalt()
    out = interstitials([si, nacl], 10, seed=1)
    assert_valid(out, si, nacl)
    parents = {structure_id(si): si, structure_id(nacl): nacl}
    for atoms, origin in zip(out.structures, out.origins, strict=True):
        parent = parents[origin["parent"]]
        added = Counter(atoms.get_chemical_symbols()) - Counter(parent.get_chemical_symbols())
        assert added == {origin["species"]: 1} and len(atoms) == len(parent) + 1
        np.testing.assert_allclose(atoms.positions[:-1], parent.positions)
        np.testing.assert_allclose(atoms.get_scaled_positions()[-1], origin["site"], atol=1e-5)
    # self-interstitials by default: diamond has two voids (T and H), rocksalt one for each ion
    assert Counter(o["species"] for o in out.origins) == {"Si": 2, "Na": 1, "Cl": 1}
    assert out.structures[0].info["charge"] == 0
    assert {a.info["spin"] for a in out.structures if "Na" in a.get_chemical_symbols()} == {2}

    hydrogen = interstitials([si], 10, species=["H"])
    assert {o["species"] for o in hydrogen.origins} == {"H"}
    assert all(a.info == {"charge": 0, "spin": 2} for a in hydrogen.structures)  # odd electrons

    # the seed draws which candidates (rocksalt: the fastest Voronoi analysis here)
    runs = [interstitials([nacl], 1, seed=s) for s in range(4)]
    assert {run.origins[0]["species"] for run in runs} == {"Na", "Cl"}
    assert [ids(run) for run in runs] == [ids(interstitials([nacl], 1, seed=s)) for s in range(4)]


def test_interstitials_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="periodic"):
        interstitials([water()], 1)
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        interstitials([silicon()], 1, species=["Xx"])
    with pytest.raises(ValueError, match="lower min_distance_ratio"):
        interstitials([silicon()], 1, min_distance_ratio=1.5)


def test_substitutions_swap_one_atom_at_distinct_sites():
    si = silicon()
    out = substitutions([si], 10, {"Si": ["Ge", "C", "P"]}, seed=2)
    assert_valid(out, si)
    assert [o["added"] for o in out.origins] == ["Ge", "C", "P"]  # one Wyckoff orbit in diamond
    for atoms, origin in zip(out.structures, out.origins, strict=True):
        before, after = si.get_chemical_symbols(), atoms.get_chemical_symbols()
        changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert changed == [origin["site"]] and after[origin["site"]] == origin["added"]
        np.testing.assert_allclose(atoms.positions, si.positions)
    assert [a.info["spin"] for a in out.structures] == [1, 1, 2]  # P brings an odd electron

    dimer = _dimer()
    on_molecule = substitutions([dimer], 20, {"O": ["N"], "H": ["F"]}, seed=0)
    assert_valid(on_molecule, dimer)
    # Cs water dimer: both O distinct, the acceptor's two H are mirror images (3 distinct H)
    assert Counter(o["removed"] for o in on_molecule.origins) == {"O": 2, "H": 3}
    assert all(len(a) == len(dimer) for a in on_molecule.structures)
    nitrogen = [a for a, o in zip(on_molecule.structures, on_molecule.origins, strict=True)
                if o["added"] == "N"]
    assert all(a.info == {"charge": 0, "spin": 2} for a in nitrogen)

    first = substitutions([dimer, si], 3, {"O": ["S"], "H": ["F"], "Si": ["Ge"]}, seed=5)
    assert ids(first) == ids(substitutions([dimer, si], 3, {"O": ["S"], "H": ["F"], "Si": ["Ge"]},
                                           seed=5))


def _dimer() -> Atoms:
    from ase.collections import s22

    atoms = s22["Water_dimer"].copy()
    atoms.info = {"charge": 0, "spin": 1}
    return atoms


def test_substitutions_refuse_bad_tables():
    with pytest.raises(ValueError, match="unknown element 'Qq'"):
        substitutions([silicon()], 1, {"Si": ["Qq"]})
    with pytest.raises(ValueError, match="no parent contains C"):
        substitutions([silicon()], 1, {"C": ["Si"]})
    with pytest.raises(ValueError, match="by itself"):
        substitutions([silicon()], 1, {"Si": ["Si"]})


def _vacuum(atoms: Atoms) -> float:
    """Widest empty gap (Å) along c, wrapping around the cell."""
    frac = np.sort(atoms.get_scaled_positions()[:, 2])
    gaps = np.append(np.diff(frac), 1.0 - frac[-1] + frac[0])
    normal = np.cross(atoms.cell[0], atoms.cell[1])
    return float(gaps.max() * atoms.cell[2] @ normal / np.linalg.norm(normal))


def test_slabs_are_periodic_stoichiometric_with_vacuum_along_the_normal():
    si, nacl = silicon(), rocksalt()
    out = slabs([si, nacl], 20, min_slab=6.0, min_vacuum=10.0, max_atoms=32)
    assert_valid(out, si, nacl)
    assert {tuple(o["miller_index"]) for o in out.origins} == {(1, 0, 0), (1, 1, 0), (1, 1, 1)}
    for atoms in out.structures:
        assert atoms.pbc.all() and len(atoms) <= 32
        a, b, c = atoms.cell
        assert abs(c @ a) < 1e-6 and abs(c @ b) < 1e-6  # c along the surface normal
        assert _vacuum(atoms) >= 10.0
        counts = Counter(atoms.get_chemical_symbols())
        if "Na" in counts:
            assert counts["Na"] == counts["Cl"]  # the bulk ratio
        assert atoms.info == {"charge": 0, "spin": 1}
    polar = [o for o in out.origins if o["polar"]]
    assert [(o["miller_index"], o["top"], o["bottom"]) for o in polar] == [
        ([1, 1, 1], "Na", "Cl")]  # rocksalt (111): one ion on each face

    only = slabs([si], 5, miller_indices=[(1, 1, 1)], seed=3)
    assert {tuple(o["miller_index"]) for o in only.origins} == {(1, 1, 1)}
    assert len({o["shift"] for o in only.origins}) == 2  # diamond (111): two terminations
    assert ids(slabs([si], 2, seed=3)) == ids(slabs([si], 2, seed=3))


def test_slabs_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="periodic"):
        slabs([water()], 1)
    with pytest.raises(ValueError, match="raise max_atoms"):
        slabs([silicon()], 1, max_atoms=4)
    with pytest.raises(ValueError, match="miller_indices"):
        slabs([silicon()], 1, miller_indices=[(0, 0, 0)])


def test_clusters_carve_neutral_molecules_within_the_radius():
    si, nacl = silicon(), rocksalt()
    out = clusters([si, nacl], 10, radius=4.0)
    assert_valid(out, si, nacl)
    for atoms, origin in zip(out.structures, out.origins, strict=True):
        assert not atoms.pbc.any() and not atoms.cell.any()
        assert np.linalg.norm(atoms.positions, axis=1).max() <= 4.0 + 1e-6  # centred on atom 0
        assert atoms[0].symbol == origin["centre_element"]
        assert set(atoms.get_chemical_symbols()) <= {"Si", "Na", "Cl"}
        assert atoms.info["charge"] == 0
    formulas = sorted(a.get_chemical_formula() for a in out.structures)
    # diamond: centre + 4 + 12 neighbours; rocksalt: centre + 6 + 12 (one Na site, one Cl site)
    assert formulas == ["Cl13Na6", "Cl6Na13", "Si17"]
    assert sorted(a.info["spin"] for a in out.structures) == [1, 2, 2]

    capped = clusters([si], 1, radius=4.0, passivate=True).structures[0]
    assert capped.get_chemical_formula() == "H36Si17"  # the textbook Si17H36
    check_structure(capped)
    h = capped.symbols == "H"
    si_h = np.linalg.norm(capped.positions[h][:, None] - capped.positions[~h][None], axis=2)
    np.testing.assert_allclose(si_h.min(axis=1), 1.42, atol=1e-6)  # covalent Si–H
    assert tightest_pair(capped)[2] > 0.95

    snapshot = si.copy()
    snapshot.positions += np.random.default_rng(0).normal(0, 0.03, snapshot.positions.shape)
    first = clusters([snapshot], 3, radius=3.0, seed=7)
    assert len(first) == 3 and len({o["centre"] for o in first.origins}) == 3
    assert ids(first) == ids(clusters([snapshot], 3, radius=3.0, seed=7))


def test_clusters_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="periodic"):
        clusters([water()], 1)
    with pytest.raises(ValueError, match="lower radius or raise max_atoms"):
        clusters([silicon()], 1, radius=4.0, max_atoms=10)


def test_strain_modes_move_the_components_they_name():
    si = silicon()
    volume = strain([si], 5, max_strain=0.04, seed=1, mode="hydrostatic")
    for atoms, origin in zip(volume.structures, volume.origins, strict=True):
        xx, yy, zz, *off = origin["strain_voigt"]
        assert xx == yy == zz and off == [0, 0, 0] and origin["mode"] == "hydrostatic"
        np.testing.assert_allclose(atoms.get_volume(), si.get_volume() * (1 + xx) ** 3,
                                   rtol=1e-5)
    sheared = strain([si], 5, seed=1, mode="shear")
    assert all(o["strain_voigt"][:3] == [0, 0, 0] for o in sheared.origins)
    # same draws whatever the mode: shear=False is mode="normal", and the seed's cells stay
    default, normal = strain([si], 3, seed=1), strain([si], 3, seed=1, shear=False)
    assert [o["strain_voigt"][:3] for o in default.origins] == [
        o["strain_voigt"][:3] for o in normal.origins]
    assert {o["mode"] for o in normal.origins} == {"normal"}
    with pytest.raises(ValueError, match="shear=False contradicts"):
        strain([si], 1, shear=False, mode="shear")


def test_vacancies_recompute_the_spin_when_parity_changes():
    nacl = rocksalt()
    out = vacancies([nacl], 5)
    assert sorted(o["removed"] for o in out.origins) == ["Cl", "Na"]
    for atoms in out.structures:
        check_structure(atoms)
        assert atoms.info == {"charge": 0, "spin": 2}
