"""SevenNet: fine-tune 7net-0 on one rung, or train 7net-MF-0 on several rungs at once.

Both recipes run through sevenn's own pieces (``SevenNetCheckpoint`` to build the network,
its graph builder, ``AtomGraphData``, the loss definitions of ``sevenn.train.loss``, and
``append_modality_to_model_dct`` to add modalities) under hifidata's own epoch loop, so that
training stops early on the validation loss and keeps the best epoch's weights, as the CHGNet
recipe does (``hifidata.training.finetune``).

Reference energies. SevenNet's atomic energy is ``scale_z · y_i + shift_z`` (per element z,
per modality in 7net-MF-0), so ``shift`` is a per-element energy per atom. The pretrained
shifts are VASP-PBE energies; a PySCF reference sits ~1.4 eV/atom away. Before training, and
again after it (forces cannot see a constant, so an energy offset drifts in while they are
fitted), the shift of every element present is moved by the least-squares per-element fit of
(label − prediction), per rung for a multi-fidelity model. Shift and scale stay frozen while
the network trains.

Multi-fidelity. 7net-MF-0 feeds a one-hot modality into some linear layers and keeps a
modality-wise shift. Each rung gets a NEW modality appended (weights starting at zero, i.e. at
the network's common part, as ``sevenn cp --append_modal_yaml`` does); a rung whose name the
base already has (a hifidata multi-fidelity model trained further) reuses its slot. Every
structure in a batch is evaluated with its own rung's modality.
"""

from __future__ import annotations

