"""The campaign: explore → select → label → train → evaluate → deploy → release.

Each stage is a Prefect flow that reads the spec and the store, submits tasks, and writes their
results to the store as they arrive (the flow is the store's single writer). Every stage first
asks the store what is done already, so running a campaign again, after a kill or after it
finished, computes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.io import write
from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from threadpoolctl import threadpool_limits

from hifidata.datasets.release import export_release
from hifidata.datasets.splits import assign_splits, ids_in
from hifidata.datasets.status import campaign_status
from hifidata.datasets.store import Selection, Store
from hifidata.errors import HifidataError
from hifidata.flows import tasks
from hifidata.flows.audit import audit_flow
from hifidata.flows.progress import reporter
from hifidata.spec import STAGES, DerivedProtocol, MDProtocol, Spec, load_spec
from hifidata.structures import structure_id

FEATURE_CHUNK = 256  # structures per featurization task
MODEL_STAGES = ("train", "evaluate", "deploy")  # skipped by a spec without ``train``


def run_campaign(spec_path: str | Path, until: str = "release") -> dict[str, Any]:
    """Validate the spec, then run (or resume) the campaign up to and including ``until``."""
    if until not in STAGES:
        raise HifidataError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    spec = load_spec(spec_path)  # before the store is touched: bad input changes nothing
    _check_history(spec)
    return campaign(spec, until)


def _check_history(spec: Spec) -> None:
    """A spec may add to a campaign but not rewrite what its store already records."""
    if not spec.store_path.exists():
        return
    store = Store(spec.store_path)
    existing = set(store.selection_names())
    for rung in spec.ladder:
        if rung.name in existing:
            recorded = store.selection(rung.name).params.get("pick")
            if recorded != _pick_params(rung):
                raise HifidataError(
                    f"rung {rung.name!r} was selected with other settings ({recorded}); "
                    "use a new store or a new rung name"
                )


def _pick_params(rung) -> dict[str, Any]:
    # max_atoms only when set, so stores selected before it existed keep their history
    return rung.select.model_dump(by_alias=True, exclude={"max_atoms"} if
                                  rung.select.max_atoms is None else set())


@flow(name="hifidata-campaign", flow_run_name="{spec.name}")
def campaign(spec: Spec, until: str = "release") -> dict[str, Any]:
    stages = {
        "explore": explore_stage, "select": select_stage, "label": label_stage,
        "audit": audit_stage, "train": train_stage, "evaluate": evaluate_stage,
        "deploy": deploy_stage, "release": release_stage,
    }
    runner = ThreadPoolTaskRunner(max_workers=spec.execution.max_workers)
    timings = {}
    with Store(spec.store_path, "a") as store:
        store.put_record("run", "spec", spec.model_dump(mode="json", by_alias=True))
        for name in STAGES[: STAGES.index(until) + 1]:
            if spec.train is None and name in MODEL_STAGES:
                continue
            start = time.perf_counter()
            stages[name].with_options(task_runner=runner)(spec, store)
            timings[name] = round(time.perf_counter() - start, 1)
        store.put_record("timings", "last_run", timings)
        return {**campaign_status(store), "timings_s": timings}


# -- explore -------------------------------------------------------------------------------
@flow(name="explore")
def explore_stage(spec: Spec, store: Store) -> None:
    seeds = spec.seed_structures()
    store.add_structures(seeds, [{"protocol": "seed"}] * len(seeds))
    done = store.records("explore")
    trajectories = [
        (key, seed, protocol, temperature, md_seed)
        for protocol in spec.explore.protocols if isinstance(protocol, MDProtocol)
        for seed in seeds
        for temperature in protocol.temperatures
        for md_seed in protocol.seeds
        if (key := _trajectory_key(protocol, spec.explore.model, seed, temperature, md_seed))
        not in done
    ]
    bar = reporter()
    bar.start("explore", "explore: MLIP MD", sum(t[2].steps for t in trajectories))
    with _threads(1):  # trajectories run side by side, one core each
        futures = {
            tasks.md_trajectory.with_options(
                task_run_name=f"md-{temperature:g}K-seed{md_seed}"
            ).submit(
                seed, spec.explore.model, temperature, protocol.steps, protocol.timestep,
                protocol.friction, protocol.sample_every, md_seed,
                progress=lambda n: bar.advance("explore", n),
            ): key
            for key, seed, protocol, temperature, md_seed in trajectories
        }
        for future in as_completed(futures):
            candidates = future.result()
            store.add_structures(candidates.structures, candidates.origins)
            store.put_record("explore", futures[future],
                             {"structures": len(candidates), "stopped": candidates.stopped})
            if candidates.stopped:
                bar.note(f"explore: a trajectory stopped early ({candidates.stopped})")
    for protocol in spec.explore.protocols:
        if isinstance(protocol, MDProtocol):
            continue
        key = _protocol_key(protocol)
        if key not in done:
            parents = _structures_by_protocol(store, tuple(protocol.parents))
            settings = protocol.model_dump(exclude={"kind", "parents"})
            candidates = tasks.derive(protocol.kind, parents, settings)
            store.add_structures(candidates.structures, candidates.origins)
            store.put_record("explore", key, {"structures": len(candidates), "stopped": None})
    bar.done("explore", f"{len(store.structure_ids())} candidate structures")


def _trajectory_key(protocol: MDProtocol, model: str, seed, temperature: float,
                    md_seed: int) -> str:
    """One trajectory's own settings: adding a temperature to the list reruns nothing else."""
    own = protocol.model_dump(exclude={"temperatures", "seeds"})
    return _key("md", own, model, structure_id(seed), temperature, md_seed)


