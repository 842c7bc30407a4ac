"""A real single-node Slurm for tests: munge + slurmctld + slurmd, configured and started here.

Debian's slurm-wlm (22.05) and munge must be installed (`.ci/run` installs them); the tests
run as root, as in CI, because slurmd has to be able to start jobs as any user. Nothing is
skipped when Slurm is missing: the cluster tests are part of what CI checks.

    from slurm import slurm  # noqa: F401  (the module-scoped fixture below)

    def test_something(slurm: SlurmInfo) -> None:
        subprocess.run(["sbatch", "--wrap", "hostname"], check=True)
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_PID_FILE = MUNGE_RUN_DIR / "munged.pid"
PARTITION = "debug"
BINARIES = ("munge", "unmunge", "munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
INSTALL_HINT = "slurm-wlm is not installed: apt-get install slurm-wlm munge"


@dataclass(frozen=True)
class SlurmInfo:
    """What a test needs to submit to the cluster."""

    partition: str
    cores: int
    memory_mb: int  # RealMemory of the node: what jobs can ask for in total
    node: str
    conf: Path
    workdir: Path


@contextlib.contextmanager
def single_node_slurm(workdir: Path, timeout: float = 60.0) -> Iterator[SlurmInfo]:
    """Start munge (if needed), slurmctld and slurmd on this machine; stop them on exit.

    Everything Slurm writes (state, spool, logs, pid files, slurm.conf itself) goes under
    `workdir`. SLURM_CONF points at that slurm.conf while the context is open, so sbatch,
    squeue, scancel, dask-jobqueue and the jobs themselves find this cluster.
    """
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise RuntimeError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
    if os.geteuid() != 0:
        # slurmd starts jobs through setuid slurmstepd and SlurmUser=root below
        raise RuntimeError("the single-node Slurm harness must run as root")

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    info = _write_config(workdir)
    old_conf = os.environ.get("SLURM_CONF")
    steps_before = _pids_named("slurmstepd")
    started_munged: int | None = None
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        started_munged = _ensure_munged()
        os.environ["SLURM_CONF"] = str(info.conf)
        # -D keeps them in the foreground, so they are our children and we know their pids;
        # -i lets slurmctld start without prior state (the state directory is new).
        daemons["slurmctld"] = _start(["slurmctld", "-D", "-i", "-f", str(info.conf)], workdir)
        daemons["slurmd"] = _start(["slurmd", "-D", "-f", str(info.conf)], workdir)
        _wait_until_idle(info, daemons, timeout)
        yield info
    finally:
        try:
            if "slurmctld" in daemons and daemons["slurmctld"].poll() is None:
                _cancel_all_jobs()
            # let the jobs' slurmstepd report to live daemons before those go
            _wait_for_job_steps(steps_before, timeout=10)
        finally:
            for proc in reversed(daemons.values()):  # slurmd first, then the controller
                _stop(proc)
            for pid in _wait_for_job_steps(steps_before, timeout=5):
                _stop_pid(pid, timeout=2)
            if started_munged is not None:
                _stop_pid(started_munged)
            if old_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old_conf


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmInfo]:
    """A running single-node Slurm for the tests of one module."""
    with single_node_slurm(tmp_path_factory.mktemp("slurm")) as info:
        yield info


# --- munge -------------------------------------------------------------------------------


def _munge_works() -> bool:
    """True when a credential round-trips through the running munged."""
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return check.returncode == 0


def _ensure_munged() -> int | None:
    """Make sure munged runs; return its pid if we started it (to stop it again), else None."""
    if _munge_works():
        return None
    try:
        user = pwd.getpwnam("munge")
    except KeyError:
        user = None
    if not MUNGE_KEY.exists():
        # the Debian package creates one at install time; a minimal image may lack it
        MUNGE_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)], check=True)
        if user is not None:
            os.chown(MUNGE_KEY.parent, user.pw_uid, user.pw_gid)
            os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
        MUNGE_KEY.chmod(0o400)
    # /run is a tmpfs without systemd's tmpfiles here, so the socket directory may be missing
    MUNGE_RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    if user is not None:
        os.chown(MUNGE_RUN_DIR, user.pw_uid, user.pw_gid)
        # munged refuses to run as root without --force; as its own user it needs nothing
        cmd = ["runuser", "-u", "munge", "--", "munged"]
    else:
        cmd = ["munged", "--force"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    deadline = time.monotonic() + 10
    while not _munge_works():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"munged did not start ({' '.join(cmd)} exited {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{_tail(Path('/var/log/munge/munged.log'))}"
            )
        time.sleep(0.1)
    try:
        return int(MUNGE_PID_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # it runs, but we cannot tell which process to stop: leave it


# --- slurm.conf --------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """n distinct ports nobody listens on (all held open at once, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in socks]


