"""The labeling contract every engine shares.

A :class:`Method` is one rung of the fidelity ladder: an engine and every setting that changes
the number. :func:`label` turns (structure, method) into a :class:`Label` (energy in eV, forces
in eV/Å, stress in eV/Å³) or a failed Label with one of the failure classes. An engine is a
module with five functions (see :class:`Engine`); this module never imports one until asked.

Every attempt of one label runs in a private scratch folder that lives as long as the label, so a
rescue step can restart from the files the failed attempt left (wavefunctions, charge densities).
Run settings common to all engines are resolved here: ``time_limit`` (seconds of wall time per
attempt; the rescue ladder may lengthen it).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import Atoms

from hifidata.structures import StructureError, check_structure, structure_id

FAILURE_CLASSES = (
    "invalid_structure",
    "scf_not_converged",
    "timeout",
    "out_of_memory",
    "engine_crashed",
)


class LabelError(Exception):
    """An engine could not produce a trustworthy number. ``transient`` ones are retried."""

    failure_class = "engine_crashed"
    transient = False


class InvalidStructure(LabelError):
    failure_class = "invalid_structure"


class ScfNotConverged(LabelError):
    failure_class = "scf_not_converged"
    transient = True


class LabelTimeout(LabelError):
    failure_class = "timeout"
    transient = True


class OutOfMemory(LabelError):
    failure_class = "out_of_memory"
    transient = True


class EngineCrashed(LabelError):
    failure_class = "engine_crashed"
    transient = True


@dataclass(frozen=True)
class EngineResult:
    """What an engine returns, already in eV, eV/Å and eV/Å³."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)  # SCF iterations, timings, ...


@dataclass(frozen=True)
class Run:
    """How one attempt runs (never part of the number): resources and its scratch folder."""

    threads: int = 1  # OpenMP threads per MPI rank
    ranks: int = 1  # MPI ranks (engines that run a program; in-process engines ignore it)
    workdir: Path | None = None  # private to one label, kept across its attempts

    def folder(self) -> Path:
        """The scratch folder, made on first use (a temporary one when none was given)."""
        path = self.workdir or Path(tempfile.mkdtemp(prefix="hifidata-"))
        path.mkdir(parents=True, exist_ok=True)
        return path


class Engine(Protocol):
    """What an engine module provides (``hifidata.calculators.<engine>``)."""

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``params`` and fill every default, so the method id sees all settings."""

    def check(self, atoms: Atoms, params: Mapping[str, Any]) -> None:
        """Raise InvalidStructure for input this engine cannot take (e.g. element not in basis)."""

    def compute(self, atoms: Atoms, params: Mapping[str, Any], run: Run) -> EngineResult:
        """Run the engine; raise a LabelError subclass on a classified failure."""

    def rescues(self, params: Mapping[str, Any], failure_class: str) -> list[dict[str, Any]]:
        """The rescue ladder for one failure class: changes to ``params``, tried in order.

        Steps are cumulative (step 2 runs with the changes of step 1 too) and never change the
        number a converged run gives, only how it gets there (so they are not identity).
        """

    def version(self) -> str: ...

    #: keys of ``params`` that change how the engine runs but not its number (not identity)
    RUN_SETTINGS: tuple[str, ...]


ENGINES = {
    "pyscf": "hifidata.calculators.pyscf",
    "cp2k": "hifidata.calculators.cp2k",
    "espresso": "hifidata.calculators.espresso",
    "external": "hifidata.calculators.external",
}
#: Run settings every engine takes; base resolves them, engines read them from ``params``.
COMMON_RUN_SETTINGS = ("time_limit",)
#: attempts per label at most, whatever the ladders hold
MAX_ATTEMPTS = 6


def engine_module(name: str) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (known: {', '.join(sorted(ENGINES))})")
    return importlib.import_module(ENGINES[name])  # type: ignore[return-value]


@dataclass(frozen=True)
class Method:
    """One rung: ``engine`` plus resolved ``params``. ``name`` is a label, not identity."""

    engine: str
    params: Mapping[str, Any]
    name: str = ""

    @classmethod
    def resolve(cls, engine: str, params: Mapping[str, Any], name: str = "") -> Method:
        """A Method with every engine default made explicit (raises ValueError on bad params)."""
        own = {k: v for k, v in params.items() if k not in COMMON_RUN_SETTINGS}
        resolved = engine_module(engine).resolve(own)
        resolved["time_limit"] = _time_limit(params.get("time_limit"))
        return cls(engine=engine, params=resolved, name=name)

    def canonical(self) -> dict[str, Any]:
        """Everything that changes the number: the identity behind ``method_id``."""
        run_only = (*getattr(engine_module(self.engine), "RUN_SETTINGS", ()),
                    *COMMON_RUN_SETTINGS)
        return {
            "engine": self.engine,
            **{k: v for k, v in self.params.items() if k not in run_only},
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def method_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def describe(self) -> str:
        """Short human description: 'pyscf ccsd(t)/cc-pvdz', 'espresso PBE/PW 30 Ry'."""
        p = self.params
        theory = p.get("xc") or p.get("theory", "?")
        disp = f"-{p['dispersion']}" if p.get("dispersion") else ""
        basis = p.get("basis") or (f"PW {p['ecutwfc']:g} Ry" if "ecutwfc" in p else "?")
        return f"{self.engine} {theory}{disp}/{basis}"


@dataclass
class Label:
    """The result of one (structure, method) pair; ``status`` is "ok" or a failure class."""

    structure_id: str
    method_id: str
    status: str
    energy: float = float("nan")
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None  # Voigt (xx, yy, zz, yz, xz, xy), eV/Å³, ASE sign
    message: str = ""
    wall_time: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def cores_of(provenance: Mapping[str, Any]) -> int:
    """Cores a label's run held: threads × MPI ranks, as ``label`` records them."""
    return (max(1, int(provenance.get("threads") or 1))
            * max(1, int(provenance.get("ranks") or 1)))


