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
from hifidata.calculators.mlip import MLIPCalculator, pretrained_chgnet
from hifidata.deploy import md
from hifidata.sampling import explore, features
from hifidata.sampling.direct import DirectSampler, coverage_score
from hifidata.training import delta, finetune, metrology
from hifidata.training.models import Model, load_model

quiet = {"cache_policy": NO_CACHE, "persist_result": False}
Progress = Callable[[int], None] | None


@task(**quiet)
def md_trajectory(
    seed_structure: Atoms, model: str, temperature: float, steps: int, timestep: float,
    friction: float, sample_every: int, seed: int, progress: Progress = None,
) -> explore.Candidates:
    calculator = MLIPCalculator(pretrained_chgnet(model))
    return explore.md_trajectory(
        seed_structure, calculator, temperature, steps, timestep=timestep, friction=friction,
        sample_every=sample_every, seed=seed, model=model, progress=progress,
    )


DERIVED = {"rattle": explore.rattle, "strain": explore.strain, "vacancy": explore.vacancies}


@task(**quiet)
def derive(kind: str, parents: Sequence[Atoms], settings: dict[str, Any]) -> explore.Candidates:
    """Rattles, strains or vacancies of ``parents`` (``settings``: the protocol's own fields)."""
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
def label(atoms: Atoms, method: base.Method, threads: int, ranks: int = 1) -> base.Label:
    return base.label(atoms, method, threads=threads, ranks=ranks)


RECIPES = {"finetune": finetune.finetune_chgnet, "delta": delta.train_delta}


@task(**quiet)
def train_model(recipe: str, train: dict, validation: dict, out_dir: Path, settings: dict,
                progress: Callable | None = None) -> Model:
    """Fine-tune on a rung, or train a Δ-model on a difference: the same data in, a model out."""
    return RECIPES[recipe](
        train["structures"], train["energy"], train["forces"],
        validation["structures"], validation["energy"], validation["forces"],
        out_dir=out_dir, progress=progress, **settings,
    )


@task(**quiet)
def compose(base_dir: Path, delta_dir: Path, out_dir: Path, metadata: dict) -> Model:
    composite = delta.compose(load_model(base_dir), load_model(delta_dir))
    composite.metadata.update(metadata)
    composite.save(out_dir)
    return composite


@task(**quiet)
def evaluate_model(name: str, model_ref: str, rung: str, train: dict, test: dict
                   ) -> metrology.Parity:
    return metrology.compare(load_model(model_ref), name, rung, train, test)


@task(**quiet)
def parity_plot(parities: Sequence[metrology.Parity], path: Path) -> Path:
    return metrology.parity_plot(parities, path)


@task(**quiet)
def run_md(structure: Atoms, model_dir: Path, temperature: float, steps: int, timestep: float,
           friction: float, sample_every: int, seed: int, min_distance: float,
           progress: Progress = None) -> tuple[md.MDResult, dict]:
    """The trajectory and its report (stability, length, speed)."""
    calculator = load_model(model_dir).calculator()
    result = md.langevin(
        structure, calculator, temperature, steps, timestep=timestep, friction=friction,
        sample_every=sample_every, seed=seed,
        monitors=md.default_monitors(structure, temperature, min_distance), progress=progress,
    )
    return result, md.md_summary(result, timestep, len(structure))


@task(**quiet)
def predict(model_dir: Path, structures: Sequence[Atoms], batch_size: int,
            progress: Progress = None) -> dict[str, list]:
    model = load_model(model_dir)
    energies, forces = [], []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        result = model.predict(chunk)
        energies += [float(e) for e in result["energy"]]
        forces += list(result["forces"])
        if progress:
            progress(len(chunk))
    return {"energy": energies, "forces": forces}
