"""What a campaign shows in the Prefect UI and tells automations: artifacts and events.

Artifact keys are stable per campaign (``<campaign>-label-<rung>``, ``<campaign>-failures``,
``<campaign>-status``), so the UI keeps one history per campaign across runs and resumes.
Events: ``hifidata.label.failure-rate`` when a rung's labels fail at more than the spec's
``execution.failure_rate_alert``, ``hifidata.campaign.finished`` when a campaign run ends (its
``until`` stage in the payload).
Their resource is ``hifidata.campaign.<campaign>``: what a Prefect automation matches on.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event

from hifidata.calculators.base import Label
from hifidata.datasets.store import Store

#: seconds between two updates of a progress artifact (each is one API call)
UPDATE_EVERY_S = 2.0
#: labels a rung computes in a run before its failure rate counts
MIN_LABELS_FOR_RATE = 10


def slug(text: str) -> str:
    """An artifact key part: lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def resource(campaign: str) -> dict[str, str]:
    return {"prefect.resource.id": f"hifidata.campaign.{slug(campaign)}",
            "prefect.resource.name": campaign}


class LabelMonitor:
    """Per rung: a progress artifact (labels stored / selected), updated at most every few
    seconds; a table artifact of every quarantined label; one event per run when the rung's
    failure rate passes ``alert``."""

    def __init__(self, campaign: str, store: Store, alert: float):
        self.campaign, self.store, self.alert = campaign, store, alert
        self.rungs: dict[str, dict[str, Any]] = {}

    def start(self, rung: str, method_id: str, selected: int, done: int) -> None:
        key = f"{slug(self.campaign)}-label-{slug(rung)}"
        artifact = create_progress_artifact(
            _percent(done, selected), key=key,
            description=f"{self.campaign}: labels of rung {rung} stored, of {selected} selected",
        )
        self.rungs[rung] = {"artifact": artifact, "selected": selected, "done": done,
                            "computed": 0, "failed": 0, "alerted": False, "updated": 0.0,
                            "method_id": method_id}

    def labeled(self, rung: str, label: Label) -> None:
        state = self.rungs[rung]
        state["done"] += 1
        state["computed"] += 1
        if not label.ok:
            state["failed"] += 1
            self._check_rate(rung, state)
        if time.monotonic() - state["updated"] > UPDATE_EVERY_S:
            self._update(state)

    def close(self) -> None:
        for state in self.rungs.values():
            self._update(state)
        rows = self.failures()
        create_table_artifact(
            rows or [{"rung": "", "structure_id": "", "status": "", "message": ""}],
            key=f"{slug(self.campaign)}-failures",
            description=f"{self.campaign}: {len(rows)} quarantined labels",
        )

    def failures(self) -> list[dict[str, str]]:
        """Every quarantined label of the monitored rungs, from the store (all runs)."""
        rows = []
        for rung, state in self.rungs.items():
            labels = self.store.labels(state["method_id"])
            for i, status in enumerate(labels.status):
                if status != "ok":
                    rows.append({"rung": rung, "structure_id": labels.structure_ids[i],
                                 "status": status, "message": labels.message[i][:200]})
        return rows

    def _update(self, state: dict[str, Any]) -> None:
        update_progress_artifact(state["artifact"], _percent(state["done"], state["selected"]))
        state["updated"] = time.monotonic()

    def _check_rate(self, rung: str, state: dict[str, Any]) -> None:
        rate = state["failed"] / state["computed"]
        if state["alerted"] or state["computed"] < MIN_LABELS_FOR_RATE or rate <= self.alert:
            return
        state["alerted"] = True
        emit_event(
            event="hifidata.label.failure-rate", resource=resource(self.campaign),
            payload={"rung": rung, "failed": state["failed"], "computed": state["computed"],
                     "rate": round(rate, 4), "threshold": self.alert},
        )


def campaign_finished(campaign: str, until: str, status: dict[str, Any]) -> None:
    """The status artifact and the event of a campaign run that got to ``until``."""
    label = status.get("stages", {}).get("label", {})
    lines = [f"# {campaign}", "", "| rung | ok | failed |", "|---|---:|---:|"]
    lines += [f"| {rung} | {c.get('ok', 0)} | {sum(c.get('failed', {}).values())} |"
              for rung, c in label.items()]
    if status.get("final_model"):
        lines += ["", f"Final model: `{status['final_model']}`"]
    create_markdown_artifact("\n".join(lines), key=f"{slug(campaign)}-status",
                             description=f"{campaign}: labels per rung and the final model")
    emit_event(event="hifidata.campaign.finished", resource=resource(campaign),
               payload={"until": until, "labels": label,
                        "final_model": status.get("final_model"),
                        "timings_s": status.get("timings_s", {})})


def _percent(done: int, total: int) -> float:
    return 100.0 * done / total if total else 100.0
