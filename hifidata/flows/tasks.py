"""Prefect tasks: each is one call of a pure stage function, data in and data out.

Tasks never touch the store (the flow is its single writer), so any of them can run in another
thread, process or node. Resume is the store's job, so Prefect's own result caching is off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from prefect import task
from prefect.cache_policies import NO_CACHE

from hifidata.calculators import base
from hifidata.calculators.mlip import PRETRAINED, pretrained_chgnet
from hifidata.errors import ModelError
from hifidata.sampling import ase_md, costs, dynamics, explore, features, uncertainty
from hifidata.sampling.direct import DirectSampler, coverage_score
from hifidata.training import delta, metrology, recipes, stability
from hifidata.training.finetune import LabeledSet
from hifidata.training.models import Model, load_model

quiet = {"cache_policy": NO_CACHE, "persist_result": False}
Progress = Callable[[int], None] | None


@task(**quiet)
def explore_md(kind: str, seeds: Sequence[Atoms], model: str, settings: dict[str, Any],
               replicas: int, device: str | None, progress: Progress = None
               ) -> list[explore.Candidates]:
    """Every trajectory of one MD protocol (``settings``: its fields), ``replicas`` per model call.

    Returns one Candidates per trajectory, in the order campaign._md_jobs keys them.
    """
    common = {
        "steps": settings["steps"], "md_seeds": settings["seeds"],
        "timestep": settings["timestep"], "friction": settings["friction"],
        "sample_every": settings["sample_every"], "model_name": model, "batch_size": replicas,
        "device": device, "progress": progress,
    }
    network = pretrained_chgnet(model, device)
    if kind == "md":
        return dynamics.nvt(seeds, network, settings["temperatures"], **common)
    if kind == "npt":
        return dynamics.npt(seeds, network, settings["temperatures"], settings["pressures"],
                            **common)
    return dynamics.ramp(seeds, network, settings["schedule"], **common)


DERIVED = {
    "rattle": explore.rattle, "strain": explore.strain, "vacancy": explore.vacancies,
    "interstitial": explore.interstitials, "substitution": explore.substitutions,
    "slab": explore.slabs, "cluster": explore.clusters,
}


@task(**quiet)
def derive(kind: str, parents: Sequence[Atoms], settings: dict[str, Any]) -> explore.Candidates:
    """One derived protocol applied to ``parents`` (``settings``: the protocol's own fields)."""
    return DERIVED[kind](parents, **settings)


@task(**quiet)
def structure_features(structures: Sequence[Atoms], model: str, batch_size: int) -> np.ndarray:
    return features.structure_features(pretrained_chgnet(model), structures, batch_size)


@task(**quiet)
def direct_pick(x: np.ndarray, clusters: int, per_cluster: int, weighting: bool, strategy: str,
                seed: int) -> dict[str, Any]:
    sampler = DirectSampler(
        n_clusters=clusters, k=per_cluster, weighting=weighting, strategy=strategy, seed=seed
    )
    record = sampler.fit(x).record()
    embedding = record["embedding"]
    record["coverage"] = coverage_score(embedding, embedding[record["selected"]])
    return record


@task(**quiet)
def committee_scores(structures: Sequence[Atoms], members: Sequence[str], batch_size: int
                     ) -> np.ndarray:
    """Force disagreement of a committee: pretrained MLIP names or trained model folders."""
    models = [pretrained_chgnet(m) if m in PRETRAINED else load_model(m) for m in members]
    return uncertainty.committee_uncertainty(models, structures, batch_size=batch_size)


@task(**quiet)
def feature_distance(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    return uncertainty.feature_distance(reference, x)


@task(**quiet)
def uncertainty_pick(embedding: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int,
                     exclude: np.ndarray) -> dict[str, Any]:
    """Within each DIRECT cluster the k most uncertain members not labeled yet."""
    selected = uncertainty.select_by_uncertainty(labels, scores, k, exclude)
    return {"selected": selected, "coverage": coverage_score(embedding, embedding[selected])}


@task(**quiet)
def budget_pick(embedding: np.ndarray, labels: np.ndarray, structures: Sequence[Atoms],
                engine: str, params: dict, model: costs.CostModel, budget_seconds: float, k: int
                ) -> dict[str, Any]:
    """The members of the DIRECT clusters that cover the embedding best within the budget."""
    seconds = costs.label_seconds(model, structures, engine, params)
    selected = np.sort(costs.allocate(embedding, labels, seconds, budget_seconds, k))
    return {"selected": selected, "seconds": seconds,
            "coverage": coverage_score(embedding, embedding[selected]) if len(selected) else 0.0,
            "cost_model": model.describe()}


@task(**quiet)
def label(atoms: Atoms, method: base.Method, threads: int, ranks: int = 1) -> base.Label:
    return base.label(atoms, method, threads=threads, ranks=ranks)


def _labeled(data: dict) -> LabeledSet:
    return LabeledSet(data["structures"], data["energy"], data["forces"], data.get("stress"))


@task(**quiet)
def train_model(recipe: str, data: list | dict, out_dir: Path, settings: dict,
                progress: Callable | None = None) -> Model:
    """One recipe's model: ``data`` is [train, validation] (finetune, delta: dicts of
    structures, energy, forces, stress) or {rung: [train, validation]} (multifidelity)."""
    if recipe == "multifidelity":
        sets = {rung: (_labeled(t), _labeled(v)) for rung, (t, v) in data.items()}
        return recipes.multifidelity(sets, out_dir=out_dir, progress=progress, **settings)
    train, validation = (_labeled(part) for part in data)
    return getattr(recipes, recipe)(train, validation, out_dir=out_dir, progress=progress,
                                    **settings)


@task(**quiet)
def compose(base_dir: Path, delta_dir: Path, out_dir: Path, metadata: dict) -> Model:
    composite = delta.compose(load_model(base_dir), load_model(delta_dir))
    composite.metadata.update(metadata)
    composite.save(out_dir)
    return composite


def model_for_rung(model_ref: str, rung: str) -> Model:
    """The model as it predicts ``rung``: a multi-fidelity model's modality, a composite's
    base for its base's rung; any other model as it is."""
    try:
        return load_model(model_ref, rung=rung)
    except ModelError:
        return load_model(model_ref)


@task(**quiet)
def evaluate_model(name: str, model_ref: str, rung: str, train: dict, test: dict
                   ) -> metrology.Parity:
    return metrology.compare(model_for_rung(model_ref, rung), name, rung, train, test)


@task(**quiet)
def md_stability(model_ref: str, structures: Sequence[Atoms], settings: dict,
                 progress: Progress = None) -> stability.StabilityResult:
    return stability.md_stability(load_model(model_ref), structures, progress=progress,
                                  **settings)


@task(**quiet)
def parity_plot(parities: Sequence[metrology.Parity], path: Path) -> Path:
    return metrology.parity_plot(parities, path)


@task(**quiet)
def parity_points(parities: Sequence[metrology.Parity], path: Path) -> Path:
    return metrology.write_parity_points(parities, path)


@task(**quiet)
def run_md(structure: Atoms, model_dir: Path, settings: dict[str, Any], trajectory: Path,
           progress: Progress = None) -> list[ase_md.MDResult]:
    """Production MD of ``structure`` with the model on the batched engine: ``settings`` are
    the spec's deploy fields; one result per replica, frames written to ``trajectory``."""
    from hifidata.deploy.md import MDSettings, Replica, run_md
    from hifidata.deploy.potentials import load_potential
    from hifidata.deploy.trajectory import open_trajectory

    s = settings
    potential = load_potential(model_dir, device=s["device"])
    options = MDSettings(ensemble=s["ensemble"], timestep=s["timestep"], friction=s["friction"],
                         sample_every=s["sample_every"], check_every=min(10, s["sample_every"]),
                         min_distance=s["min_distance"])
    replicas = [Replica(structure, s["temperature"], seed=s["seed"] + r, pressure=s["pressure"])
                for r in range(s["replicas"])]
    with open_trajectory(trajectory, len(replicas)) as writer:
        return run_md(potential, replicas, s["steps"], options, writer, progress)


@task(**quiet)
def export_model(model_dir: Path, out: Path) -> Path:
    from hifidata.deploy.export import export_model

    return export_model(model_dir, out)


@task(**quiet)
def predict(model_dir: Path, structures: Sequence[Atoms], batch_size: int,
            rung: str | None = None, progress: Progress = None) -> dict[str, list]:
    model = load_model(model_dir, rung=rung)
    energies, forces = [], []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        result = model.predict(chunk)
        energies += [float(e) for e in result["energy"]]
        forces += list(result["forces"])
        if progress:
            progress(len(chunk))
    return {"energy": energies, "forces": forces}
