"""Bring labeled data computed elsewhere into a store: as labels of a declared method, or as seeds.

``import_file`` reads every frame of a file (anything ``ase.io.read`` reads; extxyz first of
all), checks every one of them, and only then writes: the structures in one append, the labels
in another, so a bad file leaves the store as it was. Units are hifidata's (eV, Å, eV/Å,
eV/Å³, ASE's stress sign); nothing is converted. docs/import.md is the user's guide.

Where a frame's numbers come from, per quantity: the key given on the command line; else the
first *tier* that holds an energy, forces and stress taken from that same tier so a label never
mixes two methods: ``REF_energy_<method>`` (another rung's label in a hifidata release file),
``REF_energy`` (hifidata's release files, MACE's convention; skipped when the frame's
``method_id`` names another method), the calculator's results (``energy=``/``forces``/``stress``
keys, which ASE loads into a SinglePointCalculator).
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import iread
from ase.stress import full_3x3_to_voigt_6_stress

from hifidata.calculators.base import Label, Method
from hifidata.datasets.store import Store
from hifidata.errors import HifidataError
from hifidata.structures import StructureError, check_structure, structure_id, with_charge_and_spin

MODES = ("labels", "seeds")
#: a rung's name is also a release file's name (the spec's pattern)
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: --define settings kept as text whatever they look like
TEXT_SETTINGS = ("software", "version")


@dataclass(frozen=True)
class Keys:
    """Keys named on the command line; None: resolve by tier (see the module's docstring)."""

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None


@dataclass(frozen=True)
class Declared:
    """The method imported labels belong to."""

    name: str
    method_id: str
    method: Method | None  # None: the store registered it already
    version: str  # the software's version, provenance only ("unknown" when not declared)


@dataclass
class Frame:
    """One checked frame: the structure (charge, spin in info) and, for labels, its numbers."""

    index: int
    atoms: Atoms
    structure_id: str
    config_type: str | None
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None  # Voigt xx yy zz yz xz xy, eV/Å³; periodic frames only
    keys: dict[str, str] | None = None  # the key each number came from


def import_file(
    store: Store,
    path: str | Path,
    method: str | None = None,
    mode: str = "labels",
    spec: str | Path | None = None,
    define: Sequence[str] | Mapping[str, Any] | None = None,
    keys: Keys = Keys(),
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Import every frame of ``path`` into ``store`` (opened for writing); return a summary.

    ``mode`` "labels": structures plus one ok Label per frame of the method ``method``, which
    must be declared (registered in the store, a rung of ``spec``, or ``define``'s settings of
    an external method). "seeds": structures only, as campaign seeds. A (structure, method)
    pair the store already labeled ok is skipped, a structure repeated in the file counts once
    (the first frame wins). Raises HifidataError, before anything is written, on the first
    bad frame. ``progress(n)`` is called as frames are read.
    """
    path = Path(path)
    if mode not in MODES:
        raise HifidataError(f"--as {mode!r}: import as one of {', '.join(MODES)}")
    if mode == "seeds" and (method or spec or define):
        raise HifidataError("--as seeds imports structures only; --method, --spec and "
                            "--define declare the method of imported labels")
    if mode == "labels" and not method:
        raise HifidataError("--method NAME is required to import labels (or use --as seeds)")
    declared = declare_method(store, method, spec, define) if mode == "labels" else None
    frames = read_frames(path, declared, keys, progress)

    unique: dict[str, Frame] = {}
    for frame in frames:
        unique.setdefault(frame.structure_id, frame)
    known = set(store.structure_ids())
    if declared is None:
        done: set[str] = set()
    else:
        done = {sid for sid, status in store.labeled_ids(declared.method_id).items()
                if status == "ok"}
    todo = [frame for frame in unique.values() if frame.structure_id not in
            (known if declared is None else done)]

    if declared is not None and declared.method is not None:
        store.add_method(declared.method)
    store.add_structures([f.atoms for f in todo], [_origin(f, path, mode) for f in todo])
    if declared is not None:
        provenance = _provenance(path, declared)
        store.add_labels([_label(frame, declared, provenance) for frame in todo])
        _record_method(store, declared)
    return {
        "file": str(path),
        "mode": mode,
        "frames": len(frames),
        "structures_added": len({f.structure_id for f in todo} - known),
        "labels_added": len(todo) if declared is not None else 0,
        "skipped_existing": len(unique) - len(todo),
        "duplicates": len(frames) - len(unique),
        "method": declared.name if declared else None,
        "method_id": declared.method_id if declared else None,
    }


# -- the method ------------------------------------------------------------------------------
def declare_method(
    store: Store,
    name: str,
    spec: str | Path | None = None,
    define: Sequence[str] | Mapping[str, Any] | None = None,
) -> Declared:
    """The method ``name``: a rung of ``spec``, an external method of ``define``'s settings,
    or the rung the store registered under ``name``; anything else is a HifidataError."""
    if spec and define:
        raise HifidataError("declare the method with --spec or with --define, not both")
    if not NAME.match(name):
        raise HifidataError(f"--method {name!r}: a rung's name is letters, digits, '_', '.' "
                            "and '-'")
    registered = {m["name"]: m["method_id"] for m in store.methods()}  # the latest per name
    if spec:
        method = _spec_rung(Path(spec), name)
    elif define:
        settings = parse_defines(define) if not isinstance(define, Mapping) else dict(define)
        try:
            method = Method.resolve("external", settings, name=name)
        except ValueError as error:
            raise HifidataError(f"--define: {error}") from None
    elif name in registered:
        return Declared(name, registered[name], None, "unknown")
    else:
        raise HifidataError(f"method {name} is not in {store.path}; declare it with --spec "
                            "or --define")
    if name in registered and registered[name] != method.method_id:
        raise HifidataError(
            f"method {name} in {store.path} is defined differently (method_id "
            f"{registered[name][:12]}, declared {method.method_id[:12]}); import under "
            "another --method name"
        )
    version = method.params.get("version") if method.engine == "external" else None
    return Declared(name, method.method_id, method, str(version or "unknown"))


def _spec_rung(path: Path, name: str) -> Method:
    """The rung ``name`` of a spec, resolved as the campaign resolves it (same method_id)."""
    from hifidata.spec import load_spec

    spec = load_spec(path, check_inputs=False)  # the seeds are not needed to name a method
    rungs = {rung.name: rung for rung in spec.ladder}
    if name not in rungs:
        raise HifidataError(f"{path}: no rung named {name!r} in its ladder "
                            f"(rungs: {', '.join(rungs)})")
    try:
        return rungs[name].resolved
    except ValueError as error:
        raise HifidataError(f"{path}: ladder rung {name}: {error}") from None


def parse_defines(pairs: Sequence[str]) -> dict[str, Any]:
    """``["software=VASP", "encut=520"]`` -> ``{"software": "VASP", "encut": 520}``: values
    are JSON when they parse as JSON (numbers, true/false, lists), else text; ``software``
    and ``version`` are always text."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HifidataError(f"--define {pair!r}: expected KEY=VALUE, e.g. software=VASP")
        if key in settings:
            raise HifidataError(f"--define: {key!r} is given twice")
        if key in TEXT_SETTINGS:  # "5.40" is a version, not the number 5.4
            settings[key] = text.strip()
            continue
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            settings[key] = text.strip()
    return settings


# -- the frames ------------------------------------------------------------------------------
def read_frames(
    path: Path,
    declared: Declared | None,
    keys: Keys = Keys(),
    progress: Callable[[int], None] | None = None,
) -> list[Frame]:
    """Every frame of ``path``, checked, with the numbers of ``declared`` (None: structures
    only); the first bad frame is a HifidataError naming it."""
    if not path.is_file():
        raise HifidataError(f"{path}: no such file")
    raw = []
    try:
        for atoms in iread(str(path), index=":"):
            raw.append(atoms)
            if progress:
                progress(1)
    except Exception as error:  # any reader's complaint: the file, not hifidata
        at = f" after frame {len(raw) - 1}" if raw else ""
        raise HifidataError(f"{path}: unreadable{at} ({' '.join(str(error).split())})") from None
    if not raw:
        raise HifidataError(f"{path}: no structures in it")
    return [_frame(atoms, i, declared, keys, path.name) for i, atoms in enumerate(raw)]


def _frame(atoms: Atoms, index: int, declared: Declared | None, keys: Keys, file: str) -> Frame:
    where = f"{file}: frame {index}"
    structure = _structure(atoms, where)
    config_type = atoms.info.get("config_type")
    frame = Frame(index, structure, structure_id(structure),
                  None if config_type is None else str(config_type))
    if declared is None:
        return frame
    status = atoms.info.get("status")
    if status is not None and str(status) != "ok":  # a release's <rung>.failed.extxyz
        raise HifidataError(f"{where}: a failed label (status {status}); only numbers are "
                            "imported")
    tiers = _tiers(atoms, declared)
    if keys.energy:
        energy_key, tier = keys.energy, None
        if _lookup(atoms, keys.energy) is None:
            raise HifidataError(f"{where}: no {keys.energy!r} (--energy-key)")
    else:
        tier = next((t for t in tiers if _lookup(atoms, t[0]) is not None), None)
        if tier is None:
            raise HifidataError(f"{where}: {_no_energy(atoms, declared, tiers)}")
        energy_key = tier[0]
    frame.energy = _energy(_lookup(atoms, energy_key), f"{where}: {energy_key!r}")

    if keys.forces and _lookup(atoms, keys.forces) is None:
        raise HifidataError(f"{where}: no {keys.forces!r} (--forces-key)")
    forces_key = keys.forces or _key_of(atoms, 1, tier, tiers)
    if forces_key is None:  # a tier's forces only: never another method's next to its energy
        looked = tier[1] if tier else _names(tiers, 1)
        raise HifidataError(f"{where}: no forces ({looked}) for the energy {energy_key!r}")
    frame.forces = _forces(_lookup(atoms, forces_key), len(atoms), f"{where}: {forces_key!r}")

    stress_key = keys.stress or _key_of(atoms, 2, tier, tiers)
    if atoms.pbc.any() and stress_key is not None:
        if _lookup(atoms, stress_key) is None:  # only an explicit key can be missing here
            raise HifidataError(f"{where}: no {stress_key!r} (--stress-key)")
        frame.stress = _voigt(_lookup(atoms, stress_key), f"{where}: {stress_key!r}")
    frame.keys = {"energy": energy_key, "forces": forces_key,
                  **({"stress": stress_key} if frame.stress is not None else {})}
    return frame


def _tiers(atoms: Atoms, declared: Declared) -> list[tuple[str, str, str]]:
    """(energy, forces, stress) keys, best first: the method's own suffixed keys, REF_, the
    calculator's. A hifidata release frame names the method its REF_ keys belong to
    (``method_id``); when that is another method, its REF_ keys are not this one's."""
    name = declared.name
    tiers = [(f"REF_energy_{name}", f"REF_forces_{name}", f"REF_stress_{name}")]
    if _owner(atoms) in (None, declared.method_id):
        tiers.append(("REF_energy", "REF_forces", "REF_stress"))
    tiers.append(("energy", "forces", "stress"))
    return tiers


def _owner(atoms: Atoms) -> str | None:
    owner = atoms.info.get("method_id")
    return None if owner is None else str(owner)


def _no_energy(atoms: Atoms, declared: Declared, tiers: list[tuple]) -> str:
    owner = _owner(atoms)
    if owner not in (None, declared.method_id) and "REF_energy" in atoms.info:
        return (f"no energy of {declared.name}: its REF_energy is method_id {owner[:12]}, "
                f"not {declared.name}'s {declared.method_id[:12]} (import that rung's own "
                "release file, or name the key with --energy-key)")
    return f"no energy (looked for {_names(tiers, 0)})"


def _key_of(atoms: Atoms, column: int, tier: tuple | None, tiers: list[tuple]) -> str | None:
    """The tier's key for forces (1) or stress (2); with an explicit energy key, the first
    tier that has the quantity. None: no tier has it."""
    for candidate in [tier] if tier is not None else tiers:
        if _lookup(atoms, candidate[column]) is not None:
            return candidate[column]
    return None


def _names(tiers: list[tuple], column: int) -> str:
    return ", ".join(t[column] for t in tiers)


def _lookup(atoms: Atoms, key: str) -> Any:
    """``key`` in info, arrays, or the calculator's results (where ASE puts energy= etc.)."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = getattr(atoms.calc, "results", None) or {}
    return results.get(key)


def _structure(atoms: Atoms, where: str) -> Atoms:
    """A clean copy (no calculator, no extra keys) with charge and spin, checked."""
    charge, spin = atoms.info.get("charge", 0), atoms.info.get("spin")
    for name, value in (("charge", charge), ("spin", spin)):
        if value is not None and not _is_integer(value):
            raise HifidataError(f"{where}: {name} {value!r} is not an integer")
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                  pbc=atoms.pbc)
    clean = with_charge_and_spin(clean, int(charge), None if spin is None else int(spin))
    try:
        check_structure(clean)
    except StructureError as error:
        raise HifidataError(f"{where}: {error}") from None
    return clean


def _is_integer(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return np.isfinite(number) and number == int(number)


def _energy(value: Any, where: str) -> float:
    array = _numbers(value, where)
    if array.size != 1 or not np.isfinite(array).all():
        raise HifidataError(f"{where}: the energy must be one finite number (eV), got {value!r}")
    return float(array.reshape(()))


def _forces(value: Any, natoms: int, where: str) -> np.ndarray:
    array = _numbers(value, where)
    if array.shape != (natoms, 3):
        raise HifidataError(f"{where}: forces of shape {array.shape}; expected ({natoms}, 3)")
    if not np.isfinite(array).all():
        raise HifidataError(f"{where}: the forces are not all finite")
    return array


def _voigt(value: Any, where: str) -> np.ndarray:
    """Stress as Voigt xx yy zz yz xz xy from 6 numbers or a 3×3 (or 9) tensor, ASE's sign."""
    array = _numbers(value, where)
    if array.size == 9:
        array = full_3x3_to_voigt_6_stress(array.reshape(3, 3))
    if array.shape != (6,):
        raise HifidataError(f"{where}: stress of shape {array.shape}; expected 6 (Voigt) or "
                            "3×3")
    if not np.isfinite(array).all():
        raise HifidataError(f"{where}: the stress is not all finite")
    return array


def _numbers(value: Any, where: str) -> np.ndarray:
    try:
        return np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise HifidataError(f"{where}: {value!r} is not numbers") from None


# -- what is written -------------------------------------------------------------------------
def _origin(frame: Frame, path: Path, mode: str) -> dict[str, Any]:
    # seeds carry the campaign's own protocol: derived protocols (rattle, strain, ...) take
    # "seed" structures as parents and evaluate starts its MD from them
    origin: dict[str, Any] = (
        {"protocol": "seed", "imported": True} if mode == "seeds" else {"protocol": "imported"}
    )
    origin.update(file=path.name, index=frame.index)
    if frame.config_type is not None:
        origin["config_type"] = frame.config_type
    return origin


def _provenance(path: Path, declared: Declared) -> dict[str, Any]:
    from hifidata.datasets.release import sha256_file

    return {
        "engine": "imported",
        "engine_version": declared.version,
        "source": path.name,
        "source_sha256": sha256_file(path),
        "imported": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
    }


def _label(frame: Frame, declared: Declared, provenance: dict[str, Any]) -> Label:
    return Label(
        frame.structure_id, declared.method_id, "ok", energy=frame.energy, forces=frame.forces,
        stress=frame.stress, wall_time=0.0,
        provenance={**provenance, "index": frame.index, "keys": frame.keys},
    )


def _record_method(store: Store, declared: Declared) -> None:
    """What ``hifidata audit`` and ``evaluate`` know labeled rungs by, unless the campaign
    wrote it already (its record carries the threads and ranks it labels with)."""
    if declared.method is None or store.record("method", declared.name) is not None:
        return
    store.put_record("method", declared.name, {
        "engine": declared.method.engine, "params": dict(declared.method.params),
        "threads": 1, "ranks": 1,
    })
