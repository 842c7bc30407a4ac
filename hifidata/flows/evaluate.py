"""`hifidata evaluate STORE MODEL` and the campaign's evaluate stage: one model's report.

The report (training/metrology.py) is written into the model's folder (``report/``), or beside
the store for a pretrained MLIP, and recorded in the store under ("evaluation", model name):
- errors against every rung's test split, per rung, per element and per origin;
- MD stability: seeded Langevin runs of the seed structures at several temperatures;
- energy-landscape slices of the first seed, with labels computed on the scan by the rungs'
  own engines (stored like any label, origin "scan", so a rerun computes nothing twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from hifidata.datasets.store import Store
from hifidata.errors import HifidataError
from hifidata.flows import tasks
from hifidata.flows.audit import label_missing, method_of
from hifidata.flows.progress import reporter
from hifidata.flows.train import campaign_split, fingerprint, rung_data
from hifidata.spec import Scan, ScanCoordinate, Stability, first_error
from hifidata.training import landscape, metrology, stability
from hifidata.training.models import load_model, read_model_json


def run_evaluate(store_path: Path, model: str, *, stability_settings: Stability | None,
                 scans: list[Scan], workers: int = 2) -> dict[str, Any]:
    """Check the inputs (one-line errors, nothing written), then run the evaluate flow."""
    if not Path(store_path).is_file():
        raise HifidataError(f"{store_path}: no such file")
    store = Store(store_path)
    rungs = store_rungs(store)
    if not rungs:
        raise HifidataError(f"{store_path}: no rung has labels yet; nothing to evaluate against")
    for scan in scans:
        for rung in scan.rungs or []:
            if rung not in rungs:
                raise HifidataError(f"--scan-rungs: no rung named {rung!r} (rungs: "
                                    f"{', '.join(rungs)})")
    seed = seeds_of(store)[:1]
    for scan in scans:
        for c in scan.coordinates:
            if not seed or max(c.atoms) >= len(seed[0]):
                raise HifidataError(f"--scan: atoms {list(c.atoms)} are not in the first seed "
                                    f"({len(seed[0]) if seed else 0} atoms)")
    load_model(_resolve(store, model))  # a bad model fails here, before anything is written
    if workers < 1:
        raise HifidataError("--workers must be at least 1")
    with Store(store_path, "a") as writable:
        return evaluate_flow.with_options(task_runner=ThreadPoolTaskRunner(workers))(
            writable, model, stability_settings, scans)


def stability_option(temperatures: str, replicas: int, steps: int) -> Stability | None:
    """--temperatures/--replicas/--steps as spec.Stability (steps 0: no MD stability)."""
    if steps == 0:
        return None
    try:
        values = [float(t) for t in temperatures.split(",")]
        return Stability(temperatures=values, replicas=replicas, steps=steps)
    except ValidationError as error:
        raise HifidataError(f"--temperatures/--replicas/--steps: {first_error(error)}") from None
    except ValueError:
        raise HifidataError(f"--temperatures: {temperatures!r} is not a list of K such as "
                            "300,600") from None


def scan_option(scans: list[str], rungs: str | None) -> list[Scan]:
    """--scan I,J:START:END:POINTS (one: a 1-D slice; two: a 2-D grid) as spec.Scan."""
    if not scans:
        return []
    try:
        coordinates = []
        for text in scans:
            pair, start, end, points = text.split(":")
            i, j = (int(x) for x in pair.split(","))
            coordinates.append(ScanCoordinate(atoms=(i, j), values=(float(start), float(end)),
                                              points=int(points)))
        chosen = [r.strip() for r in rungs.split(",")] if rungs else None
        return [Scan(coordinates=coordinates, rungs=chosen)]
    except ValidationError as error:
        raise HifidataError(f"--scan: {first_error(error)}") from None
    except ValueError:
        raise HifidataError(f"--scan {' '.join(scans)}: expected I,J:START:END:POINTS such as "
                            "0,3:2.4:4.0:9") from None


def store_rungs(store: Store) -> list[str]:
    """The store's labeled rungs, cheapest first: the ladder of the spec the campaign ran."""
    labeled = store.records("method")
    spec = store.record("run", "spec") or {}
    ladder = [rung["name"] for rung in spec.get("ladder", [])] or store.selection_names()
    return [name for name in ladder if name in labeled]


def seeds_of(store: Store):
    ids = [sid for sid, origin in zip(store.structure_ids(), store.origins(), strict=True)
           if origin.get("protocol") == "seed"]
    return store.structures(ids)


def _resolve(store: Store, model: str) -> str:
    """A model of this campaign by name, a model folder, or a pretrained MLIP's name."""
    record = store.record("model", model)
    return str(store.resolve(record["path"])) if record else model