def _protocol_key(protocol: DerivedProtocol) -> str:
    """A derived protocol's settings; ``parents`` counts only when not the default, so stores
    from before it existed resume without redoing their rattles."""
    own = protocol.model_dump()
    if own["parents"] == type(protocol).model_fields["parents"].default:
        del own["parents"]
    return _key(protocol.kind, own)


def _structures_by_protocol(store: Store, protocols: tuple[str, ...]):
    pairs = zip(store.structure_ids(), store.origins(), strict=True)
    return store.structures([sid for sid, o in pairs if o.get("protocol") in protocols])


# -- select --------------------------------------------------------------------------------
@flow(name="select")
def select_stage(spec: Spec, store: Store) -> None:
    existing = set(store.selection_names())
    known: dict[str, np.ndarray] = {}  # structure_id -> features, computed or read back
    for rung in spec.ladder:
        params = {"pick": _pick_params(rung), "features": spec.select.features}
        if rung.name in existing:  # run_campaign checked that its settings are the spec's
            selection = store.selection(rung.name)
            known.update(zip(selection.pool_ids, selection.arrays["features"], strict=True))
            continue
        pool = (
            store.structure_ids() if rung.select.source == "candidates"
            else store.selection(rung.select.source).selected_ids
        )
        if rung.select.max_atoms:
            sizes = [len(atoms) for atoms in store.structures(pool)]
            pool = [sid for sid, n in zip(pool, sizes, strict=True) if n <= rung.select.max_atoms]
            if not pool:
                raise HifidataError(f"{rung.name}: no structure in its pool has at most "
                                    f"{rung.select.max_atoms} atoms")
        _featurize([sid for sid in pool if sid not in known], spec, store, known)
        x = np.stack([known[sid] for sid in pool])
        pick = tasks.direct_pick(
            x, rung.select.clusters, rung.select.per_cluster, rung.select.weighting,
            rung.select.strategy, rung.select.seed,
        )
        store.add_selection(Selection(
            rung.name, pool, [pool[i] for i in pick["selected"]],
            arrays={"features": x, "embedding": pick["embedding"], "cluster": pick["labels"],
                    "explained_variance": pick["explained_variance"]},
            params={**params, "direct": pick["params"], "n_components": pick["n_components"],
                    "coverage": pick["coverage"], "notes": pick["notes"]},
        ))
        reporter().note(
            f"select: {len(pick['selected'])} of {len(pool)} for {rung.name} "
            f"({pick['n_components']} principal components, {pick['n_clusters_found']} clusters, "
            f"coverage {pick['coverage']:.2f})"
        )


