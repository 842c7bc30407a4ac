"""CP2K engine: Gaussian-and-plane-wave DFT (Quickstep) for crystals and molecules.

The engine contract is in :mod:`hifidata.calculators.base`: ``resolve``, ``check``, ``compute``,
``rescues`` and ``version``. The input is built as a nested dict and written by cp2k-input-tools'
generator; CP2K runs as a child process (:func:`hifidata.calculators.process.run_program`) in the
label's scratch folder, and its output is read back. CP2K prints Hartree, Hartree/Bohr and GPa;
this module converts exactly once, with ASE's constants.

A method's ``params`` (plain dict from the spec; docs/cp2k.md has more):

- ``xc``: ``PBE`` (default) | ``PBESOL`` | ``BLYP`` | ``BP`` | ``LDA``
- ``basis`` (default ``DZVP-MOLOPT-SR-GTH``) from ``basis_file`` (default ``BASIS_MOLOPT``),
  ``potential`` (default ``GTH-<xc>``) from ``potential_file`` (default ``GTH_POTENTIALS``); per
  element the name itself or its only ``-qN`` variant, with basis and potential of equal valence
- ``cutoff`` / ``rel_cutoff`` (Ry, defaults 400 / 50), ``eps_default`` (1e-10), ``eps_scf`` (1e-7)
- ``kpoints``: ``null`` / ``gamma`` (Γ only), ``{spacing: s}`` (a grid per structure, see
  :mod:`hifidata.calculators.kpoints`) or ``[n1, n2, n3]`` (Monkhorst–Pack: Γ-centred
  along odd n, shifted off Γ along even n)
- ``smearing``: ``null`` (fixed occupations) or the Fermi–Dirac electronic temperature in K
- ``dispersion``: ``null`` | ``d3`` | ``d3bj`` (Grimme D3 with the parameters of ``xc``)
- ``vacuum`` (Å, default 5): space around a molecule (pbc all false) in its isolated box
- run settings (not identity): ``scf`` (``auto``: OT for Γ-only cells of 32 atoms or more,
  else diagonalization | ``ot`` | ``diagonalization``),
  ``max_scf`` (50), ``outer_scf`` (10, OT only)
- rescue only (added by :func:`rescues`, never by :func:`resolve`): ``restart_wavefunction``,
  ``mixing_alpha``
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.units import Bohr, GPa, Hartree

from hifidata.calculators.base import (
    EngineCrashed,
    EngineResult,
    InvalidStructure,
    LabelTimeout,
    Run,
    ScfNotConverged,
    longer_limit,
)
from hifidata.calculators.kpoints import mesh, resolve_kpoints
from hifidata.calculators.params import integer as _integer
from hifidata.calculators.params import known_keys as _known_keys
from hifidata.calculators.params import positive_float as _positive_float
from hifidata.calculators.process import Finished, command, exit_failure, run_program
from hifidata.structures import charge_of, spin_of

#: the environment variable that replaces the command line, e.g. ``srun -n {ranks} cp2k.psmp``
COMMAND_VARIABLE = "HIFIDATA_CP2K_COMMAND"
DEFAULT_COMMAND = "cp2k"
PROJECT = "hifidata"  # CP2K names its files after it: hifidata-RESTART.wfn, ...

#: xc name -> (CP2K's XC_FUNCTIONAL shortcut, D3 reference functional or None)
FUNCTIONALS: dict[str, tuple[str, str | None]] = {
    "PBE": ("PBE", "PBE"),
    "PBESOL": ("PBESOL", "PBEsol"),
    "BLYP": ("BLYP", "BLYP"),
    "BP": ("BP", "BP86"),
    "LDA": ("PADE", None),
}
_XC_ALIASES = {"PADE": "LDA", "BP86": "BP"}
DISPERSIONS = {"d3": "DFTD3", "d3bj": "DFTD3(BJ)"}
SCF_METHODS = ("auto", "ot", "diagonalization")
#: ``scf: auto`` takes OT from this many atoms on (Γ only, no smearing): small cells have small
#: gaps at Γ, where OT needs several times the steps of Broyden-mixed diagonalization
OT_FROM_ATOMS = 32

DEFAULTS: dict[str, Any] = {
    "xc": "PBE",
    "basis": "DZVP-MOLOPT-SR-GTH",
    "basis_file": "BASIS_MOLOPT",
    "potential_file": "GTH_POTENTIALS",
    "cutoff": 400.0,
    "rel_cutoff": 50.0,
    "eps_default": 1e-10,
    "eps_scf": 1e-7,
    "kpoints": None,
    "smearing": None,
    "dispersion": None,
    "vacuum": 5.0,
    "max_scf": 50,
    "outer_scf": 10,
}
#: Convergence aids: they change the SCF path, not the converged number.
RESCUE_KEYS = ("restart_wavefunction", "mixing_alpha")
#: Settings that change how CP2K runs, not the number it converges to (not identity).
RUN_SETTINGS = ("scf", "max_scf", "outer_scf", *RESCUE_KEYS)
_KNOWN = (*DEFAULTS, "potential", "scf")
_RESCUE_MAX_SCF = 200
_DEFAULT_ALPHA = 0.4  # CP2K's Broyden mixing default


# ----------------------------------------------------------------------------------- resolve


def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``params`` and fill every default; ValueError names the offending key."""
    _known_keys("cp2k", params, _KNOWN, RESCUE_KEYS)
    get = lambda key: params.get(key, DEFAULTS[key])  # noqa: E731
    out: dict[str, Any] = {"xc": _xc(get("xc"))}
    out["basis_file"] = _name("basis_file", get("basis_file"))
    out["basis"] = _name("basis", get("basis"))
    out["potential_file"] = _name("potential_file", get("potential_file"))
    out["potential"] = _name("potential", params.get("potential", f"GTH-{out['xc']}"))
    _check_names_exist(out)
    out["cutoff"] = _positive_float("cutoff", get("cutoff"))
    out["rel_cutoff"] = _positive_float("rel_cutoff", get("rel_cutoff"))
    out["eps_default"] = _positive_float("eps_default", get("eps_default"))
    out["eps_scf"] = _positive_float("eps_scf", get("eps_scf"))
    out["kpoints"] = resolve_kpoints(get("kpoints"))
    out["smearing"] = (
        None if get("smearing") is None else _positive_float("smearing", get("smearing"))
    )
    out["dispersion"] = _dispersion(get("dispersion"), out["xc"])
    out["vacuum"] = _positive_float("vacuum", get("vacuum"))
    out["scf"] = _scf(params.get("scf"), out)
    out["max_scf"] = _integer("max_scf", get("max_scf"), 1)
    out["outer_scf"] = _integer("outer_scf", get("outer_scf"), 0)
    return out


