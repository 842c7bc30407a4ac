"""Training: fine-tune a pretrained MLIP on one rung, Δ-learn between rungs, save and load models.

Plain functions over ase.Atoms and numpy; no Prefect, no store access (flows/ wires them).
"""

from hifidata.training.delta import compose, train_delta
from hifidata.training.finetune import finetune_chgnet, fit_reference_energies
from hifidata.training.models import ChgnetModel, CompositeModel, Model, load_model

__all__ = [
    "ChgnetModel",
    "CompositeModel",
    "Model",
    "compose",
    "finetune_chgnet",
    "fit_reference_energies",
    "load_model",
    "train_delta",
]
