"""The campaign: explore → select → label → train → evaluate → deploy → release.

Each stage is a Prefect flow that reads the spec and the store, submits tasks, and writes their
results to the store as they arrive (the flow is the store's single writer). Every stage first
asks the store what is done already, so running a campaign again, after a kill or after it
finished, computes only what is missing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from threadpoolctl import threadpool_limits

from hifidata.datasets.maps import store_maps
from hifidata.datasets.release import export_release
from hifidata.datasets.status import campaign_status
from hifidata.datasets.store import Selection, Store, utc_now
from hifidata.errors import HifidataError, SpecError
from hifidata.flows import tasks
from hifidata.flows.audit import audit_flow
from hifidata.flows.evaluate import evaluate_flow
from hifidata.flows.execution import check_server, label_executor, prefect_run
from hifidata.flows.monitor import LabelMonitor, campaign_finished
from hifidata.flows.progress import counted_progress, reporter
from hifidata.flows.train import fingerprint, rung_data, train_flow
from hifidata.sampling import costs
from hifidata.sampling.ase_md import md_summary
from hifidata.spec import (
    DYNAMICS,
    STAGES,
    DerivedProtocol,
    Dynamics,
    MDProtocol,
    Spec,
    load_spec,
)
from hifidata.structures import structure_id

FEATURE_CHUNK = 256  # structures per featurization task
MODEL_STAGES = ("train", "evaluate", "deploy")  # skipped by a spec without ``train``


def run_campaign(spec_path: str | Path, until: str = "release") -> dict[str, Any]:
    """Validate the spec, then run (or resume) the campaign up to and including ``until``."""
    if until not in STAGES:
        raise HifidataError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    spec = load_spec(spec_path)  # before the store is touched: bad input changes nothing
    _check_history(spec)
    check_server(spec.execution)
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
    # fields added later only when set, so stores selected before they existed keep their history
    later = {"max_atoms", "uncertainty", "budget_hours"}
    return rung.select.model_dump(
        by_alias=True, exclude={f for f in later if getattr(rung.select, f) is None}
    )


@flow(name="hifidata-campaign", flow_run_name="{spec.name}")
def campaign(spec: Spec, until: str = "release") -> dict[str, Any]:
    stages = {
        "explore": explore_stage, "select": select_stage, "label": label_stage,
        "audit": audit_stage, "train": train_stage, "evaluate": evaluate_stage,
        "deploy": deploy_stage, "release": release_stage,
    }
    runner = _runner(spec)
    timings = {}
    with Store(spec.store_path, "a") as store:
        store.put_record("run", "spec", spec.model_dump(mode="json", by_alias=True))
        store.put_record("run", "prefect", prefect_run())
        for name in STAGES[: STAGES.index(until) + 1]:
            if spec.train is None and name in MODEL_STAGES:
                continue
            timings[name] = _run_stage(stages[name].with_options(task_runner=runner),
                                       name, spec, store)
        store.put_record("timings", "last_run", timings)
        status = {**campaign_status(store), "timings_s": timings}
    campaign_finished(spec.name, until, status)
    return status


def _run_stage(stage, name: str, spec: Spec, store: Store) -> float:
    """Run one stage flow; record when it started and how it ended (the dashboard's stage
    progress) with its flow run, so a Prefect server's page for it can be linked."""
    started, start = utc_now(), time.perf_counter()
    store.put_record("stage", name, {"state": "running", "started": started})
    state = stage(spec, store, return_state=True)
    seconds = round(time.perf_counter() - start, 1)
    record = {"started": started, "finished": utc_now(), "seconds": seconds,
              "flow_run_id": str(state.state_details.flow_run_id)}
    try:
        state.result()  # the stage's own exception, if it failed
    except Exception as error:
        store.put_record("stage", name, {**record, "state": "failed",
                                         "error": str(error).splitlines()[0][:500]})
        raise
    store.put_record("stage", name, {**record, "state": "done"})
    return seconds


