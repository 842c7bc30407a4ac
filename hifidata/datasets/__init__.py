"""The campaign store, splits, status and dataset releases."""
