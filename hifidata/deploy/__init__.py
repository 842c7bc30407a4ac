"""Trained models in production: the batched MD engine (md.py) with its device neighbor lists
(neighbors.py), potentials (potentials.py) and trajectory files (trajectory.py), and exported
artifacts with model cards (export.py)."""
