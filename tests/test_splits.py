"""Splits by structure, nested across rungs."""

from collections import Counter

from hifidata.datasets.splits import assign_splits


def ladder():
    dft = [f"s{i:03d}" for i in range(80)]
    return {"dft": dft, "ccsdt": dft[::3][:27]}


def test_each_rung_gets_its_fractions_and_a_structure_has_one_split():
    picks = ladder()
    split = assign_splits(picks, test_fraction=0.2, validation_fraction=0.15, seed=0)
    assert set(split) == set(picks["dft"])
    for ids in picks.values():
        counts = Counter(split[s] for s in ids)
        assert counts["test"] == round(0.2 * len(ids))
        assert counts["validation"] == round(0.15 * (len(ids) - counts["test"]))


def test_nothing_a_higher_rung_trains_on_is_tested_on_a_lower_one():
    picks = ladder()
    split = assign_splits(picks, 0.2, 0.15, seed=1)
    ccsdt_train = {s for s in picks["ccsdt"] if split[s] == "train"}
    dft_test = {s for s in picks["dft"] if split[s] == "test"}
    assert not ccsdt_train & dft_test
    assert {s for s in picks["ccsdt"] if split[s] == "test"} <= dft_test


def test_the_split_depends_on_ids_and_seed_only():
    picks = ladder()
    shuffled = {name: list(reversed(ids)) for name, ids in picks.items()}
    assert assign_splits(picks, 0.2, 0.1, seed=5) == assign_splits(shuffled, 0.2, 0.1, seed=5)
    assert assign_splits(picks, 0.2, 0.1, seed=5) != assign_splits(picks, 0.2, 0.1, seed=6)
