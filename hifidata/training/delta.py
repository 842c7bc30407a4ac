"""Δ-learning between rungs: a small model of (rung n+1 − rung n), added to a rung-n model.

The difference between two levels of theory is smoother and smaller than either surface, so a
fresh, small CHGNet (16 features, 2 convolutions: 14k parameters instead of 412k) learns it
from the few labels the expensive rung can afford; on water dimers it did better than
fine-tuning the pretrained CHGNet on the difference (docs/training.md). Its forces are minus the
gradient of its own energy, like any CHGNet's, so the composite stays conservative.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from hifidata.calculators.mlip import default_device, quiet
from hifidata.training.finetune import LabeledSet, Progress, TrainingSettings, fit_network
from hifidata.training.models import ChgnetModel, CompositeModel, Model


def train_delta(
    structures: Sequence[Atoms],
    delta_energies: Sequence[float],
    delta_forces: Sequence[np.ndarray],
    val: Sequence[Atoms] | None = None,
    val_delta_energies: Sequence[float] | None = None,
    val_delta_forces: Sequence[np.ndarray] | None = None,
    *,
    hidden: int = 16,
    n_conv: int = 2,
    cutoff: float = 5.0,
    epochs: int = 300,
    learning_rate: float = 3e-3,
    batch_size: int = 4,
    patience: int = 60,
    energy_weight: float = 30.0,
    force_weight: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    num_threads: int | None = 1,
    out_dir: str | Path | None = None,
    keep_checkpoints: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ChgnetModel:
    """Train a fresh small CHGNet on label differences (high − low): energies eV, forces eV/Å.

    hidden: width of every feature vector and hidden layer; n_conv: message-passing layers;
    cutoff: the atom-graph cutoff (Å; the bond graph's is 3 Å or less). The per-element part of
    the difference goes into the composition model by least squares. The other keywords are
    those of :func:`~hifidata.training.finetune.finetune_chgnet`.
    """
    device = device or default_device()
    settings = TrainingSettings(
        epochs, learning_rate, batch_size, patience, energy_weight, force_weight, seed
    )
    torch.manual_seed(seed)  # the fresh weights
    network = fresh_chgnet(hidden, n_conv, cutoff).to(device)
    return fit_network(
        network, "delta", settings,
        LabeledSet(structures, delta_energies, delta_forces),
        LabeledSet(val or [], val_delta_energies, val_delta_forces),
        device=device, num_threads=num_threads, out_dir=out_dir,
        keep_checkpoints=keep_checkpoints,
        described={"hidden": hidden, "n_conv": n_conv, "cutoff": cutoff},
        metadata=metadata, progress=progress,
    )


def fresh_chgnet(hidden: int = 16, n_conv: int = 2, cutoff: float = 5.0):
    """An untrained CHGNet with an all-zero intensive AtomRef (to be fitted)."""
    from chgnet.model import CHGNet

    with quiet():
        network = CHGNet(
            atom_fea_dim=hidden, bond_fea_dim=hidden, angle_fea_dim=hidden,
            atom_conv_hidden_dim=hidden, bond_conv_hidden_dim=hidden,
            mlp_hidden_dims=(hidden, hidden), n_conv=n_conv,
            atom_graph_cutoff=cutoff, bond_graph_cutoff=min(3.0, cutoff),
            # A name, not an AtomRef object: model_args then stay plain data in chgnet.pth. The
            # named (intensive, fitted) AtomRef's weights are zeroed here and fitted later.
            composition_model="MPtrj",
        )
    with torch.no_grad():
        network.composition_model.fc.weight.zero_()
    return network


def compose(base: Model, delta: Model, metadata: dict[str, Any] | None = None) -> CompositeModel:
    """The higher-rung model: base (e.g. fine-tuned on rung 1) plus a Δ-model (rung 2 − 1).

    Its species are those both parts were trained on.
    """
    return CompositeModel(base, delta, metadata)
