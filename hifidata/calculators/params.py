"""Checks of single method parameters, shared by the engines' ``resolve``: one-line errors
that name the key."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def integer(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} must be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{key!r} must be {bounds}, not {value}")
    return value


def positive_float(key: str, value: Any) -> float:
    # YAML 1.1 reads '1e-9' (no dot) as a string: accept numeric strings
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{key!r} must be a positive number, not {value!r}")
    return number


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} must be true or false, not {value!r}")
    return value


def known_keys(engine: str, params: Mapping[str, Any], known: Iterable[str],
               rescue_only: Iterable[str] = ()) -> None:
    """Refuse a key the engine does not know, and a rescue key given as part of a method."""
    known, rescue_only = set(known), set(rescue_only)
    for key in params:
        if key in rescue_only:
            raise ValueError(
                f"{key!r} is a convergence aid that the rescue ladder adds on retry, "
                "not part of a method"
            )
        if key not in known:
            names = ", ".join(sorted(known))
            raise ValueError(f"unknown {engine} parameter {key!r} (known: {names})")