def _runner(spec: Spec) -> ThreadPoolTaskRunner:
    """The task runner of every stage and of the flows they call (``max_workers`` at a time)."""
    return ThreadPoolTaskRunner(max_workers=spec.execution.max_workers)


# -- explore -------------------------------------------------------------------------------
@flow(name="explore")
def explore_stage(spec: Spec, store: Store) -> None:
    seeds = spec.seed_structures()
    store.add_structures(seeds, [{"protocol": "seed"}] * len(seeds))
    done = store.records("explore")
    for i, protocol in enumerate(spec.explore.protocols):
        try:
            if protocol.kind in DYNAMICS:
                _explore_md(spec, store, protocol, seeds, done)
            elif (key := _protocol_key(protocol)) not in done:
                parents = _structures_by_protocol(store, tuple(protocol.parents))
                settings = protocol.model_dump(exclude={"kind", "parents"}, exclude_none=True)
                candidates = tasks.derive(protocol.kind, parents, settings)
                store.add_structures(candidates.structures, candidates.origins)
                store.put_record("explore", key, {"structures": len(candidates), "stopped": None})
        except ValueError as error:  # e.g. no periodic parent for a slab
            raise HifidataError(f"explore.protocols[{i}] ({protocol.kind}): {error}") from None
    reporter().note(f"explore: {len(store.structure_ids())} candidate structures")


def _explore_md(spec: Spec, store: Store, protocol: Dynamics, seeds: list, done: dict) -> None:
    """All trajectories of one MD protocol, advanced together (one model call per step).

    Resume is per protocol: trajectories are seeded, so a rerun after a kill reproduces the
    ones already stored and only the missing ones are added.
    """
    if protocol.kind == "npt":
        seeds = [atoms for atoms in seeds if atoms.pbc.all()]
    jobs = _md_jobs(protocol, spec.explore.model, seeds)
    if all(key in done for key in jobs):
        return
    bar = reporter()
    name = f"explore-{protocol.kind}"
    bar.start(name, f"explore: {protocol.kind} ({len(jobs)} trajectories)",
              len(jobs) * protocol.steps)
    settings = protocol.model_dump(exclude={"kind"})
    results = tasks.explore_md(
        protocol.kind, seeds, spec.explore.model, settings, spec.explore.replicas,
        spec.explore.device, progress=lambda n: bar.advance(name, n),
    )
    for key, candidates in zip(jobs, results, strict=True):
        if key in done:
            continue
        store.add_structures(candidates.structures, candidates.origins)
        store.put_record("explore", key,
                         {"structures": len(candidates), "stopped": candidates.stopped})
        if candidates.stopped:
            bar.note(f"explore: a {protocol.kind} trajectory stopped early ({candidates.stopped})")
    bar.done(name)


def _md_jobs(protocol: Dynamics, model: str, seeds: list) -> list[str]:
    """One key per trajectory, in the order the dynamics functions return them."""
    if protocol.kind == "md":
        return [_trajectory_key(protocol, model, seed, temperature, md_seed)
                for seed in seeds for temperature in protocol.temperatures
                for md_seed in protocol.seeds]
    own = protocol.model_dump(exclude={"temperatures", "pressures", "seeds"})
    if protocol.kind == "npt":
        return [_key("npt", own, model, structure_id(seed), temperature, pressure, md_seed)
                for seed in seeds for temperature in protocol.temperatures
                for pressure in protocol.pressures for md_seed in protocol.seeds]
    return [_key("ramp", own, model, structure_id(seed), md_seed)
            for seed in seeds for md_seed in protocol.seeds]


def _trajectory_key(protocol: MDProtocol, model: str, seed, temperature: float,
                    md_seed: int) -> str:
    """One trajectory's own settings: adding a temperature to the list reruns nothing else."""
    own = protocol.model_dump(exclude={"temperatures", "seeds"})
    return _key("md", own, model, structure_id(seed), temperature, md_seed)


