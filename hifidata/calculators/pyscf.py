"""PySCF engine: HF, DFT, MP2, CCSD and CCSD(T) energies with analytic gradients, molecules only.

The engine contract is in :mod:`hifidata.calculators.base`: ``resolve``, ``check``, ``compute``,
``rescues`` and ``version``. PySCF works in Hartree and Bohr; this module converts exactly once
each way, with ASE's constants: positions go in as Å / ``ase.units.Bohr`` (so PySCF's own, slightly
different Bohr is never used), energies come out × ``Hartree`` and gradients × ``Hartree / Bohr``.
Energies and forces are therefore derivatives of one another in eV and Å to machine precision.

A method's ``params`` (plain dict from the spec) map onto PySCF as follows (docs/pyscf.md has more):

- ``theory``: ``hf`` | ``dft`` | ``mp2`` | ``ccsd`` | ``ccsd(t)``
- ``basis`` (any PySCF basis name; an ECP is attached where the basis defines one, e.g. def2 for I)
- ``reference``: ``auto`` (RHF/RKS for closed shells, UHF/UKS otherwise) | ``rhf`` | ``uhf``
- DFT: ``xc`` (libxc name), ``dispersion`` (``d3bj``, ``d3zero``, ``d4``, ... via
  pyscf-dispersion), ``grids_level``, ``grid_response`` (forces include the motion of the grid,
  so they are the exact derivative of the labeled energy), ``nlc_grids_level`` for VV10 functionals
- HF: ``dispersion``; MP2/CCSD/CCSD(T): ``frozen_core`` (PySCF's ``chemcore`` convention)
- all: ``density_fit`` and ``auxbasis`` (HF and DFT only: PySCF has no analytic DF-CC gradients),
  ``conv_tol`` (Hartree), ``max_cycle``, ``max_memory_mb``
- rescue only (added by :func:`rescues`, never by :func:`resolve`): ``level_shift``, ``damp``,
  ``second_order``, ``restart_wavefunction`` (start the SCF from the orbitals the failed attempt
  saved in the label's scratch folder)
- ``time_limit`` (common to all engines): checked between SCF and CC iterations, so a label
  stops within one iteration of its limit
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np
import pyscf
from ase import Atoms
from ase.units import Bohr, Hartree
from pyscf import cc, dft, gto, lib, mp, scf
from pyscf.data.elements import chemcore
from pyscf.lib.exceptions import BasisNotFoundError

from hifidata.calculators.base import (
    EngineResult,
    InvalidStructure,
    LabelTimeout,
    Run,
    ScfNotConverged,
    longer_limit,
)
from hifidata.calculators.params import boolean as _boolean
from hifidata.calculators.params import integer as _integer
from hifidata.calculators.params import known_keys as _known_keys
from hifidata.calculators.params import positive_float as _positive_float
from hifidata.structures import charge_of, spin_of

THEORIES = ("hf", "dft", "mp2", "ccsd", "ccsd(t)")
CORRELATED = ("mp2", "ccsd", "ccsd(t)")
REFERENCES = ("auto", "rhf", "uhf")
_REFERENCE_ALIASES = {"rks": "rhf", "uks": "uhf"}

#: pyscf-dispersion's versions; ``atm`` adds the three-body term to D3 (D4 always has it).
_D3 = ("d3bj", "d3zero", "d3bjm", "d3zerom", "d3op")
DISPERSIONS = (*_D3, *(f"{v}atm" for v in _D3), "d4")

DEFAULTS: dict[str, Any] = {
    "reference": "auto",
    "density_fit": False,
    "auxbasis": None,
    "conv_tol": 1e-9,
    "max_cycle": 100,
    "max_memory_mb": 4000,
    "dispersion": None,
    "grids_level": 3,
    "grid_response": True,
    "nlc_grids_level": 1,
    "frozen_core": True,
}
_COMMON = ("theory", "basis", "reference", "density_fit", "conv_tol", "max_cycle", "max_memory_mb")
_BY_THEORY = {
    "hf": ("dispersion",),
    "dft": ("xc", "dispersion", "grids_level", "grid_response", "nlc_grids_level"),
    "mp2": ("frozen_core",),
    "ccsd": ("frozen_core",),
    "ccsd(t)": ("frozen_core",),
}
#: Convergence aids: they change the SCF path, not the converged number, so they are not identity.
RESCUE_KEYS = ("level_shift", "damp", "second_order", "restart_wavefunction")
#: Settings that change how the engine runs, not the number it converges to: they are kept with
#: the method but are not part of its identity (raising the memory must not relabel a campaign).
RUN_SETTINGS = ("max_cycle", "max_memory_mb")
#: With damping, DIIS starts this late so that the damped steps actually happen (PySCF damps only
#: the cycles before DIIS starts).
_DAMPED_DIIS_START = 8
_RESCUE_MAX_CYCLE = 300


# ----------------------------------------------------------------------------------- resolve


def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``params`` and fill every default that can change the number.

    Raises ValueError with a one-line message naming the offending key.
    """
    theory = _theory(params.get("theory"))
    allowed = {*_COMMON, *_BY_THEORY[theory], "auxbasis"}
    _known_keys(f"pyscf {theory}", params, allowed, RESCUE_KEYS)

    out: dict[str, Any] = {"theory": theory, "basis": _basis_name("basis", params.get("basis"))}
    out["reference"] = _reference(params.get("reference", DEFAULTS["reference"]), theory)
    if theory == "dft":
        out["xc"] = _xc(params.get("xc"))
    if theory in ("hf", "dft"):
        out["dispersion"] = _dispersion(params.get("dispersion"), out.get("xc", "hf"))
    if theory == "dft":
        out["grids_level"] = _integer("grids_level", params.get("grids_level", 3), 0, 9)
        out["grid_response"] = _boolean("grid_response", params.get("grid_response", True))
        if _is_nlc(out["xc"]):  # VV10 has its own grid, which changes the number too
            level = params.get("nlc_grids_level", DEFAULTS["nlc_grids_level"])
            out["nlc_grids_level"] = _integer("nlc_grids_level", level, 0, 9)
        elif "nlc_grids_level" in params:
            raise ValueError(f"'nlc_grids_level' applies only to VV10 functionals, not {out['xc']}")
    if theory in CORRELATED:
        out["frozen_core"] = _boolean("frozen_core", params.get("frozen_core", True))
    out.update(_density_fitting(params, theory))
    out["conv_tol"] = _positive_float("conv_tol", params.get("conv_tol", DEFAULTS["conv_tol"]))
    out["max_cycle"] = _integer("max_cycle", params.get("max_cycle", DEFAULTS["max_cycle"]), 1)
    memory = params.get("max_memory_mb", DEFAULTS["max_memory_mb"])
    out["max_memory_mb"] = _integer("max_memory_mb", memory, 100)
    return out


