"""Cost model, budgeted allocation and `hifidata plan` (no real labels are computed here)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk
from conftest import tiny_spec, write_spec
from pyscf import gto
from typer.testing import CliRunner

from hifidata.calculators.base import Label
from hifidata.cli import app
from hifidata.datasets.store import Selection, Store
from hifidata.flows.plan import plan_campaign
from hifidata.sampling.costs import (
    CUTOFF_EXPONENTS,
    REFERENCE_TIMINGS,
    CostModel,
    allocate,
    kpoints_of,
    prior_model,
    size_of,
)
from hifidata.sampling.direct import coverage_score
from hifidata.spec import load_spec
from hifidata.structures import structure_id

# -- size measures ---------------------------------------------------------------------------


def test_size_is_basis_functions_for_pyscf_and_atoms_for_plane_waves(water_dimer):
    for basis in ("cc-pvdz", "aug-cc-pvdz", "def2-tzvp"):
        mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(water_dimer.get_chemical_symbols(),
                                                         water_dimer.positions, strict=True)],
                    basis=basis, verbose=0)
        assert size_of(water_dimer, "pyscf", {"basis": basis}) == mol.nao
    si8 = bulk("Si", "diamond", a=5.431, cubic=True)
    assert size_of(si8, "cp2k", {}) == size_of(si8, "espresso", {}) == 8
    assert kpoints_of(si8, "cp2k", {"kpoints": None}) == 1
    # 2×2×2 Monkhorst–Pack, shifted off Γ: 8 points, k and -k once
    assert kpoints_of(si8, "espresso", {"kpoints": {"spacing": 0.6}}) == 4
    assert kpoints_of(water_dimer, "pyscf", {"basis": "cc-pvdz"}) == 1


# -- the cost model --------------------------------------------------------------------------


def test_fit_recovers_a_known_scaling():
    rng = np.random.default_rng(0)
    sizes = np.geomspace(10, 200, 15)
    seconds = 0.01 * sizes**3 * rng.lognormal(0.0, 0.05, len(sizes))
    model = CostModel.fit(sizes, seconds, prior_exponent=7.0)  # a wrong prior: the data win
    assert abs(model.exponent - 3.0) < 0.2
    assert model.exponent_sd < 0.2
    assert model.n == 15 and model.source == "fit" and model.exponent_from == "fit"
    assert model.predict(100.0) == pytest.approx(0.01 * 100**3, rel=0.1)
    assert 1.0 < model.spread < 1.3
    assert re.fullmatch(r"fit \(n=15, p=(2\.9\d|3\.0\d)±0\.0\d\)", model.describe())


def test_kpoints_are_a_linear_factor():
    rng = np.random.default_rng(1)
    atoms = np.array([8, 8, 16, 16, 32, 32, 64, 64] * 2)
    kpoints = np.array([1, 4] * 8)
    seconds = 0.2 * atoms**2.0 * kpoints * rng.lognormal(0, 0.05, len(atoms))
    model = CostModel.fit(atoms, seconds, prior_exponent=3.0, kpoints=kpoints)
    assert abs(model.exponent - 2.0) < 0.2
    assert model.predict(16, 4) / model.predict(16, 1) == pytest.approx(4.0)


def test_one_size_keeps_the_prior_exponent():
    model = CostModel.fit([48, 48, 48], [7.0, 7.5, 6.6], prior_exponent=7.0)
    assert model.exponent == 7.0 and model.exponent_from == "prior"
    assert model.predict(48) == pytest.approx(np.exp(np.mean(np.log([7.0, 7.5, 6.6]))))
    assert model.predict(96) / model.predict(48) == pytest.approx(2.0**7)
    assert model.describe() == "fit (n=3, p=7 prior)"
    single = CostModel.fit([48], [7.0], prior_exponent=7.0)
    assert single.predict(48) == pytest.approx(7.0)
    # two close sizes with noise hardly move the exponent off its prior
    near = CostModel.fit([48, 50], [7.0, 6.5], prior_exponent=7.0)
    assert abs(near.exponent - 7.0) < 0.5
    with pytest.raises(ValueError):
        CostModel.fit([], [], prior_exponent=3.0)
    with pytest.raises(ValueError):
        CostModel.fit([10, 20], [1.0, -1.0], prior_exponent=3.0)


def test_priors_scale_the_nearest_reference_timing(water_dimer):
    method = {"theory": "ccsd(t)", "basis": "cc-pvdz"}
    size = size_of(water_dimer, "pyscf", method)
    model = prior_model("pyscf", method, size)
    assert model.source == "prior" and model.n == 0 and model.describe() == "prior"
    assert model.predict(size) == pytest.approx(23.5)  # the dimer's own reference
    assert model.predict(2 * size) / model.predict(size) == pytest.approx(2.0**7)
    aug = size_of(water_dimer, "pyscf", {"basis": "aug-cc-pvdz"})
    assert aug == 82 and prior_model("pyscf", method, aug).predict(aug) == pytest.approx(175.5)
    for engine, params in (("cp2k", {"cutoff": 600}), ("espresso", {"ecutwfc": 60})):
        low = prior_model(engine, {k: v / 2 for k, v in params.items()}, 8)
        high = prior_model(engine, params, 8)
        assert high.predict(8) / low.predict(8) == pytest.approx(2 ** CUTOFF_EXPONENTS[engine])
    for (engine, theory), references in REFERENCE_TIMINGS.items():
        params = {"theory": theory, "basis": "cc-pvdz"} if engine == "pyscf" else {}
        if "k-points" in theory:
            params["kpoints"] = {"spacing": 0.6}
        for reference in references:
            model = prior_model(engine, params, reference["size"])
            assert model.predict(reference["size"], reference.get("kpoints", 1)) == (
                pytest.approx(reference["seconds"]))


# -- allocation ------------------------------------------------------------------------------


def constructed_case():
    """A dense cluster of cheap configurations and five tight, expensive clusters far apart:
    the cheap ones all sit in the same few bins, each expensive cluster in bins of its own."""
    rng = np.random.default_rng(3)
    cheap = rng.normal(0.0, 0.01, (30, 2))
    centers = np.array([[1, 5], [5, 1], [-4, 3], [3, -4], [-3, -3]], dtype=float)
    far = np.concatenate([c + rng.normal(0.0, 0.01, (4, 2)) for c in centers])
    embedding = np.concatenate([cheap, far])
    clusters = np.array([0] * 30 + [c for c in range(1, 6) for _ in range(4)])
    seconds = np.array([1.0] * 30 + [4.0] * 20) * rng.uniform(0.95, 1.05, 50)
    return embedding, clusters, seconds


def cheapest_first(seconds, budget):
    chosen, spent = [], 0.0
    for i in np.argsort(seconds, kind="stable"):
        if spent + seconds[i] <= budget:
            chosen.append(i)
            spent += seconds[i]
    return np.array(chosen, dtype=int)


def random_pick(seconds, budget, seed):
    chosen, spent = [], 0.0
    for i in np.random.default_rng(seed).permutation(len(seconds)):
        if spent + seconds[i] <= budget:
            chosen.append(i)
            spent += seconds[i]
    return np.array(chosen, dtype=int)


def test_allocation_covers_more_than_cheapest_and_random_within_budget():
    embedding, clusters, seconds = constructed_case()
    budget = 24.0
    chosen = allocate(embedding, clusters, seconds, budget)
    assert seconds[chosen].sum() <= budget
    assert len(set(chosen)) == len(chosen)
    assert set(clusters[chosen]) == set(range(6))  # every cluster, affordable at once
    score = coverage_score(embedding, embedding[chosen])
    assert score > coverage_score(embedding, embedding[cheapest_first(seconds, budget)])
    random = []
    for seed in range(50):
        pick = random_pick(seconds, budget, seed)
        assert seconds[pick].sum() <= budget
        random.append(coverage_score(embedding, embedding[pick]))
    # a random pick that happens to take one of every cluster ties; on average it covers less
    assert score >= max(random) and score > np.mean(random) + 0.1
    assert np.array_equal(chosen, allocate(embedding, clusters, seconds, budget))  # determinism


def test_allocation_never_exceeds_the_budget():
    rng = np.random.default_rng(7)
    for trial in range(25):
        n = int(rng.integers(1, 60))
        embedding = rng.normal(size=(n, int(rng.integers(1, 5))))
        clusters = rng.integers(0, max(1, n // 4), n)
        seconds = rng.lognormal(0.0, 1.0, n)
        budget = float(rng.uniform(0, seconds.sum()))
        k = int(rng.integers(1, 3))
        chosen = allocate(embedding, clusters, seconds, budget, k=k)
        assert seconds[chosen].sum() <= budget + 1e-9, trial
        assert np.bincount(clusters[chosen]).max(initial=0) <= k, trial  # a cap, never more
        # nothing affordable is left out: every unchosen member of a cluster with room costs
        # more than the budget left
        room = np.bincount(clusters[chosen], minlength=clusters.max() + 1) < k
        rest = np.setdiff1d(np.flatnonzero(room[clusters]), chosen)
        if len(rest):
            assert seconds[rest].min() > budget - seconds[chosen].sum(), trial
    embedding, clusters, seconds = constructed_case()
    assert len(allocate(embedding, clusters, seconds, 0.5)) == 0
    assert len(allocate(embedding, clusters, seconds, 0.0)) == 0
    assert sorted(clusters[allocate(embedding, clusters, seconds, 1e9)]) == list(range(6))


def test_allocation_gives_each_cluster_k_and_no_more():
    embedding, clusters, seconds = constructed_case()
    chosen = allocate(embedding, clusters, seconds, 50.0, k=2)
    assert sorted(np.bincount(clusters[chosen], minlength=6)) == [2] * 6
    with pytest.raises(ValueError):
        allocate(embedding, clusters, -seconds, 10.0)
    with pytest.raises(ValueError):
        allocate(embedding, clusters[:-1], seconds, 10.0)


def test_allocation_coverage_against_a_reference_pool():
    rng = np.random.default_rng(11)
    pool = rng.normal(size=(200, 3))
    candidates = pool[:40]
    chosen = allocate(candidates, np.arange(40) % 5, np.ones(40), 10.0, k=2, reference=pool)
    assert len(chosen) == 10
    greedy = coverage_score(pool, candidates[chosen])
    assert greedy >= max(coverage_score(pool, candidates[random_pick(np.ones(40), 10.0, s)])
                         for s in range(10))


# -- hifidata plan -----------------------------------------------------------------------------


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plan_without_a_store(tmp_path):
    spec_path = write_spec(tmp_path, tiny_spec())
    rows = plan_campaign(spec_path)
    assert [r["rung"] for r in rows] == ["dft", "ccsdt"]
    assert [r["planned"] for r in rows] == [10, 5]
    for row in rows:
        assert row["remaining"] == row["planned"] and row["done"] == 0
        assert row["seconds_per_label"] > 0 and row["cpu_hours"] > 0
        assert row["source"] == "prior" and row["sized_from"] == "seeds"
        assert row["typical_size"] == 26  # the water dimer in 6-31G
    assert not (tmp_path / "water-dimer.h5").exists()  # plan creates no store

    result = CliRunner().invoke(app, ["plan", str(spec_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "dft" in result.output and "ccsdt" in result.output and "CPU-hours" in result.output
    shown = json.loads(CliRunner().invoke(app, ["plan", str(spec_path), "--json"]).output)
    assert [r["rung"] for r in shown["rungs"]] == ["dft", "ccsdt"]
    assert shown["total"]["cpu_hours"] == pytest.approx(sum(r["cpu_hours"] for r in rows))


def test_plan_fits_the_store_timings_and_leaves_the_store_alone(tmp_path, water_dimer):
    spec_path = write_spec(tmp_path, tiny_spec())
    spec = load_spec(spec_path)
    dft = spec.ladder[0].resolved
    monomers = [water_dimer[:3].copy(), water_dimer[3:].copy()]
    dimers = []
    for i in range(7):
        atoms = water_dimer.copy()
        atoms.positions[0, 0] += 0.01 * (i + 1)
        dimers.append(atoms)
    structures = [*monomers, *dimers]
    for atoms in structures:
        atoms.info.update(charge=0, spin=1)
    sizes = [size_of(a, "pyscf", dft.params) for a in structures]
    assert sorted(set(sizes)) == [13, 26]
    with Store(spec.store_path, "a") as store:
        ids = store.add_structures(structures)
        store.add_method(dft)
        labels = [
            Label(sid, dft.method_id, "ok", energy=-1.0, forces=np.zeros((len(a), 3)),
                  wall_time=2e-4 * n**3 / 2, provenance={"threads": 2, "ranks": 1})
            for sid, a, n in zip(ids[:8], structures[:8], sizes[:8], strict=True)
        ]
        # the latest label of ids[7] timed out: quarantined, not a cost, not labeled again
        labels.append(Label(ids[7], dft.method_id, "timeout", wall_time=1e4))
        store.add_labels(labels)
        store.add_selection(Selection("dft", ids, ids[:2] + ids[4:]))  # ids[8]: unlabeled
    assert structure_id(structures[0]) == ids[0]
    before = digest(spec.store_path)

    rows = {r["rung"]: r for r in plan_campaign(spec_path)}

    dft_row, ccsdt_row = rows["dft"], rows["ccsdt"]
    assert re.fullmatch(r"fit \(n=7, p=(2\.9\d|3\.0\d)±\d\.\d\d\)", dft_row["source"])
    assert dft_row["model"]["exponent"] == pytest.approx(3.0, abs=0.05)
    assert (dft_row["planned"], dft_row["done"], dft_row["failed"], dft_row["remaining"]) == (
        7, 5, 1, 1)
    assert dft_row["sized_from"] == "selection"
    # core-seconds 2e-4 n³ (the labels ran on 2 threads); the rung runs on 1
    assert dft_row["seconds_per_label"] == pytest.approx(2e-4 * 26**3, rel=0.05)
    assert dft_row["cpu_hours"] == pytest.approx(2e-4 * 26**3 / 3600, rel=0.05)
    assert ccsdt_row["source"] == "prior" and ccsdt_row["done"] == 0
    assert ccsdt_row["sized_from"] == "selection dft"
    assert ccsdt_row["planned"] == 5 and ccsdt_row["cpu_hours"] > 0
    assert ccsdt_row["typical_size"] == 26
    assert digest(spec.store_path) == before


def test_plan_bad_spec_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hifidata.cli", "plan",
                             str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"hifidata: error: {tmp_path / 'nope.yaml'}: no such file"]
