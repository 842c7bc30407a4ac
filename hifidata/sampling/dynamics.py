"""Exploration MD protocols, batched: NVT over a temperature ladder, NPT over pressures, and
temperature ramps (melt, quench), each over seed structures × settings × MD seeds.

Every (seed structure, temperature / pressure / schedule, MD seed) is one job; jobs run in
lockstep ``batch_size`` at a time so that each MD step of all of them is ONE call of the
pretrained model (hifidata.calculators.batching), while the integrators stay ASE's own
(Langevin for NVT, LangevinBAOAB for NPT). Each job returns its own ``Candidates``: the frames,
one origin record per frame, and ``stopped``, the reason a monitor ended the trajectory early
(close contact, broken covalent bond, temperature runaway, cell volume change), or None.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from ase import Atoms

from hifidata.calculators.mlip import batch_predictor, default_device
from hifidata.sampling.ase_md import (
    VOLUME_CHANGE_FACTOR,
    MDJob,
    MDResult,
    Monitor,
    bonds_kept,
    close_contact,
    run_md_batched,
    temperature_runaway,
    volume_change,
)
from hifidata.sampling.explore import Candidates
from hifidata.structures import MIN_DISTANCE, structure_id

Progress = Callable[[int], None] | None


def exploration_monitors(
    atoms: Atoms,
    temperature: float,
    min_distance: float = MIN_DISTANCE,
    keep_bonds: bool | None = None,
    npt: bool = False,
    max_volume_change: float = VOLUME_CHANGE_FACTOR,
) -> list[Monitor]:
    """Close contact and temperature runaway (5 × ``temperature``) always; covalent bonds of
    ``atoms`` kept if ``keep_bonds`` (None: for molecules only; in a periodic solid atoms may
    change neighbours: diffusion, melting); the cell volume within a factor under a barostat."""
    monitors = [close_contact(min_distance), temperature_runaway(temperature)]
    if keep_bonds if keep_bonds is not None else not atoms.pbc.any():
        monitors.insert(1, bonds_kept(atoms))
    if npt:
        monitors.append(volume_change(atoms, max_volume_change))
    return monitors


def on_device(model, device: str | None):
    """``model`` on ``device`` (None: CUDA if available); a copy if it lives elsewhere, so a
    shared pretrained instance is never moved under the feet of other users."""
    device = device or default_device()
    current = next(model.parameters()).device
    if current == torch.device(device) or (current.type == device == "cuda"):
        return model
    return copy.deepcopy(model).to(device)


def _run(
    jobs: list[MDJob], model, device: str | None, batch_size: int, progress: Progress,
) -> list[MDResult]:
    predict = batch_predictor(on_device(model, device))
    return run_md_batched(jobs, predict, progress, batch_size)


def _candidates(result: MDResult, origin: dict, parent: Atoms, ramp: bool = False) -> Candidates:
    parent_id = structure_id(parent)
    origins = []
    for k, step in enumerate(result.frame_steps):
        record = {**origin, "step": step, "parent": parent_id}
        if ramp:
            record["temperature"] = round(result.target_temperatures[k], 6)
        if "pressure" in origin and origin["pressure"] is not None and result.volumes:
            record["volume"] = round(result.volumes[k], 6)
        origins.append(record)
    return Candidates(result.frames, origins, result.stopped)


def _run_protocol(
    runs: list[tuple[Atoms, float | list[float], float | None, int, dict]],
    model,
    steps: int,
    *,
    timestep: float,
    friction: float,
    sample_every: int,
    check_every: int | None,
    min_distance: float,
    keep_bonds: bool | None,
    model_name: str,
    batch_size: int,
    device: str | None,
    progress: Progress,
    max_volume_change: float = VOLUME_CHANGE_FACTOR,
    barostat_time: float = 200.0,
    hydrostatic: bool = True,
) -> list[Candidates]:
    """One MD job per run (seed structure, temperature or schedule, pressure or None, MD seed,
    what its origins say), all batched; one Candidates per run, in order."""
    jobs = []
    for atoms, target, pressure, md_seed, _ in runs:
        hottest = max(target) if isinstance(target, list) else target  # runaway is judged on it
        jobs.append(MDJob(
            atoms, target, steps, pressure=pressure, timestep=timestep, friction=friction,
            seed=md_seed, sample_every=sample_every, check_every=check_every or sample_every,
            barostat_time=barostat_time, hydrostatic=hydrostatic,
            monitors=exploration_monitors(atoms, hottest, min_distance, keep_bonds,
                                          pressure is not None, max_volume_change),
        ))
    results = _run(jobs, model, device, batch_size, progress)
    return [
        _candidates(result, {**own, "seed": md_seed, "timestep": timestep, "model": model_name},
                    atoms, ramp=isinstance(target, list))
        for result, (atoms, target, _, md_seed, own) in zip(results, runs, strict=True)
    ]


def nvt(
    seeds: Sequence[Atoms],
    model,
    temperatures: Sequence[float],
    steps: int,
    *,
    md_seeds: Sequence[int] = (0,),
    timestep: float = 0.5,
    friction: float = 0.01,
    sample_every: int = 5,
    check_every: int | None = None,
    min_distance: float = MIN_DISTANCE,
    keep_bonds: bool | None = None,
    model_name: str = "",
    batch_size: int = 32,
    device: str | None = None,
    progress: Progress = None,
) -> list[Candidates]:
    """Langevin NVT of every seed at every temperature (a ladder) for every MD seed.

    One ``Candidates`` per job, in the order seed structure, temperature, MD seed; origins as
    explore.md_trajectory's: {"protocol": "md", "temperature", "step", "seed", "timestep",
    "model", "parent"}. T in K, timestep in fs, friction in 1/fs.
    """
    runs = [(atoms, float(temperature), None, md_seed,
             {"protocol": "md", "temperature": temperature})
            for atoms in seeds for temperature in temperatures for md_seed in md_seeds]
    return _run_protocol(
        runs, model, steps, timestep=timestep, friction=friction, sample_every=sample_every,
        check_every=check_every, min_distance=min_distance, keep_bonds=keep_bonds,
        model_name=model_name, batch_size=batch_size, device=device, progress=progress,
    )


def npt(
    seeds: Sequence[Atoms],
    model,
    temperatures: Sequence[float],
    pressures: Sequence[float],
    steps: int,
    *,
    md_seeds: Sequence[int] = (0,),
    timestep: float = 0.5,
    friction: float = 0.01,
    barostat_time: float = 200.0,
    hydrostatic: bool = True,
    max_volume_change: float = VOLUME_CHANGE_FACTOR,
    sample_every: int = 5,
    check_every: int | None = None,
    min_distance: float = MIN_DISTANCE,
    keep_bonds: bool | None = None,
    model_name: str = "",
    batch_size: int = 32,
    device: str | None = None,
    progress: Progress = None,
) -> list[Candidates]:
    """NPT (ASE LangevinBAOAB) of every periodic seed at every (temperature, pressure in GPa).

    One ``Candidates`` per job (order: seed, temperature, pressure, MD seed); origins add
    "pressure" (GPa) and "volume" (Å³) to NVT's, with "protocol": "npt". A cell that grows or
    shrinks by more than ``max_volume_change`` stops its run.
    """
    if not all(atoms.pbc.all() for atoms in seeds):
        raise ValueError("npt needs periodic seeds (pbc on all three axes, with a cell)")
    runs = [(atoms, float(temperature), float(pressure), md_seed,
             {"protocol": "npt", "temperature": temperature, "pressure": pressure})
            for atoms in seeds for temperature in temperatures for pressure in pressures
            for md_seed in md_seeds]
    return _run_protocol(
        runs, model, steps, timestep=timestep, friction=friction, sample_every=sample_every,
        check_every=check_every, min_distance=min_distance, keep_bonds=keep_bonds,
        max_volume_change=max_volume_change, barostat_time=barostat_time,
        hydrostatic=hydrostatic, model_name=model_name, batch_size=batch_size, device=device,
        progress=progress,
    )


def ramp(
    seeds: Sequence[Atoms],
    model,
    temperatures: Sequence[float],
    steps: int,
    *,
    pressure: float | None = None,
    md_seeds: Sequence[int] = (0,),
    timestep: float = 0.5,
    friction: float = 0.01,
    barostat_time: float = 200.0,
    hydrostatic: bool = True,
    max_volume_change: float = VOLUME_CHANGE_FACTOR,
    sample_every: int = 5,
    check_every: int | None = None,
    min_distance: float = MIN_DISTANCE,
    keep_bonds: bool | None = None,
    model_name: str = "",
    batch_size: int = 32,
    device: str | None = None,
    progress: Progress = None,
) -> list[Candidates]:
    """A temperature ramp of every seed for every MD seed: the thermostat's target follows the
    piecewise-linear schedule ``temperatures`` spread over ``steps`` ([300, 2000, 300]: melt,
    then quench). NVT (Langevin), or NPT (LangevinBAOAB) at ``pressure`` GPa if given.

    One ``Candidates`` per job (order: seed, MD seed); origins have "protocol": "ramp",
    "temperature" (the target at that frame's step), "schedule", and "pressure"/"volume" under
    a barostat. Temperature runaway is judged against the schedule's highest temperature.
    """
    schedule = [float(t) for t in temperatures]
    if not schedule:
        raise ValueError("a ramp needs at least one temperature")
    under_pressure = {} if pressure is None else {"pressure": pressure}
    runs = [(atoms, schedule, pressure, md_seed,
             {"protocol": "ramp", "schedule": schedule, **under_pressure})
            for atoms in seeds for md_seed in md_seeds]
    return _run_protocol(
        runs, model, steps, timestep=timestep, friction=friction, sample_every=sample_every,
        check_every=check_every, min_distance=min_distance, keep_bonds=keep_bonds,
        max_volume_change=max_volume_change, barostat_time=barostat_time,
        hydrostatic=hydrostatic, model_name=model_name, batch_size=batch_size, device=device,
        progress=progress,
    )
