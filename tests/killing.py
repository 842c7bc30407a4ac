"""kill -9 a campaign at random points of its label stage, resume it, and check the store.

Shared by tests/test_resume.py and benchmarks/kill_resume.py. The campaign runs as
subprocesses of tests/counted_run.py, which logs every PySCF engine call (start and end) to a
file, so the labels computed by all the killed runs together can be compared with a clean run's:
no label lost, none computed twice beyond the ones a kill caught in flight.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hifidata.datasets.store import SCHEMAS, Store
from hifidata.datasets.tables import TableView
from hifidata.errors import StoreError
from hifidata.spec import load_spec

COUNTED_RUN = Path(__file__).with_name("counted_run.py")
POLL_S = 0.2  # how often the store is read while a run labels
ENERGY_TOL = 1e-6  # eV: a resumed label must be the clean run's number
FORCE_TOL = 1e-5  # eV/Å

Pair = tuple[str, str]  # (structure_id, method_id)


# -- a Prefect server -------------------------------------------------------------------------
# -- reading the store and the engine log -----------------------------------------------------
def stored_labels(store_path: Path) -> dict[Pair, str]:
    """(structure_id, method_id) -> status of its latest label (empty before any rung)."""
    store = Store(store_path)
    return {(sid, m["method_id"]): status for m in store.methods()
            for sid, status in store.labeled_ids(m["method_id"]).items()}


def _poll_labels(store_path: Path) -> dict[Pair, str] | None:
    """stored_labels while the writer runs; None when a read races it (try again later)."""
    try:
        return stored_labels(store_path)
    except (StoreError, OSError, KeyError, ValueError):
        return None


def label_rows(store_path: Path) -> Counter[Pair]:
    """Rows per pair in the labels table: a pair stored twice has two, whatever is latest."""
    with h5py.File(store_path, "r", locking=False) as f:
        table = TableView(f["labels"], SCHEMAS["labels"])
        return Counter(zip(table.ids("structure_id"), table.ids("method_id"), strict=True))


def engine_events(log: Path) -> list[dict]:
    """The JSON lines counted_run.py wrote (none when the log does not exist)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def label_numbers(store_path: Path) -> dict[Pair, tuple[str, float, np.ndarray]]:
    """(structure_id, method_id) -> (status, energy, forces) of every latest label."""
    store = Store(store_path)
    out = {}
    for method in store.methods():
        labels = store.labels(method["method_id"])
        for i, sid in enumerate(labels.structure_ids):
            out[sid, labels.method_id] = (labels.status[i], float(labels.energy[i]),
                                          labels.forces[i])
    return out


# -- the trials --------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One run of the label stage: what the store held before and after it, what it computed."""

    index: int
    pid: int
    returncode: int
    killed: bool  # this harness sent the SIGKILL (else the run ended on its own)
    seconds: float
    delay_s: float | None  # waited after its first new label before the kill
    stored_before: dict[Pair, str]
    stored_after: dict[Pair, str]  # read once the process was gone
    started: list[Pair] = field(default_factory=list)  # engine calls, in order
    ended: list[Pair] = field(default_factory=list)

    @property
    def new_labels(self) -> int:
        return len(set(self.stored_after) - set(self.stored_before))

    @property
    def running_at_kill(self) -> list[Pair]:
        """Engine calls started and not returned when the run died (at most max_workers)."""
        ended = Counter(self.ended)
        return [p for p in self.started if not ended.pop(p, 0)] if self.killed else []

    @property
    def computed_not_stored(self) -> list[Pair]:
        """Engine calls that returned but whose label the kill beat to the store."""
        if not self.killed:
            return []
        return [p for p in dict.fromkeys(self.ended) if p not in self.stored_after]


@dataclass
class KillReport:
    runs: list[RunRecord]  # the killed ones, then the one that finished
    kills: int
    finished_early: int  # runs meant to be killed that finished labeling first
    labels: int  # labels of the clean run
    lost: list[Pair]  # in the clean store, missing or different in the resumed one
    unexpected: list[Pair]  # in the resumed store only
    repeated: list[tuple[int, Pair]]  # (run, pair): computed although stored when it began
    # (run, pair): started, not stored when the run was killed: still running (at most
    # max_workers), or returned and on its way to the store (a window of milliseconds)
    in_flight: list[tuple[int, Pair]]
    recomputed_in_flight: list[Pair]  # in flight at a kill and computed again later
    duplicate_rows: list[Pair]  # pairs the resumed store holds more than one row of
    engine_calls: int  # all runs of the killed campaign
    clean_engine_calls: int
    max_energy_diff: float  # eV, resumed vs clean, over the labels both hold
    max_force_diff: float  # eV/Å
    seconds: dict[str, float]  # select, clean, trials (all runs of the killed campaign)
    folder: Path
    clean_folder: Path


