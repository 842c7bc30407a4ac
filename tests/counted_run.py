"""`hifidata` with every PySCF engine call logged: ``python tests/counted_run.py run SPEC ...``.

Each call of ``hifidata.calculators.pyscf.compute`` appends a JSON line when it starts and one
when it returns (or raises) to the file ``$HIFIDATA_ENGINE_LOG``: event, pid, structure_id and
the method_id of the params it was given. Every line is fsync'd before the engine runs on, so
a SIGKILL of this process loses no line written before it. tests/killing.py reads the log.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from hifidata.calculators import pyscf
from hifidata.calculators.base import Method
from hifidata.structures import structure_id

_lock = threading.Lock()  # labels run in threads: one line at a time


def _log(fd: int, event: str, sid: str, method_id: str) -> None:
    line = json.dumps({"event": event, "pid": os.getpid(), "structure_id": sid,
                       "method": method_id, "time": time.time()}) + "\n"
    with _lock:
        os.write(fd, line.encode())  # O_APPEND: whole lines even beside another writer
        os.fsync(fd)


def install(path: str) -> None:
    """Wrap the PySCF engine's compute so that every call is logged to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    compute = pyscf.compute

    def counted_compute(atoms: Any, params: Any, run: Any) -> Any:
        # compute gets the method's params, not the Method: its id is the same hash of them
        method_id = Method("pyscf", dict(params)).method_id
        sid = structure_id(atoms)
        _log(fd, "start", sid, method_id)
        try:
            return compute(atoms, params, run)
        finally:
            _log(fd, "end", sid, method_id)

    # base.label looks the engine's compute up at call time, so this catches every label
    pyscf.compute = counted_compute


if __name__ == "__main__":
    install(os.environ["HIFIDATA_ENGINE_LOG"])
    from hifidata.cli import main

    sys.argv = ["hifidata", *sys.argv[1:]]
    main()
