"""The single-node Slurm of tests/slurm.py runs batch jobs and Dask workers submitted as jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm import SlurmInfo, slurm  # noqa: F401  (slurm: the module-scoped fixture)


def _job_state(job_id: str) -> str:
    """The job's state while the controller still knows it ("" once it has been purged)."""
    result = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10
    )
    for field in result.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return ""


@pytest.mark.slow
def test_batch_job_and_dask_workers_as_jobs(slurm: SlurmInfo, tmp_path: Path) -> None:  # noqa: F811
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    assert slurm.cores >= 2, "two one-core workers must fit on the node side by side"

    # a plain batch job runs to completion and writes its output where asked
    out = tmp_path / "hostname.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--output={out}", "--wrap", "hostname"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 30
    while (state := _job_state(job_id)) not in ("COMPLETED", ""):
        assert state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"), state
        assert time.monotonic() < deadline, f"job {job_id} still {state} after 30 s"
        time.sleep(0.2)
    assert out.read_text().strip() == slurm.node

    # two Dask workers, each its own Slurm job, reach a scheduler in this process
    with (
        SLURMCluster(
            cores=1,
            processes=1,
            memory="1GB",
            walltime="00:10:00",
            queue=slurm.partition,
            python=sys.executable,  # the jobs run on this machine: use this venv's Python
            local_directory=str(tmp_path / "dask"),
            log_directory=str(tmp_path / "logs"),
            scheduler_options={"host": "127.0.0.1"},
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.scale(jobs=2)
        client.wait_for_workers(2, timeout=60)

        # local, so cloudpickle ships it by value: workers cannot import this test module
        def _slurm_job_id() -> str | None:
            return os.environ.get("SLURM_JOB_ID")

        job_ids = list(client.run(_slurm_job_id).values())
        assert len(job_ids) == 2
        assert all(j is not None and j.isdigit() for j in job_ids), job_ids
        assert job_ids[0] != job_ids[1]
