"""Fine-tune a pretrained CHGNet on one rung of labels, and the training loop Δ-learning shares.

The pretrained CHGNet 0.3.0 learned Materials Project (VASP PBE) energies; a PySCF or CP2K
reference sits ~1.6 eV/atom away from them. That offset is per element, so it goes into the
model's composition model (AtomRef, frozen while training) by least squares before the first
gradient step, and the network only learns the shape of the surface. The AtomRef is fitted
once more after training: the read-out has no bias, so while the network fits forces (which
cannot see a constant) a constant energy offset drifts in, and least squares takes it out.

Training runs through chgnet's own ``Trainer``, one epoch per call, so that hifidata can stop
early on the validation loss and keep the best epoch's weights: the Trainer itself runs every
epoch it is given, and its ``best_model`` is the live model, not a copy of the best one.
"""

from __future__ import annotations

import copy
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from ase.units import GPa
from torch.utils.data import DataLoader

from hifidata.calculators.mlip import (
    PRETRAINED,
    default_device,
    load_chgnet,
    model_cutoff,
    predict_batch,
    quiet,
    to_structure,
)
from hifidata.training.models import (
    ChgnetModel,
    load_model,
    mean_absolute_errors,
    species_of,
    torch_threads,
)

with warnings.catch_warnings():  # chgnet.data.dataset silences every warning on import
    from chgnet.data.dataset import collate_graphs

#: progress(epoch, n_epochs, train_loss, val_loss); val_loss is None without a validation set.
Progress = Callable[[int, int, float, float | None], None]


class LabeledSet(NamedTuple):
    """Structures with total energies (eV) and forces (eV/Å), one of each per structure, and
    optionally stresses (Voigt 6-vectors in eV/Å³, ASE's sign; None for a molecule)."""

    structures: Sequence[Atoms]
    energies: Sequence[float]
    forces: Sequence[np.ndarray]
    stresses: Sequence[np.ndarray | None] | None = None

    def has_stress(self) -> bool:
        """Whether every structure has a stress label (only then is stress trained)."""
        return bool(self.structures) and self.stresses is not None and all(
            s is not None and np.isfinite(s).all() for s in self.stresses
        )


@dataclass(frozen=True)
class TrainingSettings:
    """The hyperparameters of one training run (see finetune_chgnet for their meaning)."""

    epochs: int
    learning_rate: float
    batch_size: int
    patience: int
    energy_weight: float
    force_weight: float
    seed: int
    stress_weight: float = 0.1


def fit_reference_energies(
    structures: Sequence[Atoms], energies: Sequence[float]
) -> dict[int, float]:
    """Per-element energies (eV) whose sums over each composition best match ``energies``.

    Least squares on the composition counts; when the compositions cannot tell the elements
    apart (all structures H4O2, say) the minimum-norm solution is returned, which still
    reproduces the energy of every composition seen.
    """
    if len(structures) != len(energies) or not structures:
        raise ValueError(f"need one energy per structure: {len(structures)} structures, "
                         f"{len(energies)} energies")
    numbers = sorted({int(z) for atoms in structures for z in atoms.numbers})
    counts = np.array(
        [[np.count_nonzero(atoms.numbers == z) for z in numbers] for atoms in structures],
        dtype=float,
    )
    solution, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=float), rcond=None)
    return dict(zip(numbers, solution.tolist(), strict=True))


def refit_reference_energies(
    network, structures: Sequence[Atoms], energies: Sequence[float], batch_size: int = 64
) -> dict[int, float]:
    """Shift the network's AtomRef so that it has no per-element offset against ``energies``.

    The shift is fitted to what the network gets wrong (label − prediction), so the part of
    the energy the network itself carries is kept. Returns the new per-element energies (eV)
    of the elements in ``structures``.
    """
    atom_ref = network.composition_model
    if atom_ref is None or not getattr(atom_ref, "is_intensive", False):
        # an extensive AtomRef inside an intensive CHGNet would add N × the per-atom energy
        raise ValueError("the network needs an intensive AtomRef composition model")
    atom_ref.fitted = True  # an AtomRef refuses to predict until it is marked fitted
    with quiet():
        predicted = predict_batch(network, structures, batch_size=batch_size)["energy"]
    residual = np.asarray(energies, dtype=float) - np.asarray(predicted)
    shifts = fit_reference_energies(structures, residual)
    weight = atom_ref.fc.weight
    with torch.no_grad():
        for z, shift in shifts.items():
            weight[0, z - 1] += shift
    return {z: float(weight[0, z - 1]) for z in shifts}


