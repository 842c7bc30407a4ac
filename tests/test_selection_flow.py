"""Explore and select in a campaign: MD ramps, defects, uncertainty, budgets, coverage maps."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import tiny_spec, write_spec

from hifidata.datasets.store import Store
from hifidata.flows.campaign import run_campaign
from hifidata.sampling import costs
from hifidata.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_db")]


def test_protocols_uncertainty_budget_and_maps(tmp_path):
    spec = tiny_spec()
    spec["explore"]["protocols"] = [
        {"kind": "md", "temperatures": [300, 600], "steps": 40, "sample_every": 4},
        {"kind": "ramp", "schedule": [200, 900, 200], "steps": 40, "sample_every": 8},
        {"kind": "substitution", "count": 2, "substitutions": {"O": ["S"]}},
        {"kind": "rattle", "count": 20, "stdev": 0.06, "seed": 1,
         "parents": ["seed", "md", "ramp"]},
    ]
    spec["ladder"][0]["method"]["basis"] = "6-31g"  # has functions for S
    spec["ladder"][0]["select"] = {
        "from": "candidates", "clusters": 8,
        "uncertainty": {"committee": ["chgnet-0.3.0", "chgnet-r2scan"]}}
    path = write_spec(tmp_path, spec)
    ccsdt = load_spec(path).rung("ccsdt")
    seed = load_spec(path).seed_structures()
    size = costs.size_of(seed[0], ccsdt.engine, ccsdt.resolved.params)
    per_label = costs.label_seconds(
        costs.cost_model(ccsdt.engine, ccsdt.resolved.params, size=size), seed, ccsdt.engine,
        ccsdt.resolved.params)[0]
    budget = float(2.5 * per_label / 3600)  # two of the six clusters' labels
    spec["ladder"][1]["select"] = {"from": "dft", "clusters": 6, "budget_hours": budget}
    path = write_spec(tmp_path, spec)

    status = run_campaign(path, until="select")

    explored = status["stages"]["explore"]["by_protocol"]
    assert explored["md"] == 20 and explored["ramp"] == 5 and explored["substitution"] == 2
    store = Store(status["store"])
    origins = store.origins()
    ramp = [o for o in origins if o["protocol"] == "ramp"]
    assert sorted(o["temperature"] for o in ramp)[-1] > 700  # the target followed the schedule

    dft = store.selection("dft")
    scores, clusters = dft.arrays["uncertainty"], dft.arrays["cluster"]
    where = {sid: i for i, sid in enumerate(dft.pool_ids)}
    picked = [where[sid] for sid in dft.selected_ids]
    assert sorted(clusters[picked].tolist()) == sorted(set(clusters.tolist()))  # one per cluster
    for i in picked:  # and in its cluster the member the committee disagrees on most
        assert scores[i] == scores[clusters == clusters[i]].max()

    ccsdt = store.selection("ccsdt")
    seconds = ccsdt.arrays["predicted_core_seconds"]
    where = {sid: i for i, sid in enumerate(ccsdt.pool_ids)}
    spent = sum(seconds[where[sid]] for sid in ccsdt.selected_ids)
    assert 0 < spent <= budget * 3600
    rung = load_spec(path).rung("ccsdt")
    structures = store.structures(ccsdt.pool_ids)
    size = costs.size_of(structures[0], rung.engine, rung.resolved.params)
    prior = costs.label_seconds(costs.cost_model(rung.engine, rung.resolved.params, size=size),
                                structures, rung.engine, rung.resolved.params)
    np.testing.assert_allclose(seconds, prior)  # nothing labeled yet: the shipped prior
    assert len(ccsdt.selected_ids) == 2

    maps = store.record("maps", "campaign")["paths"]
    assert sorted(maps) == ["reports/coverage-ccsdt.png", "reports/coverage-dft.png",
                            "reports/elements.png"]
    assert all((tmp_path / p).stat().st_size > 10_000 for p in maps)
    elements = Counter(s for atoms in store.structures() for s in set(atoms.get_chemical_symbols()))
    assert elements["S"] == 2
