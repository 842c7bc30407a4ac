"""The labeling contract every engine shares.

A :class:`Method` is one rung of the fidelity ladder: an engine and every setting that changes
the number. :func:`label` turns (structure, method) into a :class:`Label` (energy in eV, forces
in eV/Å, stress in eV/Å³) or a failed Label with one of the failure classes. An engine is a
module with four functions (see :class:`Engine`); this module never imports one until asked.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


class Engine(Protocol):
    """What an engine module provides (``hifidata.calculators.<engine>``)."""

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``params`` and fill every default, so the method id sees all settings."""

    def check(self, atoms: Atoms, params: Mapping[str, Any]) -> None:
        """Raise InvalidStructure for input this engine cannot take (e.g. element not in basis)."""

    def compute(self, atoms: Atoms, params: Mapping[str, Any], threads: int) -> EngineResult:
        """Run the engine; raise a LabelError subclass on a classified failure."""

    def rescues(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Escalated settings to try, in order, after a transient failure."""

    def version(self) -> str: ...

    #: keys of ``params`` that change how the engine runs but not its number (not identity)
    RUN_SETTINGS: tuple[str, ...]


ENGINES = {"pyscf": "hifidata.calculators.pyscf"}


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
        return cls(engine=engine, params=engine_module(engine).resolve(params), name=name)

    def canonical(self) -> dict[str, Any]:
        """Everything that changes the number: the identity behind ``method_id``."""
        run_only = getattr(engine_module(self.engine), "RUN_SETTINGS", ())
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
        """Short human description: 'pyscf ccsd(t)/cc-pvdz'."""
        p = self.params
        theory = p.get("xc") or p.get("theory", "?")
        disp = f"-{p['dispersion']}" if p.get("dispersion") else ""
        return f"{self.engine} {theory}{disp}/{p.get('basis', '?')}"


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


def label(
    atoms: Atoms,
    method: Method,
    threads: int = 1,
    compute: Callable[[Atoms, Mapping[str, Any], int], EngineResult] | None = None,
) -> Label:
    """Label one structure with one method, never raising for a classified failure.

    Transient failures are retried with the engine's escalated settings; what still fails comes
    back as a failed Label with its class and message, so a campaign can quarantine it and go on.
    ``compute`` replaces the engine's compute (used to inject faults in tests).
    """
    engine = engine_module(method.engine)
    compute = compute or engine.compute
    sid, start = structure_id(atoms), time.perf_counter()
    provenance: dict[str, Any] = {
        "engine": method.engine,
        "engine_version": engine.version(),
        "host": platform.node(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "threads": threads,
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

    attempts = [dict(method.params), *engine.rescues(method.params)]
    for number, params in enumerate(attempts, start=1):
        try:
            result = compute(atoms, params, threads)
        except MemoryError:
            error: LabelError = OutOfMemory("the engine ran out of memory")
        except LabelError as caught:
            error = caught
        except Exception as caught:  # an engine bug or an input it chokes on: don't retry
            error = EngineCrashed(f"{type(caught).__name__}: {caught}")
            error.transient = False
        else:
            provenance["input"] = params
            provenance["report"] = result.info
            return Label(
                sid, method.method_id, "ok", energy=float(result.energy),
                forces=np.asarray(result.forces, dtype=float),
                stress=None if result.stress is None else np.asarray(result.stress, dtype=float),
                wall_time=time.perf_counter() - start, provenance=provenance,
            )
        provenance["attempts"].append({
            "failure": error.failure_class,
            "message": _one_line(error),
            "changed": {k: v for k, v in params.items() if method.params.get(k) != v},
        })
        if not error.transient or number == len(attempts):
            provenance["input"] = params
            return failed(error)
    raise AssertionError("unreachable: the loop returns on its last attempt")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:500]
