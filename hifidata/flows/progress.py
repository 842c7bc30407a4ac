"""How flows report progress without knowing who listens.

The command line installs a reporter that draws progress bars; library users and tests get the
silent default. Flows call ``reporter().start/advance/done``; nothing here draws anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Reporter:
    """The silent reporter; subclasses draw. ``key`` names one bar (a stage or a rung)."""

    def start(self, key: str, description: str, total: int | None = None) -> None: ...

    def advance(self, key: str, amount: int = 1) -> None: ...

    def describe(self, key: str, description: str) -> None:
        """Replace the bar's description (a rate that changes as the work goes)."""

    def done(self, key: str, summary: str = "") -> None: ...

    def note(self, text: str) -> None: ...


_SILENT = Reporter()
_current: ContextVar[Reporter | None] = ContextVar("hifidata_reporter", default=None)


def reporter() -> Reporter:
    return _current.get() or _SILENT


@contextmanager
def reporting(new: Reporter) -> Iterator[Reporter]:
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)