def kill_trials(spec_path: Path, kills: int, rng_seed: int, log: Path, env: dict,
                run_timeout: float = 600) -> KillReport:
    """Run the campaign in ``spec_path``'s folder to the end of its label stage, killed
    ``kills`` times, and compare it with a clean run of the same spec.

    Explore and select run once (``hifidata run --until select``); their folder is copied to
    ``<folder>-clean`` for the clean run. Then each trial starts ``--until label`` and waits
    until the store holds a label the run stored itself, waits a random part of a label's time
    (uniform, from the clean run's median label time) and kill -9s the run's process group.
    After the kills (or once a run finished labeling before its kill), one last run finishes.
    Every run logs its engine calls to ``log`` (the clean run to ``<log>.clean``). ``env`` is
    the subprocesses' environment: give it PREFECT_API_URL of a running server, else each run
    starts a temporary one.
    """
    spec_path = Path(spec_path).resolve()
    folder = spec_path.parent
    store_path = load_spec(spec_path).store_path
    clean_folder = folder.with_name(folder.name + "-clean")
    clean_log = log.with_name(log.name + ".clean")
    if log.exists() or clean_log.exists():  # runs are told apart by pid: no older lines
        raise FileExistsError(f"{log}: the engine log of an earlier trial is in the way")
    rng = np.random.default_rng(rng_seed)
    seconds = {}

    start = time.perf_counter()
    _run_to_end([sys.executable, "-m", "hifidata.cli", "run", str(spec_path), "--until",
                 "select"], env, log.with_name(log.name + ".select.out"), run_timeout)
    seconds["select"] = time.perf_counter() - start
    shutil.copytree(folder, clean_folder)

    start = time.perf_counter()
    _run_to_end(_label_command(clean_folder / spec_path.name), {**env, **_log_env(clean_log)},
                log.with_name(log.name + ".clean.out"), run_timeout)
    seconds["clean"] = time.perf_counter() - start
    clean_store = load_spec(clean_folder / spec_path.name).store_path
    reference = stored_labels(clean_store)
    store = Store(clean_store)
    label_s = float(np.median(np.concatenate(
        [store.labels(m["method_id"]).wall_time for m in store.methods()])))

    runs: list[RunRecord] = []
    finished_early = 0
    start = time.perf_counter()
    while len(runs) < kills:
        record = _killed_run(len(runs), spec_path, store_path, reference, rng, label_s, log,
                             env, run_timeout)
        runs.append(record)
        if not record.killed:  # labeling ended before the kill: nothing left to kill
            finished_early += 1
            break
    if not runs or runs[-1].killed:
        before = stored_labels(store_path)
        t0 = time.perf_counter()
        process = _run_to_end(_label_command(spec_path), {**env, **_log_env(log)},
                              log.with_name(f"{log.name}.run{len(runs)}.out"), run_timeout)
        runs.append(RunRecord(len(runs), process.pid, process.returncode, False,
                              time.perf_counter() - t0, None, before,
                              stored_labels(store_path)))
    seconds["trials"] = time.perf_counter() - start

    return _report(runs, finished_early, store_path, clean_store, reference, log, clean_log,
                   seconds, folder, clean_folder)


def _label_command(spec_path: Path) -> list[str]:
    return [sys.executable, str(COUNTED_RUN), "run", str(spec_path), "--until", "label"]


def _log_env(log: Path) -> dict[str, str]:
    return {"HIFIDATA_ENGINE_LOG": str(log), "PYTHONUNBUFFERED": "1"}


def _run_to_end(command: list[str], env: dict, out: Path, timeout: float) -> subprocess.Popen:
    with open(out, "w") as stream:
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} exited with {process.returncode}:\n"
                           + out.read_text()[-4000:])
    return process


