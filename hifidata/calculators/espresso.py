"""Quantum ESPRESSO engine: plane-wave DFT with pseudopotentials (pw.x) for periodic cells.

The engine contract is in :mod:`hifidata.calculators.base`: ``resolve``, ``check``, ``compute``,
``rescues`` and ``version``. ASE writes the input (:func:`ase.io.espresso.write_espresso_in`), pw.x
runs as a child process (:func:`hifidata.calculators.process.run_program`) in the label's
scratch folder, and its output is read back here: Ry, Ry/Bohr and Ry/Bohr³ become eV, eV/Å and
eV/Å³ once, with ``ase.units`` (CODATA 2014, as every hifidata engine; ASE's espresso reader uses
QE's CODATA 2006 constants, 1e-7 apart), and the stress takes ASE's sign. Whether the run
converged is read from pw.x's own words first: a reader would hand back whatever energy it finds.

A method's ``params`` (plain dict from the spec; docs/espresso.md has more):

- ``xc`` (default ``PBE``): pw.x takes the functional from the pseudopotentials; ``xc`` records it
  and must agree with every file's header
- ``pseudo_dir`` (default: the packaged PseudoDojo NC SR PBE v0.4 subset) and ``pseudopotentials``
  (element -> file name; default: every UPF file in ``pseudo_dir``, by the element its header
  names). :func:`resolve` adds ``pseudo_sha256`` (element -> SHA-256 of the file): the hashes,
  not the folder, are the method's identity
- ``ecutwfc`` (Ry, default 40), ``ecutrho`` (Ry, default 4 × ecutwfc)
- ``kpoints``: ``null`` / ``gamma`` (Γ only), ``[n1, n2, n3]`` (Monkhorst–Pack: Γ-centred
  along odd n, shifted off Γ along even n) or ``{spacing: s}`` (a grid per structure, see
  :mod:`hifidata.calculators.kpoints`); symmetry off, so pw.x uses exactly that grid
- ``smearing``: ``null`` (fixed occupations) or the Fermi–Dirac electronic temperature in K
- ``conv_thr`` (Ry per cell, default 1e-9), ``dispersion``: ``null`` | ``d3`` | ``d3bj``
  (Grimme D3, zero or Becke–Johnson damping, two-body terms only)
- run settings (not identity): ``pseudo_dir``, ``electron_maxstep`` (100), ``mixing_beta``
  (0.7), ``mixing_mode`` (``plain``), ``diagonalization`` (``david``)
- rescue only (added by :func:`rescues`, never by :func:`resolve`): ``restart`` (start from what
  the previous attempt of the same label left in the scratch folder)

The structure's charge becomes ``tot_charge``; a spin multiplicity above 1 runs spin-polarized
with ``tot_magnetization`` = multiplicity - 1.
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.io import write
from ase.units import Bohr, Ry, kB

from hifidata.calculators.base import (
    EngineCrashed,
    EngineResult,
    InvalidStructure,
    LabelTimeout,
    OutOfMemory,
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

#: the environment variable that replaces the command line, e.g. ``srun -n {ranks} pw.x -nk 2``
COMMAND_VARIABLE = "HIFIDATA_PW_COMMAND"
DEFAULT_COMMAND = "pw.x"
PREFIX = "pwscf"  # pw.x names its files after it: out/pwscf.save/, out/pwscf.wfc1, ...
OUTDIR = "out"
#: the PseudoDojo subset that ships with hifidata (hifidata/data/pseudos/README.md)
PACKAGED_PSEUDOS = (
    Path(__file__).resolve().parents[1] / "data/pseudos/pseudodojo-nc-sr-pbe-nocc-v0.4"
)

DEFAULTS: dict[str, Any] = {
    "xc": "PBE",
    "ecutwfc": 40.0,
    "kpoints": None,
    "smearing": None,
    "conv_thr": 1e-9,
    "dispersion": None,
    "electron_maxstep": 100,
    "mixing_beta": 0.7,
    "mixing_mode": "plain",
    "diagonalization": "david",
}
#: dispersion name -> pw.x's dftd3_version (3: zero damping, 4: Becke-Johnson damping)
DISPERSIONS = {"d3": 3, "d3bj": 4}
MIXING_MODES = ("plain", "tf", "local-tf")
DIAGONALIZATIONS = ("david", "cg", "ppcg", "paro")
#: Convergence aids the rescue ladder adds; never part of a method.
RESCUE_KEYS = ("restart",)
#: Settings that change how pw.x runs, not the number it converges to (not identity).
RUN_SETTINGS = (
    "pseudo_dir",
    "electron_maxstep",
    "mixing_beta",
    "mixing_mode",
    "diagonalization",
    *RESCUE_KEYS,
)
#: Params holding a path; the spec makes relative ones relative to its own folder.
PATH_SETTINGS = ("pseudo_dir",)
_KNOWN = (
    "xc",
    "pseudo_dir",
    "pseudopotentials",
    "pseudo_sha256",
    "ecutwfc",
    "ecutrho",
    "kpoints",
    "smearing",
    "conv_thr",
    "dispersion",
    "electron_maxstep",
    "mixing_beta",
    "mixing_mode",
    "diagonalization",
)
#: Header spellings of one functional (UPF v1 and v2 write the four libxc-less QE components).
_FUNCTIONAL_ALIASES = {
    "SLA PW PBX PBC": "PBE",
    "SLA PW PBE PBE": "PBE",
    "SLA PW PSX PSC": "PBESOL",
    "SLA PZ NOGX NOGC": "LDA",
    "PZ": "LDA",
    "SLA B88 LYP BLYP": "BLYP",
    "SLA PW PW91 PW91": "PW91",
}
_RESCUE_MAXSTEP = 200
_RESCUE_BETA = 0.3
#: pw.x's own max_seconds stop comes this far ahead of the hard limit, so it can finish its
#: iteration and write restart files: 10 % of the limit, at least 10 s, at most half of it.
_MARGIN_FRACTION, _MARGIN_MIN_S = 0.1, 10.0


# ----------------------------------------------------------------------------------- resolve


def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``params`` and fill every default; raises ValueError naming the offending key.

    Accepts its own output (``pseudo_sha256`` included, which must still match the files).
    """
    _known_keys("espresso", params, _KNOWN, RESCUE_KEYS)

    def get(key: str) -> Any:
        return params.get(key, DEFAULTS.get(key))

    pseudo_dir = _pseudo_dir(params.get("pseudo_dir"))
    files = _pseudo_files(pseudo_dir, params.get("pseudopotentials"))
    out: dict[str, Any] = {
        "xc": _xc(get("xc"), pseudo_dir, files),
        "pseudo_dir": str(pseudo_dir),
        "pseudopotentials": files,
        "pseudo_sha256": _pseudo_hashes(pseudo_dir, files, params.get("pseudo_sha256")),
    }
    out["ecutwfc"] = _positive_float("ecutwfc", get("ecutwfc"))
    ecutrho = params.get("ecutrho")
    out["ecutrho"] = 4 * out["ecutwfc"] if ecutrho is None else _positive_float("ecutrho", ecutrho)
    if out["ecutrho"] < 4 * out["ecutwfc"] * (1 - 1e-12):
        raise ValueError(
            f"'ecutrho' ({out['ecutrho']:g} Ry) must be at least 4 × ecutwfc "
            f"({4 * out['ecutwfc']:g} Ry)"
        )
    out["kpoints"] = resolve_kpoints(get("kpoints"))
    smearing = get("smearing")
    out["smearing"] = None if smearing is None else _positive_float("smearing", smearing)
    out["conv_thr"] = _positive_float("conv_thr", get("conv_thr"))
    out["dispersion"] = _dispersion(get("dispersion"))
    out["electron_maxstep"] = _integer("electron_maxstep", get("electron_maxstep"), 1)
    beta = _positive_float("mixing_beta", get("mixing_beta"))
    if beta > 1:
        raise ValueError(f"'mixing_beta' must be in (0, 1], not {beta}")
    out["mixing_beta"] = beta
    out["mixing_mode"] = _choice("mixing_mode", get("mixing_mode"), MIXING_MODES)
    out["diagonalization"] = _choice("diagonalization", get("diagonalization"), DIAGONALIZATIONS)
    return out


