"""P3: the label stage's orchestration overhead against a bare PySCF script, same N labels.

    .venv/bin/python benchmarks/orchestration.py [--n 8] [--basis cc-pvdz] [--repeats 1]
                                                 [--setups bare1 bare2 local1 local2 dask2]

N water dimers rattled from the s22 geometry (seeded), labeled with CCSD(T) (frozen core, RHF)
energies and analytic gradients five ways, each in fresh processes, one setup after the other:

- ``bare1``: a plain PySCF loop (RHF → CCSD → (T) → (T) lambda → CCSD(T) gradient, as in
  ``pyscf/grad/ccsd_t.py``'s own example) in one process with one thread (``lib.num_threads(1)``,
  OMP/OpenBLAS/MKL_NUM_THREADS=1), with hifidata's convergence thresholds;
- ``bare2``: the same, the N split in two halves run by two processes at once: the ideal
  two-worker time;
- ``local1``, ``local2``: hifidata's label stage, ``execution.runner: local`` (Prefect's thread
  pool) with ``max_workers`` 1 and 2;
- ``dask2``: the label stage with ``runner: dask``, ``cluster: local``, ``max_workers: 2``
  (two worker processes, started inside the stage).

A hifidata setup gets a store holding the N structures and a selection of all of them named after
the spec's single CCSD(T) rung (written by this script, as the select stage would), then a fresh
process runs ``label_stage`` inside a parent flow, as ``hifidata run`` does (the parent flow
starts Prefect's temporary server, so the stage time excludes it); Prefect's database lives in a
private PREFECT_HOME, created before the first timed run. "label stage s" is the wall time around
the label stage call (for bare setups: around the loop); "process s" is the child process (or
both processes) from start to exit. Overhead per task is (stage − bare with as many processes) ×
workers / N: the extra wall time each task costs its worker. The energies and forces hifidata
stored are checked against the bare loop's (ASE's Hartree and Bohr both ways): energies within
1e-6 eV, or the script stops.

The second table gives, per setup: labels stored and label task runs Prefect recorded; the sum
of the labels' own wall times (``Label.wall_time``: the engine, rescues included); when the first
label started after the stage began and how long the stage went on after the last label ended
(from the labels' provenance, whole seconds); the CPU time Prefect's temporary server (a uvicorn
subprocess) used during the stage, which on 2 cores the labels compete with; the child's import
and Prefect start-up times; the largest energy and force differences from the bare loop.

Measured 2026-11-21 on the 2-core development machine, otherwise idle, N=8, cc-pVDZ (one run
of each setup; the same label timed twice in one process took 19.4 and 21.2 s, so single
labels vary by ±5 %):

    | setup | workers | label stage s | process s | ratio vs bare 1-process | overhead per task ms |
    |---|---:|---:|---:|---:|---:|
    | bare PySCF loop, 1 process | 1 | 162.18 | 162.73 | 1.000 | – |
    | bare PySCF, 2 processes (N/2 each) | 2 | 80.06 | 80.79 | 0.494 | – |
    | hifidata label stage, local runner | 1 | 171.25 | 185.53 | 1.056 | 1134 |
    | hifidata label stage, local runner | 2 | 86.46 | 101.57 | 0.533 | 1600 |
    | hifidata label stage, dask local cluster | 2 | 103.22 | 115.95 | 0.636 | 5790 |

- ≤ 1.05× with 1 worker: 1.056×. The labels' own wall times add up to 168.8 s against the
  bare loop's 162.2 s (within the ±5 % of a single label); outside the labels the stage spends
  2.5 s on 8 task runs (0.3 s each: the task run's API calls, the store write, the artifact)
  and 2 s after the last label (the coverage maps are redrawn).
- ≥ 1.8× with 2 workers: 1.88× with the local runner (the ideal, two bare processes: 2.03×).
  The Dask local cluster gets 1.57×: its first label starts 5 s into the stage (two worker
  processes start and import hifidata) and labels run 11 % slower in its workers, so for N=8
  the fixed cost does not amortize. On a cluster that cost is paid once per batch job.
- Every label is one Prefect task run, and the energies hifidata stored are the bare loop's to
  the bit (forces within 9e-16 eV/Å).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

SETUPS = {  # name: (description, workers)
    "bare1": ("bare PySCF loop, 1 process", 1),
    "bare2": ("bare PySCF, 2 processes (N/2 each)", 2),
    "local1": ("hifidata label stage, local runner", 1),
    "local2": ("hifidata label stage, local runner", 2),
    "dask2": ("hifidata label stage, dask local cluster", 2),
}
RUNG = "ccsdt"
ENERGY_TOLERANCE_EV = 1e-6
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# -- inputs -------------------------------------------------------------------------------------
def method_params(basis: str) -> dict[str, Any]:
    """The rung's method as the spec gives it, and as hifidata resolves it (all defaults)."""
    from hifidata.calculators.base import Method

    given = {"theory": "ccsd(t)", "basis": basis, "frozen_core": True, "reference": "rhf"}
    return {"given": given, "resolved": dict(Method.resolve("pyscf", given).params)}


