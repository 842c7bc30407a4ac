"""Splits by structure_id hash: one split per structure, stable when a dataset grows."""

from collections import Counter

import numpy as np

from hifidata.datasets.splits import assign_splits, split_of


def ids(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def test_fractions_hold_on_a_large_set():
    split = assign_splits({"r": ids(20000)}, test_fraction=0.2, validation_fraction=0.15, seed=0)
    counts = Counter(split.values())
    # binomial standard errors: sqrt(n p (1-p)) ≈ 57 for test, 48 for validation
    assert abs(counts["test"] - 4000) < 4 * 57
    assert abs(counts["validation"] - 0.15 * 0.8 * 20000) < 4 * 48
    assert counts["train"] == 20000 - counts["test"] - counts["validation"]


def test_a_structure_never_moves_when_the_set_grows():
    small = assign_splits({"r": ids(50)}, 0.2, 0.15, seed=3)
    grown = assign_splits({"r": ids(500) + ids(50, start=10_000)}, 0.2, 0.15, seed=3)
    assert all(grown[sid] == part for sid, part in small.items())
    # and does not depend on the order ids arrive in, or on what else is in the set
    assert split_of(ids(1, 7)[0], 0.2, 0.15, 3) == small[ids(1, 7)[0]]


def test_the_seed_reshuffles_and_nesting_is_automatic():
    a = assign_splits({"r": ids(400)}, 0.2, 0.1, seed=5)
    b = assign_splits({"r": ids(400)}, 0.2, 0.1, seed=6)
    assert np.mean([a[s] != b[s] for s in a]) > 0.2
    # a larger test fraction only adds test structures (the thresholds are nested)
    wider = assign_splits({"r": ids(400)}, 0.3, 0.1, seed=5)
    assert {s for s in a if a[s] == "test"} < {s for s in wider if wider[s] == "test"}


def test_a_small_rung_gets_a_test_structure_that_stays():
    picks = {"dft": ids(40), "ccsdt": ids(3)}
    natural = {s: split_of(s, 0.2, 0.15, 0) for s in ids(40)}
    assert "test" not in {natural[s] for s in ids(3)}  # the case the promotion is for
    split = assign_splits(picks, 0.2, 0.15, seed=0)
    assert "test" in {split[s] for s in picks["ccsdt"]}
    assert sum(split[s] != natural[s] for s in split) == 1  # one promotion
    # the rung grows: what was assigned before keeps its split
    grown = assign_splits({"dft": ids(40), "ccsdt": ids(3) + ids(30, start=100)}, 0.2, 0.15,
                          seed=0, previous=split)
    assert all(grown[s] == split[s] for s in split)