def _killed_run(index: int, spec_path: Path, store_path: Path, reference: dict[Pair, str],
                rng: np.random.Generator, label_s: float, log: Path, env: dict,
                timeout: float) -> RunRecord:
    """One run, SIGKILLed a random moment after it stored its first label."""
    before = stored_labels(store_path)
    out = log.with_name(f"{log.name}.run{index}.out")
    t0 = time.perf_counter()
    with open(out, "w") as stream:
        # its own session: the kill reaches every process the campaign may have started
        process = subprocess.Popen(_label_command(spec_path), env={**env, **_log_env(log)},
                                   stdout=stream, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    delay = None
    try:
        while process.poll() is None:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"run {index} stored no label in {timeout} s")
            time.sleep(POLL_S)
            now = _poll_labels(store_path)
            if now is not None and set(now) - set(before):
                delay = float(rng.uniform(0, label_s))  # anywhere in the next label's work
                end = time.perf_counter() + delay
                while process.poll() is None and time.perf_counter() < end:
                    time.sleep(min(0.05, max(0.0, end - time.perf_counter())))
                now = _poll_labels(store_path)
                if now is not None and set(reference) <= set(now):
                    break  # every label is in: let the run finish on its own
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                break
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    killed = process.returncode == -signal.SIGKILL
    if not killed and process.returncode != 0:
        raise RuntimeError(f"run {index} exited with {process.returncode}:\n"
                           + out.read_text()[-4000:])
    return RunRecord(index, process.pid, process.returncode, killed, time.perf_counter() - t0,
                     delay, before, stored_labels(store_path))


def _report(runs: list[RunRecord], finished_early: int, store_path: Path, clean_store: Path,
            reference: dict[Pair, str], log: Path, clean_log: Path, seconds: dict[str, float],
            folder: Path, clean_folder: Path) -> KillReport:
    by_pid = {run.pid: run for run in runs}
    if len(by_pid) != len(runs):
        raise RuntimeError("two runs had the same pid: the engine log cannot tell them apart")
    events = engine_events(log)
    for event in events:
        pair = (event["structure_id"], event["method"])
        run = by_pid[event["pid"]]
        (run.started if event["event"] == "start" else run.ended).append(pair)

    repeated = [(run.index, pair) for run in runs for pair in run.started
                if pair in run.stored_before]  # label_stage skips every stored label
    in_flight = [(run.index, pair) for run in runs if run.killed
                 for pair in dict.fromkeys(run.started) if pair not in run.stored_after]
    recomputed = [pair for k, pair in in_flight
                  if any(pair in later.started for later in runs[k + 1:])]

    final, clean = label_numbers(store_path), label_numbers(clean_store)
    lost, energy_diff, force_diff = [], 0.0, 0.0
    for pair, (status, energy, forces) in clean.items():
        if pair not in final or final[pair][0] != status:
            lost.append(pair)
            continue
        de = abs(final[pair][1] - energy) if status == "ok" else 0.0
        df = float(np.max(np.abs(final[pair][2] - forces))) if status == "ok" else 0.0
        energy_diff, force_diff = max(energy_diff, de), max(force_diff, df)
        if de > ENERGY_TOL or df > FORCE_TOL:
            lost.append(pair)  # a different number is a lost label too
    rows = label_rows(store_path)
    return KillReport(
        runs=runs, kills=sum(run.killed for run in runs), finished_early=finished_early,
        labels=len(reference), lost=lost, unexpected=[p for p in final if p not in clean],
        repeated=repeated, in_flight=in_flight, recomputed_in_flight=recomputed,
        duplicate_rows=[pair for pair, n in rows.items() if n > 1],
        engine_calls=sum(e["event"] == "start" for e in events),
        clean_engine_calls=sum(e["event"] == "start" for e in engine_events(clean_log)),
        max_energy_diff=energy_diff, max_force_diff=force_diff, seconds=seconds,
        folder=folder, clean_folder=clean_folder,
    )


def summary(report: KillReport) -> str:
    """One line per run: what it found, computed and stored."""
    lines = [f"{report.kills} kills ({report.finished_early} runs finished before their kill), "
             f"{report.labels} labels: lost {len(report.lost)}, repeated "
             f"{len(report.repeated)}, recomputed in flight {len(report.recomputed_in_flight)}, "
             f"engine calls {report.engine_calls} (clean {report.clean_engine_calls}); "
             + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())]
    for run in report.runs:
        how = "killed" if run.killed else f"exit {run.returncode}"
        delay = f", kill {run.delay_s:.2f} s after its first label" if run.delay_s else ""
        lines.append(f"run {run.index}: {how} after {run.seconds:.1f} s{delay}; stored "
                     f"{len(run.stored_before)} -> {len(run.stored_after)}, engine calls "
                     f"{len(run.started)} started / {len(run.ended)} ended"
                     + (f", {len(run.running_at_kill)} running at the kill, "
                        f"{len(run.computed_not_stored)} returned but not stored"
                        if run.killed else ""))
    return "\n".join(lines)