@flow(name="evaluate-model")
def evaluate_flow(store: Store, model: str, stability_settings: Stability | None,
                  scans: list[Scan]) -> dict[str, Any]:
    reference = _resolve(store, model)
    name = Path(model).name if Path(model).is_dir() else model
    rungs = store_rungs(store)
    split = store.record("split", "campaign") or campaign_split(store, rungs)
    seeds = seeds_of(store)
    print_ = fingerprint("evaluate-model", (store.record("model", name) or {}).get(
        "fingerprint", reference), split, stability_settings, scans)
    done = store.record("evaluation", name)
    if done and done.get("fingerprint") == print_ and store.resolve(done["report"]).is_file():
        return done
    folder = (Path(reference) / "report" if Path(reference).is_dir()
              else store.path.parent / "reports" / f"evaluate-{name}")
    folder.mkdir(parents=True, exist_ok=True)
    bar = reporter()

    bar.start("parity", f"evaluate {name}: errors per rung", len(rungs))
    parities, by_element, by_origin = [], {}, {}
    for rung in rungs:
        data = rung_data(store, rung, split)
        parity = tasks.evaluate_model.with_options(task_run_name=f"errors-on-{rung}")(
            name, reference, rung, data["train"], data["test"])
        parities.append(parity)
        if len(parity.energy_true):
            by_element[rung] = metrology.errors_by_element(parity)
            by_origin[rung] = metrology.errors_by_origin(parity)
        bar.advance("parity")
    bar.done("parity")
    images = {"parity (test split)": metrology.parity_plot(parities, folder / "parity.png")}

    md = None
    if stability_settings is not None and seeds:
        s = stability_settings
        runs = len(seeds) * len(s.temperatures) * s.replicas
        bar.start("stability", f"evaluate {name}: MD stability ({runs} runs)", runs * s.steps)
        md = tasks.md_stability(reference, seeds, s.model_dump(),
                                progress=lambda n: bar.advance("stability", n))
        bar.done("stability")
        images["MD stability"] = stability.stability_plot(md, folder / "stability.png")

    slices = [piece for scan in scans if seeds
              for piece in _slices(store, reference, name, scan, seeds[0], rungs)]
    if slices:
        images["energy-landscape slices"] = landscape.slice_plot(slices, folder / "slices.png")

    report = metrology.write_report(
        folder, model_name=name, model_metadata=_metadata(reference),
        parities=parities, by_element=by_element, by_origin=by_origin, stability=md,
        slices=slices, images=images)
    record = {
        "fingerprint": print_, "model": name, "report": store.relative(report),
        "errors": [{"rung": p.rung, **p.errors()} for p in parities],
        "stability": {f"{t:g}": row for t, row in md.summary().items()} if md else None,
        "slices": [{"coordinate": str(s.coordinate), **landscape.slice_errors(s)}
                   for s in slices],
    }
    store.put_record("evaluation", name, record)
    bar.note(f"evaluate: {name}: report {report}")
    return record


def _metadata(reference: str) -> dict[str, Any]:
    """What the model's folder says of it (no need to build the network for that)."""
    if Path(reference).is_dir():
        return read_model_json(Path(reference)).get("metadata") or {}
    return {"recipe": "pretrained", "name": reference}


def _slices(store: Store, reference: str, name: str, scan: Scan, seed,
            rungs: list[str]) -> list[landscape.Slice]:
    """The model's slices along ``scan``: one per rung that labels the scan (the model as it
    predicts that rung against that rung's labels), or the model alone when none does."""
    coordinates = scan.coordinates
    values = [np.linspace(*c.values, c.points) for c in coordinates]
    if len(coordinates) == 1:
        grid = landscape.distance_scan(seed, *coordinates[0].atoms, values[0])
        flat, shape = grid, (len(grid),)
    else:
        grid = landscape.grid_scan(seed, coordinates[0].atoms, values[0], coordinates[1].atoms,
                                   values[1])
        flat, shape = [atoms for row in grid for atoms in row], (len(grid), len(grid[0]))
    chosen = scan.rungs if scan.rungs is not None else (rungs if len(coordinates) == 1 else [])
    references = {}
    if chosen:
        ids = store.add_structures(flat, [{"protocol": "scan", **a.info["scan"]} for a in flat])
        for rung in chosen:
            method, threads, ranks = method_of(store, rung)
            store.add_method(method)
            label_missing(store, ids, method, threads, ranks, title=f"scan: {rung}")
            labels = store.labels(method.method_id)
            energies = {sid: (e if status == "ok" else np.nan) for sid, e, status in
                        zip(labels.structure_ids, labels.energy, labels.status, strict=True)}
            references[rung] = np.reshape([energies.get(sid, np.nan) for sid in ids], shape)
    if not references:
        return [landscape.scan_slice(load_model(reference), grid, name=_scan_name(scan),
                                     model_name=name)]
    return [landscape.scan_slice(tasks.model_for_rung(reference, rung), grid, {rung: energies},
                                 name=f"{_scan_name(scan)}: {rung}", model_name=name)
            for rung, energies in references.items()]


def _scan_name(scan: Scan) -> str:
    return " × ".join(f"d({c.atoms[0]},{c.atoms[1]})" for c in scan.coordinates)
