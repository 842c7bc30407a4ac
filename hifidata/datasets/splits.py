"""Train / validation / test splits by structure_id hash: stable as a dataset grows.

A structure's split is a pure function of its structure_id, the seed and the two fractions:
``u = sha256(f"{seed}:{structure_id}") / 2**256`` is a uniform number in [0, 1); ``u <
test_fraction`` is test, the next ``validation_fraction`` of what remains is validation, the
rest train. Hence

- a structure has one split whatever rung labels it: a CCSD(T) test structure is also a DFT
  test structure, so a composite model (DFT model + Δ) is never tested on anything either part
  saw in training;
- adding structures (a campaign that grows, a release that extends another) never moves one
  already there, and two campaigns that share a structure put it in the same split.

The price is that the fractions hold on average, not exactly: a rung of 20 structures gets
4 ± 1.8 test structures at 0.2, and a rung of 5 has none a third of the time. So that every
rung can be evaluated, :func:`assign_splits` promotes the lowest-hash structure of a rung
without a test structure to test; that choice is remembered (``previous``, the campaign's
recorded split), so it too never moves. Filling exact per-rung counts (hifidata's first
splitter) moved structures between splits whenever a rung grew.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

SPLITS = ("train", "validation", "test")


def split_of(structure_id: str, test_fraction: float, validation_fraction: float,
             seed: int = 0) -> str:
    """``"train"``, ``"validation"`` or ``"test"``; ``validation_fraction`` is a fraction of
    what remains after the test structures."""
    u = _uniform(structure_id, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction * (1 - test_fraction):
        return "validation"
    return "train"


def assign_splits(picks: Mapping[str, Iterable[str]], test_fraction: float,
                  validation_fraction: float, seed: int = 0,
                  previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """structure_id -> split for every id of every rung in ``picks`` (rung -> ids).

    ``previous``: splits made earlier with the same settings; they are kept as they are. A
    rung of two or more structures without a test structure gets its lowest-hash new one.
    """
    previous = previous or {}
    split: dict[str, str] = {}
    for ids in picks.values():
        for sid in ids:
            split[sid] = previous.get(sid) or split_of(sid, test_fraction, validation_fraction,
                                                       seed)
    for ids in picks.values():
        ids = list(dict.fromkeys(ids))
        new = [sid for sid in ids if sid not in previous]
        if len(ids) >= 2 and new and all(split[sid] != "test" for sid in ids):
            split[min(new, key=lambda sid: _uniform(sid, seed))] = "test"
    return split


def _uniform(structure_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{structure_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64  # 64 bits are plenty for a threshold


def ids_in(split: Mapping[str, str], ids: Sequence[str], name: str) -> list[str]:
    return [sid for sid in ids if split.get(sid) == name]


def recorded_split(store, settings: Mapping[str, float]) -> dict[str, str]:
    """The split a store recorded with these settings (``{}`` if none, or other settings)."""
    if store.record("split", "settings") != dict(settings):
        return {}
    return store.record("split", "campaign") or {}
