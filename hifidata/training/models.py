"""Trained models: the saved model directory, loading it, and predicting with it.

A model directory holds ``model.json`` and the weights::

    model.json   {"format": "hifidata-model", "version": 1,
                  "kind": "chgnet" | "composite" | "sevennet",
                  "species": [...], "units": {...}, <kind fields>, "metadata": {...}}
    chgnet.pth   kind "chgnet": a CHGNet checkpoint ({"model": {"state_dict", "model_args"}}),
                 the layout chgnet's own ``CHGNet.from_file`` reads
    base/ delta/ kind "composite": each a model directory of its own
    sevennet.pth kind "sevennet": a sevenn checkpoint ({"config", "model_state_dict", ...}),
                 the layout ``sevenn.calculator.SevenNetCalculator`` reads (training/sevennet.py)

``model.json`` is written last, so an interrupted save never looks like a finished model.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from hifidata.calculators.mlip import (
    PRETRAINED,
    SEVENNET_PRETRAINED,
    load_chgnet,
    model_cutoff,
    predict_batch,
)
from hifidata.errors import ModelError

FORMAT = "hifidata-model"
FORMAT_VERSION = 1
UNITS = {"energy": "eV", "forces": "eV/Å"}
MODEL_FILE = "model.json"
WEIGHTS_FILE = "chgnet.pth"
COMPOSITE_PARTS = ("base", "delta")
#: the kinds load_model reads; "sevennet" lives in training/sevennet.py (sevenn imports slowly)
KINDS = ("chgnet", "composite", "sevennet")


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (None: leave as is), restored afterwards.

    Molecule-sized CHGNet graphs are too small to share among threads: on 2 cores one thread
    trained as fast as two, and two became 10-50x slower whenever another process was busy.
    """
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Model(ABC):
    """A trained potential: energies (eV) and forces (eV/Å) for ase.Atoms."""

    kind: ClassVar[str]

    def __init__(self, metadata: dict[str, Any] | None = None):
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    @abstractmethod
    def species(self) -> list[str]:
        """Chemical symbols the model was trained on, by atomic number."""

    @property
    def rungs(self) -> list[str]:
        """The rungs (levels of theory) the model predicts: its metadata's "rung", if any."""
        rung = self.metadata.get("rung")
        return [rung] if rung is not None else []

    @abstractmethod
    def predict(self, structures: Sequence[Atoms], batch_size: int = 64) -> dict[str, Any]:
        """{"energy": array (N,) in eV, "forces": [array (n_atoms, 3) in eV/Å]}."""

    @abstractmethod
    def _kind_fields(self) -> dict[str, Any]:
        """The kind-specific entries of model.json."""

    @abstractmethod
    def _save_weights(self, path: Path) -> None: ...

    def calculator(self) -> Calculator:
        return ModelCalculator(self)

    def save(self, path: str | Path) -> Path:
        """Write the model directory at ``path`` (created if needed; its files overwritten)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._save_weights(path)
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "species": self.species,
            "units": UNITS,
            **self._kind_fields(),
            "metadata": self.metadata,
        }
        text = json.dumps(document, indent=2, ensure_ascii=False, default=json_default)
        (path / MODEL_FILE).write_text(text, encoding="utf-8")
        return path


class ChgnetModel(Model):
    """One CHGNet network; its composition model (AtomRef) holds the per-element energies."""

    kind = "chgnet"

    def __init__(self, network, species: Sequence[str], metadata: dict[str, Any] | None = None):
        super().__init__(metadata)
        self.network = network.eval()
        self._species = sort_species(species)

    @property
    def species(self) -> list[str]:
        return list(self._species)

    @property
    def reference_energies(self) -> dict[str, float]:
        """Per-element energies (eV) of the composition model, for the trained species."""
        weight = self.network.composition_model.fc.weight.detach().cpu()[0]
        return {s: float(weight[chemical_symbols.index(s) - 1]) for s in self._species}

    def predict(self, structures: Sequence[Atoms], batch_size: int = 64) -> dict[str, Any]:
        result = predict_batch(self.network, structures, batch_size=batch_size)
        return {"energy": np.asarray(result["energy"], dtype=float), "forces": result["forces"]}

    def _kind_fields(self) -> dict[str, Any]:
        return {
            "weights": WEIGHTS_FILE,
            "cutoff": model_cutoff(self.network),
            "n_parameters": int(sum(p.numel() for p in self.network.parameters())),
            "reference_energies": self.reference_energies,
        }

    def _save_weights(self, path: Path) -> None:
        # the checkpoint layout CHGNet.from_file reads, so chgnet.pth also works without hifidata
        torch.save({"model": self.network.as_dict()}, path / WEIGHTS_FILE)


class CompositeModel(Model):
    """The sum of two models, e.g. a rung-1 fine-tuned model and a rung2 − rung1 Δ-model.

    Both parts give conservative forces, so the sum does too: its forces are minus the
    gradient of its energy.
    """

    kind = "composite"

    def __init__(self, base: Model, delta: Model, metadata: dict[str, Any] | None = None):
        super().__init__(metadata)
        self.base = base
        self.delta = delta

    @property
    def species(self) -> list[str]:
        # trustworthy only where both parts were trained
        return [s for s in self.base.species if s in set(self.delta.species)]

    @property
    def rungs(self) -> list[str]:
        """The base part's rungs, then the composite's own (base + Δ)."""
        own = self.metadata.get("rung")
        return [*self.base.rungs, *([own] if own is not None else [])]

    def predict(self, structures: Sequence[Atoms], batch_size: int = 64) -> dict[str, Any]:
        base = self.base.predict(structures, batch_size)
        delta = self.delta.predict(structures, batch_size)
        return {
            "energy": base["energy"] + delta["energy"],
            "forces": [a + b for a, b in zip(base["forces"], delta["forces"], strict=True)],
        }

    def _kind_fields(self) -> dict[str, Any]:
        return {"parts": {part: part for part in COMPOSITE_PARTS}}

    def _save_weights(self, path: Path) -> None:
        self.base.save(path / "base")
        self.delta.save(path / "delta")


class ModelCalculator(Calculator):
    """ASE calculator over any hifidata Model; molecules are boxed on every call."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, model: Model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        result = self.model.predict([self.atoms], batch_size=1)
        energy = float(result["energy"][0])
        self.results = {"energy": energy, "free_energy": energy, "forces": result["forces"][0]}