def _memory_mb() -> int:
    """RealMemory a bit below MemTotal: slurmd drains a node that has less than declared."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total_mb = int(line.split()[1]) // 1024
            return max(total_mb * 9 // 10, 256)
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _write_config(workdir: Path) -> SlurmInfo:
    node = socket.gethostname().split(".")[0]  # slurmd looks itself up by short hostname
    cores = os.cpu_count() or 1
    memory_mb = _memory_mb()
    for sub in ("state", "spool"):
        (workdir / sub).mkdir(exist_ok=True)
    # Free ports rather than 6817/6818, so a Slurm already on this machine is left alone.
    ctld_port, slurmd_port = _free_ports(2)
    conf = workdir / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=hifidata-test
SlurmctldHost={node}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (containers rarely allow them) and no accounting daemon
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# one core and a slice of memory per job, so several small jobs share the node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
ReturnToService=2
# short timeouts: start fast, cancel fast
SlurmctldTimeout=10
SlurmdTimeout=30
MessageTimeout=5
KillWait=2
MinJobAge=5
InactiveLimit=0
Waittime=0
NodeName={node} CPUs={cores} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return SlurmInfo(
        partition=PARTITION,
        cores=cores,
        memory_mb=memory_mb,
        node=node,
        conf=conf,
        workdir=workdir,
    )


# --- daemons -----------------------------------------------------------------------------


def _start(cmd: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    out = open(workdir / f"{cmd[0]}.out", "ab")  # noqa: SIM115 (lives as long as the daemon)
    # own session: a Ctrl-C in pytest reaches the teardown, not the daemons directly
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _node_state(node: str) -> str:
    result = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--nodes", node, "--format", "%T"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.stdout.strip().lower() if result.returncode == 0 else ""


def _wait_until_idle(
    info: SlurmInfo, daemons: dict[str, subprocess.Popen[bytes]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        dead = {name: p.returncode for name, p in daemons.items() if p.poll() is not None}
        if dead:
            why = ", ".join(f"{name} exited {rc}" for name, rc in dead.items())
            raise RuntimeError(f"Slurm did not start: {why}\n{_logs(info.workdir)}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            state = _node_state(info.node)
        if state == "idle":
            return
        if state.startswith("inval"):  # the controller rejected the node: waiting won't help
            break
        time.sleep(0.2)
    raise RuntimeError(
        f"Slurm node {info.node} not idle (state {state!r}, timeout {timeout:.0f} s)\n"
        f"{_logs(info.workdir)}"
    )


def _cancel_all_jobs() -> None:
    """Cancel every job and wait (briefly) until the controller has none left running."""
    subprocess.run(["scancel", "--user", getpass.getuser()], capture_output=True, timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["squeue", "--noheader", "--format", "%i", "--states", "PD,R,CG,S"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode != 0 or not result.stdout.strip():
            return
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


def _pids_named(name: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    pids.add(int(entry.name))
    return pids


def _pid_alive(pid: int) -> bool:
    """False for a zombie too: a container's init may take its time to reap our daemons."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_for_job_steps(before: set[int], timeout: float) -> set[int]:
    """slurmstepd detaches from slurmd: wait for those our jobs started; return any left."""
    deadline = time.monotonic() + timeout
    while True:
        ours = {p for p in _pids_named("slurmstepd") - before if _pid_alive(p)}
        if not ours or time.monotonic() > deadline:
            return ours
        time.sleep(0.1)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"--- {path}: missing\n"
    return f"--- {path} (last {len(text)} lines)\n" + "\n".join(text) + "\n"


def _logs(workdir: Path) -> str:
    names = ("slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out")
    return "".join(_tail(workdir / name) for name in names)