def _theory(value: Any) -> str:
    if value is None:
        raise ValueError(f"'theory' is required (one of {', '.join(THEORIES)})")
    theory = str(value).strip().lower()
    if theory not in THEORIES:
        raise ValueError(f"unknown theory {value!r} (known: {', '.join(THEORIES)})")
    return theory


def _basis_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} is required and must be a basis set name")
    name = value.strip().lower()
    if not _basis_exists(name):
        raise ValueError(f"{key!r}: PySCF knows no basis set named {value!r}")
    return name


@lru_cache(maxsize=64)
def _basis_exists(name: str) -> bool:
    from pyscf.gto.basis import ALIAS, _format_basis_name

    if _format_basis_name(name) in ALIAS:
        return True
    for symbol in ("H", "C", "O"):  # a name PySCF resolves another way (a file, BSE)
        try:
            _load_basis(name, symbol)
            return True
        except (BasisNotFoundError, OSError, KeyError, ValueError):
            continue
    return False


def _reference(value: Any, theory: str) -> str:
    reference = _REFERENCE_ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {value!r} (known: {', '.join(REFERENCES)})")
    if theory == "ccsd(t)" and reference == "uhf":
        # PySCF has analytic CCSD(T) gradients for RHF references only
        raise ValueError("'reference': ccsd(t) forces need an RHF reference (use auto or rhf)")
    return reference


def _xc(value: Any) -> str:
    from pyscf.dft import libxc
    from pyscf.scf.dispersion import parse_dft

    if not isinstance(value, str) or not value.strip():
        raise ValueError("'xc' is required for theory dft (a libxc functional, e.g. revpbe0)")
    xc = value.strip().lower()
    try:
        implied = parse_dft(xc)[2]
    except NotImplementedError as error:
        raise ValueError(f"'xc': {error}") from None
    if implied:
        # one spelling per method: 'b3lyp-d3bj' and b3lyp + d3bj would hash differently
        raise ValueError(f"'xc' {value!r} carries a dispersion suffix; give it as 'dispersion'")
    try:
        libxc.parse_xc(xc)
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"'xc': libxc does not know {value!r} ({error})") from None
    return xc