def load_model(path: str | Path, device: str | None = None, rung: str | None = None) -> Model:
    """The model saved in directory ``path``, or a pretrained MLIP by name (``chgnet-0.3.0``);
    ModelError with a one-line reason otherwise.

    rung: the rung to predict. None gives the model as saved (a multi-fidelity SevenNet bound
    to its default rung); a multi-fidelity SevenNet binds to that rung's modality, a composite
    gives its base part for the base's rung, and any model gives itself for its own rung.
    """
    if str(path) in PRETRAINED:
        network = load_chgnet(str(path), device)
        model: Model = ChgnetModel(network, [], {"recipe": "pretrained", "name": str(path)})
        return select_rung(model, rung, path)
    if str(path).lower() in SEVENNET_PRETRAINED:
        from hifidata.training.sevennet import load_pretrained

        return select_rung(load_pretrained(str(path).lower(), device), rung, path)
    path = Path(path)
    document = read_model_json(path)
    metadata = document.get("metadata") or {}
    if document["kind"] == "composite":
        base, delta = (load_model(path / part, device) for part in COMPOSITE_PARTS)
        model = CompositeModel(base, delta, metadata)
    elif document["kind"] == "sevennet":
        from hifidata.training.sevennet import load_sevennet

        model = load_sevennet(path, document, device)
        default = metadata.get("default_rung")
        if rung is None and default is not None and default in (model.modalities or []):
            rung = default
    else:
        network = _load_network(path / document.get("weights", WEIGHTS_FILE), device)
        model = ChgnetModel(network, document.get("species") or [], metadata)
    return select_rung(model, rung, path)


def select_rung(model: Model, rung: str | None, path: str | Path) -> Model:
    """``model`` predicting ``rung`` (see load_model), or ModelError naming the rungs it has."""
    if rung is None:
        return model
    if rung not in model.rungs:
        raise ModelError(f"model at {path} predicts rungs {model.rungs}; no rung {rung!r}")
    if getattr(model, "modalities", None):  # a multi-fidelity SevenNet: one modality per rung
        return model.with_modal(rung)
    if isinstance(model, CompositeModel) and rung != model.metadata.get("rung"):
        return select_rung(model.base, rung, Path(path) / "base")
    return model


def read_model_json(path: Path) -> dict[str, Any]:
    """The checked contents of ``path/model.json``."""
    if not path.exists():
        raise ModelError(f"no model at {path}")
    if not path.is_dir():
        raise ModelError(f"{path} is a file; a model is a directory holding {MODEL_FILE}")
    file = path / MODEL_FILE
    if not file.is_file():
        raise ModelError(f"{path} is not a hifidata model directory (no {MODEL_FILE})")
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{file} is not valid JSON ({_first_line(error)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelError(f"{file} was not written by hifidata (no \"format\": \"{FORMAT}\")")
    version = document.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{file} has format version {version!r}; this hifidata reads up to {FORMAT_VERSION}"
        )
    if document.get("kind") not in KINDS:
        raise ModelError(f"{file} has unknown model kind {document.get('kind')!r}")
    return document


def _load_network(file: Path, device: str | None):
    if not file.is_file():
        raise ModelError(f"{file.parent} has no weights file {file.name}")
    try:
        return load_chgnet(str(file), device)
    except Exception as error:  # torch/pickle raise many types for a damaged file
        raise ModelError(f"cannot read weights {file}: {_first_line(error)}") from None


def sort_species(species: Sequence[str]) -> list[str]:
    return sorted(set(species), key=chemical_symbols.index)


def species_of(structures: Sequence[Atoms]) -> list[str]:
    return sort_species([s for atoms in structures for s in atoms.get_chemical_symbols()])


def mean_absolute_errors(
    model: Model,
    structures: Sequence[Atoms],
    energies: Sequence[float],
    forces: Sequence[np.ndarray],
    batch_size: int = 64,
) -> dict[str, float]:
    """Energy MAE (eV per structure and per atom) and force MAE (eV/Å, per component)."""
    predicted = model.predict(structures, batch_size)
    n_atoms = np.array([len(atoms) for atoms in structures])
    energy_error = np.abs(predicted["energy"] - np.asarray(energies, dtype=float))
    force_error = np.abs(
        np.concatenate(predicted["forces"]) - np.concatenate([np.asarray(f) for f in forces])
    )
    return {
        "energy_mae": float(energy_error.mean()),
        "energy_mae_per_atom": float((energy_error / n_atoms).mean()),
        "forces_mae": float(force_error.mean()),
        "n_structures": len(structures),
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def json_default(value: Any) -> Any:
    """numpy scalars and arrays, and paths, become plain JSON (``json.dumps(default=...)``)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