def _protocol_key(protocol: DerivedProtocol) -> str:
    """A derived protocol's settings; ``parents`` counts only when not the default, so stores
    from before it existed resume without redoing their rattles."""
    own = {k: v for k, v in protocol.model_dump().items() if v is not None}  # later options
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
        arrays = {"features": x, "embedding": pick["embedding"], "cluster": pick["labels"],
                  "explained_variance": pick["explained_variance"]}
        if rung.select.uncertainty:
            scores = _uncertainty(spec, store, rung.select.uncertainty, pool, x, known)
            labeled = store.labeled_ids(rung.resolved.method_id)  # iteration k adds new ones
            exclude = np.array([labeled.get(sid) == "ok" for sid in pool], dtype=bool)
            pick.update(tasks.uncertainty_pick(pick["embedding"], pick["labels"], scores,
                                               rung.select.per_cluster, exclude))
            arrays["uncertainty"] = scores
        elif rung.select.budget_hours:
            pick.update(tasks.budget_pick(
                pick["embedding"], pick["labels"], store.structures(pool), rung.engine,
                dict(rung.resolved.params), _cost_model(store, rung, pool),
                rung.select.budget_hours * 3600, rung.select.per_cluster,
            ))
            arrays["predicted_core_seconds"] = pick["seconds"]
        store.add_selection(Selection(
            rung.name, pool, [pool[i] for i in pick["selected"]], arrays=arrays,
            params={**params, "direct": pick["params"], "n_components": pick["n_components"],
                    "coverage": pick["coverage"], "notes": pick["notes"],
                    **{k: pick[k] for k in ("cost_model",) if k in pick}},
        ))
        reporter().note(
            f"select: {len(pick['selected'])} of {len(pool)} for {rung.name} "
            f"({pick['n_components']} principal components, {pick['n_clusters_found']} clusters, "
            f"coverage {pick['coverage']:.2f})"
        )
    _draw_maps(spec, store)


def _draw_maps(spec: Spec, store: Store) -> None:
    """Coverage map per rung and the element table of the labeled structures, in reports/."""
    paths = store_maps(store, spec.campaign_dir / "reports")  # reads the store, as release does
    store.put_record("maps", "campaign", {"paths": [store.relative(p) for p in paths]})


def _uncertainty(spec: Spec, store: Store, settings, pool: list[str], x: np.ndarray,
                 known: dict[str, np.ndarray]) -> np.ndarray:
    """Each pool structure's uncertainty: committee force disagreement, or feature distance
    to what rung ``distance_to`` selected."""
    if settings.committee:
        members = [_model_ref(store, name) for name in settings.committee]
        return tasks.committee_scores(store.structures(pool), members, settings.batch_size)
    # what the rung selected counts as known (selections all come before labeling); its
    # quarantined structures do not
    rung = spec.rung(settings.distance_to)
    status = store.labeled_ids(rung.resolved.method_id)
    known_ids = [sid for sid in store.selection(rung.name).selected_ids
                 if status.get(sid, "ok") == "ok"]
    _featurize([sid for sid in known_ids if sid not in known], spec, store, known)
    return tasks.feature_distance(np.stack([known[sid] for sid in known_ids]), x)


def _cost_model(store: Store, rung, pool: list[str]):
    """The rung's cost model: fitted to its timings in the store, else the shipped prior."""
    method = rung.resolved
    sizes = [costs.size_of(atoms, rung.engine, method.params)
             for atoms in store.structures(pool[:50])]
    registered = method.method_id in {m["method_id"] for m in store.methods()}
    return costs.cost_model(rung.engine, method.params, store if registered else None,
                            method.method_id, float(np.median(sizes)) if sizes else None)