def _pseudo_dir(value: Any) -> Path:
    if value is None:
        return PACKAGED_PSEUDOS
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ValueError(f"'pseudo_dir' must be a folder path, not {value!r}")
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"'pseudo_dir': no folder {folder}")
    return folder


def _pseudo_files(folder: Path, mapping: Any) -> dict[str, str]:
    """Element -> file name: as given (checked), or every UPF file in ``folder`` by its element."""
    if mapping is None:
        return _folder_table(folder)
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"'pseudopotentials' must map elements to file names, not {mapping!r}")
    files: dict[str, str] = {}
    for element, name in mapping.items():
        if element not in chemical_symbols[1:]:
            raise ValueError(f"'pseudopotentials': {element!r} is not an element symbol")
        if not isinstance(name, str) or Path(name).name != name:
            raise ValueError(
                f"'pseudopotentials': {element} must name a file in pseudo_dir, not {name!r}"
            )
        path = folder / name
        if not path.is_file():
            raise ValueError(f"'pseudopotentials': no file {name} in {folder} (for {element})")
        header = _upf_header(path)
        if header["element"] != element:
            raise ValueError(
                f"'pseudopotentials': {name} is a pseudopotential for {header['element']}, "
                f"not {element}"
            )
        files[element] = name
    return dict(sorted(files.items()))