def _is_nlc(xc: str) -> bool:
    from pyscf.dft import libxc

    return bool(libxc.is_nlc(xc))


def _dispersion(value: Any, method: str) -> str | None:
    if value is None or value is False or str(value).strip().lower() in ("", "none"):
        return None
    dispersion = str(value).strip().lower()
    if dispersion not in DISPERSIONS:
        raise ValueError(f"unknown dispersion {value!r} (known: {', '.join(DISPERSIONS)})")
    _check_dispersion_parameters(method, dispersion)
    return dispersion


@lru_cache(maxsize=64)
def _check_dispersion_parameters(method: str, dispersion: str) -> None:
    """Fail at resolve time, not mid-campaign, when the pair has no damping parameters."""
    h2 = gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", verbose=0)
    mf = scf.RHF(h2) if method == "hf" else dft.RKS(h2, xc=method)
    mf.disp = dispersion
    try:
        mf.get_dispersion()
    except (RuntimeError, ValueError, KeyError) as error:
        message = f"'dispersion': no {dispersion} parameters for {method} ({error})"
        raise ValueError(message) from None


def _density_fitting(params: Mapping[str, Any], theory: str) -> dict[str, Any]:
    density_fit = _boolean("density_fit", params.get("density_fit", False))
    if density_fit and theory in CORRELATED:
        raise ValueError(
            f"'density_fit' is for hf and dft only (PySCF has no analytic DF-{theory} gradients)"
        )
    if not density_fit:
        if params.get("auxbasis") is not None:
            raise ValueError("'auxbasis' needs density_fit: true")
        return {"density_fit": False}
    auxbasis = params.get("auxbasis")
    # None: PySCF picks the fitting basis that belongs to the orbital basis (e.g. def2-universal)
    auxbasis = None if auxbasis is None else _basis_name("auxbasis", auxbasis)
    return {"density_fit": True, "auxbasis": auxbasis}





