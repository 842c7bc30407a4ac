"""How flows report progress without knowing who listens.

The command line installs a reporter that draws progress bars; library users and tests get the
silent default. Flows call ``reporter().start/advance/done``; nothing here draws anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


def counted_progress(key: str) -> Callable[[str, int, int], None]:
    """A ``progress(description, done, total)`` callback (library functions that count their
    work, e.g. a release export) drawn as the reporter's bar ``key``."""
    state = {"done": 0, "started": False}

    def progress(description: str, done: int, total: int) -> None:
        bar = reporter()
        if not state["started"]:
            bar.start(key, description, total)
            state["started"] = True
        bar.describe(key, description)
        bar.advance(key, done - state["done"])
        state["done"] = done

    return progress


@contextmanager
def reporting(new: Reporter) -> Iterator[Reporter]:
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)