def label(
    atoms: Atoms,
    method: Method,
    threads: int = 1,
    ranks: int = 1,
    compute: Callable[[Atoms, Mapping[str, Any], Run], EngineResult] | None = None,
) -> Label:
    """Label one structure with one method, never raising for a classified failure.

    A transient failure climbs the engine's rescue ladder for its class (each step recorded in
    the provenance); what still fails comes back as a failed Label with its class and message,
    so a campaign can quarantine it and go on. The scratch folder (under ``$HIFIDATA_SCRATCH``
    or the system's temporary folder) is removed when the label is done. ``compute`` replaces
    the engine's compute (used to inject faults in tests).
    """
    engine = engine_module(method.engine)
    compute = compute or engine.compute
    sid, start = structure_id(atoms), time.perf_counter()
    provenance: dict[str, Any] = {
        "engine": method.engine,
        "engine_version": engine.version(),
        "host": platform.node(),
        "pid": os.getpid(),
        # which batch job computed it, when one did: what a cluster's accounting knows it by
        **{key.lower(): os.environ[key] for key in ("SLURM_JOB_ID", "PBS_JOBID")
           if key in os.environ},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "threads": threads,
        "ranks": ranks,
        "attempts": [],
    }

    def failed(error: LabelError) -> Label:
        return Label(
            sid, method.method_id, error.failure_class, message=_one_line(error),
            wall_time=time.perf_counter() - start, provenance=provenance,
        )

    try:
        check_structure(atoms)
        engine.check(atoms, method.params)
    except StructureError as error:
        return failed(InvalidStructure(str(error)))
    except InvalidStructure as error:
        return failed(error)

    workdir = Path(tempfile.mkdtemp(prefix=f"label-{sid[:12]}-", dir=scratch_root()))
    try:
        params, climbed = dict(method.params), Counter()
        for _ in range(MAX_ATTEMPTS):
            outcome = _attempt(compute, atoms, params, Run(threads, ranks, workdir))
            if isinstance(outcome, EngineResult):
                provenance["input"] = params
                provenance["report"] = outcome.info
                return Label(
                    sid, method.method_id, "ok", energy=float(outcome.energy),
                    forces=np.asarray(outcome.forces, dtype=float),
                    stress=None if outcome.stress is None else np.asarray(outcome.stress, float),
                    wall_time=time.perf_counter() - start, provenance=provenance,
                )
            error = outcome
            ladder = engine.rescues(method.params, error.failure_class) if error.transient else []
            step = climbed[error.failure_class]
            provenance["attempts"].append({
                "failure": error.failure_class,
                "message": _one_line(error),
                "changed": {k: v for k, v in params.items() if method.params.get(k) != v},
            })
            if step >= len(ladder):
                break
            climbed[error.failure_class] += 1
            params = {**params, **ladder[step]}
        provenance["input"] = params
        return failed(error)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _attempt(compute, atoms: Atoms, params: dict[str, Any], run: Run) -> EngineResult | LabelError:
    """One engine call: its result, or the classified failure."""
    try:
        return compute(atoms, params, run)
    except MemoryError:
        return OutOfMemory("the engine ran out of memory")
    except LabelError as caught:
        return caught
    except Exception as caught:  # an engine bug or an input it chokes on: don't retry
        error = EngineCrashed(f"{type(caught).__name__}: {caught}")
        error.transient = False
        return error


def scratch_root() -> str | None:
    """Where labels run: ``$HIFIDATA_SCRATCH`` (node-local disk on clusters) or the default."""
    root = os.environ.get("HIFIDATA_SCRATCH")
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    return root or None


def longer_limit(params: Mapping[str, Any], factor: float = 2.0) -> dict[str, Any]:
    """The rescue step every ladder shares for timeouts: ``factor`` × the time limit."""
    limit = params.get("time_limit")
    return {} if limit is None else {"time_limit": float(limit) * factor}


def _time_limit(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"time_limit must be a positive number of seconds, got {value!r}")
    return float(value)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:500]