def write_inputs(work: Path, structures: list, resolved: dict[str, Any]) -> None:
    """What the bare children read: symbols, positions in Bohr (ASE's Bohr, as hifidata's
    engine converts) and the resolved thresholds."""
    from ase.units import Bohr

    np.savez(work / "structures.npz",
             symbols=np.array([a.get_chemical_symbols() for a in structures]),
             positions_bohr=np.array([a.get_positions() / Bohr for a in structures]))
    (work / "method.json").write_text(json.dumps(resolved))


def campaign_spec(basis: str, runner: str, workers: int) -> dict[str, Any]:
    """A spec whose ladder is one CCSD(T) rung (tests/conftest.py's tiny_spec, cut down)."""
    import yaml

    spec = yaml.safe_load((EXAMPLES / "water-dimer.yaml").read_text())
    for key in ("train", "evaluate", "deploy", "audit"):
        spec.pop(key, None)
    spec.update(name="orchestration", store="campaign.h5")
    spec["explore"]["protocols"] = [{"kind": "rattle", "count": 1, "seed": 0}]  # never runs
    spec["ladder"] = [{
        "name": RUNG, "engine": "pyscf", "method": method_params(basis)["given"],
        "select": {"from": "candidates", "clusters": 1},
    }]
    spec["execution"] = {"runner": runner, "max_workers": workers, "cluster": "local"}
    return spec


def prepare_campaign(folder: Path, structures: list, basis: str, runner: str,
                     workers: int) -> list[str]:
    """Spec, seed file and a store with the structures and the rung's selection of them all;
    returns their structure ids in input order."""
    import yaml

    from hifidata.datasets.store import Selection, Store

    folder.mkdir(parents=True)
    (folder / "water-dimer.xyz").write_text((EXAMPLES / "water-dimer.xyz").read_text())
    (folder / "campaign.yaml").write_text(
        yaml.safe_dump(campaign_spec(basis, runner, workers), sort_keys=False))
    rng = np.random.default_rng(0)
    with Store(folder / "campaign.h5", "a") as store:
        ids = store.add_structures(structures, [{"protocol": "rattle"}] * len(structures))
        store.add_selection(Selection(
            RUNG, ids, list(ids),
            arrays={"embedding": rng.normal(size=(len(ids), 2)), "cluster": np.arange(len(ids))},
            params={"benchmark": "orchestration"},
        ))
    return ids


