"""Kill/resume: kill -9 a campaign at random moments of its label stage; count what was lost.

    .venv/bin/python benchmarks/kill_resume.py [--kills 10] [--seed 0] [--keep DIR]

Starts a Prefect server of its own (SQLite, in the work folder), runs explore and select of a
30-label water-dimer campaign (25 PBE/6-31G, 5 CCSD(T)/6-31G; 2 labels at a time) once, labels
a copy of it without a kill (the reference), then labels the campaign killed ``--kills`` times,
each a random moment after the run stored its first label, and resumed to the end. Prints a
markdown table: labels lost and repeated (goal 0 and 0), labels recomputed because a kill
caught them in flight, engine calls of the killed campaign vs the clean one, wall time. Exit
status 1 when a label was lost or repeated. Takes about 6-8 minutes on 2 cores.

Measured 2026-11-21 (2 cores, shared with other work), ``--kills 10 --seed 0``:

    | kills | labels | lost | repeated | recomputed | engine calls (clean) | wall s (clean) |
    |---|---|---|---|---|---|---|
    | 10 | 30 | 0 | 0 | 20 | 50 (30) | 291 (86) |

The killed campaign's wall time is mostly its 11 process start-ups (10-25 s each: imports and
the Prefect client) and the labels the kills caught running.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import tiny_spec, write_spec
from killing import KillReport, kill_trials, summary
from prefect_server import start_prefect_server, stop_prefect_server

DFT_LABELS = 25  # plus tiny_spec's 5 CCSD(T) labels


def table(report: KillReport) -> str:
    head = ("| kills | labels | lost | repeated | recomputed in flight | engine calls killed / "
            "clean | wall time killed / clean |")
    seconds = report.seconds
    row = (f"| {report.kills} | {report.labels} | {len(report.lost)} | {len(report.repeated)} | "
           f"{len(report.recomputed_in_flight)} | {report.engine_calls} / "
           f"{report.clean_engine_calls} | {seconds['trials']:.0f} s / {seconds['clean']:.0f} s |")
    return "\n".join([head, "|" + "---|" * 7, row])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--keep", type=Path, help="work here and keep the stores and logs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kill-resume-") as scratch:
        work = (args.keep or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        url, server = start_prefect_server(work / "prefect-server")
        try:
            spec = tiny_spec(execution={"runner": "local", "max_workers": 2})
            spec["ladder"][0]["select"]["clusters"] = DFT_LABELS
            spec_path = write_spec(work / "campaign", spec)
            env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_LOGGING_LEVEL": "WARNING",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            report = kill_trials(spec_path, args.kills, args.seed, work / "engine.jsonl", env)
        finally:
            stop_prefect_server(server)
        print(table(report))
        print()
        print(summary(report))
        for name in ("lost", "repeated", "unexpected", "duplicate_rows"):
            if getattr(report, name):
                print(f"{name}: {getattr(report, name)}")
        print(f"largest difference to the clean run: energy {report.max_energy_diff:.2e} eV, "
              f"forces {report.max_force_diff:.2e} eV/Å")
        if args.keep:
            print(f"stores and logs: {work}")
    return 1 if report.lost or report.repeated else 0


if __name__ == "__main__":
    sys.exit(main())
