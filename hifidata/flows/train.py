"""The train stage and `hifidata train`: a recipe's models from a store's labels.

The recipe (spec.Train: finetune, delta or multifidelity) names what is trained; the split is
by structure across every rung (datasets/splits.py). Each model is trained only when its
fingerprint (settings, method ids, the structures in its train and validation sets) changed,
and is recorded in the store under its name with that fingerprint. The last model of the recipe
is the campaign's final model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow
from pydantic import ValidationError

from hifidata.datasets.splits import assign_splits, ids_in, recorded_split
from hifidata.datasets.store import Store
from hifidata.errors import HifidataError
from hifidata.flows import tasks
from hifidata.flows.progress import reporter
from hifidata.spec import Train, first_error
from hifidata.training.recipes import RECIPES

PARTS = ("train", "validation", "test")


def fingerprint(*parts: Any) -> str:
    """A hash of settings and inputs: what decides whether a result is still current."""
    def plain(value: Any) -> Any:
        return value.model_dump(by_alias=True) if hasattr(value, "model_dump") else value

    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_train(store_path: Path, recipe: str, *, rung: str | None = None,
              high: str | None = None, rungs: str | None = None, predict: str | None = None,
              base: str | None = None, epochs: int | None = None,
              device: str | None = None) -> tuple[str, Path]:
    """`hifidata train`: check the options against the store (one-line errors, nothing
    written), train, and return the final model's name and folder."""
    from hifidata.flows.evaluate import store_rungs

    if recipe not in RECIPES:
        raise HifidataError(f"--recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    if not Path(store_path).is_file():
        raise HifidataError(f"{store_path}: no such file")
    ladder = store_rungs(Store(store_path))
    if not ladder:
        raise HifidataError(f"{store_path}: no rung has labels yet")
    tuning = {k: v for k, v in {"epochs": epochs, "base": base}.items() if v is not None}
    settings: dict[str, Any] = {"recipe": recipe, "device": device}
    if recipe in ("finetune", "delta"):
        if rung is None:
            raise HifidataError(f"--recipe {recipe} needs --rung (rungs: {', '.join(ladder)})")
        settings["finetune"] = {"rung": rung, **tuning}
    if recipe == "delta":
        if high is None:
            raise HifidataError("--recipe delta needs --high, the rung whose difference to "
                                "--rung is learned")
        settings["finetune"].pop("epochs", None)  # --epochs is the Δ-model's
        settings["delta"] = {"low": rung, "high": high,
                             **({"epochs": epochs} if epochs else {})}
    if recipe == "multifidelity":
        chosen = [r.strip() for r in rungs.split(",")] if rungs else None
        settings["multifidelity"] = {"rungs": chosen, "predict": predict, **tuning}
    try:
        train = Train(**settings)
    except ValidationError as error:
        raise HifidataError(f"train: {first_error(error)}") from None
    named = [train.finetune and train.finetune.rung, train.delta and train.delta.high,
             *((train.multifidelity and train.multifidelity.rungs) or []),
             train.multifidelity and train.multifidelity.predict]
    for name in filter(None, named):
        if name not in ladder:
            raise HifidataError(f"no rung named {name!r} in {store_path} "
                                f"(rungs: {', '.join(ladder)})")
    with Store(store_path, "a") as store:
        final = train_flow(store, train, ladder, Path(store_path).resolve().parent / "models")
        return final, store.resolve(store.record("model", final)["path"])


@flow(name="train")
def train_flow(store: Store, settings: Train, rungs: list[str], models_dir: Path) -> str:
    """Train ``settings.recipe``'s models on the store's labels; returns the final model's name.

    ``rungs``: the ladder's rung names, cheapest first (they fix the split).
    """
    split = campaign_split(store, rungs, settings.test_fraction, settings.validation_fraction,
                           settings.seed)
    if settings.recipe == "multifidelity":
        final = _multifidelity(store, settings, rungs, split, models_dir)
    else:
        final, base_print = _finetune(store, settings, split, models_dir)
        if settings.recipe == "delta":
            final = _delta(store, settings, split, models_dir, final, base_print)
    store.put_record("final_model", "campaign", {"name": final, "recipe": settings.recipe})
    return final


def campaign_split(store: Store, rungs: list[str], test_fraction: float = 0.2,
                   validation_fraction: float = 0.15, seed: int = 0) -> dict[str, str]:
    """structure id → train/validation/test over every rung's selection (recorded); the
    defaults are the spec's. A structure keeps the split it was given before unless the split
    settings changed."""
    settings = {"test_fraction": test_fraction, "validation_fraction": validation_fraction,
                "seed": seed}
    picks = {rung: store.selection(rung).selected_ids for rung in rungs}
    previous = recorded_split(store, settings)
    split = assign_splits(picks, test_fraction, validation_fraction, seed, previous)
    if store.record("split", "campaign") != split:
        store.put_record("split", "campaign", split)
    if store.record("split", "settings") != settings:  # after the split: a kill between
        store.put_record("split", "settings", settings)  # the two leaves no stale pair
    return split


def rung_data(store: Store, rung: str, split: dict[str, str]) -> dict[str, Any]:
    """A rung's ok labels by split: {"method_id", part: {ids, structures, energy, forces,
    stress, origins}}."""
    method_id = store.method_id(rung)
    labels = store.labels(method_id).ok()
    out: dict[str, Any] = {"method_id": method_id}
    for part in PARTS:
        subset = labels.for_ids(ids_in(split, labels.structure_ids, part))
        out[part] = {
            "ids": subset.structure_ids,
            "structures": store.structures(subset.structure_ids),
            "energy": subset.energy,
            "forces": subset.forces,
            # the store keeps NaN where a label has no stress (molecules)
            "stress": [s if np.isfinite(s).all() else None for s in subset.stress],
            "origins": store.origins(subset.structure_ids),
        }
    return out


def difference(high: dict, low: dict) -> dict:
    """high − low on the structures both rungs labeled (energies and forces)."""
    where = {sid: i for i, sid in enumerate(low["ids"])}
    rows = [(i, where[sid]) for i, sid in enumerate(high["ids"]) if sid in where]
    return {
        "ids": [high["ids"][i] for i, _ in rows],
        "structures": [high["structures"][i] for i, _ in rows],
        "energy": np.array([high["energy"][i] - low["energy"][j] for i, j in rows]),
        "forces": [high["forces"][i] - low["forces"][j] for i, j in rows],
    }


def _finetune(store: Store, settings: Train, split: dict, models_dir: Path) -> tuple[str, str]:
    ft = settings.finetune
    data = rung_data(store, ft.rung, split)
    name = f"finetune-{ft.rung}"
    _require(name, ft.rung, data["train"])
    hyper = {**ft.model_dump(exclude={"rung"}), "seed": settings.seed, "device": settings.device}
    print_ = fingerprint("finetune", hyper, data["method_id"], data["train"]["ids"],
                         data["validation"]["ids"])
    _ensure_trained(store, models_dir, name, print_, "finetune",
                    [data["train"], data["validation"]], hyper,
                    {"rung": ft.rung, "method_id": data["method_id"]})
    return name, print_


def _delta(store: Store, settings: Train, split: dict, models_dir: Path, base_name: str,
           base_print: str) -> str:
    d = settings.delta
    high, low = rung_data(store, d.high, split), rung_data(store, d.low, split)
    diff = {part: difference(high[part], low[part]) for part in ("train", "validation")}
    name, composite = f"delta-{d.high}-minus-{d.low}", f"{d.high}-composite"
    _require(name, f"{d.high} (with {d.low} labels)", diff["train"])
    hyper = {**d.model_dump(exclude={"low", "high"}), "seed": settings.seed,
             "device": settings.device}
    d_print = fingerprint("delta", hyper, high["method_id"], low["method_id"],
                          diff["train"]["ids"], diff["validation"]["ids"])
    _ensure_trained(store, models_dir, name, d_print, "delta",
                    [diff["train"], diff["validation"]], hyper, {"rung": d.high, "low": d.low})
    c_print = fingerprint("composite", base_print, d_print)
    if not model_current(store, composite, c_print):
        metadata = {"rung": d.high, "method_id": high["method_id"], "parts": [base_name, name]}
        tasks.compose(models_dir / base_name, models_dir / name, models_dir / composite, metadata)
        record_model(store, composite, models_dir / composite, c_print, recipe="composite",
                     rung=d.high, method_id=high["method_id"], parts=[base_name, name])
    return composite


def _multifidelity(store: Store, settings: Train, rungs: list[str], split: dict,
                   models_dir: Path) -> str:
    mf = settings.multifidelity
    chosen = [r for r in rungs if mf.rungs is None or r in mf.rungs]
    data = {rung: rung_data(store, rung, split) for rung in chosen}
    default = mf.predict or chosen[-1]
    name = f"multifidelity-{'-'.join(chosen)}"
    for rung, d in data.items():
        _require(name, rung, d["train"])
    hyper = {**mf.model_dump(exclude={"rungs", "predict"}), "seed": settings.seed,
             "device": settings.device, "default_rung": default}
    print_ = fingerprint("multifidelity", hyper,
                         {r: (d["method_id"], d["train"]["ids"], d["validation"]["ids"])
                          for r, d in data.items()})
    _ensure_trained(store, models_dir, name, print_, "multifidelity",
                    {r: [d["train"], d["validation"]] for r, d in data.items()}, hyper,
                    {"rung": default, "rungs": chosen,
                     "method_ids": {r: d["method_id"] for r, d in data.items()}})
    return name


def _ensure_trained(store: Store, models_dir: Path, name: str, print_: str, recipe: str,
                    data: list | dict, hyper: dict, info: dict) -> None:
    """Train ``recipe`` on ``data`` unless the recorded model has this fingerprint; ``info``
    (rung, method ids) goes into the model's metadata and its store record."""
    if model_current(store, name, print_):
        return
    with _training_bar(name, hyper["epochs"]) as progress:
        tasks.train_model(recipe, data, models_dir / name,
                          {**hyper, "metadata": {"name": name, **info}}, progress)
    parts = list(data.values()) if isinstance(data, dict) else [data]
    counts = {"n_train": sum(len(p[0]["ids"]) for p in parts),
              "n_validation": sum(len(p[1]["ids"]) for p in parts)}
    record_model(store, name, models_dir / name, print_, recipe=recipe, **info, **counts)


def _require(name: str, rung: str, train: dict) -> None:
    if not train["ids"]:
        raise HifidataError(f"train: {name}: rung {rung} has no ok labels in the training split")


def model_current(store: Store, name: str, print_: str) -> bool:
    record = store.record("model", name)
    return bool(record and record["fingerprint"] == print_
                and store.resolve(record["path"]).is_dir())


def record_model(store: Store, name: str, path: Path, print_: str, **info) -> None:
    store.put_record("model", name, {"name": name, "path": store.relative(path),
                                     "fingerprint": print_, **info})


@contextmanager
def _training_bar(name: str, epochs: int) -> Iterator:
    bar = reporter()
    bar.start(name, f"train: {name}", epochs)
    yield lambda *_: bar.advance(name)
    bar.done(name)
