"""The three ways hifidata turns a ladder's labels into a model, behind one call each.

- ``finetune``: one rung, a pretrained CHGNet (chgnet-0.3.0, chgnet-r2scan) or SevenNet (7net-0)
  as the start;
- ``delta``: a small Δ-model of (high − low) added to a model of ``low`` (training/delta.py);
- ``multifidelity``: one SevenNet trained on several rungs at once, a modality per rung
  (training/sevennet.py).

Data come as :class:`~hifidata.training.finetune.LabeledSet` pairs (train, validation).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hifidata.calculators.mlip import SEVENNET_PRETRAINED
from hifidata.spec import RECIPES  # noqa: F401  (the names of the functions below)
from hifidata.training.delta import train_delta
from hifidata.training.finetune import LabeledSet, Progress, finetune_chgnet
from hifidata.training.models import Model, read_model_json


def is_sevennet(base: str) -> bool:
    """Whether ``base`` (a pretrained name or a hifidata model folder) is a SevenNet model."""
    if base.lower() in SEVENNET_PRETRAINED:
        return True
    path = Path(base)
    return path.is_dir() and read_model_json(path).get("kind") == "sevennet"


def finetune(train: LabeledSet, val: LabeledSet, *, base: str = "chgnet-0.3.0",
             out_dir: str | Path | None = None, progress: Progress | None = None,
             **settings: Any) -> Model:
    """Fine-tune ``base`` on one rung (energies, forces, and stresses where all have one)."""
    if is_sevennet(base):
        from hifidata.training.sevennet import finetune_sevennet

        return finetune_sevennet(train, val, base=base, out_dir=out_dir, progress=progress,
                                 **settings)
    return finetune_chgnet(
        *train[:3], *val[:3], base=base, stresses=train.stresses, val_stresses=val.stresses,
        out_dir=out_dir, progress=progress, **settings,
    )


def delta(train: LabeledSet, val: LabeledSet, *, out_dir: str | Path | None = None,
          progress: Progress | None = None, **settings: Any) -> Model:
    """A Δ-model trained on label differences (high − low) of the structures both labeled."""
    return train_delta(*train[:3], *val[:3], out_dir=out_dir, progress=progress, **settings)


def multifidelity(data: Mapping[str, tuple[LabeledSet, LabeledSet]], *,
                  base: str = "7net-mf-0", default_rung: str | None = None,
                  out_dir: str | Path | None = None, progress: Progress | None = None,
                  **settings: Any) -> Model:
    """One model of every rung in ``data`` ({rung: (train, validation)}, cheapest first)."""
    from hifidata.training.sevennet import train_multifidelity

    return train_multifidelity(dict(data), base=base, default_rung=default_rung,
                               out_dir=out_dir, progress=progress, **settings)