import copy
import math
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from hifidata.calculators.mlip import SEVENNET_PRETRAINED, default_device
from hifidata.errors import ModelError
from hifidata.training.finetune import (
    LabeledSet,
    Progress,
    check_labels,
    fit_reference_energies,
)
from hifidata.training.models import (
    UNITS,
    Model,
    mean_absolute_errors,
    read_model_json,
    sort_species,
    species_of,
    torch_threads,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # e3nn and torch_geometric warn on import
    import sevenn
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.checkpoint import SevenNetCheckpoint
    from sevenn.model_build import build_E3_equivariant_model
    from sevenn.nn.scale import Rescale, get_resolved_shift_scale
    from sevenn.scripts.convert_model_modality import append_modality_to_model_dct
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from sevenn.train.loss import ForceLoss, PerAtomEnergyLoss, StressLoss
    from torch_geometric.data import Batch
    from torch_geometric.loader import DataLoader

WEIGHTS_FILE = "sevennet.pth"
#: Pretrained checkpoints shipped inside the sevenn wheel (others would be downloaded).
PRETRAINED = SEVENNET_PRETRAINED
#: the modality a pretrained multi-fidelity checkpoint predicts unless told otherwise
PRETRAINED_MODAL = "PBE"
#: sevenn's StressLoss compares stresses in kbar
KBAR_PER_EV_PER_A3 = 1602.1766208
_RESCALE = "rescale_atomic_energy"


class SevennetModel(Model):
    """A SevenNet network with its sevenn config; multi-fidelity ones predict one modality.

    network: sevenn's ``AtomGraphSequential``; config: the checkpoint's config dict (sevenn's
    keys); species: the elements it was trained on; modal: the modality ``predict`` uses (one
    of ``modalities``; None for a single-modality network).
    """

    kind = "sevennet"

    def __init__(
        self,
        network,
        config: dict[str, Any],
        species: Sequence[str],
        modal: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(metadata)
        self.network = network.eval()
        self.config = config
        self._species = sort_species(species)
        modalities = self.modalities
        if modalities is None and modal is not None:
            raise ValueError(f"modal {modal!r} given, but this SevenNet model has no modalities")
        if modalities is not None and modal not in modalities:
            raise ValueError(f"modal {modal!r} is not one of this model's modalities {modalities}")
        self.modal = modal

    @property
    def species(self) -> list[str]:
        return list(self._species)

    @property
    def modalities(self) -> list[str] | None:
        """The network's modalities in index order (the shipped ones first), or None."""
        modal_map = self.network.modal_map
        return sorted(modal_map, key=modal_map.get) if modal_map else None

    @property
    def rungs(self) -> list[str]:
        if self.modalities is None:
            return super().rungs
        return list(self.metadata.get("rungs") or self.modalities)

    @property
    def cutoff(self) -> float:
        return float(self.config[KEY.CUTOFF])

    @property
    def reference_energies(self) -> dict[str, Any]:
        """Per-element energies (eV/atom, SevenNet's shift) of the trained species; for a
        multi-fidelity network with modality-wise shift, one such dict per modality."""
        shift, _ = get_resolved_shift_scale(
            self.network._modules[_RESCALE], self.config[KEY.TYPE_MAP], self.network.modal_map
        )
        numbers = {s: chemical_symbols.index(s) for s in self._species}
        if isinstance(shift, dict):
            return {modal: {s: float(values[z]) for s, z in numbers.items()}
                    for modal, values in shift.items()}
        return {s: float(shift[z]) for s, z in numbers.items()}

    def with_modal(self, name: str) -> SevennetModel:
        """The same network (weights shared, not copied) predicting modality ``name``."""
        if not self.modalities or name not in self.modalities:
            raise ValueError(f"no modality {name!r} in this SevenNet model; "
                             f"available: {self.modalities or []}")
        return SevennetModel(self.network, self.config, self._species, name, self.metadata)

    def predict(self, structures: Sequence[Atoms], batch_size: int = 64) -> dict[str, Any]:
        """{"energy": (N,) eV, "forces": [(n, 3) eV/Å], "stress": [Voigt 6 eV/Å³ or None]}.

        One network call per ``batch_size`` structures; the stress follows ASE's convention
        (``atoms.get_stress()``) and is None for a structure that is not periodic.
        """
        return predict_network(self.network, structures, self.cutoff, self.modal, batch_size)

    def _kind_fields(self) -> dict[str, Any]:
        return {
            "units": {**UNITS, "stress": "eV/Å³"},  # replaces the common entry
            "weights": WEIGHTS_FILE,
            "cutoff": self.cutoff,
            "n_parameters": int(sum(p.numel() for p in self.network.parameters())),
            "modalities": self.modalities,
            "modal": self.modal,
            "reference_energies": self.reference_energies,
        }

    def _save_weights(self, path: Path) -> None:
        torch.save(checkpoint_dict(self.network, self.config), path / WEIGHTS_FILE)


def checkpoint_dict(network, config: dict[str, Any], **extra) -> dict[str, Any]:
    """A sevenn checkpoint, the layout ``SevenNetCheckpoint`` (and so ``SevenNetCalculator``)
    reads: the config with the network's current shift and scale, and its state dict."""
    config = copy.deepcopy(config)
    config[KEY.SHIFT], config[KEY.SCALE] = get_resolved_shift_scale(
        network._modules[_RESCALE], config[KEY.TYPE_MAP], network.modal_map
    )
    config["version"] = sevenn.__version__  # the layout written is this sevenn's
    return {
        "config": config,
        "model_state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "optimizer_state_dict": {},
        "scheduler_state_dict": {},
        "epoch": None,
        "time": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "hash": uuid.uuid4().hex,
        **extra,
    }


def load_sevennet(path: Path, document: dict[str, Any], device: str | None = None
                  ) -> SevennetModel:
    """The model of kind sevennet in directory ``path`` (``document``: its model.json)."""
    file = path / document.get("weights", WEIGHTS_FILE)
    if not file.is_file():
        raise ModelError(f"{path} has no weights file {file.name}")
    try:
        network, config = read_checkpoint(file, device)
    except Exception as error:  # torch/pickle raise many types for a damaged file
        text = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ModelError(f"cannot read weights {file}: {text}") from None
    return SevennetModel(network, config, document.get("species") or [],
                         document.get("modal"), document.get("metadata") or {})


def load_pretrained(name: str, device: str | None = None) -> SevennetModel:
    """A pretrained SevenNet by name (7net-mf-0 predicts its PBE modality; with_modal switches)."""
    from sevenn.util import pretrained_name_to_path

    network, config = read_checkpoint(pretrained_name_to_path(name), device)
    species = config.get(KEY.CHEMICAL_SPECIES) or []
    modal = PRETRAINED_MODAL if network.modal_map else None
    return SevennetModel(network, config, species, modal, {"recipe": "pretrained", "name": name})


def read_checkpoint(file: str | Path, device: str | None = None):
    """(network, config) from a sevenn checkpoint file, the network in eval mode on ``device``."""
    checkpoint = SevenNetCheckpoint(file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Some keys are not used", cutoff 0
        network = checkpoint.build_model()
    return network.to(device or default_device()).eval(), checkpoint.config


def load_base(base: str | Path, device: str):
    """(network, config) to start from: a pretrained name (PRETRAINED), a sevenn checkpoint
    file, or a hifidata model directory of kind sevennet."""
    base_path = Path(base)
    if str(base) in PRETRAINED:
        from sevenn.util import pretrained_name_to_path

        return read_checkpoint(pretrained_name_to_path(str(base)), device)
    if base_path.is_dir():
        document = read_model_json(base_path)
        if document["kind"] != SevennetModel.kind:
            raise ValueError(f"base model {base} is a {document['kind']} model; "
                             "SevenNet recipes start from a sevennet one")
        model = load_sevennet(base_path, document, device)
        return model.network, model.config
    if base_path.is_file():
        return read_checkpoint(base_path, device)
    raise ValueError(f"unknown SevenNet base {str(base)!r}: use one of {', '.join(PRETRAINED)}, "
                     "a sevenn checkpoint file or a hifidata model directory")


# ---------------------------------------------------------------------------------------------
# graphs and prediction


def make_graph(
    atoms: Atoms,
    cutoff: float,
    modal: str | None = None,
    labels: tuple[float, np.ndarray, np.ndarray | None] | None = None,
) -> AtomGraphData:
    """sevenn's graph of ``atoms``; ``labels`` (energy eV, forces eV/Å, ASE stress or None)
    are stored the way sevenn's losses read them (stress: −σ, order xx yy zz xy yz zx)."""
    data = unlabeled_atoms_to_graph(atoms, cutoff)  # molecules: sevenn widens the cell itself
    data.pop(KEY.INFO)  # a dict per graph does not batch
    if labels is not None:
        energy, forces, stress = labels
        data[KEY.ENERGY] = np.array(float(energy))
        data[KEY.PER_ATOM_ENERGY] = np.array(float(energy) / len(atoms))
        data[KEY.FORCE] = np.asarray(forces, dtype=float)
        sevenn_stress = (np.full(6, np.nan) if stress is None
                         else -np.asarray(stress, dtype=float)[[0, 1, 2, 5, 3, 4]])
        data[KEY.STRESS] = sevenn_stress.reshape(1, 6)
    graph = AtomGraphData.from_numpy_dict(data)
    if modal is not None:
        graph[KEY.DATA_MODALITY] = modal
    return graph


def predict_network(
    network, structures: Sequence[Atoms], cutoff: float, modal: str | None, batch_size: int = 64
) -> dict[str, Any]:
    """Energies, forces and stresses from ``network`` with one call per batch (see predict)."""
    check_elements(network, structures)
    device = next(network.parameters()).device
    network.eval()  # no graph for second derivatives
    network.set_is_batch_data(True)
    energies: list[float] = []
    forces: list[np.ndarray] = []
    stresses: list[np.ndarray | None] = []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        batch = Batch.from_data_list([make_graph(a, cutoff, modal) for a in chunk]).to(device)
        output = network(batch)
        energies += output[KEY.PRED_TOTAL_ENERGY].detach().cpu().reshape(-1).tolist()
        forces += split_forces(output, chunk)
        stress = output[KEY.PRED_STRESS].detach().cpu().double().numpy().reshape(-1, 6)
        for atoms, row in zip(chunk, stress, strict=True):
            # sevenn's stress is −σ in the order xx yy zz xy yz zx; ASE's Voigt is yz xz xy
            stresses.append(-row[[0, 1, 2, 4, 5, 3]] if atoms.pbc.all() else None)
    return {"energy": np.array(energies, dtype=float), "forces": forces, "stress": stresses}


def split_forces(output, chunk: Sequence[Atoms]) -> list[np.ndarray]:
    if KEY.PRED_FORCE not in output:  # no edge in the whole batch: nothing pulls anything
        return [np.zeros((len(atoms), 3)) for atoms in chunk]
    forces = output[KEY.PRED_FORCE].detach().cpu().double().numpy()
    bounds = np.cumsum([len(atoms) for atoms in chunk])[:-1]
    return np.split(forces, bounds)


def check_elements(network, structures: Sequence[Atoms]) -> None:
    known = network.type_map or {}
    for index, atoms in enumerate(structures):
        unknown = sorted({int(z) for z in atoms.numbers} - set(known))
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in unknown)
            raise ValueError(f"structure {index} ({atoms.get_chemical_formula()}): "
                             f"the SevenNet model knows no {names}")


# ---------------------------------------------------------------------------------------------
# reference energies (the shift)


def refit_shift(
    network,
    cutoff: float,
    data: LabeledSet,
    modal: str | None = None,
    batch_size: int = 64,
) -> dict[int, float]:
    """Move the shift of the elements in ``data`` by the per-element least-squares fit of
    (label − prediction); returns the new shifts (eV/atom) by atomic number.

    For a network with modality-wise shift only ``modal``'s row moves.
    """
    predicted = predict_network(network, data.structures, cutoff, modal, batch_size)["energy"]
    residual = np.asarray(data.energies, dtype=float) - predicted
    corrections = fit_reference_energies(data.structures, residual)
    rescale = network._modules[_RESCALE]
    if isinstance(rescale, Rescale):
        raise ValueError("the SevenNet network has one shift for all elements; fitting "
                         "reference energies needs a per-element one")
    shift = rescale.shift  # (species,) or, modality-wise, (modalities, species)
    row = network.modal_map[modal] if shift.dim() == 2 else None
    with torch.no_grad():
        target = shift[row] if row is not None else shift  # a view: writes go into the shift
        for z, correction in corrections.items():
            target[network.type_map[z]] += correction
    return {z: float(target[network.type_map[z]]) for z in corrections}


# ---------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class SevennetSettings:
    """The hyperparameters of one SevenNet training run (see finetune_sevennet)."""

    epochs: int
    learning_rate: float
    batch_size: int
    patience: int
    energy_weight: float
    force_weight: float
    stress_weight: float
    huber_delta: float
    seed: int


def finetune_sevennet(
    train: LabeledSet,
    val: LabeledSet | None = None,
    *,
    base: str = "7net-0",
    epochs: int = 60,
    learning_rate: float = 1e-3,
    batch_size: int = 4,
    patience: int = 20,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    stress_weight: float = 0.01,
    huber_delta: float = 0.01,
    seed: int = 0,
    device: str | None = None,
    num_threads: int | None = 1,
    out_dir: str | Path | None = None,
    keep_checkpoints: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> SevennetModel:
    """Fine-tune a SevenNet on total energies (eV), forces (eV/Å) and, when every training
    structure has one, stresses (Voigt eV/Å³, ASE's sign); returns the best epoch's model.

    base: "7net-0" (or another name in PRETRAINED), a sevenn checkpoint file, or a hifidata
        model directory of kind sevennet. A multi-fidelity base is trained and predicts in its
        ``default_modal`` modality; use train_multifidelity to add rungs to it.
    epochs: the most epochs; training stops earlier when the validation loss (the training
        loss without a validation set) has not improved for ``patience`` epochs. ``epochs=0``
        gives the base with refitted reference energies only (the baseline to beat).
    learning_rate: Adam's initial rate, decayed linearly to 1 % of it over all steps (4e-3,
        sevenn's preset, was too noisy on water dimers).
    energy_weight, force_weight, stress_weight: weights of the Huber losses on energy
        (eV/atom), forces (eV/Å) and stress (kbar), sevenn's fine-tuning preset; the same
        weights combine the MAEs into the validation loss early stopping watches.
    huber_delta: the Huber loss's δ (sevenn's preset 0.01).
    device, num_threads, out_dir, keep_checkpoints, metadata, progress: as finetune_chgnet;
        with ``keep_checkpoints`` every improved epoch is written as a sevenn checkpoint in
        out_dir/checkpoints.
    """
    device = device or default_device()
    settings = SevennetSettings(epochs, learning_rate, batch_size, patience, energy_weight,
                                force_weight, stress_weight, huber_delta, seed)
    started = time.perf_counter()
    with torch_threads(num_threads):
        network, config = load_base(base, device)
        modal = None
        if network.modal_map:
            modal = config.get(KEY.DEFAULT_MODAL) or next(iter(network.modal_map))
        sets = {modal: (train, _or_empty(val))}
        model = _fit(network, config, sets, modal, settings, device, out_dir, keep_checkpoints,
                     progress)
    train_metrics = model.metadata.pop("metrics")[modal]
    model.metadata = {
        "recipe": "finetune",
        "n_train": len(train.structures),
        "n_val": len(_or_empty(val).structures),
        "hyperparameters": {"base": str(base), **asdict(settings),
                            "train_stress": model.metadata["train_stress"]},
        "training": model.metadata["training"],
        "metrics": train_metrics,
        "train_seconds": round(time.perf_counter() - started, 1),
        **(metadata or {}),
    }
    if out_dir is not None:
        model.save(out_dir)
    return model


def train_multifidelity(
    data: dict[str, tuple[LabeledSet, LabeledSet | None]],
    *,
    base: str = "7net-mf-0",
    default_rung: str | None = None,
    epochs: int = 60,
    learning_rate: float = 3e-3,
    batch_size: int = 4,
    patience: int = 20,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    stress_weight: float = 0.01,
    huber_delta: float = 0.01,
    seed: int = 0,
    device: str | None = None,
    num_threads: int | None = 1,
    out_dir: str | Path | None = None,
    keep_checkpoints: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> SevennetModel:
    """Train one multi-fidelity SevenNet on several rungs at once, one modality per rung.

    data: {rung name: (training set, validation set or None)}, in ladder order.
    base: "7net-mf-0", a multi-fidelity sevenn checkpoint, or a hifidata sevennet model
        directory with modalities (a rung it already has keeps its slot; others are appended).
    default_rung: the modality the returned model predicts (default: the last key of
        ``data``, the top rung); ``SevennetModel.with_modal`` and ``load_model(path,
        rung=...)`` give the others.
    The other keywords are finetune_sevennet's, but the learning rate starts at 3e-3: the new
    modalities start from zero weights, and at 1e-3 their rungs stayed nearly the same
    surface (docs/training.md). The validation loss watched is over all rungs'
    validation structures together; stress is trained when every training structure of every
    rung has one.
    """
    if not data:
        raise ValueError("no rungs to train on")
    rungs = list(data)
    default_rung = rungs[-1] if default_rung is None else default_rung
    if default_rung not in data:
        raise ValueError(f"default_rung {default_rung!r} is not one of the rungs {rungs}")
    device = device or default_device()
    settings = SevennetSettings(epochs, learning_rate, batch_size, patience, energy_weight,
                                force_weight, stress_weight, huber_delta, seed)
    started = time.perf_counter()
    with torch_threads(num_threads):
        network, config = load_base(base, device)
        network, config = add_modalities(network, config, rungs, device)
        sets = {rung: (train, _or_empty(val)) for rung, (train, val) in data.items()}
        model = _fit(network, config, sets, default_rung, settings, device, out_dir,
                     keep_checkpoints, progress)
    model.metadata = {
        "recipe": "multifidelity",
        "rungs": rungs,
        "default_rung": default_rung,
        "n_train": {rung: len(train.structures) for rung, (train, _) in sets.items()},
        "n_val": {rung: len(val.structures) for rung, (_, val) in sets.items()},
        "hyperparameters": {"base": str(base), **asdict(settings),
                            "train_stress": model.metadata["train_stress"]},
        "training": model.metadata["training"],
        "metrics": model.metadata["metrics"],
        "train_seconds": round(time.perf_counter() - started, 1),
        **(metadata or {}),
    }
    if out_dir is not None:
        model.save(out_dir)
    return model


def add_modalities(network, config: dict[str, Any], names: Sequence[str], device: str):
    """(network, config) with a new modality for every name the network does not have yet.

    The new modalities' weights start at zero (the network's common part) and their shift
    at the default modality's, as sevenn's own ``append_modal`` does; the shifts of the
    elements trained on are fitted afterwards.
    """
    if not network.modal_map:
        raise ValueError("the base SevenNet has no modalities; start from 7net-mf-0 or a "
                         "multi-fidelity model")
    if not config.get(KEY.USE_MODAL_WISE_SHIFT, False):
        raise ValueError("the base SevenNet has no modality-wise shift, so rungs with "
                         "different absolute energies cannot share it")
    modal_map = dict(network.modal_map)
    new = [name for name in names if name not in modal_map]
    if not new:
        return network, config
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    config = copy.deepcopy(config)
    start_from = config.get(KEY.DEFAULT_MODAL) or next(iter(modal_map))
    shift = state[f"{_RESCALE}.shift"]
    state[f"{_RESCALE}.shift"] = torch.cat(
        [shift, shift[modal_map[start_from]].expand(len(new), -1)]
    )
    old_count = len(modal_map)
    for name in new:
        modal_map[name] = len(modal_map)
    config[KEY.MODAL_MAP] = modal_map
    config[KEY.NUM_MODALITIES] = len(modal_map)
    config[KEY.MODAL_LIST] = list(modal_map)
    config[KEY.SHIFT] = {name: 0.0 for name in modal_map}  # placeholders: the state dict rules
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        state = append_modality_to_model_dct(state, copy.deepcopy(config), old_count, len(new))
        grown = build_E3_equivariant_model(config)
    grown.load_state_dict(state, strict=True)
    return grown.to(device).eval(), config


def _fit(
    network,
    config: dict[str, Any],
    sets: dict[str | None, tuple[LabeledSet, LabeledSet]],
    modal: str | None,
    settings: SevennetSettings,
    device: str,
    out_dir: str | Path | None,
    keep_checkpoints: bool,
    progress: Progress | None,
) -> SevennetModel:
    """Reference energies, training, reference energies again, and metrics for every rung."""
    cutoff = float(config[KEY.CUTOFF])
    for train, val in sets.values():
        check_set(network, train)
        if val.structures:
            check_set(network, val)
    train_stress = all(_has_stress(train) for train, _ in sets.values())
    for rung, (train, _) in sets.items():
        refit_shift(network, cutoff, train, rung)
    checkpoint_dir = Path(out_dir) / "checkpoints" if out_dir and keep_checkpoints else None
    record = train_network(network, config, sets, settings, train_stress, device,
                           checkpoint_dir, progress)
    for rung, (train, _) in sets.items():
        refit_shift(network, cutoff, train, rung)  # the offset that drifted in
    species = species_of([a for train, _ in sets.values() for a in train.structures])
    model = SevennetModel(network, config, species, modal)
    metrics = {}
    for rung, (train, val) in sets.items():
        rung_model = model if rung == modal else model.with_modal(rung)
        metrics[rung] = {"train": _errors(rung_model, train, train_stress)}
        if val.structures:
            metrics[rung]["val"] = _errors(rung_model, val, train_stress)
    model.metadata = {"training": record, "metrics": metrics, "train_stress": train_stress}
    return model


def train_network(
    network,
    config: dict[str, Any],
    sets: dict[str | None, tuple[LabeledSet, LabeledSet]],
    settings: SevennetSettings,
    train_stress: bool,
    device: str,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``network`` in place (shift and scale frozen); it ends with the best epoch.

    Returns the record: epochs run, best epoch, the loss watched, the loss history and the
    wall time of every epoch.
    """
    torch.manual_seed(settings.seed)
    cutoff = float(config[KEY.CUTOFF])
    train_graphs = [g for rung, (train, _) in sets.items()
                    for g in labeled_graphs(train, cutoff, rung, train_stress)]
    val_graphs = [g for rung, (_, val) in sets.items()
                  for g in labeled_graphs(val, cutoff, rung, train_stress)]
    has_val = bool(val_graphs)
    generator = torch.Generator().manual_seed(settings.seed)
    train_loader = DataLoader(train_graphs, batch_size=settings.batch_size, shuffle=True,
                              generator=generator)
    val_loader = DataLoader(val_graphs, batch_size=max(settings.batch_size, 16))
    losses = loss_terms(settings, train_stress)
    optimizer = torch.optim.Adam(
        [p for p in network.parameters() if p.requires_grad], lr=settings.learning_rate
    )
    steps = max(settings.epochs * len(train_loader), 1)
    scheduler = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=0.01, total_iters=steps
    )
    history: dict[str, list] = {"train_loss": [], "val_loss": [], "epoch_seconds": []}
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(network.state_dict())
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        train_loss = run_epoch(network, train_loader, losses, settings, train_stress, device,
                               optimizer, scheduler)
        val_loss = (run_epoch(network, val_loader, losses, settings, train_stress, device)
                    if has_val else None)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        history["epoch_seconds"].append(round(time.perf_counter() - started, 3))
        if progress is not None:
            progress(epoch, settings.epochs, train_loss, val_loss)
        watched = val_loss if has_val else train_loss
        if not math.isfinite(watched):
            raise RuntimeError(f"training diverged at epoch {epoch} (loss {watched})")
        if watched < best_loss * (1 - 1e-4):  # gains under 0.01 % are noise
            best_loss, best_epoch = watched, epoch
            best_state = copy.deepcopy(network.state_dict())
            if checkpoint_dir is not None:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                torch.save(
                    checkpoint_dict(network, config, epoch=epoch,
                                    optimizer_state_dict=optimizer.state_dict(),
                                    scheduler_state_dict=scheduler.state_dict()),
                    checkpoint_dir / f"checkpoint_epoch{epoch:04d}.pth",
                )
        elif epoch - best_epoch >= settings.patience:
            break
    network.load_state_dict(best_state)
    network.eval()
    return {
        "epochs_run": len(history["train_loss"]),
        "best_epoch": best_epoch,
        "watched": "val_loss" if has_val else "train_loss",
        **history,
    }


def labeled_graphs(data: LabeledSet, cutoff: float, modal: str | None, stress: bool
                   ) -> list[AtomGraphData]:
    stresses = data.stresses if stress else None
    return [
        make_graph(atoms, cutoff, modal,
                   (energy, force, stresses[index] if stresses is not None else None))
        for index, (atoms, energy, force) in enumerate(
            zip(data.structures, data.energies, data.forces, strict=True))
    ]


def loss_terms(settings: SevennetSettings, stress: bool) -> list[tuple[Any, float]]:
    """sevenn's loss definitions (energy per atom, forces, stress in kbar) with their weights;
    stress labels that are NaN (molecules) are left out by sevenn itself."""
    criterion = torch.nn.HuberLoss(delta=settings.huber_delta)
    terms = [(PerAtomEnergyLoss(criterion=criterion), settings.energy_weight),
             (ForceLoss(criterion=criterion), settings.force_weight)]
    if stress:
        terms.append((StressLoss(criterion=criterion), settings.stress_weight))
    return terms


def run_epoch(
    network,
    loader: DataLoader,
    losses: list[tuple[Any, float]],
    settings: SevennetSettings,
    stress: bool,
    device: str,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> float:
    """One pass over ``loader`` (training when ``optimizer`` is given); returns the weighted
    MAEs (E eV/atom, F eV/Å, S kbar) over the pass, the loss early stopping watches."""
    training = optimizer is not None
    network.train(training)  # train mode keeps the force graph for the loss's gradient
    network.set_is_batch_data(True)
    errors: dict[str, list[torch.Tensor]] = {"energy": [], "forces": [], "stress": []}
    for batch in loader:
        batch = batch.to(device)
        output = network(batch)
        if training:
            optimizer.zero_grad()
            loss = sum(weight * term.get_loss(output, network) for term, weight in losses)
            loss.backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            n_atoms = output[KEY.NUM_ATOMS]
            errors["energy"].append(
                ((output[KEY.PRED_TOTAL_ENERGY] - output[KEY.ENERGY]) / n_atoms).abs().cpu())
            errors["forces"].append((output[KEY.PRED_FORCE] - output[KEY.FORCE]).abs().cpu()
                                    .reshape(-1))
            if stress:
                difference = (output[KEY.PRED_STRESS] - output[KEY.STRESS]).reshape(-1)
                difference = difference[~torch.isnan(difference)]
                errors["stress"].append(difference.abs().cpu() * KBAR_PER_EV_PER_A3)
    loss = (settings.energy_weight * torch.cat(errors["energy"]).mean()
            + settings.force_weight * torch.cat(errors["forces"]).mean())
    if stress and sum(len(e) for e in errors["stress"]):
        loss = loss + settings.stress_weight * torch.cat(errors["stress"]).mean()
    return round(float(loss), 6)


def check_set(network, data: LabeledSet) -> None:
    """One finite energy, (n, 3) forces and, where given, a Voigt 6 stress per structure."""
    check_labels(data.structures, data.energies, data.forces)
    check_elements(network, data.structures)
    if data.stresses is None:
        return
    if len(data.stresses) != len(data.structures):
        raise ValueError(f"{len(data.structures)} structures and {len(data.stresses)} "
                         "stresses: need one (or None) per structure")
    for index, (atoms, stress) in enumerate(zip(data.structures, data.stresses, strict=True)):
        if stress is None:
            continue
        if not atoms.pbc.all():
            raise ValueError(f"structure {index} is not periodic but has a stress label")
        if np.shape(stress) != (6,) or not np.isfinite(stress).all():
            raise ValueError(f"structure {index}: stress must be a finite Voigt 6-vector "
                             f"(eV/Å³), got shape {np.shape(stress)}")


def _has_stress(data: LabeledSet) -> bool:
    return data.stresses is not None and all(s is not None for s in data.stresses)


def _or_empty(data: LabeledSet | None) -> LabeledSet:
    return data if data is not None else LabeledSet([], [], [])


def _errors(model: SevennetModel, data: LabeledSet, stress: bool) -> dict[str, float]:
    """mean_absolute_errors, plus the stress MAE (eV/Å³) when stress was trained."""
    errors = mean_absolute_errors(model, data.structures, data.energies, data.forces)
    if stress and _has_stress(data):
        predicted = model.predict(data.structures)["stress"]
        errors["stress_mae"] = float(np.mean(np.abs(
            np.array(predicted, dtype=float) - np.array(data.stresses, dtype=float))))
    return errors