def _featurize(ids: list[str], spec: Spec, store: Store, known: dict[str, np.ndarray]) -> None:
    if not ids:
        return
    bar = reporter()
    bar.start("features", f"select: {spec.select.features} features", len(ids))
    structures = store.structures(ids)  # one read of the table, then chunks
    chunks = range(0, len(ids), FEATURE_CHUNK)
    with _threads(1):
        futures = {
            tasks.structure_features.submit(
                structures[i : i + FEATURE_CHUNK], spec.select.features, spec.select.batch_size
            ): ids[i : i + FEATURE_CHUNK]
            for i in chunks
        }
        for future in as_completed(futures):
            known.update(zip(futures[future], future.result(), strict=True))
            bar.advance("features", len(futures[future]))
    bar.done("features")


# -- label ---------------------------------------------------------------------------------
@flow(name="label")
def label_stage(spec: Spec, store: Store) -> None:
    bar = reporter()
    futures = {}
    # the most expensive rung first, so the long labels don't all wait at the end
    for rung in reversed(spec.ladder):
        method = rung.resolved
        store.add_method(method)
        how = {"engine": method.engine, "params": dict(method.params), "threads": rung.threads,
               "ranks": rung.ranks}
        if store.record("method", rung.name) != how:  # what `hifidata audit` reruns it with
            store.put_record("method", rung.name, how)
        done = store.labeled_ids(method.method_id)
        todo = [sid for sid in store.selection(rung.name).selected_ids if sid not in done]
        bar.start(rung.name, f"label: {rung.name} ({method.describe()})", len(todo))
        for sid, atoms in zip(todo, store.structures(todo), strict=True):
            future = tasks.label.with_options(task_run_name=f"{rung.name}-{sid[:12]}").submit(
                atoms, method, rung.threads, rung.ranks
            )
            futures[future] = rung.name
    with threadpool_limits(limits=1):  # labels run side by side; engines set their own threads
        for future in as_completed(futures):
            result = future.result()
            store.add_labels([result])
            bar.advance(futures[future])
            if not result.ok:
                bar.note(f"label: {futures[future]} {result.structure_id[:12]} "
                         f"quarantined: {result.status}: {result.message}")
    for rung in spec.ladder:
        bar.done(rung.name)


# -- audit ---------------------------------------------------------------------------------
@flow(name="audit-stage")
def audit_stage(spec: Spec, store: Store) -> None:
    for settings in spec.audit:
        names = tuple(settings.methods)
        key = f"{names[0]}-vs-{names[1]}"

        if (store.record("audit", key) or {}).get("fingerprint") == _audit_print(store, settings):
            continue
        try:
            audit_flow(store, names, settings.count, settings.seed)
        except HifidataError as error:  # e.g. every label of B failed: the campaign goes on
            reporter().note(f"audit {key}: skipped: {error}")
            continue
        store.put_record("audit", key, {**store.record("audit", key),
                                        "fingerprint": _audit_print(store, settings)})


def _audit_print(store: Store, settings) -> str:
    """An audit's settings and every label of both its rungs."""
    labels = [store.labels(store.method_id(name)) for name in settings.methods]
    return _fingerprint("audit", settings, [(s.structure_ids, s.status) for s in labels])


# -- train ---------------------------------------------------------------------------------
@flow(name="train")
def train_stage(spec: Spec, store: Store) -> None:
    split = _split(spec, store)
    settings = spec.train
    finetune = settings.finetune
    models_dir = spec.campaign_dir / "models"
    low = _rung_data(store, finetune.rung, split)
    ft_name = f"finetune-{finetune.rung}"
    ft_settings = {
        "base": finetune.base, "epochs": finetune.epochs, "learning_rate": finetune.learning_rate,
        "batch_size": finetune.batch_size, "patience": finetune.patience,
        "seed": settings.seed, "device": settings.device,
    }
    ft_print = _fingerprint("finetune", ft_settings, low["method_id"], low["train"]["ids"],
                            low["validation"]["ids"])
    if not _model_current(store, ft_name, ft_print):
        with _training_bar(ft_name, finetune.epochs) as progress:
            tasks.train_model("finetune", low["train"], low["validation"],
                              models_dir / ft_name, ft_settings, progress=progress)
        _record_model(store, ft_name, models_dir / ft_name, ft_print, recipe="finetune",
                      rung=finetune.rung, method_id=low["method_id"],
                      n_train=len(low["train"]["ids"]), n_validation=len(low["validation"]["ids"]))
    final = ft_name
    if settings.delta:
        final = _train_delta(spec, store, split, ft_name, ft_print)
    store.put_record("final_model", "campaign", {"name": final})