def _model_ref(store: Store, name: str) -> str:
    """A pretrained MLIP's name, or the folder of a model this campaign trained."""
    record = store.record("model", name)
    return str(store.resolve(record["path"])) if record else name


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
    monitor = LabelMonitor(spec.name, store, spec.execution.failure_rate_alert)
    futures = {}
    with label_executor(spec, spec.ladder, spec.campaign_dir / "logs") as submit:
        # the most expensive rung first, so the long labels don't all wait at the end
        for rung in reversed(spec.ladder):
            method = rung.resolved
            store.add_method(method)
            how = {"engine": method.engine, "params": dict(method.params),
                   "threads": rung.threads, "ranks": rung.ranks}
            if store.record("method", rung.name) != how:  # what `hifidata audit` reruns it with
                store.put_record("method", rung.name, how)
            done = store.labeled_ids(method.method_id)
            selected = store.selection(rung.name).selected_ids
            todo = [sid for sid in selected if sid not in done]
            bar.start(rung.name, f"label: {rung.name} ({method.describe()})", len(todo))
            monitor.start(rung.name, method.method_id, len(selected), len(selected) - len(todo))
            for sid, atoms in zip(todo, store.structures(todo), strict=True):
                futures[submit(rung, sid, atoms)] = rung.name
        # labels run side by side; engines set their own threads
        with threadpool_limits(limits=1):
            for future in as_completed(futures):
                result = future.result()
                store.add_labels([result])  # whole, the moment it arrives: a kill loses none
                bar.advance(futures[future])
                monitor.labeled(futures[future], result)
                if not result.ok:
                    bar.note(f"label: {futures[future]} {result.structure_id[:12]} "
                             f"quarantined: {result.status}: {result.message}")
    monitor.close()
    for rung in spec.ladder:
        bar.done(rung.name)
    _draw_maps(spec, store)


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
    return fingerprint("audit", settings, [(s.structure_ids, s.status) for s in labels])


# -- train ---------------------------------------------------------------------------------
@flow(name="train-stage")
def train_stage(spec: Spec, store: Store) -> None:
    train_flow.with_options(task_runner=_runner(spec))(
        store, spec.train, [rung.name for rung in spec.ladder], spec.campaign_dir / "models")


# -- evaluate ------------------------------------------------------------------------------
@flow(name="evaluate")
def evaluate_stage(spec: Spec, store: Store) -> None:
    """Every model of the campaign (and the pretrained start) against every rung's test split
    in one parity plot, then the final model's full report (hifidata evaluate)."""
    split = store.record("split", "campaign")
    start = (spec.train.multifidelity.base if spec.train.recipe == "multifidelity"
             else spec.train.finetune.base)
    models = {start: start}  # the pretrained model the recipe starts from
    for name, record in store.records("model").items():
        if record["recipe"] in ("finetune", "composite", "multifidelity"):
            models[name] = str(store.resolve(record["path"]))
    print_ = fingerprint(
        "evaluate", split, {n: (store.record("model", n) or {}).get("fingerprint") for n in models}
    )
    done = store.record("evaluation", "campaign") or {}
    if done.get("fingerprint") != print_ or "parity_points" not in done:
        data = {rung.name: rung_data(store, rung.name, split) for rung in spec.ladder}
        bar = reporter()
        bar.start("evaluate", "evaluate: models × rungs", len(models) * len(data))
        with _threads(1):
            parities = []
            for name, ref in models.items():
                for rung, rung_data_ in data.items():
                    parities.append(tasks.evaluate_model.with_options(
                        task_run_name=f"evaluate-{name}-on-{rung}"
                    )(name, ref, rung, rung_data_["train"], rung_data_["test"]))
                    bar.advance("evaluate")
        reports = spec.campaign_dir / "reports"
        plot = tasks.parity_plot(parities, reports / "parity.png")
        points = tasks.parity_points(parities, reports / "parity.json")
        metrics = [{"model": p.model, "rung": p.rung, **p.errors()} for p in parities]
        store.put_record("evaluation", "campaign", {
            "fingerprint": print_, "metrics": metrics, "parity_plot": store.relative(plot),
            "parity_points": store.relative(points), "split": "test",
        })
        bar.done("evaluate")
    final = store.record("final_model", "campaign")["name"]
    with _threads(1):
        evaluate_flow.with_options(task_runner=_runner(spec))(
            store, final, spec.evaluate.stability, spec.evaluate.scans)