def finetune_chgnet(
    train: Sequence[Atoms],
    energies: Sequence[float],
    forces: Sequence[np.ndarray],
    val: Sequence[Atoms] | None = None,
    val_energies: Sequence[float] | None = None,
    val_forces: Sequence[np.ndarray] | None = None,
    *,
    base: str = "chgnet-0.3.0",
    epochs: int = 100,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    patience: int = 25,
    energy_weight: float = 30.0,
    force_weight: float = 1.0,
    stress_weight: float = 0.1,
    seed: int = 0,
    device: str | None = None,
    num_threads: int | None = 1,
    out_dir: str | Path | None = None,
    keep_checkpoints: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: Progress | None = None,
    stresses: Sequence[np.ndarray | None] | None = None,
    val_stresses: Sequence[np.ndarray | None] | None = None,
) -> ChgnetModel:
    """Fine-tune a CHGNet on total energies (eV), forces (eV/Å) and, where every training
    structure has one, stresses (Voigt, eV/Å³, ASE's sign); returns the best epoch.

    base: a pretrained name ("chgnet-0.3.0", "chgnet-r2scan"), a CHGNet checkpoint file, or
        a hifidata model directory of kind chgnet (to go on from an earlier iteration).
    epochs: the most epochs to run; training stops earlier when the validation loss has not
        improved for ``patience`` epochs. ``epochs=0`` gives the base model with refitted
        reference energies only (the baseline fine-tuning has to beat).
    learning_rate: Adam's initial rate, cosine-decayed to 1 % of it over ``epochs``.
    batch_size: structures per optimizer step.
    energy_weight, force_weight: weights of the energy (eV/atom) and force (eV/Å) terms of the
        MSE loss, and of their MAEs in the validation loss that early stopping watches (the
        training set's when there is no validation set). With equal weights the force term is
        ~1000x larger and energies go unlearned; 30 halved the energy error at no cost.
    stress_weight: weight of the stress term (GPa, as CHGNet's Trainer takes it; 0.1 is CHGNet's
        own default), used only when every training structure has a stress label.
    seed: seeds the shuffling (and a fresh network's weights).
    device: "cpu", "cuda", ...; default cuda when present.
    num_threads: torch threads while training (restored after); None keeps torch's setting.
        One is fastest for molecules and safe beside other busy processes.
    out_dir: the model directory to write (nothing is written when None); with
        ``keep_checkpoints`` chgnet's Trainer also writes its checkpoints in out_dir/checkpoints.
    metadata: free-form entries (rung, method ids, ...) added to the model's metadata.
    progress: called after every epoch as progress(epoch, epochs, train_loss, val_loss).
    """
    device = device or default_device()
    settings = TrainingSettings(
        epochs, learning_rate, batch_size, patience, energy_weight, force_weight, seed,
        stress_weight,
    )
    network = load_base(base, device)
    return fit_network(
        network, "finetune", settings,
        LabeledSet(train, energies, forces, stresses),
        LabeledSet(val or [], val_energies, val_forces, val_stresses),
        device=device, num_threads=num_threads, out_dir=out_dir,
        keep_checkpoints=keep_checkpoints, described={"base": base},
        metadata=metadata, progress=progress,
    )


def load_base(base: str, device: str):
    """The network to start from: a pretrained name, a checkpoint file or a model directory."""
    if base not in PRETRAINED and Path(base).is_dir():
        model = load_model(base, device)
        if not isinstance(model, ChgnetModel):
            raise ValueError(f"base model {base} is a {model.kind} model; fine-tune a chgnet one")
        return model.network
    return load_chgnet(base, device)


