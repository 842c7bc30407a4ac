"""Trained models in molecular dynamics."""