def _settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved params plus the validated rescue keys (compute takes both)."""
    rescue = {key: params[key] for key in RESCUE_KEYS if key in params}
    own = {key: value for key, value in params.items() if key not in (*RESCUE_KEYS, "time_limit")}
    settings = resolve(own)
    settings["deadline"] = _Deadline(params.get("time_limit"))
    settings["restart_wavefunction"] = bool(rescue.get("restart_wavefunction", False))
    if "level_shift" in rescue:
        settings["level_shift"] = _nonnegative_float("level_shift", rescue["level_shift"])
    if "damp" in rescue:
        damp = _nonnegative_float("damp", rescue["damp"])
        if damp >= 1:
            raise ValueError(f"'damp' must be below 1, not {damp}")
        settings["damp"] = damp
    if "second_order" in rescue:
        settings["second_order"] = _boolean("second_order", rescue["second_order"])
    return settings


def _nonnegative_float(key: str, value: Any) -> float:
    if not isinstance(value, bool) and isinstance(value, int | float) and value == 0:
        return 0.0
    return _positive_float(key, value)


# ------------------------------------------------------------------------------------- check


def check(atoms: Atoms, params: Mapping[str, Any]) -> None:
    """Raise InvalidStructure for a structure this engine cannot label with ``params``."""
    settings = _settings(params)
    if atoms.get_pbc().any():
        raise InvalidStructure(
            f"the pyscf engine labels molecules only; this structure is periodic "
            f"(pbc={atoms.get_pbc().tolist()}): use cp2k or espresso"
        )
    basis = settings["basis"]
    for symbol in sorted(set(atoms.get_chemical_symbols())):
        try:
            _load_basis(basis, symbol)
        except BasisNotFoundError:
            message = f"basis {basis!r} has no functions for element {symbol}"
            raise InvalidStructure(message) from None
    open_shell = spin_of(atoms) != 1
    if open_shell and settings["reference"] == "rhf":
        raise InvalidStructure(
            f"reference rhf needs a closed shell; this structure has spin multiplicity "
            f"{spin_of(atoms)} (use reference auto or uhf)"
        )
    if open_shell and settings["theory"] == "ccsd(t)":
        raise InvalidStructure(
            f"ccsd(t) forces need a closed-shell RHF reference (PySCF has no UCCSD(T) gradients); "
            f"this structure has spin multiplicity {spin_of(atoms)}"
        )
    if settings["theory"] in CORRELATED:
        mol = _molecule(atoms, settings)
        frozen = _frozen_orbitals(mol, settings)
        if mol.nelec[0] - frozen < 1:
            raise InvalidStructure(
                f"{settings['theory']} with frozen_core leaves no correlated electrons "
                f"({mol.nelectron} electrons, {frozen} frozen orbitals)"
            )


def _load_basis(basis: str, symbol: str) -> list:
    with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange on a miss
        warnings.simplefilter("ignore")
        return gto.basis.load(basis, symbol)


# ----------------------------------------------------------------------------------- compute


def compute(atoms: Atoms, params: Mapping[str, Any], run: Run) -> EngineResult:
    """Energy (eV) and forces (eV/Å); raises ScfNotConverged when an iterative step fails."""
    settings = _settings(params)
    settings["chkfile"] = str(run.folder() / "scf.chk")
    mol = _molecule(atoms, settings)
    # OpenMP's thread count is per calling thread, so two labels running in two threads of one
    # process each get their own; with_omp_threads restores this thread's count afterwards.
    with lib.with_omp_threads(max(1, int(run.threads))):
        if settings["theory"] in CORRELATED:
            energy, gradient, info = _correlated(mol, settings)
        else:
            energy, gradient, info = _mean_field_energy_and_gradient(mol, settings)
    info["n_basis"] = int(mol.nao)
    return EngineResult(
        energy=float(energy) * Hartree,
        forces=-np.asarray(gradient, dtype=float) * (Hartree / Bohr),
        info=info,
    )


def _molecule(atoms: Atoms, settings: Mapping[str, Any]) -> gto.Mole:
    symbols = atoms.get_chemical_symbols()
    coordinates = atoms.get_positions() / Bohr  # ASE's Bohr, the same one the forces use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gto.M(
            atom=[(symbol, tuple(xyz)) for symbol, xyz in zip(symbols, coordinates, strict=True)],
            unit="Bohr",
            basis=settings["basis"],
            ecp=_ecp(settings["basis"], symbols),
            charge=charge_of(atoms),
            spin=spin_of(atoms) - 1,  # PySCF's spin is 2S, ours is the multiplicity 2S+1
            max_memory=settings["max_memory_mb"],
            verbose=0,
        )


def _ecp(basis: str, symbols: list[str]) -> dict[str, str]:
    """The basis' own ECP for the elements where it defines one (def2-* beyond Kr)."""
    return {symbol: basis for symbol in set(symbols) if _has_ecp(basis, symbol)}


@lru_cache(maxsize=256)
def _has_ecp(basis: str, symbol: str) -> bool:
    try:
        return bool(gto.basis.load_ecp(basis, symbol))
    except (BasisNotFoundError, KeyError, OSError):
        return False


def _restricted(mol: gto.Mole, settings: Mapping[str, Any]) -> bool:
    if settings["reference"] == "auto":
        return mol.spin == 0
    return settings["reference"] == "rhf"


def _mean_field(mol: gto.Mole, settings: Mapping[str, Any]):
    """The SCF object with every setting applied, not yet run."""
    restricted = _restricted(mol, settings)
    if settings["theory"] == "dft":
        mf = (dft.RKS if restricted else dft.UKS)(mol, xc=settings["xc"])
        mf.grids.level = settings["grids_level"]
        if "nlc_grids_level" in settings:
            mf.nlcgrids.level = settings["nlc_grids_level"]
    else:
        mf = (scf.RHF if restricted else scf.UHF)(mol)
    if settings.get("dispersion"):
        mf.disp = settings["dispersion"]
    if settings["density_fit"]:
        mf = mf.density_fit(auxbasis=settings["auxbasis"])
    mf.conv_tol = settings["conv_tol"]
    mf.max_cycle = settings["max_cycle"]
    if settings.get("level_shift"):
        mf.level_shift = settings["level_shift"]
    if settings.get("damp"):
        mf.damp = settings["damp"]
        mf.diis_start_cycle = _DAMPED_DIIS_START
    if settings.get("second_order"):
        mf = mf.newton()
    return mf