def fit_network(
    network,
    recipe: str,
    settings: TrainingSettings,
    train: LabeledSet,
    val: LabeledSet,
    *,
    device: str,
    num_threads: int | None = 1,
    out_dir: str | Path | None = None,
    keep_checkpoints: bool = False,
    described: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ChgnetModel:
    """Reference energies, training, reference energies again, metrics, and the saved model.

    The steps both recipes (fine-tuning, Δ-learning) share; ``described`` adds
    recipe-specific hyperparameters to the metadata.
    """
    started = time.perf_counter()
    checkpoint_dir = Path(out_dir) / "checkpoints" if out_dir and keep_checkpoints else None
    with torch_threads(num_threads):
        check_labels(*train[:3])
        if val.structures:
            check_labels(*val[:3])
        refit_reference_energies(network, train.structures, train.energies)
        record = train_network(network, settings, train, val, device, checkpoint_dir, progress)
        refit_reference_energies(network, train.structures, train.energies)  # drifted offset
        model = ChgnetModel(network, species_of(train.structures))
        metrics = {"train": mean_absolute_errors(model, *train[:3])}
        if val.structures:
            metrics["val"] = mean_absolute_errors(model, *val[:3])
    model.metadata = {
        "recipe": recipe,
        "n_train": len(train.structures),
        "n_val": len(val.structures),
        "hyperparameters": {**(described or {}), **asdict(settings)},
        "training": record,
        "metrics": metrics,
        "train_seconds": round(time.perf_counter() - started, 1),
        **(metadata or {}),
    }
    if out_dir is not None:
        model.save(out_dir)
    return model


def train_network(
    network,
    settings: TrainingSettings,
    train: LabeledSet,
    val: LabeledSet,
    device: str,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``network`` in place (composition model frozen); it ends with the best epoch.

    Returns the record: epochs run, best epoch, the loss watched, and the loss history.
    """
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)  # the loaders' shuffling
    stress = train.has_stress()
    train_loader = make_loader(network, train, settings.batch_size, device, stress)
    has_val = len(val.structures) > 0
    # the Trainer insists on a validation loader; an empty one costs nothing
    val_loader = (
        make_loader(network, val, settings.batch_size, device, stress)
        if has_val else DataLoader([], batch_size=1, collate_fn=collate_graphs)
    )
    trainer = make_trainer(network, settings, len(train_loader), device, stress)
    history: dict[str, list] = {"train_loss": [], "val_loss": []}
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(network.state_dict())
    for epoch in range(1, settings.epochs + 1):
        train_loss, val_loss = run_epoch(trainer, train_loader, val_loader, epoch, settings,
                                         checkpoint_dir, stress)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss if has_val else None)
        if progress is not None:
            progress(epoch, settings.epochs, train_loss, val_loss if has_val else None)
        watched = val_loss if has_val else train_loss
        if not math.isfinite(watched):
            raise RuntimeError(f"training diverged at epoch {epoch} (loss {watched})")
        # gains under 0.01 % are noise: the MAEs come rounded and summed in shuffled order
        if watched < best_loss * (1 - 1e-4):
            best_loss, best_epoch = watched, epoch
            best_state = copy.deepcopy(network.state_dict())
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


def make_trainer(network, settings: TrainingSettings, batches_per_epoch: int, device: str,
                 stress: bool = False):
    """chgnet's Trainer: Adam, MSE on energy per atom, forces (and stresses), cosine decay."""
    from chgnet.trainer import Trainer

    with quiet():
        trainer = Trainer(
            model=network, targets="efs" if stress else "ef", optimizer="Adam",
            criterion="MSE", epochs=max(settings.epochs, 1),
            learning_rate=settings.learning_rate, energy_loss_ratio=settings.energy_weight,
            force_loss_ratio=settings.force_weight, stress_loss_ratio=settings.stress_weight,
            print_freq=10**9, torch_seed=settings.seed, use_device=device,
        )
    # The Trainer's cosine is sized for 10 scheduler steps per epoch but steps min(batches, 10)
    # times, so with 8 batches it stops 80 % of the way down; span exactly this run's steps.
    steps = settings.epochs * min(batches_per_epoch, 10)
    trainer.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        trainer.optimizer, T_max=max(steps, 1), eta_min=1e-2 * settings.learning_rate
    )
    return trainer


def run_epoch(
    trainer,
    train_loader: DataLoader,
    val_loader: DataLoader,
    epoch: int,
    settings: TrainingSettings,
    checkpoint_dir: Path | None,
    stress: bool = False,
) -> tuple[float, float]:
    """One epoch through Trainer.train; returns the weighted train and validation MAEs."""
    trainer.starting_epoch, trainer.epochs = epoch - 1, epoch
    with quiet():
        # save_dir "" writes nothing; None would mean a dated folder in the working directory
        trainer.train(train_loader, val_loader,
                      save_dir=str(checkpoint_dir) if checkpoint_dir else "")
    maes = trainer.training_history
    return tuple(
        round(settings.energy_weight * maes["e"][split][-1]
              + settings.force_weight * maes["f"][split][-1]
              + (settings.stress_weight * maes["s"][split][-1] if stress else 0.0), 6)
        for split in ("train", "val")
    )


def make_loader(
    network, data: LabeledSet, batch_size: int, device: str, stress: bool = False
) -> DataLoader:
    """A shuffling loader of (graph, {"e": eV/atom, "f": eV/Å}), graphs built once up front.

    chgnet's StructureData builds graphs lazily and silently swaps a structure whose graph
    fails for a random other one; building them here names the structure instead.
    """
    cutoff = model_cutoff(network)
    if stress and not data.has_stress():
        raise ValueError("the training structures have stress labels but these do not all")
    stresses = data.stresses if stress else [None] * len(data.structures)
    samples = []
    for index, (atoms, energy, force, stress) in enumerate(
        zip(*data[:3], stresses, strict=True)
    ):
        try:
            graph = network.graph_converter(to_structure(atoms, cutoff), graph_id=index)
        except Exception as error:  # the converter raises bare Exceptions
            raise ValueError(f"structure {index} ({atoms.get_chemical_formula()}): "
                             f"no CHGNet graph ({error})") from None
        targets = {  # CHGNet is intensive: it learns energy per atom
            "e": torch.tensor(energy / len(atoms), dtype=torch.float32),
            "f": torch.tensor(np.asarray(force), dtype=torch.float32),
        }
        if stress is not None:  # CHGNet's stress: 3×3 in GPa, ASE's sign
            targets["s"] = torch.tensor(voigt_6_to_full_3x3_stress(np.asarray(stress)) / GPa,
                                        dtype=torch.float32)
        samples.append((graph, targets))
    return DataLoader(
        samples, batch_size=batch_size, shuffle=True, collate_fn=collate_graphs,
        pin_memory=device.startswith("cuda"),
    )


def check_labels(
    structures: Sequence[Atoms],
    energies: Sequence[float] | None,
    forces: Sequence[np.ndarray] | None,
) -> None:
    """One finite energy and one (n_atoms, 3) force array per structure, or ValueError."""
    if energies is None or forces is None:
        raise ValueError("energies and forces are needed for every structure")
    if not len(structures) == len(energies) == len(forces) or not structures:
        raise ValueError(f"{len(structures)} structures, {len(energies)} energies and "
                         f"{len(forces)} force arrays: need one of each per structure")
    for index, (atoms, energy, force) in enumerate(zip(structures, energies, forces, strict=True)):
        if np.shape(force) != (len(atoms), 3):
            raise ValueError(f"structure {index}: forces have shape {np.shape(force)}, "
                             f"expected ({len(atoms)}, 3)")
        if not (np.isfinite(energy) and np.isfinite(force).all()):
            raise ValueError(f"structure {index}: non-finite energy or forces")
