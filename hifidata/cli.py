"""The ``hifidata`` command. It calls flows/ and datasets/ and holds no science.

Errors caused by input (a missing file, a bad spec field, an impossible structure) print one
line, ``hifidata: error: ...``, and exit with status 2, leaving every file as it was.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hifidata import __version__
from hifidata.errors import HifidataError

EXAMPLES = {
    "water-dimer": ("water-dimer.yaml", "water-dimer.xyz"),
    "silicon": ("silicon.yaml", "silicon.xyz"),
}

app = typer.Typer(
    name="hifidata",
    help="High-fidelity training data for machine-learning interatomic potentials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def main() -> None:
    try:
        app()
    except HifidataError as error:
        console.print(f"hifidata: error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


def _version(value: bool) -> None:
    if value:
        out.print(f"hifidata {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """High-fidelity training data for machine-learning interatomic potentials."""


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Folder to write the campaign spec into."),
    example: str = typer.Option("water-dimer", help=f"One of: {', '.join(EXAMPLES)}."),
    force: bool = typer.Option(False, "--force", help="Overwrite files that exist."),
) -> None:
    """Write a campaign spec (and its seed structures) to start from."""
    if example not in EXAMPLES:
        raise HifidataError(f"unknown example {example!r}; examples: {', '.join(EXAMPLES)}")
    directory.mkdir(parents=True, exist_ok=True)
    source = resources.files("hifidata") / "examples"
    targets = [directory / name for name in EXAMPLES[example]]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise HifidataError(f"{existing[0]} exists; use --force to overwrite")
    for name, target in zip(EXAMPLES[example], targets, strict=True):
        with resources.as_file(source / name) as path:
            shutil.copyfile(path, target)
    out.print(f"wrote {targets[0]}; run it with: hifidata run {targets[0]}")


@app.command()
def plan(
    spec: Path = typer.Argument(..., help="The campaign spec (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Expected cost per rung before anything runs: labels left, seconds each, CPU-hours.

    Fitted to the store's wall times where it has labels of a rung, else a prior; read-only.
    """
    import json

    from hifidata.flows.plan import plan_campaign, totals

    rows = plan_campaign(spec)
    total = totals(rows)
    if as_json:
        out.print_json(json.dumps({"rungs": rows, "total": total}, default=str))
        return
    table = Table(title=f"plan: {spec}", title_justify="left")
    for column in ("rung", "method", "left", "done", "size", "s/label", "cores", "CPU-h",
                   "cost model"):
        right = column not in ("rung", "method", "cost model")
        table.add_column(column, justify="right" if right else "left")
    for r in rows:
        unit = "bf" if r["size_unit"] == "basis functions" else r["size_unit"]
        done = str(r["done"]) + (f" +{r['failed']} failed" if r["failed"] else "")
        table.add_row(r["rung"], r["method"], f"{r['remaining']} of {r['planned']}", done,
                      f"{r['typical_size']:g} {unit}", _duration(r["seconds_per_label"]),
                      str(r["threads"] * r["ranks"]), f"{r['cpu_hours']:.3g}", r["source"])
    out.print(table)
    out.print(f"total: {total['labels_remaining']} labels, {total['cpu_hours']:.3g} CPU-hours")
    for r in rows:
        if r["note"]:
            out.print(f"{r['rung']}: {r['note']}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


@app.command()
def run(
    spec: Path = typer.Argument(..., help="The campaign spec (YAML)."),
    until: str = typer.Option("release", help="Last stage to run: explore, select, label, "
                              "audit, train, evaluate, deploy or release."),
    iterations: int = typer.Option(1, help="Campaign iterations (only 1 is supported yet)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
) -> None:
    """Run a campaign, or resume it: what the store holds is never computed again."""
    if iterations != 1:
        raise HifidataError("--iterations: only 1 iteration is supported in this version")
    _quiet_prefect(verbose)
    from hifidata.flows.campaign import run_campaign
    from hifidata.flows.progress import reporting
    from hifidata.spec import load_spec

    load_spec(spec)  # a bad spec fails here, in one line, before Prefect starts
    with RichReporter(console) as bars, reporting(bars):
        status = run_campaign(spec, until=until)
    print_summary(status)


@app.command()
def schedule(
    spec: Path = typer.Argument(..., help="The campaign spec (YAML)."),
    cron: str = typer.Option(None, help='When to run, as a cron expression: "0 2 * * *" is '
                             "every day at 02:00."),
    interval: str = typer.Option(None, help="Or every so long: 90 (seconds), 15m, 6h, 1d."),
    pool: str = typer.Option(None, help="Register the deployment with this Prefect work pool "
                             "and return (a `prefect worker start --pool` runs it); without "
                             "it, this process serves the schedule until stopped."),
    name: str = typer.Option(None, help="The deployment's name (default: the campaign's)."),
    until: str = typer.Option("release", help="Last stage each run goes to."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
) -> None:
    """Run a campaign on a schedule, as a Prefect deployment (docs/cluster.md)."""
    _quiet_prefect(verbose)
    from hifidata.flows import schedule as scheduling
    from hifidata.spec import STAGES, load_spec

    if until not in STAGES:
        raise HifidataError(f"--until {until!r}: stages are {', '.join(STAGES)}")
    loaded = load_spec(spec)  # a bad spec fails now, not at 02:00
    when = {"cron": cron, "interval": interval}
    scheduling.schedule_of(**when)  # so does a bad schedule
    name = name or loaded.name
    if pool:
        deployment = scheduling.deploy(spec, name, pool, until=until, **when)
        out.print(f"deployment hifidata-scheduled-campaign/{name} ({deployment}) on work pool "
                  f"{pool}: start a worker with `prefect worker start --pool {pool}`")
        return
    if not os.environ.get("PREFECT_API_URL"):
        console.print("hifidata: no PREFECT_API_URL: the runs are visible only while this "
                      "process lives (start a server for the UI: docs/cluster.md)")
    console.print(f"serving {name} ({cron or 'every ' + interval}); Ctrl-C stops")
    scheduling.serve(spec, name, until=until, **when)


@app.command()
def status(
    store: Path = typer.Argument(..., help="The campaign store (.h5)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Counts per stage and rung, failures, cost, models and where results are."""
    from hifidata.datasets.status import as_json as to_json
    from hifidata.datasets.status import campaign_status
    from hifidata.datasets.store import Store

    summary = campaign_status(Store(store))
    if as_json:
        out.print_json(to_json(summary))
    else:
        print_summary(summary)


@app.command()
def audit(
    store: Path = typer.Argument(..., help="The campaign store (.h5)."),
    methods: tuple[str, str] = typer.Option(..., "--methods",
                                            help="Two rungs: the reference A, then B."),
    count: int = typer.Option(None, help="Audit a stratified subset of this many of A's "
                              "structures, labeling those B lacks (default: only the pairs "
                              "the store holds)."),
    workers: int = typer.Option(2, help="Labels at a time."),
    seed: int = typer.Option(0, help="Seed of the stratified pick."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
) -> None:
    """How two methods disagree on the same configurations: forces, relative energies, stress."""
    _quiet_prefect(verbose)
    from hifidata.flows.audit import run_audit
    from hifidata.flows.progress import reporting

    with RichReporter(console) as bars, reporting(bars):
        summary = run_audit(store, methods, count=count, seed=seed, workers=workers)
    forces = summary["forces_eV_per_A"]
    table = Table(title=f"{methods[1]} against {methods[0]}: {summary['structures']} structures",
                  title_justify="left")
    for column in ("element", "force MAE meV/Å", "force RMSE meV/Å", "max meV/Å"):
        table.add_column(column, justify="left" if column == "element" else "right")
    for element, f in forces.items():
        table.add_row(element, f"{f['mae'] * 1000:.1f}", f"{f['rmse'] * 1000:.1f}",
                      f"{f['max'] * 1000:.1f}")
    out.print(table)
    energy, stress = summary["energy"], summary["stress_GPa"]
    out.print(f"relative energy: MAE {energy['relative_mae_meV_per_atom']:.2f} meV/atom, "
              f"RMSE {energy['relative_rmse_meV_per_atom']:.2f} meV/atom"
              + (f"; stress MAE {stress['mae']:.3f} GPa" if stress else ""))
    out.print(f"report: {summary['report']}")


@app.command()
def predict(
    model: Path = typer.Argument(..., help="A model folder written by hifidata."),
    structures: Path = typer.Argument(..., help="Structures: any file ase.io.read reads."),
    output: Path = typer.Option(..., "--out", help="Where to write the extxyz predictions."),
    charge: int = typer.Option(0, help="Charge of every structure (if the file has none)."),
    batch_size: int = typer.Option(32, help="Structures per model call."),
    rung: str = typer.Option(None, help="The rung to predict: any of a multi-fidelity model's "
                             "rungs, or a composite's base rung (default: the model's own)."),
) -> None:
    """Energies and forces of a trained model (any kind), written as extxyz."""
    _quiet_prefect(False)
    from hifidata.flows.predict import predict_file
    from hifidata.flows.progress import reporting

    with RichReporter(console) as bars, reporting(bars):
        n = predict_file(model, structures, output, charge=charge, batch_size=batch_size,
                         rung=rung)
    out.print(f"wrote {n} predictions to {output}")


@app.command()
def train(
    store: Path = typer.Argument(..., help="The campaign store (.h5)."),
    recipe: str = typer.Option(..., help="finetune, delta or multifidelity."),
    rung: str = typer.Option(None, help="finetune: the rung to learn (delta: its low rung)."),
    high: str = typer.Option(None, help="delta: the rung whose difference to --rung is "
                             "learned."),
    rungs: str = typer.Option(None, help="multifidelity: comma-separated rungs (default: all)."),
    predict: str = typer.Option(None, help="multifidelity: the rung it predicts by default "
                                "(default: the last of --rungs)."),
    base: str = typer.Option(None, help="The pretrained start: chgnet-0.3.0, chgnet-r2scan or "
                             "7net-0 (finetune); 7net-mf-0 (multifidelity)."),
    epochs: int = typer.Option(None, help="The most epochs (early stopping may end sooner)."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
) -> None:
    """Train a model on a store's labels, as a campaign's train stage does, outside it."""
    _quiet_prefect(verbose)
    from hifidata.flows.progress import reporting
    from hifidata.flows.train import run_train

    with RichReporter(console) as bars, reporting(bars):
        name, path = run_train(store, recipe, rung=rung, high=high, rungs=rungs,
                               predict=predict, base=base, epochs=epochs, device=device)
    out.print(f"model {name}: {path}")


@app.command()
def evaluate(
    store: Path = typer.Argument(..., help="The campaign store (.h5) with the labels."),
    model: str = typer.Argument(..., help="A model of the campaign by name, a model folder, "
                                "or a pretrained MLIP (chgnet-0.3.0)."),
    temperatures: str = typer.Option("300,600", help="MD stability: comma-separated K."),
    replicas: int = typer.Option(4, help="MD stability: runs per temperature and seed."),
    steps: int = typer.Option(2000, help="MD stability: steps per run (0.5 fs each)."),
    scan: list[str] = typer.Option([], help="An energy slice of the first seed, I,J:START:END:"
                                   "POINTS (Å), e.g. 0,3:2.4:4.0:9; give two for a 2-D grid "
                                   "(repeat the option)."),
    scan_rungs: str = typer.Option(None, help="Rungs that label the scan (comma-separated; "
                                   "default: every rung for 1-D, none for 2-D)."),
    workers: int = typer.Option(2, help="Labels at a time (scan labels)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
) -> None:
    """A model's metrology report: errors per rung, element and origin, MD stability, slices."""
    _quiet_prefect(verbose)
    from hifidata.flows.evaluate import run_evaluate, scan_option, stability_option
    from hifidata.flows.progress import reporting

    with RichReporter(console) as bars, reporting(bars):
        record = run_evaluate(
            store, model, stability_settings=stability_option(temperatures, replicas, steps),
            scans=scan_option(scan, scan_rungs), workers=workers)
    table = Table(title=f"{record['model']} on each rung's test split", title_justify="left")
    for column in ("rung", "structures", "E MAE meV/atom", "F MAE meV/Å"):
        table.add_column(column, justify="left" if column == "rung" else "right")
    for row in record["errors"]:
        table.add_row(row["rung"], str(row["n_structures"]),
                      f"{row.get('energy_mae_meV_per_atom', float('nan')):.2f}",
                      f"{row.get('force_mae_meV_per_A', float('nan')):.1f}")
    out.print(table)
    for temperature, row in (record["stability"] or {}).items():
        out.print(f"MD {temperature} K: {row['stable']}/{row['runs']} runs stable")
    out.print(f"report: {record['report']}")


@app.command()
def export(
    store: Path = typer.Argument(..., help="The campaign store (.h5)."),
    formats: list[str] = typer.Option(["extxyz"], "--format", help="extxyz, hdf5 or asedb; "
                                      "repeat for several (docs/release-format.md)."),
    output: Path = typer.Option(..., "--out", help="Folder for the release (must be new or "
                                "empty, unless --force)."),
    rungs: list[str] = typer.Option(None, "--rungs", help="Rungs to release, repeated "
                                    "(default: every rung, cheapest first)."),
    only_ok: bool = typer.Option(False, "--only-ok", help="Leave failed labels out."),
    version: str = typer.Option(None, help="Release version, MAJOR.MINOR.PATCH (default "
                                "1.0.0, or the next minor version of --extends)."),
    extends: Path = typer.Option(None, help="The earlier release this one grows: verified, "
                                 "its version and the changes recorded; no structure may "
                                 "change split."),
    license: str = typer.Option("CC-BY-4.0", help="SPDX license identifier."),
    name: str = typer.Option(None, help="Dataset name (default: the campaign's)."),
    description: str = typer.Option("", help="Description (default: the campaign's)."),
    authors: list[str] = typer.Option([], "--author", help="An author's name, repeated."),
    citation: str = typer.Option(None, help="How to cite the dataset."),
    doi: str = typer.Option(None, help="The dataset's DOI (10.xxxx/...)."),
    force: bool = typer.Option(False, help="Replace an existing release folder."),
) -> None:
    """Export a dataset release: data files, a dataset card (JSON + README.md) and a SHA-256
    manifest (docs/release.md)."""
    from hifidata.datasets.release import export_release
    from hifidata.datasets.store import Store
    from hifidata.flows.progress import counted_progress, reporting

    with RichReporter(console) as bars, reporting(bars):
        info = export_release(
            Store(store), output, formats=formats, rungs=rungs, only_ok=only_ok,
            version=version, extends=extends, license=license, description=description,
            authors=[{"name": a} for a in authors], citation=citation, doi=doi, name=name,
            replace=force, progress=counted_progress("release"))
        bars.done("release")
    labels = ", ".join(f"{rung} {n}" for rung, n in info["labels"].items())
    out.print(f"wrote {output} (version {info['version']}): {info['structures']} structures; "
              f"ok labels {labels}; files {', '.join(info['files'])}",
              markup=False, highlight=False, soft_wrap=True)


@app.command()
def verify(release: Path = typer.Argument(..., help="A release folder.")) -> None:
    """Check a release: SHA-256 manifest, dataset card schema, every data file's layout;
    exits 2 with the first problem found."""
    from hifidata.datasets.verify import verify_release

    result = verify_release(release)
    card = result["card"]
    counts = ", ".join(f"{fmt} {n}" for fmt, n in result["entries"].items())
    out.print(f"{release}: {card['name']} {card['version']} is intact ({len(card['files'])} "
              f"data files; labels per format: {counts})", markup=False, highlight=False)


@app.command()
def diff(
    release_a: Path = typer.Argument(..., help="The earlier release."),
    release_b: Path = typer.Argument(..., help="The later release."),
    as_json: bool = typer.Option(False, "--json", help="Every change as JSON."),
) -> None:
    """List labels added, removed and relabeled from RELEASE_A to RELEASE_B, and structures
    whose split changed."""
    import json

    from hifidata.datasets.verify import diff_releases, verify_release

    for release in (release_a, release_b):
        verify_release(release)
    changes = diff_releases(release_a, release_b)
    if as_json:
        out.print_json(json.dumps(changes))
        return
    counts = changes["counts"]
    out.print(f"{counts['added']} added, {counts['removed']} removed, {counts['relabeled']} "
              f"relabeled, {counts['moved']} changed split")
    for kind in ("added", "removed", "relabeled"):
        for row in changes[kind][:20]:
            extra = (f" ΔE {row['energy_change']:+.6f} eV" if kind == "relabeled"
                     and row["status"] == "ok" else "")
            out.print(f"  {kind:9s} {row['rung']:10s} {row['structure_id'][:16]} "
                      f"{row['formula']}{extra}", markup=False, highlight=False)
        if len(changes[kind]) > 20:
            out.print(f"  … {len(changes[kind]) - 20} more {kind} (--json lists all)")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="Labeled structures: extxyz, or any file ase.io.read "
                                "reads (eV, Å, eV/Å, eV/Å³)."),
    store: Path = typer.Option(..., "--store", help="The store (.h5); made when absent."),
    method: str = typer.Option(None, help="The rung the labels belong to (required for "
                               "labels): registered in the store, or declared by --spec or "
                               "--define."),
    mode: str = typer.Option("labels", "--as", help="labels (structures and their numbers) or "
                             "seeds (structures only, as campaign seeds)."),
    spec: Path = typer.Option(None, help="A campaign spec whose ladder has the rung --method."),
    define: list[str] = typer.Option([], help="KEY=VALUE of an external method, repeated: "
                                     "software=VASP --define xc=PBE --define encut=520."),
    energy_key: str = typer.Option(None, help="Energy key (default: REF_energy_<method>, "
                                   "REF_energy, the file's energy=)."),
    forces_key: str = typer.Option(None, help="Per-atom forces key (default: as the energy)."),
    stress_key: str = typer.Option(None, help="Stress key, 6 Voigt or 3×3 (periodic frames; "
                                   "default: as the energy)."),
) -> None:
    """Import existing labeled data into a store, as labels of a declared method or as seeds."""
    from hifidata.datasets.importer import Keys, import_file
    from hifidata.datasets.store import Store

    if not file.is_file():  # before the store is made
        raise HifidataError(f"{file}: no such file")
    made = not store.exists()
    progress = Progress(TextColumn("{task.description}"), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True,
                        disable=not console.is_terminal)  # a log gets no bar lines
    reading: list[int] = []  # the bar's task, once frames are being read

    def advance(n: int) -> None:
        if not reading:
            progress.start()
            reading.append(progress.add_task(f"reading {file.name}", total=None))
        progress.advance(reading[0], n)

    try:
        with Store(store, "a") as writable:
            summary = import_file(writable, file, method=method, mode=mode, spec=spec,
                                  define=define, keys=Keys(energy_key, forces_key, stress_key),
                                  progress=advance)
    except HifidataError:
        if made:  # a failed import leaves no empty store behind
            for path in (store, store.with_name(store.name + ".lock")):
                path.unlink(missing_ok=True)
        raise
    finally:
        if reading:
            progress.stop()
    what = (f"{summary['labels_added']} labels of {summary['method']}" if mode == "labels"
            else f"{summary['structures_added']} seeds")
    out.print(f"imported {what} from {summary['frames']} frames into {store} "
              f"({summary['structures_added']} new structures, {summary['skipped_existing']} "
              f"already in the store, {summary['duplicates']} duplicates in the file)",
              markup=False, highlight=False, soft_wrap=True)


@app.command()
def md(
    model: str = typer.Argument(..., help="A model folder, an exported artifact (export-model) "
                                "or a pretrained MLIP (7net-0, 7net-mf-0, chgnet-0.3.0)."),
    structure: Path = typer.Argument(..., help="Start structure(s): any file ase.io.read reads; "
                                     "every structure in it is run."),
    temperature: list[float] = typer.Option(..., "--temperature", "-T", help="Target K "
                                            "(repeat for several temperatures)."),
    steps: int = typer.Option(..., help="MD steps."),
    replicas: int = typer.Option(1, help="Seeds per structure and temperature, all run "
                                 "together in one batch."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    ensemble: str = typer.Option("langevin", help="nve, langevin, csvr (NVT, Bussi) or npt "
                                 "(CSVR + stochastic cell rescaling; periodic cells)."),
    timestep: float = typer.Option(0.5, help="fs."),
    pressure: float = typer.Option(0.0, help="npt: target pressure in GPa."),
    friction: float = typer.Option(0.01, help="langevin: friction in 1/fs."),
    thermostat_time: float = typer.Option(50.0, help="csvr/npt: thermostat time constant, fs."),
    barostat_time: float = typer.Option(500.0, help="npt: barostat time constant, fs."),
    every: int = typer.Option(100, help="Write a frame (and record E, T) every this many steps."),
    output: Path = typer.Option(None, "--out", help="Trajectory: .extxyz (a file per replica) "
                                "or .h5 (one file)."),
    rung: str = typer.Option(None, help="The rung a multi-fidelity model predicts (or a "
                             "composite's base rung)."),
    seed: int = typer.Option(0, help="Seed of the first replica (the others: seed + 1, ...)."),
    charge: int = typer.Option(0, help="Charge of every structure (if the file has none)."),
) -> None:
    """Molecular dynamics with a model: many replicas in one batch on CPU or GPU (docs/md.md)."""
    from hifidata.flows.md import MDRun, run_md_file
    from hifidata.flows.progress import reporting

    request = MDRun(model, structure, temperature, steps, replicas, device, ensemble, timestep,
                    pressure, friction, thermostat_time, barostat_time, every, output, rung,
                    seed, charge)
    with RichReporter(console) as bars, reporting(bars):
        summary = run_md_file(request)
    table = Table(title=f"{len(summary['replicas'])} replicas, {summary['steps']} steps on "
                  f"{summary['device']}", title_justify="left")
    for column in ("structure", "T K", "seed", "steps", "mean T K", "E eV", "result"):
        table.add_column(column, justify="left" if column == "result" else "right")
    for row in summary["replicas"]:
        mean = row["mean_temperature_K"]
        energy = row["final_energy_eV"]
        table.add_row(str(row["structure"]), f"{row['temperature']:g}", str(row["seed"]),
                      str(row["steps"]), "-" if mean is None else f"{mean:.0f}",
                      "-" if energy is None else f"{energy:.4f}",
                      "stable" if row["stable"] else row["stopped"])
    out.print(table)
    out.print(f"{summary['ns_per_day']:.3g} ns/day per replica, "
              f"{summary['atom_steps_per_s']:.3g} atom·steps/s ({summary['atoms']} atoms, "
              f"{summary['wall_time_s']:.1f} s)")
    if summary["trajectory"]:
        out.print(f"trajectory: {summary['trajectory']}")


@app.command("export-model")
def export_model(
    model: str = typer.Argument(..., help="A model folder or a pretrained MLIP name."),
    output: Path = typer.Option(..., "--out", help="The artifact folder (must not exist or be "
                                "empty)."),
    rung: str = typer.Option(None, help="The rung a multi-fidelity model is exported for."),
    name: str = typer.Option(None, help="The model's name in its card (default: the folder's)."),
) -> None:
    """Export a model as a self-contained artifact with a model card: TorchScript for LAMMPS
    (pair_style e3gnn) for SevenNet models, a checked copy for CHGNet ones (docs/export.md)."""
    from hifidata.deploy.export import export_model as export

    try:
        path = export(model, output, rung=rung, name=name,
                      progress=lambda text: console.print(text, markup=False, highlight=False))
    except ValueError as error:
        raise HifidataError(str(error)) from None
    out.print(f"wrote {path}")


# -- output ----------------------------------------------------------------------------------
class RichReporter:
    """Progress bars for the flows' stages (see hifidata.flows.progress)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.tasks: dict[str, int] = {}

    def start(self, key: str, description: str, total: int | None = None) -> None:
        if not self.tasks:
            self.progress.start()
        self.tasks[key] = self.progress.add_task(description, total=total)

    def advance(self, key: str, amount: int = 1) -> None:
        if key in self.tasks:
            self.progress.advance(self.tasks[key], amount)

    def describe(self, key: str, description: str) -> None:
        if key in self.tasks:
            self.progress.update(self.tasks[key], description=description)

    def done(self, key: str, summary: str = "") -> None:
        if key in self.tasks:
            task = self.progress.tasks[self.tasks[key]]
            self.progress.update(self.tasks[key], completed=task.total or task.completed,
                                 description=f"{task.description} {summary}".rstrip())

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def __enter__(self) -> RichReporter:
        return self

    def __exit__(self, *exc) -> None:
        if self.tasks:  # a stopped bar that never started prints an empty line
            self.progress.stop()


@app.command()
def dashboard(
    path: Path = typer.Argument(..., help="A campaign store (.h5), or a folder of them."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. The default is this "
                             "machine only; reach it from yours with ssh -L PORT:127.0.0.1:PORT."),
    port: int = typer.Option(8050, help="Port to listen on."),
    refresh: float = typer.Option(2.0, min=0.2, help="Seconds between the page's checks for "
                                  "new data."),
) -> None:
    """The monitoring page: stages, labels, cost, failures, coverage, models and releases,
    live while campaigns run (read-only)."""
    from hifidata.dashboard.app import is_loopback, serve
    from hifidata.dashboard.campaigns import Campaigns

    stores = Campaigns(path).paths()  # bad PATH: one line, before the server starts
    out.print(f"hifidata dashboard: {len(stores)} campaign store(s) under {path}; "
              f"http://{host if ':' not in host else f'[{host}]'}:{port}/ (Ctrl-C stops)")
    if not is_loopback(host):
        out.print(f"[yellow]listening on {host}: anyone who can reach this machine can read "
                  "these campaigns[/yellow]")
    serve(path, host=host, port=port, refresh_seconds=refresh)


def print_summary(status: dict) -> None:
    stages = status["stages"]
    table = Table(title=f"campaign {status['campaign']}", title_justify="left")
    table.add_column("stage")
    table.add_column("what")
    table.add_column("count", justify="right")
    by_protocol = ", ".join(f"{k} {v}" for k, v in stages["explore"]["by_protocol"].items())
    table.add_row("explore", f"candidate structures ({by_protocol})",
                  str(stages["explore"]["structures"]))
    for name, s in stages["select"].items():
        coverage = f", coverage {s['coverage']:.2f}" if s.get("coverage") is not None else ""
        table.add_row("select",
                      f"{name}: picked of {s['pool']} ({s['principal_components']} PCs{coverage})",
                      str(s["selected"]))
    for name, s in stages["label"].items():
        failed = sum(s["failed"].values())
        mean = f", {s['mean_wall_time_s']:.1f} s each" if s["mean_wall_time_s"] else ""
        rescued = sum(s.get("rescued", {}).values())
        rescued_text = f", {rescued} rescued" if rescued else ""
        table.add_row("label", f"{name}: ok / failed / pending{mean}{rescued_text}",
                      f"{s['ok']} / {failed} / {s['pending']}")
    for name, model in stages["train"].items():
        if model.get("recipe") == "composite":
            table.add_row("train", f"{name} = {' + '.join(model.get('parts', []))}", "")
        else:
            table.add_row("train", f"{name}: train / validation structures",
                          f"{model.get('n_train')} / {model.get('n_validation')}")
    out.print(table)
    if stages["evaluate"]:
        metrics = Table(title="held-out errors (test split)", title_justify="left")
        for column in ("model", "vs rung", "n", "E MAE meV/atom", "F MAE meV/Å"):
            justify = "left" if column in ("model", "vs rung") else "right"
            metrics.add_column(column, justify=justify)
        for m in stages["evaluate"]:
            if m.get("n_structures"):
                metrics.add_row(m["model"], m["rung"], str(m["n_structures"]),
                                f"{m['energy_mae_meV_per_atom']:.2f}",
                                f"{m['force_mae_meV_per_A']:.1f}")
        out.print(metrics)
    deploy = stages["deploy"]
    if deploy:
        replicas = deploy.get("replicas", 1)
        verdict = (f"{deploy.get('stable_replicas', int(deploy['stable']))}/{replicas} "
                   f"replicas stayed physical" if deploy["stable"]
                   else f"UNSTABLE ({deploy['stopped']})")
        out.print(f"MD: {deploy['model']}, {deploy['time_ps']:.2f} ps at "
                  f"{deploy['temperature_K']:g} K: {verdict}; {deploy['ns_per_day']:.2f} ns/day "
                  f"per replica")
        if deploy.get("artifact"):
            out.print(f"exported model: {Path(status['store']).parent / deploy['artifact']}")
    for name, report in status.get("reports", {}).items():
        for temperature, row in (report["stability"] or {}).items():
            out.print(f"MD stability of {name} at {temperature} K: {row['stable']}/{row['runs']} "
                      f"runs stable over {row['simulated_ps'] / row['runs']:.2f} ps each")
        for piece in report["slices"] or []:
            for rung, err in piece.items():
                if isinstance(err, dict):
                    out.print(f"slice {piece['coordinate']} of {name} vs {rung}: MAE "
                              f"{err['mae_meV']:.1f} meV, max {err['max_meV']:.1f} meV")
        out.print(f"report of {name}: {report['report']}")
    for label, path in (("final model", status["final_model"]),
                        ("parity plot", status["parity_plot"]), ("release", status["release"])):
        if path:
            out.print(f"{label}: {path}")
    if status.get("coverage_maps"):
        folder = Path(status["coverage_maps"][0]).parent
        out.print(f"coverage maps: {folder}/ ("
                  + ", ".join(Path(p).name for p in status["coverage_maps"]) + ")")
    if status.get("timings_s"):
        out.print("wall time per stage (this run): " + ", ".join(
            f"{stage} {seconds:.0f} s" for stage, seconds in status["timings_s"].items()))
    for key, audit in stages.get("audit", {}).items():
        if audit.get("force_mae_eV_per_A") is not None:
            out.print(f"audit {key}: {audit['structures']} structures, force MAE "
                      f"{audit['force_mae_eV_per_A'] * 1000:.1f} meV/Å, relative energy MAE "
                      f"{audit['relative_energy_mae_meV_per_atom']:.2f} meV/atom: "
                      f"{audit['report']}")
    if status["failures_total"]:
        quarantined = Table(title=f"quarantined labels ({status['failures_total']})",
                            title_justify="left")
        for column in ("rung", "structure", "class", "rescues tried", "message"):
            quarantined.add_column(column, overflow="fold")
        for f in status["failures"]:
            quarantined.add_row(f["rung"], f["structure_id"][:12], f["status"],
                                "; ".join(f.get("rescues_tried", [])) or "-", f["message"][:120])
        out.print(quarantined)
        if status["failures_total"] > len(status["failures"]):
            out.print("(all of them: `hifidata status STORE --json`)")


def _quiet_prefect(verbose: bool) -> None:
    """Prefect's INFO lines would tear the progress bars; the Prefect UI still has every log."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # Dask's scheduler and workers (their processes inherit it) log every start and stop
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


if __name__ == "__main__":
    main()
