"""Many command lines in one fresh Python process: exit codes and stderr as users see them.

Each call runs ``hifidata.cli.main`` with its argv, one after another, with file descriptor 2
redirected to a file of its own, so everything the call writes to stderr (rich, logging,
warnings, C libraries) is caught, as a separate process per call would catch it. One
interpreter start-up (torch, Prefect: ~5 s) serves every call instead of one per call.
"""

from __future__ import annotations

import json
import subprocess
import sys

DRIVER = r"""
import contextlib, io, json, os, sys, tempfile
from hifidata import cli

results = []
for argv in json.loads(sys.stdin.read()):
    sys.argv = ["hifidata", *argv]
    with tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        code = 0
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        results.append([code, caught.read().decode(errors="replace")])
print(json.dumps(results))
"""


def run_cli_calls(calls: list[list[str]], timeout: float = 900) -> list[tuple[int, str]]:
    """(exit code, stderr) of each ``hifidata`` command line in ``calls``, in order."""
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(calls),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the CLI batch failed:\n{done.stderr[-3000:]}")
    return [(code, stderr) for code, stderr in json.loads(done.stdout.splitlines()[-1])]