def _xc(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'xc' must be a functional name (known: {', '.join(FUNCTIONALS)})")
    xc = _XC_ALIASES.get(value.strip().upper(), value.strip().upper())
    if xc not in FUNCTIONALS:
        raise ValueError(f"unknown cp2k xc {value!r} (known: {', '.join(FUNCTIONALS)})")
    return xc


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise ValueError(f"{key!r} must be a name without spaces, not {value!r}")
    return value.strip()


def _check_names_exist(settings: Mapping[str, Any]) -> None:
    """Catch a misspelt basis or potential at resolve time (when the data files are here)."""
    for key, file_key in (("basis", "basis_file"), ("potential", "potential_file")):
        table = _library(settings[file_key])
        if table is None:
            continue  # CP2K is not installed here: CP2K itself will check where it runs
        name = settings[key].upper()
        if not any(_variants(names, name) for names in table.values()):
            raise ValueError(f"{key!r}: no element has {settings[key]!r} in {settings[file_key]!r}")




def _dispersion(value: Any, xc: str) -> str | None:
    if value is None or value is False or str(value).strip().lower() in ("", "none"):
        return None
    dispersion = str(value).strip().lower()
    if dispersion not in DISPERSIONS:
        raise ValueError(f"unknown dispersion {value!r} (known: {', '.join(DISPERSIONS)})")
    if FUNCTIONALS[xc][1] is None:
        raise ValueError(f"'dispersion': D3 has no parameters for {xc}")
    return dispersion


def _scf(value: Any, settings: Mapping[str, Any]) -> str:
    """``auto`` (OT for large Γ-only cells), diagonalization for k-points and smearing."""
    # a k-point spacing may give a large cell Γ only: "auto" then decides per structure
    needs_diagonalization = (isinstance(settings["kpoints"], list)
                             or settings["smearing"] is not None)
    if value is None:
        return "diagonalization" if needs_diagonalization else "auto"
    scf = str(value).strip().lower()
    if scf not in SCF_METHODS:
        raise ValueError(f"unknown scf {value!r} (known: {', '.join(SCF_METHODS)})")
    if scf == "auto" and needs_diagonalization:
        return "diagonalization"
    if scf == "ot" and (needs_diagonalization or settings["kpoints"] is not None):
        raise ValueError("'scf': ot supports neither k-points nor smearing; use diagonalization")
    return scf


def _scf_method(settings: Mapping[str, Any], atoms: Atoms) -> str:
    if settings["scf"] != "auto":
        return settings["scf"]
    if mesh(atoms, settings["kpoints"]) is not None:
        return "diagonalization"
    return "ot" if len(atoms) >= OT_FROM_ATOMS else "diagonalization"


def _settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved params plus the validated rescue keys and time limit (compute takes them all)."""
    own = {k: v for k, v in params.items() if k not in (*RESCUE_KEYS, "time_limit")}
    settings = resolve(own)
    settings["time_limit"] = params.get("time_limit")
    restart = params.get("restart_wavefunction", False)
    if not isinstance(restart, bool):
        raise ValueError(f"'restart_wavefunction' must be true or false, not {restart!r}")
    settings["restart_wavefunction"] = restart
    alpha = params.get("mixing_alpha", _DEFAULT_ALPHA)
    settings["mixing_alpha"] = _positive_float("mixing_alpha", alpha)
    return settings


# -------------------------------------------------------------------------------- data files


def data_dir() -> Path:
    """Where CP2K looks for BASIS_MOLOPT and friends: $CP2K_DATA_DIR or its compiled-in folder."""
    return Path(os.environ.get("CP2K_DATA_DIR") or _compiled_data_dir())


@lru_cache(maxsize=1)
def _compiled_data_dir() -> str:
    found = re.search(r'__DATA_DIR="([^"]+)"', _version_text())
    return found.group(1) if found else "/usr/share/cp2k"


def _data_file(name: str) -> Path | None:
    for path in (Path(name).expanduser(), data_dir() / name):
        if path.is_file():
            return path.resolve()
    return None


def _library(name: str) -> dict[str, list[tuple[set[str], int]]] | None:
    path = _data_file(name)
    return None if path is None else _read_library(str(path))


@lru_cache(maxsize=16)
def _read_library(path: str) -> dict[str, list[tuple[set[str], int]]]:
    """element -> [(names of one entry, upper case; its valence or 0)] of a basis/potential file.

    An entry starts with ``El NAME [ALIAS ...]``; in a potential file the next line holds the
    electrons per angular momentum, whose sum is the valence.
    """
    symbols = set(chemical_symbols[1:])
    table: dict[str, list[tuple[set[str], int]]] = {}
    lines = [
        line.split("#")[0].split() for line in Path(path).read_text(errors="replace").splitlines()
    ]
    lines = [words for words in lines if words]
    for number, words in enumerate(lines):
        if len(words) >= 2 and words[0] in symbols and words[1][0].isalpha():
            following = lines[number + 1] if number + 1 < len(lines) else []
            valence = sum(int(w) for w in following) if all(w.isdigit() for w in following) else 0
            table.setdefault(words[0], []).append(({w.upper() for w in words[1:]}, valence))
    return table


def _variants(entries: list[tuple[set[str], int]], name: str) -> list[tuple[str, int]]:
    """The names of ``entries`` that ``name`` selects: itself, else its ``-qN`` variants."""
    exact = [(name, valence) for names, valence in entries if name in names]
    if exact:
        return exact
    pattern = re.compile(re.escape(name) + r"-Q(\d+)$")
    return [
        (alias, valence or int(pattern.match(alias).group(1)))
        for names, valence in entries
        for alias in sorted(names)
        if pattern.match(alias)
    ]


def _kinds(symbols: set[str], settings: Mapping[str, Any]) -> dict[str, tuple[str, str, int]]:
    """element -> (basis name, potential name, valence): InvalidStructure where there is none.

    An element with the potential at one valence only (``GTH-PBE-q4`` for Si) takes the basis of
    that valence; with several (Na q1/q9), name the one you want in ``potential``.
    """
    basis_table, potential_table = (
        _library(settings["basis_file"]),
        _library(settings["potential_file"]),
    )
    kinds = {}
    for symbol in sorted(symbols):
        if basis_table is None or potential_table is None:  # no files here: trust the names
            kinds[symbol] = (settings["basis"], settings["potential"], 0)
            continue
        potentials = _variants(potential_table.get(symbol, []), settings["potential"].upper())
        if len(potentials) != 1:
            raise InvalidStructure(_missing(symbol, "potential", settings, potentials))
        potential, valence = potentials[0]
        bases = _variants(basis_table.get(symbol, []), settings["basis"].upper())
        if len(bases) > 1:
            bases = [(name, q) for name, q in bases if name.endswith(f"-Q{valence}")]
        if len(bases) != 1:
            raise InvalidStructure(_missing(symbol, "basis", settings, bases))
        kinds[symbol] = (bases[0][0], potential, valence)
    return kinds


def _missing(symbol: str, key: str, settings: Mapping[str, Any], found: list) -> str:
    where = f"{settings[key]!r} in {settings[key + '_file']!r}"
    if not found:
        return f"element {symbol} has no {key} {where}"
    names = ", ".join(name for name, _ in found)
    return f"element {symbol}: {key} {where} is ambiguous ({names}); name one"


# ------------------------------------------------------------------------------------- check


def check(atoms: Atoms, params: Mapping[str, Any]) -> None:
    """Raise InvalidStructure for a structure this engine cannot label with ``params``."""
    settings = _settings(params)
    pbc = atoms.get_pbc()
    if pbc.any() and not pbc.all():
        raise InvalidStructure(
            f"cp2k labels crystals (pbc all true) or molecules (pbc all false), not mixed "
            f"pbc={pbc.tolist()}"
        )
    if pbc.all() and abs(atoms.cell.volume) < 1e-6:
        raise InvalidStructure("periodic structure without a cell (volume 0)")
    if not pbc.any() and settings["kpoints"] is not None:
        raise InvalidStructure("k-points need a periodic structure; this one has pbc all false")
    kinds = _kinds(set(atoms.get_chemical_symbols()), settings)
    if all(valence for _, _, valence in kinds.values()):
        electrons = sum(kinds[s][2] for s in atoms.get_chemical_symbols()) - charge_of(atoms)
        unpaired = spin_of(atoms) - 1
        if electrons < 1 or unpaired > electrons:
            raise InvalidStructure(
                f"charge {charge_of(atoms)} and multiplicity {spin_of(atoms)} leave "
                f"{electrons} valence electrons for the pseudopotentials "
                f"({atoms.get_chemical_formula()})"
            )


# -------------------------------------------------------------------------------- the input


def input_tree(atoms: Atoms, settings: Mapping[str, Any], restart: Path | None = None) -> dict:
    """CP2K's input as a nested dict (cp2k-input-tools' simplified format)."""
    periodic = bool(atoms.get_pbc().all())
    cell, positions = (
        (atoms.cell.array, atoms.positions)
        if periodic
        else _isolated_box(atoms, settings["vacuum"])
    )
    kinds = _kinds(set(atoms.get_chemical_symbols()), settings)
    settings = {**settings, "scf": _scf_method(settings, atoms)}
    grid = mesh(atoms, settings["kpoints"])
    dft: dict[str, Any] = {
        "basis_set_file_name": str(_data_file(settings["basis_file"]) or settings["basis_file"]),
        "potential_file_name": str(
            _data_file(settings["potential_file"]) or settings["potential_file"]
        ),
        "charge": charge_of(atoms),
        "multiplicity": spin_of(atoms),
        "mgrid": {"cutoff": settings["cutoff"], "rel_cutoff": settings["rel_cutoff"]},
        "qs": {"eps_default": settings["eps_default"]},
        "scf": _scf_section(settings, restart),
        **({"wfn_restart_file_name": str(restart)} if restart else {}),
        "xc": _xc_section(settings),
    }
    if spin_of(atoms) > 1:
        dft["uks"] = True
    if grid is not None:
        dft["kpoints"] = {"scheme": ["MONKHORST-PACK", *map(str, grid)]}
    if not periodic:
        dft["poisson"] = {"periodic": "NONE", "poisson_solver": "WAVELET"}
    force_eval: dict[str, Any] = {
        "method": "QS",
        "dft": dft,
        "subsys": {
            "cell": {
                "a": [float(x) for x in cell[0]],
                "b": [float(x) for x in cell[1]],
                "c": [float(x) for x in cell[2]],
                "periodic": "XYZ" if periodic else "NONE",
            },
            # repr: the shortest text that reads back as the same double
            "coord": {
                "*": [
                    f"{symbol} {x!r} {y!r} {z!r}"
                    for symbol, (x, y, z) in zip(
                        atoms.get_chemical_symbols(), positions.astype(float).tolist(), strict=True
                    )
                ]
            },
            "kind": [
                {"_": symbol, "basis_set": basis, "potential": potential}
                for symbol, (basis, potential, _) in kinds.items()
            ],
        },
        "print": {"forces": {"_": "ON", "ndigits": 14}},
    }
    if periodic:
        force_eval["stress_tensor"] = "ANALYTICAL"
        force_eval["print"]["stress_tensor"] = {"_": "ON"}
    global_section: dict[str, Any] = {
        "project": PROJECT,
        "run_type": "ENERGY_FORCE",
        "print_level": "LOW",
    }
    if settings.get("time_limit"):
        global_section["walltime"] = str(int(_walltime(float(settings["time_limit"]))))
    return {"global": global_section, "force_eval": force_eval}


def _isolated_box(atoms: Atoms, vacuum: float) -> tuple[np.ndarray, np.ndarray]:
    """A cubic box (CP2K's wavelet solver takes no other) with at least ``vacuum`` Å on every
    side, the molecule's bounding box in its middle."""
    positions = atoms.positions.astype(float)
    low, high = positions.min(axis=0), positions.max(axis=0)
    side = float((high - low).max()) + 2 * vacuum
    return np.eye(3) * side, positions - (low + high) / 2 + side / 2


def _walltime(limit: float) -> float:
    """CP2K's own limit: a little below ours, so it stops cleanly and writes its restart file."""
    return max(1.0, limit - max(5.0, 0.05 * limit))


def _scf_section(settings: Mapping[str, Any], restart: Path | None) -> dict[str, Any]:
    scf: dict[str, Any] = {
        "eps_scf": settings["eps_scf"],
        "max_scf": settings["max_scf"],
        "scf_guess": "RESTART" if restart else "ATOMIC",
        "print": {"restart": {"backup_copies": 0}},
    }
    if settings["scf"] == "ot":
        scf["ot"] = {"minimizer": "DIIS", "preconditioner": "FULL_ALL"}
        if settings["outer_scf"]:
            scf["outer_scf"] = {"eps_scf": settings["eps_scf"], "max_scf": settings["outer_scf"]}
        return scf
    scf["diagonalization"] = {"algorithm": "STANDARD"}
    scf["mixing"] = {"method": "BROYDEN_MIXING", "alpha": settings["mixing_alpha"]}
    if settings["smearing"] is not None:
        scf["smear"] = {
            "_": "ON",
            "method": "FERMI_DIRAC",
            "electronic_temperature": settings["smearing"],
        }
        scf["added_mos"] = -1  # every virtual orbital of the basis: never too few to smear over
    return scf


def _xc_section(settings: Mapping[str, Any]) -> dict[str, Any]:
    shortcut, d3_name = FUNCTIONALS[settings["xc"]]
    xc: dict[str, Any] = {"xc_functional": {"_": shortcut}}
    if settings["dispersion"]:
        xc["vdw_potential"] = {
            "potential_type": "PAIR_POTENTIAL",
            "pair_potential": {
                "type": DISPERSIONS[settings["dispersion"]],
                "parameter_file_name": str(_data_file("dftd3.dat") or "dftd3.dat"),
                "reference_functional": d3_name,
            },
        }
    return xc


def input_text(atoms: Atoms, settings: Mapping[str, Any], restart: Path | None = None) -> str:
    """The input file CP2K reads, written by cp2k-input-tools from :func:`input_tree`."""
    tree = input_tree(atoms, settings, restart)
    return "\n".join(_generator().line_iter(tree)) + "\n"


@lru_cache(maxsize=1)
def _generator():
    """cp2k-input-tools' generator (it reads CP2K's 4 MB keyword tree: once per process)."""
    from cp2k_input_tools.generator import CP2KInputGenerator

    return CP2KInputGenerator()


def n_kpoints(grid: list[int] | None) -> int:
    """The k-points CP2K computes for ``grid``: the Monkhorst–Pack set, k and -k counted once.

    CP2K's MONKHORST-PACK scheme is the standard one, x_i = (2i - n - 1) / 2n (Γ-centred for odd
    n, shifted off Γ for even n); without SYMMETRY it reduces the set by time reversal only.
    """
    if grid is None:
        return 1
    axes = [(2 * np.arange(1, n + 1) - n - 1) / (2 * n) for n in grid]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    keys = {tuple(np.round(p % 1.0, 10) % 1.0) for p in points}
    pairs = {min(k, tuple(np.round(-np.array(k) % 1.0, 10) % 1.0)) for k in keys}
    return len(pairs)


# ----------------------------------------------------------------------------------- compute


def compute(atoms: Atoms, params: Mapping[str, Any], run: Run) -> EngineResult:
    """Energy (eV), forces (eV/Å) and, for crystals, stress (eV/Å³) from one CP2K run."""
    settings = _settings(params)
    workdir = run.folder()
    grid = mesh(atoms, settings["kpoints"])
    restart = _restart_file(workdir, grid) if settings["restart_wavefunction"] else None
    (workdir / f"{PROJECT}.inp").write_text(input_text(atoms, settings, restart))
    output = workdir / f"{PROJECT}.out"
    output.unlink(missing_ok=True)
    finished = run_program(
        [*command(COMMAND_VARIABLE, DEFAULT_COMMAND, run.ranks), "-i", f"{PROJECT}.inp"],
        cwd=workdir,
        threads=run.threads,
        time_limit=settings["time_limit"],
        output=output,
    )
    extra = {
        "scf": _scf_method(settings, atoms),
        "kpoint_grid": grid,
        "n_kpoints": n_kpoints(grid),
        "restarted_from": restart.name if restart else None,
    }
    return parse_output(finished, len(atoms), periodic=bool(atoms.get_pbc().all()), extra=extra)


def _restart_file(workdir: Path, grid: list[int] | None) -> Path | None:
    """The wavefunction a previous attempt left (k-point runs write .kp, Γ runs .wfn)."""
    path = workdir / f"{PROJECT}-RESTART.{'kp' if grid else 'wfn'}"
    return path if path.is_file() and path.stat().st_size > 0 else None


_ENERGY = re.compile(r"ENERGY\| Total FORCE_EVAL \( \w+ \) energy \[a\.u\.\]:\s+(\S+)")
_CONVERGED = re.compile(r"\*\*\* SCF run converged in\s+(\d+) steps")
_OUTER = re.compile(r"outer SCF loop converged in\s+(\d+) iterations or\s+(\d+) steps")
_WARNINGS = re.compile(r"The number of warnings for this run is :\s+(\d+)")
_WARNING_TEXT = re.compile(r"\*\*\* WARNING in (\S+) :: (.*?) \*\*\*", re.S)
_TIMING_ROW = re.compile(r"^ (\w+)\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s*$")
_NUMBER = r"[-+]?\d+\.\d+(?:[EeDd][-+]?\d+)?"


def parse_output(
    finished: Finished, n_atoms: int, periodic: bool, extra: Mapping[str, Any] | None = None
) -> EngineResult:
    """The numbers of one CP2K run, or the classified failure (never a partial result)."""
    text = finished.output
    failure = _failure(finished)
    if failure is not None:
        raise failure
    energy = _energy(text)
    forces = _forces(text, n_atoms)
    stress = _stress(text) if periodic else None
    info = {"cp2k_version": version(), **_report(text), "wall_s": finished.wall_time}
    info.update(extra or {})
    return EngineResult(
        energy=energy * Hartree, forces=forces * (Hartree / Bohr), stress=stress, info=info
    )


def _failure(finished: Finished) -> Exception | None:
    """What went wrong, CP2K's own messages first, then the exit status."""
    text = finished.output
    abort = _abort_message(text)
    if "exceeded requested execution time" in text:
        return LabelTimeout("CP2K stopped at its WALLTIME (set below the label's time limit)")
    if abort is not None:
        lowered = abort.lower()
        if any(marker in lowered for marker in _STRUCTURE_MARKERS):
            return InvalidStructure(f"CP2K rejected the system: {abort}")
        crashed = exit_failure("cp2k", finished)
        if crashed is not None and crashed.failure_class == "out_of_memory":
            return crashed
        error = EngineCrashed(f"CP2K aborted: {abort}")
        error.transient = False  # an input it refuses: the same input fails the same way
        return error
    crashed = exit_failure("cp2k", finished)
    if crashed is not None:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        if tail:
            crashed.args = (f"{crashed} ({tail[-300:]})",)
        return crashed
    if "SCF run NOT converged" in text:
        steps = re.findall(r"^\s+(\d+) \S+\s+[\d.E+-]+\s+[\d.]+\s+([\d.E+-]+)\s+(\S+)", text, re.M)
        last = f"; last step {steps[-1][0]}, convergence {steps[-1][1]}" if steps else ""
        return ScfNotConverged(f"CP2K: SCF run NOT converged{last}")
    if "PROGRAM ENDED AT" not in text:
        return EngineCrashed("CP2K exited 0 without finishing its output")
    return None


#: CP2K messages that mean the system itself cannot be computed as given
_STRUCTURE_MARKERS = (
    "odd number of electrons",
    "number of electrons",
    "multiplicity",
    "more electrons",
)


def _abort_message(text: str) -> str | None:
    """The message in CP2K's [ABORT] box, on one line (with its source location)."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if "[ABORT]" in line:
            words = []
            for box in lines[number + 1 :]:
                if box.strip().startswith("****"):
                    break
                words.append(box.strip().strip("*")[12:].strip())
            return " ".join(w for w in words if w) or "no message"
    return None


def _energy(text: str) -> float:
    found = _ENERGY.findall(text)
    if not found:
        raise EngineCrashed("CP2K finished but printed no total energy")
    return _finite("energy", [float(found[-1])])[0]


def _forces(text: str, n_atoms: int) -> np.ndarray:
    start = text.rfind("ATOMIC FORCES in [a.u.]")
    if start < 0:
        raise EngineCrashed("CP2K finished but printed no ATOMIC FORCES block")
    rows = re.findall(
        rf"^\s+(\d+)\s+\d+\s+[A-Za-z]+\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s*$",
        text[start:].split("SUM OF ATOMIC FORCES")[0],
        re.M,
    )
    if len(rows) != n_atoms or [int(r[0]) for r in rows] != list(range(1, n_atoms + 1)):
        raise EngineCrashed(f"CP2K printed forces for {len(rows)} atoms, expected {n_atoms}")
    values = [float(x.replace("D", "E").replace("d", "e")) for row in rows for x in row[1:]]
    return np.array(_finite("forces", values)).reshape(n_atoms, 3)


def _stress(text: str) -> np.ndarray:
    """Voigt (xx, yy, zz, yz, xz, xy) in eV/Å³ with ASE's sign (CP2K prints the pressure sign)."""
    start = text.rfind("STRESS| Analytical stress tensor [GPa]")
    if start < 0:
        raise EngineCrashed("CP2K finished but printed no analytical stress tensor")
    rows = re.findall(
        rf"STRESS\|\s+([xyz])\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})", text[start : start + 600]
    )
    if [r[0] for r in rows[:3]] != ["x", "y", "z"]:
        raise EngineCrashed("CP2K's stress tensor block is incomplete")
    tensor = np.array(_finite("stress", [float(x) for r in rows[:3] for x in r[1:]]))
    tensor = -tensor.reshape(3, 3) * GPa
    return tensor[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def _finite(what: str, values: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise EngineCrashed(f"CP2K printed a non-finite {what}")
    return values


def _report(text: str) -> dict[str, Any]:
    """SCF steps, k-points, warnings and CP2K's own timings."""
    outer = _OUTER.findall(text)
    steps = sum(int(s) for _, s in outer) if outer else sum(map(int, _CONVERGED.findall(text)))
    warnings = _WARNINGS.findall(text)
    timings = {}
    table = text[text.rfind("T I M I N G") :]
    for line in table.splitlines()[1:40]:
        row = _TIMING_ROW.match(line)
        if row:
            timings[row.group(1)] = float(row.group(2))
    return {
        "scf_iterations": steps,
        "scf_converged": True,
        "warnings": int(warnings[-1]) if warnings else 0,
        "warning_texts": [" ".join(m[1].split()) for m in _WARNING_TEXT.findall(text)][:5],
        "cp2k_time_s": timings.get("CP2K"),
        "timings_s": dict(list(timings.items())[:12]),
    }


# ----------------------------------------------------------------------------- rescues, version


def rescues(params: Mapping[str, Any], failure_class: str) -> list[dict[str, Any]]:
    """The rescue ladder of one failure class: changes to ``params``, applied cumulatively.

    scf_not_converged: (1) more steps, restarting from the failed attempt's wavefunction;
    (2) diagonalization with gentler Broyden mixing; (3) OT where it can run and was not what
    failed first (small Γ-only cells with tiny gaps: Broyden mixing can slosh for hundreds of
    steps), else much gentler mixing. None of them changes the converged number
    (smearing would: it is a method setting, never a rescue).
    """
    if failure_class == "scf_not_converged":
        max_scf = max(_RESCUE_MAX_SCF, 2 * int(params.get("max_scf", DEFAULTS["max_scf"])))
        first = {"max_scf": max_scf, "restart_wavefunction": True}
        can_ot = params.get("kpoints") is None and params.get("smearing") is None
        second = {"scf": "diagonalization", "mixing_alpha": 0.2}
        if can_ot and params.get("scf") != "ot":
            third = {"scf": "ot", "max_scf": 2 * max_scf}
        else:
            third = {"scf": "diagonalization", "mixing_alpha": 0.05, "max_scf": 2 * max_scf}
        return [first, second, third]
    if failure_class == "timeout":
        return [{**longer_limit(params), "restart_wavefunction": True}]
    if failure_class == "engine_crashed":
        return [{}]  # a transient crash (a signal): one plain retry
    return []


def version() -> str:
    """CP2K's version, e.g. '2023.1' ('unavailable' where it is not installed)."""
    found = re.search(r"CP2K version (\S+)", _version_text())
    return found.group(1) if found else "unavailable"


@lru_cache(maxsize=1)
def _version_text() -> str:
    argv = command(COMMAND_VARIABLE, DEFAULT_COMMAND, 1)
    program = next((word for word in argv if Path(word).name.startswith("cp2k")), argv[-1])
    try:
        done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr
