"""Engines behind one labeling contract (base.py), one module per engine."""