def child_env(work: Path, pin_threads: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update({
        "PREFECT_HOME": str(work / "prefect"),  # not the user's database, busy or not
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",  # as `hifidata run` without --verbose
        "DASK_LOGGING__DISTRIBUTED": "warning",
    })
    if pin_threads:
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


# -- children ----------------------------------------------------------------------------------
def bare_child(work: Path, indices: list[int], out: Path) -> None:
    """The plain PySCF loop over ``indices``: energies (Ha) and gradients (Ha/Bohr)."""
    start = time.perf_counter()
    from pyscf import cc, gto, lib, scf
    from pyscf.cc import ccsd_t_lambda
    from pyscf.data.elements import chemcore
    from pyscf.grad import ccsd_t as ccsd_t_grad

    lib.num_threads(1)
    imported = time.perf_counter() - start
    data = np.load(work / "structures.npz")
    p = json.loads((work / "method.json").read_text())
    normt = min(1e-5, np.sqrt(p["conv_tol"]) / 10)  # hifidata's amplitude threshold
    energies, gradients = [], []
    start = time.perf_counter()
    for i in indices:
        atom = list(zip(data["symbols"][i].tolist(), data["positions_bohr"][i].tolist(),
                        strict=True))
        mol = gto.M(atom=atom, unit="Bohr", basis=p["basis"], max_memory=p["max_memory_mb"],
                    verbose=0)
        mf = scf.RHF(mol).set(conv_tol=p["conv_tol"], max_cycle=p["max_cycle"]).run()
        mycc = cc.CCSD(mf, frozen=chemcore(mol) or None).set(
            conv_tol=p["conv_tol"], conv_tol_normt=normt, max_cycle=p["max_cycle"]).run()
        eris = mycc.ao2mo()
        e_t = mycc.ccsd_t(eris=eris)
        converged, l1, l2 = ccsd_t_lambda.kernel(mycc, eris, mycc.t1, mycc.t2,
                                                 max_cycle=p["max_cycle"], tol=normt, verbose=0)
        assert mf.converged and mycc.converged and converged, f"structure {i} did not converge"
        gradient = ccsd_t_grad.Gradients(mycc).kernel(mycc.t1, mycc.t2, l1, l2, eris=eris)
        energies.append(float(mycc.e_tot + e_t))
        gradients.append(np.asarray(gradient).tolist())
    loop = time.perf_counter() - start
    out.write_text(json.dumps({"indices": indices, "energies_ha": energies,
                               "gradients_ha_bohr": gradients, "loop_s": loop,
                               "import_s": imported}))


def hifidata_child(folder: Path, out: Path) -> None:
    """The label stage of the campaign in ``folder``, inside a parent flow as in a campaign."""
    start = time.perf_counter()
    from prefect import flow

    from hifidata.datasets.store import Store
    from hifidata.flows.campaign import _runner, label_stage
    from hifidata.spec import load_spec

    imported = time.perf_counter() - start
    spec = load_spec(folder / "campaign.yaml")
    marks: dict[str, Any] = {"import_s": imported}

    @flow(name="orchestration-benchmark")
    def parent() -> None:  # what campaign() does around each stage
        marks["prefect_start_s"] = time.perf_counter() - called
        with Store(spec.store_path, "a") as store:
            servers = server_processes()
            cpu = server_cpu(servers)
            marks["stage_started_at"] = time.time()
            begin = time.perf_counter()
            state = label_stage.with_options(task_runner=_runner(spec))(
                spec, store, return_state=True)
            marks["stage_s"] = time.perf_counter() - begin
            marks["server_cpu_s"] = server_cpu(servers) - cpu
        if not state.is_completed():
            raise RuntimeError(f"label stage ended {state.type}: {state.message}")
        marks["label_flow_run_id"] = str(state.state_details.flow_run_id)

    called = time.perf_counter()
    parent()
    out.write_text(json.dumps(marks))


def server_processes() -> list:
    """Prefect's temporary server: the uvicorn process(es) this process started."""
    import psutil

    return [child for child in psutil.Process().children(recursive=True)
            if "uvicorn" in " ".join(child.cmdline())]


def server_cpu(processes: list) -> float:
    """User + system CPU seconds the processes have used so far."""
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def warmup_child() -> None:
    """One empty flow: creates the private Prefect database before anything is timed."""
    from prefect import flow

    flow(name="warm-up")(lambda: None)()


# -- the parent --------------------------------------------------------------------------------
def run_child(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait(processes: list[subprocess.Popen], logs: list[Path]) -> None:
    for process, log in zip(processes, logs, strict=True):
        if process.wait() != 0:
            raise RuntimeError(f"child failed ({process.args[3:]}):\n{log.read_text()[-4000:]}")


def run_bare(work: Path, tag: str, halves: list[list[int]], env: dict[str, str]
             ) -> dict[str, Any]:
    outs = [work / f"{tag}-{k}.json" for k in range(len(halves))]
    logs = [work / f"{tag}-{k}.log" for k in range(len(halves))]
    start = time.perf_counter()
    processes = [run_child(["bare", "--work", str(work), "--indices",
                            ",".join(map(str, half)), "--out", str(out)], env, log)
                 for half, out, log in zip(halves, outs, logs, strict=True)]
    wait(processes, logs)
    process_s = time.perf_counter() - start
    parts = [json.loads(out.read_text()) for out in outs]
    energies, gradients = {}, {}
    for part in parts:
        energies.update(zip(part["indices"], part["energies_ha"], strict=True))
        gradients.update(zip(part["indices"], part["gradients_ha_bohr"], strict=True))
    return {"stage_s": max(p["loop_s"] for p in parts), "process_s": process_s,
            "import_s": max(p["import_s"] for p in parts), "energies_ha": energies,
            "gradients": gradients}


def run_hifidata(work: Path, tag: str, structures: list, basis: str, runner: str,
                 workers: int, env: dict[str, str]) -> dict[str, Any]:
    from hifidata.datasets.store import Store

    folder = work / tag
    ids = prepare_campaign(folder, structures, basis, runner, workers)
    out, log = work / f"{tag}.json", work / f"{tag}.log"
    start = time.perf_counter()
    wait([run_child(["hifidata", "--work", str(folder), "--out", str(out)], env, log)], [log])
    process_s = time.perf_counter() - start
    result = {**json.loads(out.read_text()), "process_s": process_s}
    store = Store(folder / "campaign.h5")
    labels = store.labels(store.method_id(RUNG))
    by_id = {sid: i for i, sid in enumerate(labels.structure_ids)}
    bad = [s for s in labels.status if s != "ok"]
    if bad or len(by_id) != len(ids):
        raise RuntimeError(f"{tag}: {len(by_id)} labels of {len(ids)}, failed: {bad}")
    result["energies_ev"] = [float(labels.energy[by_id[sid]]) for sid in ids]
    result["forces"] = [labels.forces[by_id[sid]] for sid in ids]
    result["label_wall_s"] = float(np.sum(labels.wall_time))
    result["labels"] = len(by_id)
    # when labels ran inside the stage (provenance times are whole seconds: ±1 s)
    started = [datetime.fromisoformat(json.loads(p)["started"]).timestamp()
               for p in labels.provenance]
    ended = [t + w for t, w in zip(started, labels.wall_time, strict=True)]
    result["first_label_s"] = max(0.0, min(started) - result["stage_started_at"])
    result["after_last_label_s"] = (result["stage_started_at"] + result["stage_s"]) - max(ended)
    return result


def compare(tag: str, result: dict[str, Any], bare: dict[str, Any]) -> tuple[float, float]:
    """Largest |ΔE| (eV) and |ΔF| (eV/Å) against the bare loop; stops beyond 1e-6 eV."""
    from ase.units import Bohr, Hartree

    n = len(bare["energies_ha"])
    reference_e = np.array([bare["energies_ha"][i] for i in range(n)]) * Hartree
    reference_f = [-np.array(bare["gradients"][i]) * Hartree / Bohr for i in range(n)]
    if "energies_ev" in result:
        energies, forces = np.array(result["energies_ev"]), result["forces"]
    else:
        energies = np.array([result["energies_ha"][i] for i in range(n)]) * Hartree
        forces = [-np.array(result["gradients"][i]) * Hartree / Bohr for i in range(n)]
    de = float(np.max(np.abs(energies - reference_e)))
    df = float(max(np.max(np.abs(f - g)) for f, g in zip(forces, reference_f, strict=True)))
    assert de <= ENERGY_TOLERANCE_EV, f"{tag}: energies differ from the bare loop by {de:.2e} eV"
    return de, df


def task_runs(env: dict[str, str], flow_run_ids: dict[str, str]) -> dict[str, int]:
    """Task runs Prefect recorded in each label stage's flow run (read after all runs)."""
    import uuid

    os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    counts = {}
    with get_client(sync_client=True) as client:
        for tag, run_id in flow_run_ids.items():
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[uuid.UUID(run_id)])))
            counts[tag] = sum(1 for r in runs if r.name.startswith(f"{RUNG}-"))
    return counts


