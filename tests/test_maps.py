"""Coverage maps and element-frequency periodic tables, alone and from a campaign store."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from matplotlib.image import imread

from hifidata.calculators.base import Label, Method
from hifidata.datasets.maps import (
    coverage_map,
    element_counts,
    labeled_ok_ids,
    periodic_table,
    store_maps,
    table_position,
)
from hifidata.datasets.store import Selection, Store
from hifidata.sampling.direct import DirectSampler


def assert_png(path, min_width=400, min_height=300):
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= min_height and image.shape[1] >= min_width
    assert image[..., :3].std() > 0.01  # something was drawn


# -- coverage map --------------------------------------------------------------------------------
def test_coverage_map_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(500, 3))
    path = coverage_map(
        embedding,
        {"candidates": np.arange(500), "selected": np.arange(0, 500, 10), "labeled": [0, 10, 20]},
        tmp_path / "maps" / "coverage.png", title="dft",
        explained_variance_ratio=[0.5, 0.3, 0.2],
    )
    assert path == tmp_path / "maps" / "coverage.png"
    assert_png(path)


def test_coverage_map_with_one_component_and_masks(tmp_path):
    embedding = np.linspace(-2, 2, 50)[:, None]
    mask = np.zeros(50, dtype=bool)
    mask[::7] = True
    assert_png(coverage_map(embedding, {"candidates": np.ones(50, bool), "selected": mask,
                                        "labeled": []}, tmp_path / "one.png"))


def test_coverage_map_checks_its_groups(tmp_path):
    embedding = np.zeros((5, 2))
    with pytest.raises(ValueError, match="outside"):
        coverage_map(embedding, {"candidates": [0, 5]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="mask"):
        coverage_map(embedding, {"candidates": np.ones(4, bool)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one group"):
        coverage_map(embedding, {}, tmp_path / "x.png")


def test_a_map_of_100k_candidates(tmp_path):
    rng = np.random.default_rng(1)
    embedding = rng.normal(size=(100_000, 2)) * [3.0, 1.0]
    groups = {"candidates": np.arange(100_000),
              "selected": rng.choice(100_000, 2000, replace=False), "labeled": np.arange(300)}
    assert_png(coverage_map(embedding, groups, tmp_path / "big.png"))


# -- element counts and the periodic table -------------------------------------------------------
def test_element_counts():
    structures = [molecule("H2O"), molecule("H2O"), molecule("CH4"), bulk("Fe", cubic=True)]
    assert element_counts(structures) == {"H": 3, "C": 1, "O": 2, "Fe": 1}
    assert list(element_counts(structures)) == ["H", "C", "O", "Fe"]  # by atomic number
    assert element_counts(structures, per="atom") == {"H": 8, "C": 1, "O": 2, "Fe": 2}
    assert element_counts([]) == {}
    with pytest.raises(ValueError, match="per"):
        element_counts(structures, per="cell")


@pytest.mark.parametrize(("element", "cell"), [
    ("H", (1, 1)), ("He", (1, 18)), ("Li", (2, 1)), ("O", (2, 16)), ("Si", (3, 14)),
    ("Fe", (4, 8)), ("Au", (6, 11)), ("Ba", (6, 2)), ("Hf", (6, 4)), ("Og", (7, 18)),
    ("La", (9, 3)), ("Gd", (9, 10)), ("Lu", (9, 17)), ("Ac", (10, 3)), ("U", (10, 6)),
    ("Lr", (10, 17)), (26, (4, 8)),
])
def test_table_position(element, cell):
    assert table_position(element) == cell


def test_every_element_has_its_own_cell():
    cells = [table_position(z) for z in range(1, 119)]
    assert len(set(cells)) == 118
    assert all(1 <= column <= 18 for _, column in cells)
    assert (6, 3) not in cells and (7, 3) not in cells  # the f-block sits below
    with pytest.raises(ValueError, match="not an element"):
        table_position("Xx")


def test_periodic_table_writes_a_png(tmp_path):
    counts = {"H": 1200, "O": 600, "Fe": 3, "La": 12, "U": 50_000, "Si": 1, "Ne": 0}
    assert_png(periodic_table(counts, tmp_path / "pt.png", title="elements"), 800, 500)
    assert_png(periodic_table({}, tmp_path / "empty.png"), 800, 500)
    with pytest.raises(ValueError, match="not an element"):
        periodic_table({"Q": 1}, tmp_path / "bad.png")


# -- from a store --------------------------------------------------------------------------------
def _label(atoms: Atoms, sid: str, mid: str, ok: bool = True) -> Label:
    if not ok:
        return Label(sid, mid, "scf_not_converged", message="synthetic")
    return Label(sid, mid, "ok", energy=-float(len(atoms)), forces=np.zeros((len(atoms), 3)))


def _pick(features: np.ndarray, n_clusters: int) -> dict:
    return DirectSampler(n_clusters=n_clusters).fit(features).record()


def test_store_maps(tmp_path, water_dimer):
    structures = []
    for seed in range(30):
        atoms = water_dimer.copy()
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    structures.append(Atoms("SiH4", positions=molecule("SiH4").positions))
    features = np.array([a.get_all_distances()[np.triu_indices(len(a), 1)][:10]
                         for a in structures])
    dft_method = Method("pyscf", {"theory": "dft", "xc": "pbe", "basis": "6-31g"}, name="dft")
    cc_method = Method("pyscf", {"theory": "ccsd(t)", "basis": "6-31g"}, name="ccsdt")

    with Store(tmp_path / "campaign.h5", "a") as store:
        ids = store.add_structures(structures)
        dft = _pick(features, 8)
        dft_ids = [ids[i] for i in dft["selected"]]
        store.add_selection(Selection("dft", ids, dft_ids, arrays={
            "embedding": dft["embedding"], "cluster": dft["labels"],
            "explained_variance": dft["explained_variance"]}))
        rows = [ids.index(sid) for sid in dft_ids]
        cc = _pick(features[rows], 3)
        cc_ids = [dft_ids[i] for i in cc["selected"]]
        store.add_selection(Selection("ccsdt", dft_ids, cc_ids, arrays={
            "embedding": cc["embedding"], "explained_variance": cc["explained_variance"]}))
        mid = store.add_method(dft_method)
        by_id = dict(zip(ids, structures, strict=True))
        store.add_labels([_label(by_id[sid], sid, mid, ok=n != 0)
                          for n, sid in enumerate(dft_ids)])
        # SiH4 labeled ok by the other rung (as an imported label would be)
        cc_mid = store.add_method(cc_method)
        store.add_labels([_label(structures[-1], ids[-1], cc_mid)])

    reader = Store(tmp_path / "campaign.h5")
    paths = store_maps(reader, tmp_path / "maps")
    assert sorted(p.name for p in paths) == [
        "coverage-ccsdt.png", "coverage-dft.png", "elements.png"]
    for path in paths:
        assert_png(path)
    ok = set(dft_ids[1:]) | {ids[-1]}  # the first dft label failed
    assert set(labeled_ok_ids(reader)) == ok
    waters = sum(1 for sid in ok if sid != ids[-1])
    assert element_counts(reader.structures(labeled_ok_ids(reader))) == {
        "H": len(ok), "O": waters, "Si": 1}


def test_store_maps_before_any_label(tmp_path, water_dimer):
    structures = []
    for seed in range(12):
        atoms = water_dimer.copy()
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    features = np.array([a.get_positions().ravel() for a in structures])
    with Store(tmp_path / "s.h5", "a") as store:
        ids = store.add_structures(structures)
        pick = _pick(features, 4)
        store.add_selection(Selection("dft", ids, [ids[i] for i in pick["selected"]],
                                      arrays={"embedding": pick["embedding"]}))
    paths = store_maps(Store(tmp_path / "s.h5"), tmp_path / "out")
    assert [p.name for p in paths] == ["coverage-dft.png", "elements.png"]
    for path in paths:
        assert_png(path)
