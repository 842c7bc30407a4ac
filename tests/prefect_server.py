"""A real Prefect server for tests and benchmarks, started the way users start one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_prefect_server(home: Path, timeout: float = 120) -> tuple[str, subprocess.Popen]:
    """A real Prefect server (`prefect server start`, SQLite in ``home``) on 127.0.0.1.

    Returns its API URL (.../api) and the process (its own session: stop it with
    :func:`stop_prefect_server`). The scheduler loops every second so a scheduled deployment
    fires within a test.
    """
    home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1", "PREFECT_API_URL": ""}
    with open(home / "server.log", "w") as log:  # the server keeps its own copy of the handle
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
             "127.0.0.1", "--port", str(port), "--no-ui"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_prefect_server(process)
            raise RuntimeError("prefect server did not start:\n"
                               + (home / "server.log").read_text()[-3000:])
        time.sleep(0.5)


def stop_prefect_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is not gone in 20 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
