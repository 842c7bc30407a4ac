"""Exploration protocols: ways of turning seed structures into candidate structures.

Each protocol returns ``Candidates``: structures plus one origin record each (protocol,
temperature, step, seed, parent), so every configuration in a dataset can say where it came
from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from hifidata.sampling.ase_md import default_monitors, langevin
from hifidata.structures import (
    MIN_DISTANCE,
    StructureError,
    charge_of,
    check_structure,
    structure_id,
    tightest_pair,
    with_charge_and_spin,
)


@dataclass
class Candidates:
    structures: list[Atoms] = field(default_factory=list)
    origins: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why a trajectory ended early, if it did

    def __len__(self) -> int:
        return len(self.structures)


def md_trajectory(
    seed_structure: Atoms,
    calculator: Calculator,
    temperature: float,
    steps: int,
    timestep: float = 0.5,
    friction: float = 0.01,
    sample_every: int = 5,
    seed: int = 0,
    model: str = "",
    progress: Callable[[int], None] | None = None,
) -> Candidates:
    """Langevin MD of one seed at one temperature; frames every ``sample_every`` steps.

    The run stops at the first unphysical state (close contact, broken covalent bond,
    temperature runaway) and keeps the frames before it.
    """
    result = langevin(
        seed_structure,
        calculator,
        temperature,
        steps,
        timestep=timestep,
        friction=friction,
        sample_every=sample_every,
        seed=seed,
        monitors=default_monitors(seed_structure, temperature, MIN_DISTANCE),
        check_every=sample_every,
        progress=progress,
    )
    parent = structure_id(seed_structure)
    origins = [
        {
            "protocol": "md",
            "temperature": temperature,
            "step": step,
            "seed": seed,
            "timestep": timestep,
            "model": model,
            "parent": parent,
        }
        for step in result.frame_steps
    ]
    return Candidates(result.frames, origins, result.stopped)


def rattle(
    parents: Sequence[Atoms], count: int, stdev: float = 0.05, seed: int = 0,
    min_bond_ratio: float = 0.8,
) -> Candidates:
    """``count`` Gaussian rattles (σ = ``stdev`` Å per coordinate) of parents drawn at random.

    A rattle that brings two atoms closer than ``min_bond_ratio`` × the sum of their covalent
    radii (0.78 Å for O–H at 0.8) is drawn again: such squeezed bonds sit eV above anything
    a simulation visits, and a stratified pick would spend labels on them first (they are the
    edge of feature space).
    """
    rng = np.random.default_rng(seed)
    out = Candidates()
    parent_ids = [structure_id(p) for p in parents]
    for _ in range(100 * count):  # bounded: a huge stdev must not loop forever
        if len(out) == count:
            break
        index = int(rng.integers(len(parents)))
        atoms = parents[index].copy()
        atoms.calc = None
        atoms.positions += rng.normal(0.0, stdev, size=atoms.positions.shape)
        try:
            check_structure(atoms)
        except StructureError:
            continue
        if tightest_pair(atoms)[2] < min_bond_ratio:
            continue
        out.structures.append(atoms)
        out.origins.append(
            {
                "protocol": "rattle",
                "stdev": stdev,
                "seed": seed,
                "step": len(out.origins),
                "parent": parent_ids[index],
            }
        )
    if len(out) < count:
        raise ValueError(
            f"rattles of stdev {stdev} Å keep bringing atoms closer than {min_bond_ratio} × "
            "their covalent bond length; lower stdev or min_bond_ratio"
        )
    return out


StrainMode = Literal["all", "normal", "hydrostatic", "shear"]


def strain(
    parents: Sequence[Atoms], count: int, max_strain: float = 0.03, shear: bool = True,
    seed: int = 0, mode: StrainMode | None = None,
) -> Candidates:
    """``count`` homogeneous strains of periodic parents drawn at random; atoms move with the cell.

    Each Voigt component of the symmetric strain ε is uniform in ±``max_strain``; the cell
    becomes cell · (1 + ε). Strained cells are what a model needs to learn stress and the
    equation of state, which MD at one density never visits. ``mode`` says which components
    move: ``"all"`` (the default, or ``"normal"`` when ``shear=False``), ``"normal"`` (the three
    axial ones, independently), ``"hydrostatic"`` (one uniform scaling: an equation-of-state
    scan) or ``"shear"`` (the three off-diagonal ones only). The draws are the same whatever the
    mode, so a seed gives the same cells it always gave.
    """
    if mode is None:
        mode = "all" if shear else "normal"
    elif mode not in ("all", "normal", "hydrostatic", "shear"):
        raise ValueError(f"unknown strain mode {mode!r}; use all, normal, hydrostatic or shear")
    elif not shear and mode in ("all", "shear"):
        raise ValueError(f"shear=False contradicts mode={mode!r}; give only one of them")
    periodic = [p for p in parents if p.pbc.all()]
    if not periodic:
        raise ValueError("strain needs periodic parents (pbc on all three axes, with a cell)")
    rng = np.random.default_rng(seed)
    out = Candidates()
    for step in range(count):
        index = int(rng.integers(len(periodic)))
        voigt = rng.uniform(-max_strain, max_strain, size=6)
        if mode in ("normal", "hydrostatic"):
            voigt[3:] = 0.0
        if mode == "hydrostatic":
            voigt[1:3] = voigt[0]
        if mode == "shear":
            voigt[:3] = 0.0
        epsilon = np.array([[voigt[0], voigt[5], voigt[4]],
                            [voigt[5], voigt[1], voigt[3]],
                            [voigt[4], voigt[3], voigt[2]]])
        atoms = periodic[index].copy()
        atoms.calc = None
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)
        out.structures.append(atoms)
        out.origins.append({"protocol": "strain", "mode": mode, "seed": seed, "step": step,
                            "strain_voigt": [round(float(v), 6) for v in voigt],
                            "parent": structure_id(periodic[index])})
    return out


def vacancies(parents: Sequence[Atoms], count: int, seed: int = 0) -> Candidates:
    """Up to ``count`` single vacancies: one per symmetry-distinct site of each periodic parent.

    pymatgen's symmetry analysis groups equivalent sites, so a perfect crystal gives one
    vacancy per Wyckoff orbit rather than N copies of the same defect; parents without
    symmetry (MD snapshots) give any site. Which parents and sites, when there are more than
    ``count``, is drawn from ``seed``.
    """
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    options = []
    for parent in parents:
        if not parent.pbc.all() or len(parent) < 2:
            continue
        structure = AseAtomsAdaptor.get_structure(parent)
        orbits = SpacegroupAnalyzer(structure, symprec=1e-3).get_symmetrized_structure()
        options += [(parent, group[0]) for group in orbits.equivalent_indices]
    if not options:
        raise ValueError("vacancies need periodic parents with at least two atoms")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(options))[:count]
    out = Candidates()
    for step, k in enumerate(sorted(chosen)):
        parent, site = options[k]
        atoms = parent.copy()
        atoms.calc = None
        removed = atoms.get_chemical_symbols()[site]
        del atoms[site]
        atoms = _relabel(atoms, charge_of(parent))  # parity may have changed
        out.structures.append(atoms)
        out.origins.append({"protocol": "vacancy", "removed": removed, "site": int(site),
                            "seed": seed, "step": step, "parent": structure_id(parent)})
    return out


def interstitials(
    parents: Sequence[Atoms], count: int, species: list[str] | None = None, seed: int = 0,
    min_distance_ratio: float = 0.7,
) -> Candidates:
    """Up to ``count`` single interstitials: one extra atom in a void of a periodic parent.

    pymatgen-analysis-defects' ``VoronoiInterstitialGenerator`` finds the voids (Voronoi nodes of
    the crystal, clustered and reduced by symmetry), so a perfect crystal gives one candidate
    per distinct void and species (diamond Si: the tetrahedral and the hexagonal site).
    ``species`` defaults to each parent's own elements (self-interstitials). A void that puts
    the new atom closer than ``min_distance_ratio`` × the covalent bond length to any atom is
    skipped: unrelaxed, such a squeezed atom sits eV above anything a simulation visits. The
    default 0.7 keeps Na at the tetrahedral site of NaCl (0.74 of the Na–Na covalent length;
    Si in Si is at 1.0–1.06). Which candidates, when there are more than ``count``, is drawn
    from ``seed``.
    """
    _check_count(count)
    if min_distance_ratio <= 0:
        raise ValueError("min_distance_ratio must be positive")
    if species is not None:
        if isinstance(species, str) or not species:
            raise ValueError("species must be a non-empty list of element symbols, or None")
        species = list(dict.fromkeys(_element(s, "species") for s in species))
    periodic = _periodic(parents, "interstitials")
    from pymatgen.io.ase import AseAtomsAdaptor

    generator = _defects_module().VoronoiInterstitialGenerator(min_dist=MIN_DISTANCE)
    options: list[tuple[Atoms, dict[str, Any]]] = []
    for parent in periodic:
        insert = species or list(dict.fromkeys(parent.get_chemical_symbols()))
        structure = AseAtomsAdaptor.get_structure(parent)
        for defect in generator.generate(structure, insert):
            symbol = defect.site.specie.symbol
            frac = np.mod(defect.site.frac_coords, 1.0)
            atoms = parent.copy()
            atoms.calc = None
            atoms.append(symbol)
            atoms.positions[-1] = frac @ atoms.cell.array
            atoms = _relabel(atoms, charge_of(parent))
            if _fails_check(atoms) or _closest_ratio(atoms, len(atoms) - 1) < min_distance_ratio:
                continue
            options.append((atoms, {"protocol": "interstitial", "species": symbol,
                                    "site": [round(float(f), 6) for f in frac],
                                    "multiplicity": int(defect.multiplicity),
                                    "parent": structure_id(parent)}))
    if not options:
        raise ValueError(
            f"no interstitial site keeps the inserted atom {min_distance_ratio} × its covalent "
            "bond length from the others; lower min_distance_ratio"
        )
    return _draw(options, count, seed)


def substitutions(
    parents: Sequence[Atoms], count: int, substitutions: dict[str, list[str]], seed: int = 0,
) -> Candidates:
    """Up to ``count`` single substitutions: one atom of element A replaced by B.

    ``substitutions`` maps A to the Bs to try, e.g. ``{"Si": ["Ge", "C"]}``. In a crystal only
    symmetry-distinct sites are tried (pymatgen's ``SpacegroupAnalyzer``, as in ``vacancies``);
    in a molecule, sites distinct under its point group (pymatgen's ``PointGroupAnalyzer``);
    a structure with no symmetry (an MD snapshot) offers every site. The charge stays the
    parent's and the spin becomes the lowest multiplicity the new electron count allows.
    Positions are not relaxed: an atom much larger than the one it replaces sits squeezed.
    """
    _check_count(count)
    if not isinstance(substitutions, dict) or not substitutions:
        raise ValueError('substitutions must map elements to replacements, e.g. {"Si": ["Ge"]}')
    table: dict[str, list[str]] = {}
    for old, new in substitutions.items():
        old = _element(old, "substitutions")
        news = [new] if isinstance(new, str) else list(new)
        if not news:
            raise ValueError(f"substitutions gives no replacement for {old}")
        table[old] = list(dict.fromkeys(_element(b, "substitutions") for b in news))
        if old in table[old]:
            raise ValueError(f"substitutions replaces {old} by itself")
    options: list[tuple[Atoms, dict[str, Any]]] = []
    for parent in parents:
        symbols = parent.get_chemical_symbols()
        if not set(symbols) & set(table):
            continue
        for site in _distinct_sites(parent):
            for new in table.get(symbols[site], []):
                atoms = parent.copy()
                atoms.calc = None
                atoms[site].symbol = new
                atoms = _relabel(atoms, charge_of(parent))
                if _fails_check(atoms):
                    continue
                options.append((atoms, {"protocol": "substitution", "removed": symbols[site],
                                        "added": new, "site": int(site),
                                        "parent": structure_id(parent)}))
    if not options:
        raise ValueError(
            f"no parent contains {', '.join(table)}; check the keys of substitutions"
        )
    return _draw(options, count, seed)


def slabs(
    parents: Sequence[Atoms], count: int,
    miller_indices: list[tuple[int, int, int]] | None = None, max_index: int = 1,
    min_slab: float = 8.0, min_vacuum: float = 10.0, seed: int = 0, max_atoms: int = 64,
) -> Candidates:
    """Up to ``count`` surface slabs of periodic parents, one per facet and termination.

    pymatgen's ``SlabGenerator`` cuts the conventional standard cell (so Miller indices mean
    what they do in the literature) along each of ``miller_indices`` (default: the
    symmetry-distinct ones up to ``max_index``), at least ``min_slab`` Å thick with at least
    ``min_vacuum`` Å of vacuum, and gives every distinct termination. Each slab is made
    orthogonal (c along the surface normal) and stays periodic in all three directions, so
    periodic engines and CHGNet take it as any crystal. Slabs of more than ``max_atoms`` atoms
    are skipped: a label's cost grows as N³ and more, and surfaces are learned from small cells.
    Origins say whether the slab is symmetric and polar (oxidation states guessed from the bulk
    formula): a polar slab carries a dipole through the vacuum.
    """
    _check_count(count)
    if miller_indices is not None:
        if not miller_indices:
            raise ValueError("miller_indices is empty; give at least one (h, k, l) or None")
        for hkl in miller_indices:
            integers = all(isinstance(i, int | np.integer) for i in hkl)
            if len(hkl) != 3 or not integers or not any(hkl):
                raise ValueError(f"miller_indices: {hkl!r} is not a non-zero (h, k, l) of integers")
    if max_index < 1:
        raise ValueError("max_index must be at least 1")
    if min_slab <= 0 or min_vacuum <= 0:
        raise ValueError("min_slab and min_vacuum must be positive (Å)")
    neutral = [p for p in _periodic(parents, "slabs") if charge_of(p) == 0]
    if not neutral:
        raise ValueError("slabs need neutral periodic parents (a charged cell's slab has no "
                         "defined charge)")
    from pymatgen.core.surface import SlabGenerator, get_symmetrically_distinct_miller_indices
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    options: list[tuple[Atoms, dict[str, Any]]] = []
    too_big = 0
    for parent in neutral:
        structure = AseAtomsAdaptor.get_structure(parent)
        bulk = SpacegroupAnalyzer(structure, symprec=1e-3).get_conventional_standard_structure()
        guesses = bulk.composition.oxi_state_guesses()
        indices = miller_indices or get_symmetrically_distinct_miller_indices(bulk, max_index)
        for hkl in indices:
            hkl = tuple(int(i) for i in hkl)
            generator = SlabGenerator(bulk, hkl, min_slab, min_vacuum, center_slab=True,
                                      primitive=True, max_normal_search=max(map(abs, hkl)))
            for slab in generator.get_slabs():
                slab = slab.get_orthogonal_c_slab()
                if len(slab) > max_atoms:
                    too_big += 1
                    continue
                atoms = Atoms([site.specie.symbol for site in slab], slab.cart_coords,
                              cell=slab.lattice.matrix, pbc=True)
                atoms = _relabel(atoms, 0)
                if _fails_check(atoms):
                    continue
                polar = None
                if guesses:
                    decorated = slab.copy()
                    decorated.add_oxidation_state_by_element(guesses[0])
                    polar = bool(decorated.is_polar())
                top, bottom = _terminations(atoms)
                options.append((atoms, {"protocol": "slab", "miller_index": list(hkl),
                                        "shift": round(float(slab.shift), 6),
                                        "symmetric": bool(slab.is_symmetric()), "polar": polar,
                                        "top": top, "bottom": bottom,
                                        "parent": structure_id(parent)}))
    if not options:
        raise ValueError(
            (f"all {too_big} slabs have more than max_atoms={max_atoms} atoms; raise max_atoms "
             "or lower min_slab") if too_big else "no slab could be cut; check miller_indices"
        )
    return _draw(options, count, seed)


def clusters(
    parents: Sequence[Atoms], count: int, radius: float = 4.0, seed: int = 0,
    max_atoms: int | None = None, passivate: bool = False,
) -> Candidates:
    """Up to ``count`` finite clusters: every atom within ``radius`` Å of a centre atom.

    The point is CCSD(T) labels of local environments of a crystal, which a molecular code can
    compute and a periodic one cannot afford. Centres are the symmetry-distinct atoms of each
    periodic parent (pymatgen's ``SpacegroupAnalyzer``; every atom of an MD snapshot), the
    sphere is filled from periodic images (pymatgen ``Structure.get_sites_in_sphere``), and the
    cluster comes out non-periodic (pbc False, zero cell), centred on its centre atom, neutral
    and in the lowest spin multiplicity. ``passivate`` caps each covalent bond the sphere cuts
    with an H on the bond, at the covalent A–H distance (e.g. Si₁₇H₃₆ from diamond Si at 4 Å);
    it suits covalent networks, not ionic or metallic crystals. ``max_atoms`` (counting caps)
    skips larger clusters.
    """
    _check_count(count)
    if radius <= 0:
        raise ValueError("radius must be positive (Å)")
    if max_atoms is not None and max_atoms < 1:
        raise ValueError("max_atoms must be at least 1, or None")
    from pymatgen.io.ase import AseAtomsAdaptor

    options: list[tuple[Atoms, dict[str, Any]]] = []
    too_big = crowded = 0
    for parent in _periodic(parents, "clusters"):
        structure = AseAtomsAdaptor.get_structure(parent)
        symbols = parent.get_chemical_symbols()
        for centre in _distinct_sites(parent):
            origin = structure[centre].coords
            members = _sphere(structure, origin, radius)
            positions = [coords - origin for _, _, coords in members]
            names = [symbols[index] for index, _, _ in members]
            caps = _caps(structure, symbols, members, origin) if passivate else []
            if max_atoms is not None and len(names) + len(caps) > max_atoms:
                too_big += 1
                continue
            atoms = Atoms(names + ["H"] * len(caps), positions + caps, pbc=False)
            atoms = _relabel(atoms, 0)
            if _fails_check(atoms) or (caps and not _caps_clear(atoms, len(names))):
                crowded += 1
                continue
            options.append((atoms, {"protocol": "cluster", "centre": int(centre),
                                    "centre_element": symbols[centre], "radius": radius,
                                    "capped": len(caps), "parent": structure_id(parent)}))
    if not options:
        if too_big and not crowded:
            raise ValueError(f"every cluster of radius {radius} Å has more than "
                             f"max_atoms={max_atoms} atoms; lower radius or raise max_atoms")
        raise ValueError(f"every cluster of radius {radius} Å has H caps closer than a bond "
                         "to other atoms; change radius or set passivate=False")
    return _draw(options, count, seed)


#: Two atoms are bonded (for cluster caps) within this factor of their covalent radii sum:
#: diamond Si–Si is 1.06 of it, while rocksalt Na–Na (1.20) stays out.
_BOND_FACTOR = 1.15
#: A cap closer than this (Å) to another atom than its own would bond to it (H₂ is 0.74 Å).
_CAP_CLEARANCE = 1.5


def _defects_module() -> Any:
    try:
        from pymatgen.analysis.defects import generators
    except ImportError as error:  # pragma: no cover - a dependency of hifidata
        raise ImportError("interstitials need pymatgen-analysis-defects: "
                          "pip install pymatgen-analysis-defects") from error
    return generators


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError("count must be at least 1")


def _element(symbol: str, parameter: str) -> str:
    from ase.data import chemical_symbols

    if not isinstance(symbol, str) or symbol not in chemical_symbols[1:]:
        raise ValueError(f"{parameter}: unknown element {symbol!r}")
    return symbol


def _periodic(parents: Sequence[Atoms], protocol: str) -> list[Atoms]:
    periodic = [p for p in parents if p.pbc.all() and p.cell.rank == 3]
    if not periodic:
        raise ValueError(f"{protocol} need periodic parents (pbc on all three axes, with a cell)")
    return periodic


def _relabel(atoms: Atoms, charge: int) -> Atoms:
    """``atoms`` with ``charge`` and the lowest spin its (changed) electron count allows."""
    atoms.info.pop("spin", None)  # the parent's spin may no longer fit
    return with_charge_and_spin(atoms, charge, None)


def _fails_check(atoms: Atoms) -> bool:
    try:
        check_structure(atoms)
    except StructureError:
        return True
    return False


def _closest_ratio(atoms: Atoms, index: int) -> float:
    """Distance of atom ``index`` to its nearest neighbour over their covalent radii sum."""
    from ase.data import covalent_radii

    others = [i for i in range(len(atoms)) if i != index]
    distances = atoms.get_distances(index, others, mic=bool(atoms.pbc.any()))
    radii = covalent_radii[atoms.numbers]
    return float(np.min(distances / (radii[index] + radii[others])))


def _distinct_sites(atoms: Atoms) -> list[int]:
    """One atom index per symmetry orbit (space group for crystals, point group for molecules)."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import PointGroupAnalyzer, SpacegroupAnalyzer

    if atoms.pbc.all():
        structure = AseAtomsAdaptor.get_structure(atoms)
        orbits = SpacegroupAnalyzer(structure, symprec=1e-3).get_symmetrized_structure()
        return sorted(group[0] for group in orbits.equivalent_indices)
    if atoms.pbc.any() or len(atoms) < 3:
        return list(range(len(atoms)))
    try:
        molecule = AseAtomsAdaptor.get_molecule(atoms, charge_spin_check=False)
        sets = PointGroupAnalyzer(molecule, tolerance=0.1).get_equivalent_atoms()["eq_sets"]
    except Exception:  # pymatgen's point-group search fails on some shapes: no symmetry then
        return list(range(len(atoms)))
    return sorted(int(i) for i in sets)


def _draw(options: list[tuple[Atoms, dict[str, Any]]], count: int, seed: int) -> Candidates:
    """Up to ``count`` of ``options``, drawn from ``seed``, in their original order."""
    rng = np.random.default_rng(seed)
    out = Candidates()
    for step, k in enumerate(sorted(rng.permutation(len(options))[:count])):
        atoms, origin = options[k]
        out.structures.append(atoms)
        out.origins.append({**origin, "seed": seed, "step": step})
    return out


def _terminations(atoms: Atoms, tolerance: float = 0.3) -> tuple[str, str]:
    """Formulas of the outermost atomic layers (within ``tolerance`` Å) at the top and bottom."""
    normal = np.cross(atoms.cell[0], atoms.cell[1])
    height = atoms.positions @ (normal / np.linalg.norm(normal))
    top = atoms[height > height.max() - tolerance].get_chemical_formula()
    bottom = atoms[height < height.min() + tolerance].get_chemical_formula()
    return top, bottom


def _sphere(structure: Any, centre: np.ndarray, radius: float) -> list[tuple[int, tuple, Any]]:
    """(index, image, Cartesian coords) of every site within ``radius`` of ``centre``, sorted."""
    found = structure.get_sites_in_sphere(centre, radius, include_index=True, include_image=True)
    members = [(int(n.index), tuple(int(i) for i in n.image), n.coords, n.nn_distance)
               for n in found]
    members.sort(key=lambda m: (round(float(m[3]), 6), m[0], m[1]))
    return [(index, image, coords) for index, image, coords, _ in members]


def _caps(structure: Any, symbols: list[str], members: list[tuple[int, tuple, Any]],
          origin: np.ndarray) -> list[np.ndarray]:
    """H positions (relative to ``origin``) on every bond from a member to a non-member."""
    from ase.data import atomic_numbers, covalent_radii

    radius = {s: covalent_radii[atomic_numbers[s]] for s in set(symbols)}
    inside = {(index, image) for index, image, _ in members}  # images are absolute
    reach = _BOND_FACTOR * 2 * max(radius.values())
    caps = []
    for index, _, coords in members:
        own = radius[symbols[index]]
        for n in structure.get_sites_in_sphere(coords, reach, include_index=True,
                                               include_image=True):
            key = (int(n.index), tuple(int(i) for i in n.image))
            if key in inside or n.nn_distance > _BOND_FACTOR * (own + radius[symbols[n.index]]):
                continue
            bond = (n.coords - coords) / n.nn_distance
            caps.append(coords - origin + bond * (own + covalent_radii[1]))
    return caps


def _caps_clear(atoms: Atoms, first_cap: int) -> bool:
    """Each H cap keeps ``_CAP_CLEARANCE`` and a covalent bond length from all but its atom."""
    from ase.data import covalent_radii

    radii = covalent_radii[atoms.numbers]
    for cap in range(first_cap, len(atoms)):
        distances = atoms.get_distances(cap, list(range(len(atoms))))
        distances[cap] = np.inf
        distances[int(np.argmin(distances[:first_cap]))] = np.inf  # the atom it caps
        if np.any(distances < np.maximum(_CAP_CLEARANCE, radii + radii[cap])):
            return False
    return True
