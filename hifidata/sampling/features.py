"""Structure-level descriptors for selection: CHGNet crystal features, computed in batches.

A crystal feature is CHGNet's atom features after its last interaction block, mean-pooled
over the atoms of a structure (64 numbers for CHGNet 0.3.0). DIRECT clusters structures in
this space, so two configurations the pretrained model sees alike land close together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms

from hifidata.calculators.mlip import predict_batch


def structure_features(
    model,
    structures: Sequence[Atoms],
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """CHGNet crystal features of every structure, as a float64 array of shape (N, F).

    Structures go to the model ``batch_size`` at a time; after each chunk ``progress`` is
    called with the number of structures that chunk finished (a progress bar's ``advance``).
    An empty input gives an array of shape (0, 0): F is only known once the model has run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows: list[np.ndarray] = []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        predicted = predict_batch(
            model, chunk, batch_size=batch_size, features=True, forces=False
        )
        rows.extend(predicted["features"])
        if progress is not None:
            progress(len(chunk))
    if not rows:
        return np.zeros((0, 0), dtype=np.float64)
    return np.vstack(rows).astype(np.float64)
