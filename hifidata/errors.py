"""User-facing errors: each carries a one-line reason that the command line prints as is."""


class HifidataError(Exception):
    """An error caused by the user's input (a file, a spec field, a structure), not by a bug."""


class SpecError(HifidataError):
    """The campaign spec is missing, unreadable or invalid."""


class StoreError(HifidataError):
    """The store is missing, not a hifidata store, or busy with another writer."""


class ModelError(HifidataError):
    """A model directory is missing or not one hifidata wrote."""