# -- deploy --------------------------------------------------------------------------------
@flow(name="deploy")
def deploy_stage(spec: Spec, store: Store) -> None:
    """Production MD of the first seed with the final model on the batched engine (watched by
    its monitors), and the model's exported artifact (TorchScript / LAMMPS, model card)."""
    final = store.record("final_model", "campaign")["name"]
    model = store.record("model", final)
    settings = spec.deploy
    print_ = fingerprint("deploy", model["fingerprint"], settings.model_dump())
    if (store.record("deploy", "campaign") or {}).get("fingerprint") == print_:
        return
    structure = spec.seed_structures()[0]
    model_dir = store.resolve(model["path"])
    folder = spec.campaign_dir / "md"
    stem = f"{final}-{settings.temperature:g}K"
    for old in folder.glob(f"{stem}*.extxyz"):  # this stage's own output of an earlier run
        old.unlink()
    bar = reporter()
    bar.start("deploy", f"deploy: {settings.replicas} × {settings.temperature:g} K "
                        f"{settings.ensemble} MD with {final}", settings.steps)
    with _threads(1):
        results = tasks.run_md(structure, model_dir, settings.model_dump(),
                               folder / f"{stem}.extxyz",
                               progress=lambda n: bar.advance("deploy", n))
    summary = md_summary(results[0], settings.timestep, len(structure))
    stable = [r.stable for r in results]
    summary.update({
        "stable": all(stable), "stable_replicas": sum(stable), "replicas": len(results),
        "stopped": next((r.stopped for r in results if r.stopped), None),
        "atom_steps_per_s": summary["atom_steps_per_s"] * len(results),
        "ensemble": settings.ensemble,
    })
    trajectories = sorted(folder.glob(f"{stem}*.extxyz"))
    artifact = None
    if settings.export:
        bar.note(f"deploy: exporting {final} (TorchScript where possible, model card)")
        artifact = spec.campaign_dir / "deploy" / final
        if artifact.exists():
            shutil.rmtree(artifact)
        tasks.export_model(model_dir, artifact)
    store.put_record("deploy", "campaign", {
        "fingerprint": print_, "model": final, "temperature_K": settings.temperature,
        "trajectory": store.relative(trajectories[0]) if trajectories else None,
        "trajectories": [store.relative(t) for t in trajectories],
        "artifact": store.relative(artifact) if artifact else None,
        "min_distance_A": settings.min_distance, **summary,
    })
    bar.done("deploy", "stable" if summary["stable"]
             else f"{summary['stable_replicas']}/{len(results)} stable: {summary['stopped']}")


# -- release -------------------------------------------------------------------------------
@flow(name="release")
def release_stage(spec: Spec, store: Store) -> None:
    out, release = spec.campaign_dir / "release", spec.release
    extends = spec.campaign_dir / release.extends if release.extends else None
    if extends is not None and extends.resolve() == out.resolve():
        raise SpecError("release.extends: the earlier release must live outside release/, "
                        "which this run replaces (copy it to e.g. releases/<version>)")
    info = export_release(
        store, out, formats=release.formats, only_ok=release.only_ok, version=release.version,
        extends=extends, license=release.license,
        description=release.description or spec.description,
        authors=[a.model_dump(exclude_none=True) for a in release.authors],
        citation=release.citation, doi=release.doi, links=release.links, replace=True,
        progress=counted_progress("release"))
    reporter().done("release")
    store.put_record("release", "campaign", {**info, "path": store.relative(out)})


# -- helpers -------------------------------------------------------------------------------
def _key(*parts: Any) -> str:
    """A stable key for a unit of work: what it is and every setting it depends on."""
    return fingerprint(*parts)[:24]


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