def _train_delta(spec: Spec, store: Store, split: dict, base_name: str, base_print: str) -> str:
    d = spec.train.delta
    models_dir = spec.campaign_dir / "models"
    high, low = _rung_data(store, d.high, split), _rung_data(store, d.low, split)
    differences = {part: _difference(high[part], low[part]) for part in ("train", "validation")}
    name, composite = f"delta-{d.high}-minus-{d.low}", f"{d.high}-composite"
    d_settings = {"epochs": d.epochs, "learning_rate": d.learning_rate,
                  "batch_size": d.batch_size, "patience": d.patience,
                  "seed": spec.train.seed, "device": spec.train.device}
    d_print = _fingerprint("delta", d_settings, high["method_id"], low["method_id"],
                           differences["train"]["ids"], differences["validation"]["ids"])
    if not _model_current(store, name, d_print):
        with _training_bar(name, d.epochs) as progress:
            tasks.train_model("delta", differences["train"], differences["validation"],
                              models_dir / name, d_settings, progress=progress)
        _record_model(store, name, models_dir / name, d_print, recipe="delta", rung=d.high,
                      low=d.low, n_train=len(differences["train"]["ids"]),
                      n_validation=len(differences["validation"]["ids"]))
    c_print = _fingerprint("composite", base_print, d_print)
    if not _model_current(store, composite, c_print):
        metadata = {"rung": d.high, "method_id": high["method_id"], "parts": [base_name, name]}
        tasks.compose(models_dir / base_name, models_dir / name, models_dir / composite, metadata)
        _record_model(store, composite, models_dir / composite, c_print, recipe="composite",
                      rung=d.high, method_id=high["method_id"], parts=[base_name, name])
    return composite


def _split(spec: Spec, store: Store) -> dict[str, str]:
    picks = {rung.name: store.selection(rung.name).selected_ids for rung in spec.ladder}
    split = assign_splits(picks, spec.train.test_fraction, spec.train.validation_fraction,
                          spec.train.seed)
    if store.record("split", "campaign") != split:
        store.put_record("split", "campaign", split)
    return split


def _rung_data(store: Store, rung: str, split: dict[str, str]) -> dict[str, Any]:
    """The ok labels of a rung, divided by split: structures, energies, forces, ids."""
    method_id = store.method_id(rung)
    labels = store.labels(method_id).ok()
    out: dict[str, Any] = {"method_id": method_id}
    for part in ("train", "validation", "test"):
        subset = labels.for_ids(ids_in(split, labels.structure_ids, part))
        out[part] = {
            "ids": subset.structure_ids,
            "structures": store.structures(subset.structure_ids),
            "energy": subset.energy,
            "forces": subset.forces,
        }
    return out


def _difference(high: dict, low: dict) -> dict:
    """high − low on the structures both rungs labeled."""
    where = {sid: i for i, sid in enumerate(low["ids"])}
    rows = [(i, where[sid]) for i, sid in enumerate(high["ids"]) if sid in where]
    return {
        "ids": [high["ids"][i] for i, _ in rows],
        "structures": [high["structures"][i] for i, _ in rows],
        "energy": np.array([high["energy"][i] - low["energy"][j] for i, j in rows]),
        "forces": [high["forces"][i] - low["forces"][j] for i, j in rows],
    }


def _model_current(store: Store, name: str, fingerprint: str) -> bool:
    record = store.record("model", name)
    return bool(record and record["fingerprint"] == fingerprint
                and store.resolve(record["path"]).is_dir())


def _record_model(store: Store, name: str, path: Path, fingerprint: str, **info) -> None:
    store.put_record("model", name, {"name": name, "path": store.relative(path),
                                     "fingerprint": fingerprint, **info})


