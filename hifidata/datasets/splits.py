"""Train / validation / test splits by structure, consistent across the rungs of a ladder.

A structure has one split whatever rung labels it: a CCSD(T) test structure is also a DFT test
structure, so the composite model (DFT model + Δ) is never tested on anything either part saw
in training. The split is filled from the most expensive rung down, so each rung still gets its
share of test structures, and is a pure function of the ids and the seed (stable on resume).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

SPLITS = ("train", "validation", "test")


def assign_splits(
    picks: Mapping[str, Sequence[str]],
    test_fraction: float,
    validation_fraction: float,
    seed: int = 0,
) -> dict[str, str]:
    """structure_id -> "train" | "validation" | "test" for every id in ``picks``.

    ``picks`` maps rung name -> structure ids, cheapest rung first (the ladder's order).
    ``validation_fraction`` is a fraction of what remains after the test structures.
    """
    split: dict[str, str] = {}
    for ids in reversed(list(picks.values())):
        _fill(split, ids, "test", round(test_fraction * len(ids)), seed)
        remaining = [sid for sid in ids if split.get(sid) != "test"]
        _fill(split, remaining, "validation", round(validation_fraction * len(remaining)), seed)
        for sid in ids:  # settled now, so a cheaper rung cannot move them to test
            split.setdefault(sid, "train")
    return split


def _fill(split: dict[str, str], ids: Sequence[str], name: str, target: int, seed: int) -> None:
    """Mark unassigned ids as ``name`` until ``target`` of ``ids`` carry it."""
    have = sum(split.get(sid) == name for sid in ids)
    free = sorted((sid for sid in ids if sid not in split), key=lambda sid: _rank(sid, seed))
    for sid in free[: max(target - have, 0)]:
        split[sid] = name


def _rank(structure_id: str, seed: int) -> str:
    # a seeded hash: a reproducible shuffle that doesn't depend on the order ids arrive in
    return hashlib.sha256(f"{seed}:{structure_id}".encode()).hexdigest()


def ids_in(split: Mapping[str, str], ids: Sequence[str], name: str) -> list[str]:
    return [sid for sid in ids if split.get(sid) == name]
