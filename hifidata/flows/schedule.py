"""Scheduled campaigns: a Prefect deployment that runs (or resumes) a campaign on a schedule.

Two ways, as Prefect offers them: ``serve`` (this process waits for the schedule and runs each
run itself: one machine, a login node or a workstation) or a work pool (the deployment lives on
the server and any ``prefect worker start --pool NAME`` runs it: clusters, where the worker sits
on a login node and the labels go to Slurm through the spec's ``execution`` section).

A scheduled run is ``hifidata run SPEC``: what the store holds is never computed again, so each
run adds only what the spec asks for and is not done yet (new seeds, a new rung, labels a
killed run left behind).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow

import hifidata
from hifidata.errors import HifidataError
from hifidata.flows.campaign import run_campaign

ENTRYPOINT = "hifidata/flows/schedule.py:scheduled_campaign"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@flow(name="hifidata-scheduled-campaign", flow_run_name="{spec_path}")
def scheduled_campaign(spec_path: str, until: str = "release") -> dict[str, Any]:
    """One scheduled run of a campaign: run or resume it up to ``until``."""
    return run_campaign(spec_path, until=until)


def parse_interval(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``6h`` or ``1d``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise HifidataError(f"--interval {text!r}: give a positive number of seconds, or with "
                            "a unit: 90s, 15m, 6h, 1d")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def check_cron(cron: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise HifidataError(f"--cron {cron!r}: not a cron expression (e.g. \"0 2 * * *\": "
                            "every day at 02:00)") from None
    return cron


def one_at_a_time():
    """A campaign has one writer: a run that comes due while the last one still runs is
    cancelled (the next one resumes whatever is left), instead of queueing behind it."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1,
                                  collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def schedule_of(cron: str | None, interval: str | None) -> dict[str, Any]:
    if (cron is None) == (interval is None):
        raise HifidataError("give --cron or --interval (one of them)")
    return {"cron": check_cron(cron)} if cron else {"interval": parse_interval(interval)}


def serve(spec_path: Path, name: str, cron: str | None = None, interval: str | None = None,
          until: str = "release") -> None:
    """Serve the deployment from this process until it is stopped (Ctrl-C)."""
    scheduled_campaign.serve(
        name=name, parameters={"spec_path": str(spec_path.resolve()), "until": until},
        pause_on_shutdown=False, global_limit=one_at_a_time(), **schedule_of(cron, interval),
    )


def deploy(spec_path: Path, name: str, pool: str, cron: str | None = None,
           interval: str | None = None, until: str = "release") -> str:
    """Register the deployment with work pool ``pool``; returns its id.

    The flow's code is this installed hifidata (its folder is the deployment's source), so the
    machine that runs the pool's worker needs the same installation, as on a shared file system.
    """
    source = Path(hifidata.__file__).resolve().parents[1]
    remote = scheduled_campaign.from_source(source=str(source), entrypoint=ENTRYPOINT)
    deployment_id = remote.deploy(
        name=name, work_pool_name=pool, build=False, push=False, print_next_steps=False,
        parameters={"spec_path": str(spec_path.resolve()), "until": until},
        concurrency_limit=one_at_a_time(), **schedule_of(cron, interval),
    )
    return str(deployment_id)
