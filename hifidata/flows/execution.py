"""Where labels run: threads of the campaign process, or a Dask cluster.

The flow process stays the store's single writer wherever labels run: a task returns its label
and the flow writes it. Only the label stage goes to Dask: exploration, selection and training
run where ``hifidata run`` runs (a GPU node, say), while thousands of DFT labels fan out to
batch jobs.

Dask clusters come from distributed (``local``: worker processes on this machine), from
dask-jobqueue (``slurm``, ``pbs``: each job one worker, jobs submitted and retired as the queue
of labels grows and shrinks), or are an address of a scheduler someone else runs. Batch workers
declare their cores as a Dask resource and each label asks for threads × ranks of them, so a
16-core job runs sixteen 1-core PySCF labels or two 8-core CP2K labels at a time. An engine
may have batch jobs of its own (``execution.engines.cp2k.job``): one cluster per distinct job.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dask
from ase import Atoms
from prefect import Task
from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture

from hifidata.errors import HifidataError
from hifidata.flows import tasks
from hifidata.spec import EngineExecution, Execution, Job, Rung, Spec

Submit = Callable[[Rung, str, Atoms], PrefectFuture]


def check_server(execution: Execution) -> None:
    """Workers on other machines report to a Prefect server: without one each would start a
    private temporary server and the campaign's runs would not add up anywhere."""
    from prefect.settings import PREFECT_API_URL

    if execution.runner == "dask" and execution.cluster != "local" and not PREFECT_API_URL.value():
        raise HifidataError(
            f"execution.cluster {execution.cluster}: the Dask workers need a Prefect server they "
            "can reach; start one (prefect server start) and set PREFECT_API_URL "
            "(docs/cluster.md)"
        )


def prefect_run() -> dict[str, str | None]:
    """This flow run's id, and the Prefect UI that shows it (None in the embedded mode, whose
    temporary server is gone when the run ends)."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    server = bool(PREFECT_API_URL.value())
    return {"flow_run_id": flow_run.get_id(), "api_url": PREFECT_API_URL.value() or None,
            "ui_url": (PREFECT_UI_URL.value() or None) if server else None}


def api_url() -> str:
    """The Prefect API this process reports to (a temporary server's when none is set)."""
    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def apply_limits(execution: Execution) -> None:
    """Create or update the tag concurrency limit of every engine that sets ``limit``."""
    limits = {engine: e.limit for engine, e in execution.engines.items() if e.limit}
    if not limits:
        return
    with get_client(sync_client=True) as client:
        for tag, limit in limits.items():
            client.create_concurrency_limit(tag=tag, concurrency_limit=limit)


def label_task(rung: Rung, structure_id: str, execution: Execution) -> Task:
    """The label task of one structure, named after it. Tagged with its engine when the spec
    limits that engine: the tag is what Prefect's concurrency limit counts. (Unlimited engines
    go untagged: Prefect 3.8 spends seconds per task run on a tag that has no limit.)"""
    limited = (execution.engines.get(rung.engine) or EngineExecution()).limit
    return tasks.label.with_options(task_run_name=f"{rung.name}-{structure_id[:12]}",
                                    tags={rung.engine} if limited else set())


@contextmanager
def label_executor(spec: Spec, rungs: list[Rung], log_dir: Path) -> Iterator[Submit]:
    """``submit(rung, structure_id, atoms)`` for the label stage; clusters close on exit."""
    execution = spec.execution
    apply_limits(execution)
    if execution.runner == "local":
        def submit_local(rung: Rung, sid: str, atoms: Atoms) -> PrefectFuture:
            task = label_task(rung, sid, execution)
            return task.submit(atoms, rung.resolved, rung.threads, rung.ranks)
        yield submit_local
        return

    from prefect_dask import DaskTaskRunner

    check_server(execution)
    url = api_url()
    with ExitStack() as stack:
        runners: dict[str, Any] = {}  # engine -> its task runner
        shared: dict[str, Any] = {}  # one cluster per distinct job
        for rung in rungs:
            job = execution.job_for(rung.engine)
            key = job.model_dump_json() if job else ""
            if key not in shared:
                own = execution.engines.get(rung.engine)
                name = f"hifidata-{rung.engine if own and own.job else 'labels'}"
                shared[key] = stack.enter_context(DaskTaskRunner(
                    **cluster_settings(execution, job, rungs, url, log_dir, name)))
            runners[rung.engine] = shared[key]
        annotate = execution.cluster in ("local", "slurm", "pbs")  # workers hifidata started

        def submit_dask(rung: Rung, sid: str, atoms: Atoms) -> PrefectFuture:
            task = label_task(rung, sid, execution)
            parameters = {"atoms": atoms, "method": rung.resolved, "threads": rung.threads,
                          "ranks": rung.ranks}
            if not annotate:
                return runners[rung.engine].submit(task, parameters)
            with dask.annotate(resources={"cores": rung.threads * rung.ranks}):
                return runners[rung.engine].submit(task, parameters)

        yield submit_dask


def cluster_settings(execution: Execution, job: Job | None, rungs: list[Rung], url: str,
                     log_dir: Path, job_name: str) -> dict[str, Any]:
    """DaskTaskRunner keywords for ``execution.cluster`` (``job``: the batch job, if any)."""
    if execution.cluster == "local":
        cores = max(rung.threads * rung.ranks for rung in rungs)
        return {"cluster_class": "distributed.LocalCluster", "cluster_kwargs": {
            "n_workers": execution.max_workers, "threads_per_worker": cores,
            "resources": {"cores": cores}, "processes": True, "dashboard_address": None,
            # workers report task runs to this process's Prefect API, not to servers of their own
            "env": {"PREFECT_API_URL": url},
        }}
    if job is None:  # a scheduler someone else runs: its workers, its resources
        return {"address": execution.cluster}
    log_dir.mkdir(parents=True, exist_ok=True)
    kind = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}[execution.cluster]
    return {
        "cluster_class": f"dask_jobqueue.{kind}",
        "cluster_kwargs": {
            "cores": job.cores, "processes": 1, "memory": job.memory, "walltime": job.walltime,
            "queue": job.queue, "account": job.account, "job_name": job_name,
            "job_extra_directives": list(job.directives),
            "job_script_prologue": [f"export PREFECT_API_URL={url}", *job.prologue],
            "worker_extra_args": ["--resources", f"cores={job.cores}"],
            "python": sys.executable, "log_directory": str(log_dir),
        },
        "adapt_kwargs": {"minimum_jobs": execution.scale.minimum,
                         "maximum_jobs": execution.scale.maximum},
    }
