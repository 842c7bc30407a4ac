"""Methods whose labels were computed elsewhere (VASP, FHI-aims, another group's dataset).

An ``external`` method is a rung like any other: a definition (``software`` and every setting
the user declares: ``xc``, ``encut``, ``kpoints``, ...) whose hash is its ``method_id``, so the
store, ``hifidata status``, audits and releases treat its labels as they treat computed ones.
Its labels arrive only through ``hifidata import`` (hifidata.datasets.importer); asking this
engine to compute one is a classified failure, never a silent number.

``version`` (the software's version, e.g. ``6.4.2``) is provenance, not identity, as for every
engine: it goes into each imported label's ``engine_version`` and not into the method_id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ase import Atoms

from hifidata.calculators.base import EngineCrashed, EngineResult, Run

#: keys of ``params`` that do not change the number: the code version is provenance
RUN_SETTINGS = ("version",)


def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
    """The declared settings, checked: ``software`` required, identifier keys, JSON values.

    Raises ValueError with a one-line message naming the offending key.
    """
    software = params.get("software")
    if not isinstance(software, str) or not software.strip():
        raise ValueError("an external method needs 'software' (the code that computed the "
                         "labels, e.g. software=VASP)")
    out: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"external method setting {key!r}: keys are identifiers "
                             "(letters, digits, underscores)")
        out[key] = _plain(key, value)
    return dict(sorted(out.items()))


def _plain(key: str, value: Any) -> Any:
    """``value`` if it is plain JSON with finite numbers (the method_id hashes its JSON)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"external method setting {key!r}: {value!r} is not a JSON value "
                         "(text, finite number, true/false, list or mapping)") from None
    return json.loads(text)


def check(atoms: Atoms, params: Mapping[str, Any]) -> None:
    """Any structure: the engine that computed the labels already took it."""


def compute(atoms: Atoms, params: Mapping[str, Any], run: Run) -> EngineResult:
    error = EngineCrashed(
        f"labels of external methods ({params.get('software', '?')}) are imported "
        "(`hifidata import`), not computed"
    )
    error.transient = False  # no rescue makes this engine run
    raise error


def rescues(params: Mapping[str, Any], failure_class: str) -> list[dict[str, Any]]:
    return []


def version() -> str:
    return "external"
