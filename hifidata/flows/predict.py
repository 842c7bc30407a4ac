"""`hifidata predict`: a model's energies and forces for the structures of a file."""

from __future__ import annotations

from pathlib import Path

from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from prefect import flow

from hifidata.errors import HifidataError
from hifidata.flows import tasks
from hifidata.flows.progress import reporter
from hifidata.structures import with_charge_and_spin
from hifidata.training.models import load_model


def read_structures(structures_file: Path, charge: int = 0) -> list:
    """The structures to predict, with charge and spin (raises HifidataError)."""
    if not Path(structures_file).is_file():
        raise HifidataError(f"{structures_file}: no such file")
    try:
        structures = read(structures_file, index=":")
    except Exception as error:
        raise HifidataError(f"{structures_file}: unreadable ({error})") from None
    return [with_charge_and_spin(a, a.info.get("charge", charge), a.info.get("spin"))
            for a in structures]


def predict_file(model_dir: Path, structures_file: Path, out: Path, charge: int = 0,
                 batch_size: int = 32, rung: str | None = None) -> int:
    """Check the inputs (one-line errors, nothing written), then run the predict flow."""
    load_model(model_dir, rung=rung)
    structures = read_structures(structures_file, charge)
    return predict_flow(model_dir, structures, out, batch_size, rung)


@flow(name="predict")
def predict_flow(model_dir: Path, structures: list, out: Path, batch_size: int = 32,
                 rung: str | None = None) -> int:
    """Write ``out`` (extxyz) with energy and forces that ``ase.io.read`` gives back; ``rung``
    picks what a multi-fidelity model (or a composite's base) predicts."""
    bar = reporter()
    bar.start("predict", f"predict: {len(structures)} structures", len(structures))
    prediction = tasks.predict(model_dir, structures, batch_size, rung=rung,
                               progress=lambda n: bar.advance("predict", n))
    results = []
    for atoms, energy, forces in zip(structures, prediction["energy"], prediction["forces"],
                                     strict=True):
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=forces)
        if rung:
            atoms.info["rung"] = rung
        results.append(atoms)
    bar.done("predict")
    write(out, results, format="extxyz")
    return len(results)
