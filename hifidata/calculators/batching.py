"""Lockstep batching: unchanged ASE integrators, one batched model call per MD step.

An ASE integrator asks its calculator for forces in the middle of ``step()``, so many replicas
cannot share a model call unless each one can wait there. Each replica therefore runs its own
dynamics in a thread with a ``BatchedCalculator``; when that calculator needs results it hands
over its atoms and waits. Once every still-active replica has handed over (or retired), the
calling thread makes ONE ``predict(list[Atoms])`` call for all of them and hands the results
back. A replica whose job returns (finished, or stopped by a monitor) retires, so the others
never wait for it.

Determinism: structures go to ``predict`` ordered by replica index, and which replicas are in
a batch depends only on how many steps each has taken, never on thread timing; a replica's
randomness is its own seeded generator. The batch composition does change the model's floating
point summation order slightly (graphs evaluated together), not the physics.

Failure: an exception in ``predict`` or in any job aborts the run: waiting replicas are woken
with ``BatchAborted`` (their threads end), and the first real exception is re-raised in the
caller. Nothing waits forever on a replica that died.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

#: ``predict(structures)`` -> {"energy": [float], "forces": [array (n, 3)],
#: "stress": [Voigt 6-vector in eV/Å³ or None]} (stress optional), one entry per structure.
Predict = Callable[[Sequence[Atoms]], dict[str, list]]

T = TypeVar("T")


class BatchAborted(RuntimeError):
    """Raised inside a replica whose batch was aborted by an error elsewhere."""


class LockstepBatcher:
    """Collects one structure from every active replica, then serves them with one ``predict``.

    Use ``run_lockstep`` unless you need the pieces: ``calculator(i)`` for replica ``i``,
    ``retire(i)`` when its job ends, and ``serve()`` in the calling thread.
    """

    def __init__(self, predict: Predict, n_replicas: int):
        self.predict = predict
        self.n_replicas = n_replicas
        self.active: set[int] = set(range(n_replicas))
        self.pending: dict[int, Atoms] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self.calls = 0  # batched predict calls made
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the serving thread waits here
        # one wake-up per replica: a deposit wakes the server only, a batch wakes its members
        self._served = [threading.Event() for _ in range(n_replicas)]

    def calculator(self, index: int) -> BatchedCalculator:
        return BatchedCalculator(self, index)

    def request(self, index: int, atoms: Atoms) -> dict[str, Any]:
        """Called by replica ``index``: deposit ``atoms`` and wait for its share of the batch."""
        served = self._served[index]
        with self._lock:
            if self.error is not None:
                raise BatchAborted("the batch was aborted")
            if index not in self.active:
                raise RuntimeError(f"replica {index} asked for a result after it retired")
            served.clear()
            self.pending[index] = atoms
            if len(self.pending) == len(self.active):
                self._ready.notify()
        served.wait()
        with self._lock:
            if index in self.results:
                return self.results.pop(index)
        raise BatchAborted("the batch was aborted")

    def retire(self, index: int) -> None:
        with self._lock:
            self.active.discard(index)
            self.pending.pop(index, None)
            self._ready.notify()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            self._ready.notify()
        for served in self._served:
            served.set()

    def _batch_ready(self) -> bool:
        return self.error is not None or not self.active or len(self.pending) == len(self.active)

    def serve(self) -> None:
        """Serve batches until every replica retired or something failed (then it returns)."""
        while True:
            with self._lock:
                self._ready.wait_for(self._batch_ready)
                if self.error is not None or not self.active:
                    return
                order = sorted(self.pending)
                batch = [self.pending.pop(i) for i in order]
            try:
                out = self.predict(batch)
                stresses = out.get("stress") or [None] * len(batch)
                shares = []
                for k in range(len(batch)):
                    share = {"energy": float(out["energy"][k]),
                             "forces": np.asarray(out["forces"][k], dtype=float)}
                    if stresses[k] is not None:
                        share["stress"] = np.asarray(stresses[k], dtype=float)
                    shares.append(share)
                if len(out["energy"]) != len(batch) or len(out["forces"]) != len(batch):
                    raise ValueError(f"predict returned {len(out['energy'])} energies and "
                                     f"{len(out['forces'])} forces for {len(batch)} structures")
            except BaseException as error:
                self.fail(error)
                return
            with self._lock:
                self.calls += 1
                self.batch_sizes.append(len(batch))
                self.results.update(zip(order, shares, strict=True))
            for i in order:
                self._served[i].set()


class BatchedCalculator(Calculator):
    """The ASE calculator a replica's dynamics uses: every calculation is one slot of a batch."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, batcher: LockstepBatcher, index: int, **kwargs):
        super().__init__(**kwargs)
        self.batcher = batcher
        self.index = index

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        share = self.batcher.request(self.index, self.atoms)
        self.results = {"free_energy": share["energy"], **share}


def run_lockstep(
    predict: Predict,
    jobs: Sequence[Callable[[Calculator], T]],
    name: str = "replica",
) -> list[T]:
    """Run ``job(calculator)`` for every job, each in its own thread, in lockstep.

    Every model evaluation any job asks for is served by one ``predict`` call over all jobs
    still running. Returns the jobs' return values in job order. If ``predict`` or a job
    raises, the others are aborted and that exception is raised here.
    """
    if not jobs:
        return []
    batcher = LockstepBatcher(predict, len(jobs))
    returned: list[Any] = [None] * len(jobs)
    failures: list[tuple[int, BaseException]] = []

    def work(index: int) -> None:
        try:
            returned[index] = jobs[index](batcher.calculator(index))
        except BatchAborted:
            pass
        except BaseException as error:
            failures.append((index, error))
            batcher.fail(error)
        finally:
            batcher.retire(index)

    threads = [threading.Thread(target=work, args=(i,), name=f"{name}-{i}", daemon=True)
               for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    try:
        batcher.serve()
    except BaseException as error:  # e.g. KeyboardInterrupt in the serving thread
        batcher.fail(error)
        raise
    finally:
        for thread in threads:
            thread.join()
    if batcher.error is not None:
        raise batcher.error
    return returned