def _folder_table(folder: Path) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() == ".upf":
            found.setdefault(_upf_header(path)["element"], []).append(path.name)
    if not found:
        raise ValueError(f"'pseudo_dir': no UPF files in {folder}")
    ambiguous = {element: names for element, names in found.items() if len(names) > 1}
    if ambiguous:
        element, names = next(iter(sorted(ambiguous.items())))
        raise ValueError(
            f"'pseudo_dir' {folder} holds {len(names)} files for {element} ({', '.join(names)}): "
            "give 'pseudopotentials' (element -> file name)"
        )
    return {element: names[0] for element, names in sorted(found.items())}


def _pseudo_hashes(folder: Path, files: Mapping[str, str], expected: Any) -> dict[str, str]:
    hashes = {element: _sha256(folder / name) for element, name in files.items()}
    if expected is not None and dict(expected) != hashes:
        expected = dict(expected)
        changed = [files[e] for e in hashes if expected.get(e) != hashes[e]]
        changed += sorted(set(expected) - set(hashes))
        raise ValueError(
            f"'pseudo_sha256': the pseudopotentials in {folder} are not the ones this method "
            f"was made with ({', '.join(changed)} differ)"
        )
    return hashes


def _xc(value: Any, folder: Path, files: Mapping[str, str]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'xc' must be a functional name such as PBE, not {value!r}")
    xc = _functional_name(value)
    for name in files.values():
        functional = _upf_header(folder / name)["functional"]
        if _functional_name(functional) != xc:
            raise ValueError(
                f"'xc' {value!r} does not match {name}, a {functional.strip()} pseudopotential "
                "(pw.x takes the functional from the pseudopotentials)"
            )
    return xc


def _functional_name(text: str) -> str:
    words = " ".join(text.upper().replace("-", " ").split())
    return _FUNCTIONAL_ALIASES.get(words, words)


def _dispersion(value: Any) -> str | None:
    if value is None or value is False or str(value).strip().lower() in ("", "none"):
        return None
    dispersion = str(value).strip().lower()
    if dispersion not in DISPERSIONS:
        raise ValueError(f"unknown dispersion {value!r} (known: {', '.join(DISPERSIONS)})")
    return dispersion


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"{key!r} must be one of {', '.join(choices)}, not {value!r}")
    return text