def table(rows: list[dict[str, Any]], n: int) -> str:
    bare1 = next(r for r in rows if r["setup"] == "bare1")["stage_s"]
    bare = {r["workers"]: r["stage_s"] for r in rows if r["setup"].startswith("bare")}
    lines = ["| setup | workers | label stage s | process s | ratio vs bare 1-process "
             "| overhead per task ms |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        overhead = "–"
        if not r["setup"].startswith("bare") and r["workers"] in bare:
            ms = (r["stage_s"] - bare[r["workers"]]) * r["workers"] / n * 1000
            overhead = f"{ms:.0f}"
        lines.append(f"| {SETUPS[r['setup']][0]} | {r['workers']} | {r['stage_s']:.2f} | "
                     f"{r['process_s']:.2f} | {r['stage_s'] / bare1:.3f} | {overhead} |")
    by = {r["setup"]: r["stage_s"] for r in rows}
    lines.append("")
    if "local1" in by:
        ratio = by["local1"] / bare1
        lines.append(f"- goal ≤ 1.05× with 1 worker: {ratio:.3f}× "
                     f"({'met' if ratio <= 1.05 else 'not met'})")
    for setup in ("local2", "dask2"):
        if setup in by:
            speedup = bare1 / by[setup]
            lines.append(f"- goal ≥ 1.8× faster with 2 workers ({SETUPS[setup][0]}): "
                         f"{speedup:.2f}× ({'met' if speedup >= 1.8 else 'not met'})")
    if "bare2" in by:
        lines.append(f"- ideal (bare PySCF, 2 processes): {bare1 / by['bare2']:.2f}×")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="structures (labels) per setup")
    parser.add_argument("--basis", default="cc-pvdz")
    parser.add_argument("--seed", type=int, default=0, help="rattle seed")
    parser.add_argument("--stdev", type=float, default=0.05, help="rattle stdev, Å")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over the setups; the table shows medians")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS),
                        help="bare1 always runs (the reference)")
    parser.add_argument("--workdir", type=Path, help="keep stores and logs here (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--child", choices=("bare", "hifidata", "warmup"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "bare":
        bare_child(args.work, [int(i) for i in args.indices.split(",")], args.out)
        return
    if args.child == "hifidata":
        hifidata_child(args.work, args.out)
        return
    if args.child == "warmup":
        warmup_child()
        return

    setups = ["bare1", *[s for s in SETUPS if s in args.setups and s != "bare1"]]
    with tempfile.TemporaryDirectory(prefix="orchestration-") as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        from campaign_costs import dimers  # beside this script; only the parent needs it

        structures = dimers(args.n, args.seed, args.stdev)
        method = method_params(args.basis)
        write_inputs(work, structures, method["resolved"])
        env, bare_env = child_env(work, pin_threads=False), child_env(work, pin_threads=True)
        print(f"{args.n} water dimers, pyscf {method['resolved']['theory']}/"
              f"{method['resolved']['basis']} frozen core, energies + gradients; "
              f"{os.cpu_count()} CPUs; work in {work}", flush=True)
        wait([run_child(["warmup"], env, work / "warmup.log")], [work / "warmup.log"])
        halves = [list(range(args.n))[: (args.n + 1) // 2], list(range(args.n))[(args.n + 1) // 2:]]
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
        flow_runs: dict[str, str] = {}
        for repeat in range(args.repeats):
            for setup in setups:
                tag = f"{setup}-{repeat}"
                if setup == "bare1":
                    result = run_bare(work, tag, [list(range(args.n))], bare_env)
                elif setup == "bare2":
                    result = run_bare(work, tag, halves, bare_env)
                else:
                    runner = "dask" if setup.startswith("dask") else "local"
                    result = run_hifidata(work, tag, structures, args.basis, runner,
                                          SETUPS[setup][1], env)
                    flow_runs[tag] = result["label_flow_run_id"]
                result["max_de"], result["max_df"] = compare(tag, result, results["bare1"][0]
                                                             if results["bare1"] else result)
                results[setup].append(result)
                print(f"{tag}: stage {result['stage_s']:.2f} s, process "
                      f"{result['process_s']:.2f} s, max |ΔE| {result['max_de']:.1e} eV, "
                      f"max |ΔF| {result['max_df']:.1e} eV/Å", flush=True)
        recorded = task_runs(env, flow_runs) if flow_runs else {}

    rows = []
    for setup in setups:
        runs = results[setup]
        rows.append({"setup": setup, "workers": SETUPS[setup][1],
                     "stage_s": statistics.median(r["stage_s"] for r in runs),
                     "process_s": statistics.median(r["process_s"] for r in runs)})
    print()
    print(table(rows, args.n))
    print()
    print("| setup | tasks (labels stored) | task runs in Prefect | Σ label wall s "
          "| first label starts s | stage after last label s | server CPU s | import s "
          "| Prefect start s | max ΔE eV | max ΔF eV/Å |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setup in setups:
        runs = results[setup]
        last = runs[-1]
        tags = [f"{setup}-{k}" for k in range(len(runs))]
        recorded_runs = "/".join(str(recorded[t]) for t in tags) if tags[0] in recorded else "–"
        labels = last.get("labels", args.n)
        wall, first, after, server, start = (
            f"{statistics.median(r[key] for r in runs):.{digits}f}" if key in last else "–"
            for key, digits in (("label_wall_s", 2), ("first_label_s", 0),
                                ("after_last_label_s", 0), ("server_cpu_s", 2),
                                ("prefect_start_s", 2)))
        print(f"| {setup} | {labels} | {recorded_runs} | {wall} | {first} | {after} | {server} | "
              f"{statistics.median(r['import_s'] for r in runs):.2f} | {start} | "
              f"{max(r['max_de'] for r in runs):.1e} | {max(r['max_df'] for r in runs):.1e} |")


if __name__ == "__main__":
    main()