class _Deadline:
    """The attempt's wall-time limit, checked from PySCF's per-iteration callbacks."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.end = math.inf if limit is None else time.monotonic() + limit

    def check(self, where: str) -> None:
        if time.monotonic() > self.end:
            raise LabelTimeout(f"pyscf ran past its time limit of {self.limit:g} s ({where})")


class _ScfMonitor:
    """Counts SCF iterations and keeps the last energy (second-order SCF sets no ``cycles``)."""

    def __init__(self, deadline: _Deadline) -> None:
        self.iterations = 0
        self.last_energy = math.nan
        self.deadline = deadline

    def __call__(self, env: dict[str, Any]) -> None:
        self.deadline.check(f"SCF iteration {self.iterations}")
        cycle = env.get("cycle", env.get("imacro"))
        if cycle is not None:
            self.iterations = max(self.iterations, int(cycle) + 1)
        if env.get("e_tot") is not None:
            self.last_energy = float(env["e_tot"])


def _run_scf(mol: gto.Mole, settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    mf = _mean_field(mol, settings)
    monitor = _ScfMonitor(settings["deadline"])
    mf.callback = monitor
    restart = settings["restart_wavefunction"] and os.path.exists(settings["chkfile"])
    guess = mf.from_chk(settings["chkfile"]) if restart else None
    mf.chkfile = settings["chkfile"]  # orbitals saved every iteration, for a restart
    start = time.perf_counter()
    mf.kernel(guess)
    wall = time.perf_counter() - start
    if not mf.converged:
        raise ScfNotConverged(
            f"SCF ({type(mf).__name__}) did not converge in {monitor.iterations} iterations "
            f"(max_cycle {settings['max_cycle']}); last energy {monitor.last_energy:.10f} Ha"
        )
    info: dict[str, Any] = {
        "scf_iterations": monitor.iterations,
        "scf_converged": True,
        "scf_method": type(mf).__name__,
        "reference": "rhf" if _restricted(mol, settings) else "uhf",
        "wall_scf_s": wall,
        "restarted": bool(restart),
    }
    if not _restricted(mol, settings):
        info["spin_square"] = float(mf.spin_square()[0])  # <S^2>: spin contamination
    if settings.get("dispersion"):
        info["e_dispersion"] = float(mf.scf_summary.get("dispersion", 0.0)) * Hartree
        info["dispersion_version"] = _package_version("pyscf-dispersion")
    if settings["density_fit"]:
        info["auxbasis_used"] = str(mf.with_df.auxbasis)
    return mf, info


def _mean_field_energy_and_gradient(
    mol: gto.Mole, settings: Mapping[str, Any]
) -> tuple[float, np.ndarray, dict[str, Any]]:
    mf, info = _run_scf(mol, settings)
    start = time.perf_counter()
    gradients = mf.nuc_grad_method()
    if settings["theory"] == "dft":
        gradients.grid_response = settings["grid_response"]
    gradient = gradients.kernel()
    info["wall_gradient_s"] = time.perf_counter() - start
    return float(mf.e_tot), gradient, info


def _frozen_orbitals(mol: gto.Mole, settings: Mapping[str, Any]) -> int:
    return int(chemcore(mol)) if settings.get("frozen_core") else 0


def _correlated(
    mol: gto.Mole, settings: Mapping[str, Any]
) -> tuple[float, np.ndarray, dict[str, Any]]:
    mf, info = _run_scf(mol, settings)
    frozen = _frozen_orbitals(mol, settings)
    info["frozen_orbitals"] = frozen
    info["e_hf"] = float(mf.e_tot) * Hartree
    solver = {"mp2": _mp2, "ccsd": _ccsd, "ccsd(t)": _ccsd_t}[settings["theory"]]
    energy, gradient, extra = solver(mf, frozen or None, settings)
    info.update(extra)
    info["e_corr"] = (energy - float(mf.e_tot)) * Hartree
    return energy, gradient, info


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _mp2(mf, frozen: int | None, settings: Mapping[str, Any]):
    solver = mp.MP2(mf, frozen=frozen)  # UMP2 for a UHF reference
    _, wall = _timed(solver.kernel)
    gradient, wall_gradient = _timed(solver.nuc_grad_method().kernel)
    info = {"wall_correlation_s": wall, "wall_gradient_s": wall_gradient}
    return float(solver.e_tot), gradient, info


def _coupled_cluster(mf, frozen: int | None, settings: Mapping[str, Any]):
    """Converged CCSD amplitudes (RCCSD or UCCSD after the reference)."""
    solver = cc.CCSD(mf, frozen=frozen)
    solver.max_cycle = settings["max_cycle"]
    solver.conv_tol = settings["conv_tol"]
    # amplitude residual: 1e-5 (PySCF's default) moves forces by < 1e-7 Ha/Bohr; tighter with
    # a tighter conv_tol. The lambda equations use the same threshold.
    solver.conv_tol_normt = min(1e-5, math.sqrt(settings["conv_tol"]) / 10)
    solver.callback = lambda env: settings["deadline"].check(f"CC iteration {env.get('istep')}")
    solver.kernel()
    if not solver.converged:
        raise ScfNotConverged(
            f"CCSD amplitudes did not converge in {solver.cycles} iterations "
            f"(max_cycle {settings['max_cycle']}); last correlation energy {solver.e_corr:.10f} Ha"
        )
    return solver


def _ccsd(mf, frozen: int | None, settings: Mapping[str, Any]):
    (solver, wall) = _timed(lambda: _coupled_cluster(mf, frozen, settings))
    settings["deadline"].check("after CCSD")
    _, wall_lambda = _timed(solver.solve_lambda)
    if not solver.converged_lambda:
        raise ScfNotConverged(
            f"CCSD lambda equations did not converge in {settings['max_cycle']} iterations"
        )
    gradient, wall_gradient = _timed(solver.nuc_grad_method().kernel)
    info = {
        "cc_iterations": int(solver.cycles),
        "wall_correlation_s": wall + wall_lambda,
        "wall_gradient_s": wall_gradient,
    }
    return float(solver.e_tot), gradient, info


def _ccsd_t(mf, frozen: int | None, settings: Mapping[str, Any]):
    """CCSD(T) energy and its analytic gradient (RHF reference only).

    The (T) gradient needs the (T)-corrected lambda amplitudes (ccsd_t_lambda), not the CCSD
    ones: pyscf.grad.ccsd_t.Gradients would silently solve the CCSD lambda equations if given
    none, which gives CCSD(T) energies with wrong forces.
    """
    from pyscf.cc import ccsd_t_lambda
    from pyscf.grad import ccsd_t as ccsd_t_gradient

    (solver, wall) = _timed(lambda: _coupled_cluster(mf, frozen, settings))
    start = time.perf_counter()
    eris = solver.ao2mo()
    e_triples = float(solver.ccsd_t(eris=eris))
    settings["deadline"].check("after (T)")
    converged, l1, l2 = ccsd_t_lambda.kernel(
        solver, eris, solver.t1, solver.t2, max_cycle=settings["max_cycle"],
        tol=solver.conv_tol_normt, verbose=0,
    )
    wall_triples = time.perf_counter() - start
    if not converged:
        raise ScfNotConverged(
            f"CCSD(T) lambda equations did not converge in {settings['max_cycle']} iterations"
        )
    gradient, wall_gradient = _timed(
        lambda: ccsd_t_gradient.Gradients(solver).kernel(solver.t1, solver.t2, l1, l2, eris=eris)
    )
    info = {
        "cc_iterations": int(solver.cycles),
        "e_triples": e_triples * Hartree,
        "wall_correlation_s": wall + wall_triples,
        "wall_gradient_s": wall_gradient,
    }
    return float(solver.e_tot) + e_triples, gradient, info


# ----------------------------------------------------------------------------- rescues, version


def rescues(params: Mapping[str, Any], failure_class: str) -> list[dict[str, Any]]:
    """The rescue ladder of one failure class, as changes to ``params`` (base applies them).

    scf_not_converged: level shift + damping, then second-order SCF, both with max_cycle at
    least 300 (which also gives CCSD and its lambda equations more iterations). timeout: twice
    the limit, starting from the orbitals the timed-out attempt saved. out_of_memory: a quarter
    of the memory budget, which sends PySCF's integral transformations to disk.
    """
    max_cycle = max(_RESCUE_MAX_CYCLE, int(params.get("max_cycle", DEFAULTS["max_cycle"])))
    if failure_class == "scf_not_converged":
        return [
            {"max_cycle": max_cycle, "level_shift": 0.25, "damp": 0.5},
            {"second_order": True, "level_shift": 0.0, "damp": 0.0},
        ]
    if failure_class == "timeout" and params.get("time_limit"):
        return [{**longer_limit(params), "restart_wavefunction": True}]
    if failure_class == "out_of_memory":
        memory = int(params.get("max_memory_mb", DEFAULTS["max_memory_mb"]))
        return [{"max_memory_mb": max(100, memory // 4)}] if memory > 100 else []
    return []


def version() -> str:
    return str(pyscf.__version__)


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