def _settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved params plus the rescue keys and the time limit (compute takes all of them)."""
    extra = ("time_limit", *RESCUE_KEYS)
    settings = resolve({k: v for k, v in params.items() if k not in extra})
    settings["restart"] = bool(params.get("restart", False))
    settings["time_limit"] = params.get("time_limit")
    return settings


# ------------------------------------------------------------------------------ pseudopotentials


def _upf_header(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return _read_upf_header(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=512)
def _read_upf_header(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    """Element, functional and valence charge from a UPF file (v2 attributes or v1 lines)."""
    text = Path(path).read_text(errors="replace")
    name = Path(path).name
    v2 = re.search(r"<PP_HEADER\b([^>]*)>", text)
    attributes = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', v2.group(1))) if v2 else {}
    if attributes.get("element"):
        element = attributes["element"].strip()
        functional = attributes.get("functional", "")
        z_valence = attributes.get("z_valence", "nan")
    else:  # UPF v1: one value per line, followed by its description
        v1 = re.search(r"<PP_HEADER>(.*?)</PP_HEADER>", text, re.S)
        lines = v1.group(1).splitlines() if v1 else []

        def field(label: str) -> str:
            line = next((line for line in lines if label in line), "")
            return line.split(label)[0].strip()

        element = field("Element")
        functional = field("Exchange-Correlation functional")
        functional = " ".join(functional.split()[:4])
        z_valence = field("Z valence") or "nan"
    element = element.capitalize()
    if element not in chemical_symbols[1:]:
        raise ValueError(f"{name}: cannot read the element from its UPF header")
    try:
        valence = float(z_valence)
    except ValueError:
        valence = math.nan
    return {"element": element, "functional": functional, "z_valence": valence}


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=512)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------- check


def check(atoms: Atoms, params: Mapping[str, Any]) -> None:
    """Raise InvalidStructure for a structure this engine cannot label with ``params``."""
    pbc = atoms.get_pbc()
    if not pbc.all():
        raise InvalidStructure(
            f"quantum-espresso labels periodic cells; this structure has pbc={pbc.tolist()} "
            "(use cp2k or pyscf for molecules)"
        )
    if abs(atoms.cell.volume) < 1e-6:
        raise InvalidStructure("the structure is periodic but its cell has no volume")
    files, folder = params["pseudopotentials"], Path(params["pseudo_dir"])
    missing = sorted(set(atoms.get_chemical_symbols()) - set(files))
    if missing:
        raise InvalidStructure(
            f"no pseudopotential for {', '.join(missing)} in the method "
            f"(it has {', '.join(files) or 'none'}; see 'pseudopotentials' and 'pseudo_dir')"
        )
    valence = sum(_upf_header(folder / files[s])["z_valence"] for s in atoms.get_chemical_symbols())
    electrons = round(valence) - charge_of(atoms)
    unpaired = spin_of(atoms) - 1
    if electrons <= 0 or unpaired > electrons or (electrons - unpaired) % 2:
        raise InvalidStructure(
            f"charge {charge_of(atoms)} and spin multiplicity {spin_of(atoms)} leave "
            f"{electrons} valence electrons in {atoms.get_chemical_formula()} "
            f"({round(valence)} from the pseudopotentials)"
        )


# ----------------------------------------------------------------------------------- compute


def compute(atoms: Atoms, params: Mapping[str, Any], run: Run) -> EngineResult:
    """Energy (eV), forces (eV/Å) and stress (eV/Å³); raises a LabelError on a failure."""
    settings = _settings(params)
    workdir = run.folder()
    attempt = 1 + len(list(workdir.glob("pw-*.out")))
    restart = _restart_from(workdir, attempt) if settings["restart"] else {}
    pw_input, pw_output = workdir / f"pw-{attempt}.in", workdir / f"pw-{attempt}.out"
    grid = mesh(atoms, settings["kpoints"])
    write(
        pw_input,
        _clean(atoms),
        format="espresso-in",
        input_data=_input_data(atoms, settings, restart),
        pseudopotentials={s: settings["pseudopotentials"][s] for s in set(atoms.symbols)},
        kpts=grid or (1, 1, 1),
        koffset=_offsets(grid),
    )
    argv = [*command(COMMAND_VARIABLE, DEFAULT_COMMAND, run.ranks), "-in", pw_input.name]
    finished = run_program(
        argv, workdir, threads=run.threads, time_limit=settings["time_limit"], output=pw_output
    )
    _raise_for_failure(finished, settings)
    energy, forces, stress = _numbers(finished.output, len(atoms))
    info = _report(finished, settings, atoms)
    info["restarted_from"] = sorted(restart)
    return EngineResult(energy=energy, forces=forces, stress=stress, info=info)


def _clean(atoms: Atoms) -> Atoms:
    """Numbers, positions and cell only: no constraints or initial moments reach the input."""
    return Atoms(
        numbers=atoms.get_atomic_numbers(),
        positions=atoms.get_positions(),
        cell=atoms.get_cell(),
        pbc=True,
    )


def _offsets(kpoints: list[int] | None) -> tuple[int, int, int]:
    """pw.x's Monkhorst–Pack offsets: half a step off Γ along even n (1), on Γ along odd n (0)."""
    return tuple(int(n % 2 == 0) for n in (kpoints or (1, 1, 1)))  # type: ignore[return-value]


