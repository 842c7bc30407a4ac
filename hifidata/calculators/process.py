"""Running an engine program (CP2K, pw.x) as a child process, with failures classified.

One function, :func:`run_program`, shared by the engines that run a program: it sets the
threads, runs the command in the label's scratch folder under a wall-time limit, kills the whole
process group when the limit passes, and turns what the operating system reports (a signal, an
exit code) into the failure classes. What the output says is the engine's to read: it knows its
own messages, so it classifies those first and calls :func:`exit_failure` for the rest.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hifidata.calculators.base import EngineCrashed, LabelError, LabelTimeout, OutOfMemory

#: seconds between SIGTERM and SIGKILL when a run is over its limit
GRACE_S = 5.0
#: what programs print when an allocation fails (Fortran runtimes, C++, MPI, the C library)
MEMORY_MARKERS = (
    "out of memory", "cannot allocate memory", "std::bad_alloc", "allocation failure",
    "failed to allocate", "insufficient virtual memory", "memory allocation failed",
)


@dataclass(frozen=True)
class Finished:
    """A program that ran to its end (whatever its exit status)."""

    returncode: int
    output: str  # stdout and stderr together
    wall_time: float


def command(env_var: str, default: str, ranks: int) -> list[str]:
    """The engine's command line: ``$env_var`` if set, else ``default`` (mpirun for ranks > 1).

    ``$env_var`` may hold ``{ranks}``, e.g. ``srun -n {ranks} cp2k.psmp``; without it, ranks > 1
    prefix ``mpirun -np {ranks}`` so a plain program name works both ways.
    """
    template = os.environ.get(env_var, "").strip()
    if template:
        return shlex.split(template.replace("{ranks}", str(ranks)))
    words = shlex.split(default)
    return (["mpirun", "-np", str(ranks), *words] if ranks > 1 else words)


def run_program(
    argv: Sequence[str],
    cwd: Path,
    threads: int = 1,
    time_limit: float | None = None,
    stdin: Path | None = None,
    output: Path | None = None,
) -> Finished:
    """Run ``argv`` in ``cwd``; raise LabelTimeout past ``time_limit`` and EngineCrashed if absent.

    Output goes to ``output`` (default ``cwd/output.log``) and is read back whole: engines
    write a few hundred kB per label at most.
    """
    output = output or cwd / "output.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        # Open MPI refuses to start as root (containers, CI) without these
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    start = time.perf_counter()
    with open(output, "wb") as out, open(stdin or os.devnull, "rb") as inp:
        try:
            process = subprocess.Popen(
                list(argv), cwd=cwd, stdin=inp, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: a kill reaches mpirun's children
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            error = EngineCrashed(
                f"{argv[0]}: program not found (install it, or set the engine's command variable)"
            )
            error.transient = False
            raise error from None
        try:
            returncode = process.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise LabelTimeout(
                f"{Path(argv[0]).name} ran past its time limit of {time_limit:g} s"
            ) from None
        except BaseException:  # KeyboardInterrupt, a cancelled task: don't leave it running
            _kill_group(process)
            raise
    return Finished(returncode, output.read_text(errors="replace"), time.perf_counter() - start)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the process that started it dies, so a
    campaign killed with SIGKILL (no chance to clean up) leaves no CP2K or pw.x running on.
    SIGTERM, not SIGKILL, so mpirun can still pass it on to its ranks."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def exit_failure(program: str, finished: Finished) -> LabelError | None:
    """The failure class of a non-zero exit that the engine's own messages did not explain."""
    code, text = finished.returncode, finished.output.lower()
    if code == 0:
        return None
    if any(marker in text for marker in MEMORY_MARKERS):
        return OutOfMemory(f"{program} ran out of memory (exit {code})")
    signum = -code if code < 0 else code - 128 if code > 128 else None
    if signum == signal.SIGKILL:
        # without a timeout of ours, SIGKILL is almost always the kernel's or the batch
        # system's out-of-memory killer
        return OutOfMemory(f"{program} was killed (SIGKILL), most likely for memory")
    if signum in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE):
        return EngineCrashed(f"{program} crashed with {signal.Signals(signum).name}")
    error = EngineCrashed(f"{program} stopped with exit status {code}")
    error.transient = False  # an error it reported itself: the same input fails the same way
    return error