@contextmanager
def _training_bar(name: str, epochs: int) -> Iterator:
    bar = reporter()
    bar.start(name, f"train: {name}", epochs)
    yield lambda *_: bar.advance(name)
    bar.done(name)


# -- evaluate ------------------------------------------------------------------------------
@flow(name="evaluate")
def evaluate_stage(spec: Spec, store: Store) -> None:
    split = store.record("split", "campaign")
    models = {spec.train.finetune.base: spec.train.finetune.base}  # pretrained baseline
    for name, record in store.records("model").items():
        if record["recipe"] in ("finetune", "composite"):
            models[name] = str(store.resolve(record["path"]))
    fingerprint = _fingerprint(
        "evaluate", split, {n: (store.record("model", n) or {}).get("fingerprint") for n in models}
    )
    if (store.record("evaluation", "campaign") or {}).get("fingerprint") == fingerprint:
        return
    data = {rung.name: _rung_data(store, rung.name, split) for rung in spec.ladder}
    bar = reporter()
    bar.start("evaluate", "evaluate: models × rungs", len(models) * len(data))
    with _threads(1):
        parities = []
        for name, ref in models.items():
            for rung, rung_data in data.items():
                parities.append(tasks.evaluate_model.with_options(
                    task_run_name=f"evaluate-{name}-on-{rung}"
                )(name, ref, rung, rung_data["train"], rung_data["test"]))
                bar.advance("evaluate")
    reports = spec.campaign_dir / "reports"
    plot = tasks.parity_plot(parities, reports / "parity.png")
    metrics = [{"model": p.model, "rung": p.rung, **p.errors()} for p in parities]
    store.put_record("evaluation", "campaign", {
        "fingerprint": fingerprint, "metrics": metrics, "parity_plot": store.relative(plot),
        "split": "test",
    })
    bar.done("evaluate")


# -- deploy --------------------------------------------------------------------------------
@flow(name="deploy")
def deploy_stage(spec: Spec, store: Store) -> None:
    final = store.record("final_model", "campaign")["name"]
    model = store.record("model", final)
    settings = spec.deploy
    fingerprint = _fingerprint("deploy", model["fingerprint"], settings.model_dump())
    if (store.record("deploy", "campaign") or {}).get("fingerprint") == fingerprint:
        return
    structure = spec.seed_structures()[0]
    bar = reporter()
    bar.start("deploy", f"deploy: {settings.temperature:g} K MD with {final}", settings.steps)
    with _threads(1):
        result, summary = tasks.run_md(
            structure, store.resolve(model["path"]), settings.temperature, settings.steps,
            settings.timestep, settings.friction, settings.sample_every, settings.seed,
            settings.min_distance, progress=lambda n: bar.advance("deploy", n),
        )
    trajectory = spec.campaign_dir / "md" / f"{final}-{settings.temperature:g}K.extxyz"
    trajectory.parent.mkdir(parents=True, exist_ok=True)
    write(trajectory, result.frames or [structure], format="extxyz")
    store.put_record("deploy", "campaign", {
        "fingerprint": fingerprint, "model": final, "temperature_K": settings.temperature,
        "trajectory": store.relative(trajectory), "min_distance_A": settings.min_distance,
        **summary,
    })
    bar.done("deploy", "stable" if result.stable else f"unstable: {result.stopped}")


# -- release -------------------------------------------------------------------------------
@flow(name="release")
def release_stage(spec: Spec, store: Store) -> None:
    out = spec.campaign_dir / "release"
    info = export_release(store, out, license=spec.release.license,
                          description=spec.release.description or spec.description)
    store.put_record("release", "campaign", {"path": store.relative(out), **info})


# -- helpers -------------------------------------------------------------------------------
def _key(*parts: Any) -> str:
    """A stable key for a unit of work: what it is and every setting it depends on."""
    return _fingerprint(*parts)[:24]


def _fingerprint(*parts: Any) -> str:
    def plain(value: Any) -> Any:
        return value.model_dump(by_alias=True) if hasattr(value, "model_dump") else value

    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Torch and BLAS threads per task for one stage (tasks side by side get one core each)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(previous)