def _input_data(
    atoms: Atoms, settings: Mapping[str, Any], restart: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    control: dict[str, Any] = {
        "calculation": "scf",
        "prefix": PREFIX,
        "outdir": OUTDIR,
        "pseudo_dir": settings["pseudo_dir"],
        "tprnfor": True,
        "tstress": True,
        "restart_mode": restart.get("restart_mode", "from_scratch"),
    }
    if settings["time_limit"] is not None:
        control["max_seconds"] = _max_seconds(float(settings["time_limit"]))
    system: dict[str, Any] = {
        "ecutwfc": settings["ecutwfc"],
        "ecutrho": settings["ecutrho"],
        # the plain Monkhorst-Pack grid (k and -k one point): with symmetry on, pw.x would add
        # the images of a shifted grid under the lattice's point group, and symmetrize
        # densities and forces of structures that are only nearly symmetric
        "nosym": True,
    }
    if charge_of(atoms):
        system["tot_charge"] = float(charge_of(atoms))
    if spin_of(atoms) > 1:
        system["nspin"] = 2
        system["tot_magnetization"] = float(spin_of(atoms) - 1)
    if settings["smearing"] is None:
        system["occupations"] = "fixed"
    else:
        system["occupations"] = "smearing"
        system["smearing"] = "fd"
        system["degauss"] = kB * settings["smearing"] / Ry  # k_B T in Ry
    if settings["dispersion"]:
        system["vdw_corr"] = "dft-d3"
        system["dftd3_version"] = DISPERSIONS[settings["dispersion"]]
        system["dftd3_threebody"] = False  # two-body D3, as cp2k and pyscf's d3/d3bj
    electrons: dict[str, Any] = {
        "conv_thr": settings["conv_thr"],
        "electron_maxstep": settings["electron_maxstep"],
        "mixing_beta": settings["mixing_beta"],
        "mixing_mode": settings["mixing_mode"].replace("tf", "TF"),
        "diagonalization": settings["diagonalization"],
    }
    electrons.update({k: v for k, v in restart.items() if k != "restart_mode"})
    return {"control": control, "system": system, "electrons": electrons}


def _max_seconds(time_limit: float) -> float:
    margin = min(max(_MARGIN_FRACTION * time_limit, _MARGIN_MIN_S), 0.5 * time_limit)
    return round(time_limit - margin, 3)


def _restart_from(workdir: Path, attempt: int) -> dict[str, str]:
    """What the previous attempt left that a restart can use (nothing after a hard kill).

    After pw.x's own max_seconds stop: its restart files (``restart_mode='restart'`` resumes
    the SCF where it stopped). After any other clean end (e.g. SCF not converged): the last
    charge density and wavefunctions, as the start of a new SCF.
    """
    previous = workdir / f"pw-{attempt - 1}.out"
    if not previous.is_file():
        return {}
    text = previous.read_text(errors="replace")
    if "JOB DONE" not in text:  # killed mid-run: its files may be half written
        return {}
    out = workdir / OUTDIR
    if "Maximum CPU time exceeded" in text and (out / f"{PREFIX}.restart_scf").is_file():
        return {"restart_mode": "restart"}
    save = out / f"{PREFIX}.save"
    restart: dict[str, str] = {}
    if (save / "charge-density.dat").is_file():
        restart["startingpot"] = "file"
        # the wavefunctions: collected in the save folder, or pw.x's own buffer (one per rank)
        if any(save.glob("wfc*.dat")) or any(out.glob(f"{PREFIX}.wfc*")):
            restart["startingwfc"] = "file"
    return restart


# ------------------------------------------------------------------------------ reading output

_ERROR_BOX = re.compile(r"%{20,}\n(.*?)\n\s*%{20,}", re.S)
_ITERATIONS = re.compile(r"convergence has been achieved in\s+(\d+) iterations")
_NOT_CONVERGED = re.compile(r"convergence NOT achieved after\s+(\d+) iterations")
_ACCURACY = re.compile(r"estimated scf accuracy\s+<\s+(\S+) Ry")


def _raise_for_failure(finished: Finished, settings: Mapping[str, Any]) -> None:
    """Classify a run that gave no trustworthy number; return when it did."""
    text = finished.output
    box = _ERROR_BOX.search(text)
    if box:
        message = "pw.x: " + " ".join(box.group(1).split())
        lowered = message.lower()
        if "allocat" in lowered or "memory" in lowered:
            raise OutOfMemory(message)
        error = EngineCrashed(message)
        error.transient = False  # pw.x rejected its input: the same input fails the same way
        raise error
    if "Maximum CPU time exceeded" in text:
        raise LabelTimeout(
            f"pw.x stopped itself at max_seconds {_max_seconds(settings['time_limit']):g} s "
            f"(time limit {settings['time_limit']:g} s); restart files written"
        )
    not_converged = _NOT_CONVERGED.search(text)
    if not_converged:
        accuracy = _ACCURACY.findall(text)
        raise ScfNotConverged(
            f"pw.x SCF did not converge in {not_converged.group(1)} iterations "
            f"(electron_maxstep {settings['electron_maxstep']}, mixing_beta "
            f"{settings['mixing_beta']:g}); estimated scf accuracy "
            f"{accuracy[-1] if accuracy else '?'} Ry, conv_thr {settings['conv_thr']:g} Ry"
        )
    failure = exit_failure("pw.x", finished)
    if failure is not None:
        raise failure
    if "JOB DONE" not in text or not _ITERATIONS.search(text) or "!    total energy" not in text:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        error = EngineCrashed(f"pw.x ended without a converged energy (last lines: {tail})")
        error.transient = False
        raise error


def _numbers(text: str, natoms: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces (eV/Å) and Voigt stress (eV/Å³, ASE's sign) from pw.x's output.

    Read here rather than by ASE's reader, which converts with CODATA 2006 (QE's constants):
    every hifidata engine converts with ``ase.units`` (CODATA 2014), so engines differ only by
    their physics.
    """
    energy = float(re.findall(r"^!\s+total energy\s+=\s+(\S+) Ry", text, re.M)[-1])
    # the first natoms lines after the header are the totals (high verbosity adds the parts)
    block = text.rsplit("Forces acting on atoms", 1)[1]
    rows = re.findall(r"atom\s+\d+\s+type\s+\d+\s+force =\s+(\S+)\s+(\S+)\s+(\S+)", block)
    forces = np.array(rows[:natoms], dtype=float)
    lines = text.rsplit("total   stress", 1)[1].splitlines()[1:4]
    tensor = np.array([line.split()[:3] for line in lines], dtype=float)
    # pw.x prints the pressure-positive stress, -(1/V) dE/dε; ASE's is (1/V) dE/dε
    voigt = -tensor[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return energy * Ry, forces * (Ry / Bohr), voigt * (Ry / Bohr**3)


def _report(finished: Finished, settings: Mapping[str, Any], atoms: Atoms) -> dict[str, Any]:
    """What the provenance keeps of one run: convergence, warnings, timings, inputs' hashes."""
    text = finished.output

    def number(pattern: str, scale: float = 1.0) -> float | None:
        found = re.findall(pattern, text)
        return float(found[-1]) * scale if found else None

    used = sorted(set(atoms.get_chemical_symbols()))
    kpoints = re.search(r"number of k points=\s*(\d+)", text)
    info: dict[str, Any] = {
        "qe_version": _version_in(text),
        "scf_iterations": int(_ITERATIONS.findall(text)[-1]),
        "scf_converged": True,
        "scf_accuracy_ry": number(r"estimated scf accuracy\s+<\s+(\S+) Ry"),
        "scf_correction_force": number(r"Total SCF correction =\s+(\S+)", Ry / Bohr),
        "n_kpoints": int(kpoints.group(1)) if kpoints else None,
        "n_electrons": number(r"number of electrons\s+=\s+(\S+)"),
        "estimated_ram_mb": number(r"Estimated max dynamical RAM per process >\s+(\S+) MB"),
        "pseudopotentials": {
            s: {
                "file": settings["pseudopotentials"][s],
                "sha256": settings["pseudo_sha256"][s],
            }
            for s in used
        },
        "warnings": _warnings(text),
        "wall_time_s": finished.wall_time,
    }
    if settings["smearing"] is not None:
        info["smearing_energy"] = number(r"smearing contrib. \(-TS\)\s+=\s+(\S+) Ry", Ry)
        info["fermi_energy"] = number(r"the Fermi energy is\s+(\S+) ev")
    if settings["dispersion"]:
        info["dispersion_energy"] = number(r"DFT-D3 Dispersion\s+=\s+(\S+) Ry", Ry)
    return info


def _warnings(text: str) -> list[str]:
    """pw.x's messages and WARNING lines, once each, in the order printed."""
    found = [
        f"{routine}: {' '.join(message.split())}"
        for routine, message in re.findall(r"Message from routine (\S+?):?\n\s*(.+)", text)
    ]
    found += [" ".join(line.split()) for line in re.findall(r"^\s*WARNING.*$", text, re.M)]
    return list(dict.fromkeys(found))


def _version_in(text: str) -> str | None:
    found = re.search(r"Program PWSCF v\.(\S+)", text)
    return found.group(1) if found else None


# ----------------------------------------------------------------------------- rescues, version


def rescues(params: Mapping[str, Any], failure_class: str) -> list[dict[str, Any]]:
    """The rescue ladder of one failure class: cumulative changes to ``params``.

    None of them changes the converged number: they change the start (``restart``), the SCF
    path (mixing, diagonalization), the iteration budget or the time limit. Smearing would change
    the number, so it is a method setting, never a rescue.
    """
    if failure_class == "scf_not_converged":
        maxstep = max(_RESCUE_MAXSTEP, 2 * int(params.get("electron_maxstep", 100)))
        beta = min(_RESCUE_BETA, float(params.get("mixing_beta", 0.7)))
        return [
            {"electron_maxstep": maxstep, "mixing_beta": beta, "restart": True},
            {"mixing_mode": "local-tf", "mixing_beta": 0.1, "diagonalization": "cg"},
        ]
    if failure_class == "timeout":
        return [{**longer_limit(params), "restart": True}]
    if failure_class == "out_of_memory":
        # Davidson keeps several times the bands in its workspace; cg needs the least memory
        if params.get("diagonalization", "david") != "cg":
            return [{"diagonalization": "cg"}]
        return []
    if failure_class == "engine_crashed":  # transient only (a signal): one plain retry
        return [{}]
    return []


def version() -> str:
    """pw.x's version as its output header prints it (e.g. ``6.7MaX``); cached per command."""
    return _version(tuple(command(COMMAND_VARIABLE, DEFAULT_COMMAND, 1)))


@lru_cache(maxsize=8)
def _version(argv: tuple[str, ...]) -> str:
    with tempfile.TemporaryDirectory(prefix="hifidata-pw-version-") as folder:
        try:
            finished = run_program(argv, Path(folder), time_limit=60)
        except (EngineCrashed, LabelTimeout):
            return "unavailable"
    return _version_in(finished.output) or "unknown"
