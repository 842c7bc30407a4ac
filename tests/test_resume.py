"""kill -9 during labeling, at random moments, again and again: the resumed campaign loses no
label and computes none twice (engine calls counted, store compared with a clean run's)."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import tiny_spec, write_spec
from killing import kill_trials, summary

pytestmark = pytest.mark.slow

KILLS = 5
WORKERS = 2  # labels at a time: a kill catches at most this many in flight


def test_random_kills_during_labeling_lose_and_repeat_nothing(tmp_path, prefect_api):
    spec = tiny_spec(execution={"runner": "local", "max_workers": WORKERS})
    spec_path = write_spec(tmp_path / "campaign", spec)

    # the subprocesses report to the fixture's server (PREFECT_API_URL in os.environ)
    report = kill_trials(spec_path, kills=KILLS, rng_seed=0, log=tmp_path / "engine.jsonl",
                         env=dict(os.environ))
    context = summary(report)

    assert report.labels == 15, context
    assert report.kills == KILLS and report.finished_early == 0, context
    for run in report.runs[:-1]:  # each killed with labels still to do
        assert run.returncode == -signal.SIGKILL, context
        assert run.new_labels >= 1 and len(run.stored_after) < 15, context
    final = report.runs[-1]
    assert final.returncode == 0, context
    assert len(final.stored_after) == 15 and set(final.stored_after.values()) == {"ok"}, context

    assert report.lost == [] and report.unexpected == [], context
    assert report.repeated == [] and report.duplicate_rows == [], context
    assert report.max_energy_diff <= 1e-6, context  # eV
    assert report.max_force_diff <= 1e-5, context  # eV/Å
    recomputed = len(report.recomputed_in_flight)
    assert report.engine_calls == report.clean_engine_calls + recomputed, context
    # a kill catches at most WORKERS labels running; beside them, in a window of milliseconds,
    # a label whose engine returned may still be on its way to the store
    assert all(len(run.running_at_kill) <= WORKERS for run in report.runs), context
    returned = sum(len(run.computed_not_stored) for run in report.runs)
    assert recomputed <= KILLS * WORKERS + returned, context
    print(context)  # shown with -rP: where each run was killed and what it stored
