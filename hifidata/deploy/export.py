"""Export a trained model as a self-contained artifact: a file that runs without hifidata (where
the model allows one), a model card, and a check that the artifact predicts what the model does.

An artifact is a directory::

    deployed_serial.pt   SevenNet models: sevenn's TorchScript for LAMMPS (pair_style e3gnn),
                         written by sevenn's own ``deploy``; a multi-fidelity model is bound to
                         one rung (modality)
    model/               CHGNet-based models (chgnet, composite): a copy of the hifidata model
                         directory, since CHGNet cannot be compiled to TorchScript
    model_card.json      what the model is, what it was trained on, how to run it, checksums
    README.md            the card, for people

``TorchScriptPotential`` runs a ``deployed_serial.pt`` in the batched MD engine's Potential
protocol (hifidata.deploy.potentials) by feeding it exactly what LAMMPS's pair_e3gnn feeds it,
so the numbers hifidata checks are the numbers LAMMPS gets. docs/export.md has the details.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from hifidata.calculators.mlip import PRETRAINED, SEVENNET_PRETRAINED, default_device, quiet
from hifidata.datasets.release import sha256_file
from hifidata.deploy.potentials import Graph, Output, Potential, atoms_graph
from hifidata.errors import ModelError
from hifidata.training.models import (
    ChgnetModel,
    CompositeModel,
    Model,
    json_default,
    load_model,
    read_model_json,
    select_rung,
    torch_threads,
)

CARD_FORMAT = "hifidata-model-card"
CARD_VERSION = 1
CARD_FILE = "model_card.json"
README_FILE = "README.md"
TORCHSCRIPT_FILE = "deployed_serial.pt"
MODEL_DIR = "model"
UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "distances": "Å"}
#: the metadata sevenn's deploy writes into the TorchScript file (pair_e3gnn reads these)
TORCHSCRIPT_KEYS = ("chemical_symbols_to_index", "cutoff", "num_species", "model_type",
                    "version", "dtype", "time")
CHGNET_REASON = ("CHGNet cannot be compiled to TorchScript: its forward takes CrystalGraph "
                 "objects, which torch.jit.script, torch.jit.trace and torch.export all reject; "
                 "the artifact holds the hifidata model directory instead")
#: verification tolerances: float32 networks evaluated along two code paths
ENERGY_TOLERANCE_PER_ATOM = 1e-4  # eV per atom
FORCE_TOLERANCE = 1e-4  # eV/Å
STRESS_TOLERANCE = 1e-5  # eV/Å³ (0.16 bar)
#: training-record entries worth a card; the per-epoch histories stay in model.json
_TRAINING_KEYS = ("recipe", "name", "rung", "rungs", "default_rung", "low", "method_id",
                  "method_ids", "parts", "n_train", "n_val", "n_validation", "hyperparameters",
                  "train_seconds")
_RECORD_KEYS = ("epochs_run", "best_epoch", "watched")

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# export


@dataclass
class _Source:
    """The model to export: loaded (bound to its rung), and where its files are."""

    reference: str  # what the caller passed: a directory or a pretrained name
    model: Model
    directory: Path | None  # the model directory of the exported part; None when pretrained

    @property
    def pretrained(self) -> bool:
        return self.directory is None

    @property
    def torchscript(self) -> bool:
        return self.model.kind == "sevennet"


def export_model(
    model: str | Path,
    out: str | Path,
    rung: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write the artifact of ``model`` (a hifidata model directory or a pretrained name such
    as "7net-0", "7net-mf-0", "chgnet-0.3.0") into the new directory ``out``; returns ``out``.

    rung: the rung to export (a multi-fidelity SevenNet's modality, a composite's base for
        the base's rung); None exports what ``load_model(model)`` predicts.
    name: the model's name in the card (default: its metadata's name, or the pretrained name,
        or the directory's name).
    progress: called with a short message before each step.

    The artifact is built in a temporary directory beside ``out`` and renamed at the end, so
    a failure leaves nothing behind; ModelError when ``out`` is not empty, the model or rung
    is unknown, or the artifact does not reproduce the model (see ``verify``).
    """
    say = progress or (lambda message: None)
    out = Path(out)
    _check_target(out)
    say(f"loading {model}")
    source = _resolve(str(model), rung)
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside ``out`` so the final rename stays on one file system; mkdir honours the umask
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        if source.torchscript:
            say(f"compiling TorchScript ({TORCHSCRIPT_FILE})")
            _write_torchscript(source, staging / TORCHSCRIPT_FILE)
        else:
            say(f"copying the model into {MODEL_DIR}/")
            _write_model_copy(source, staging / MODEL_DIR)
        say("verifying the artifact against the model")
        with torch_threads(1):  # 16-atom checks: a second thread only adds contention
            verification = verify(source.model, staging)
        card = _model_card(source, staging, name or _default_name(source), verification,
                          artifact_name=out.name)
        _write_card(card, staging)
        _check_target(out)  # someone may have written there meanwhile
        if out.exists():
            out.rmdir()  # empty (checked): replaced by the artifact
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return out


def _check_target(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        raise ModelError(f"{out} exists and is not empty; export into a new or empty directory")
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} exists and is a file; export into a new or empty directory")


def _resolve(reference: str, rung: str | None) -> _Source:
    """Load ``reference`` on the CPU, bound to ``rung``, and find the folder of that part."""
    pretrained = reference in PRETRAINED or reference.lower() in SEVENNET_PRETRAINED
    directory = None if pretrained else Path(reference)
    model = load_model(reference, device="cpu")
    # a composite predicts its base's rung with its base alone: export that part's folder
    while (rung is not None and isinstance(model, CompositeModel)
           and rung != model.metadata.get("rung") and rung in model.rungs):
        model = model.base
        directory = directory / "base" if directory is not None else None
    model = select_rung(model, rung, reference)
    return _Source(reference, model, directory)


def _write_torchscript(source: _Source, file: Path) -> None:
    """sevenn's LAMMPS deployment of the source's checkpoint, bound to its modality."""
    if source.pretrained:
        from sevenn.util import pretrained_name_to_path

        checkpoint = pretrained_name_to_path(source.reference.lower())
    else:
        document = read_model_json(source.directory)
        checkpoint = source.directory / document.get("weights", "sevennet.pth")
    with _quiet_sevenn():
        from sevenn.scripts.deploy import deploy

        deploy(str(checkpoint), str(file), modal=getattr(source.model, "modal", None))


@contextlib.contextmanager
def _quiet_sevenn() -> Iterator[None]:
    """sevenn warns that no tensor-product accelerator is enabled, e3nn about its JIT; the
    artifact is correct either way, so neither belongs in an export's output."""
    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        yield


def _write_model_copy(source: _Source, target: Path) -> None:
    if source.directory is None:
        source.model.save(target)  # a pretrained CHGNet: its weights as a hifidata model
        return
    # training checkpoints are by-products of training, not part of the model
    shutil.copytree(source.directory, target, ignore=shutil.ignore_patterns("checkpoints"))


# ---------------------------------------------------------------------------------------------
# verification


def verify(model: Model, artifact: str | Path) -> dict[str, Any]:
    """Load the artifact back and compare its predictions with ``model``'s on two small
    structures of the model's species (a periodic cell and the same atoms as a cluster).

    Returns the record for the card: the largest absolute differences in energy (eV), forces
    (eV/Å) and stress (eV/Å³, periodic only), and the tolerances; ModelError when one is
    exceeded.
    """
    structures = verification_structures(model.species)
    expected = model.predict(structures)
    loaded = load_artifact(artifact, device="cpu")
    if isinstance(loaded, Potential):
        actual = _potential_predict(loaded, structures)
        path = TORCHSCRIPT_FILE
    else:
        actual = loaded.predict(structures)
        path = f"{MODEL_DIR}/"
    n_atoms = np.array([len(atoms) for atoms in structures])
    record = {
        "path": path,
        "structures": [f"{a.get_chemical_formula()} ({'periodic' if a.pbc.all() else 'cluster'})"
                       for a in structures],
        "max_abs_energy_diff_eV": float(np.max(np.abs(actual["energy"] - expected["energy"]))),
        "max_abs_force_diff_eV_per_A": float(np.max(np.abs(
            np.concatenate(actual["forces"]) - np.concatenate(expected["forces"])))),
        "tolerance": {"energy_eV_per_atom": ENERGY_TOLERANCE_PER_ATOM,
                      "forces_eV_per_A": FORCE_TOLERANCE, "stress_eV_per_A3": STRESS_TOLERANCE},
    }
    stresses = [(a, e) for a, e in zip(actual.get("stress") or [], expected.get("stress") or [],
                                       strict=False) if a is not None and e is not None]
    if stresses:
        record["max_abs_stress_diff_eV_per_A3"] = float(max(
            np.max(np.abs(np.asarray(a) - np.asarray(e))) for a, e in stresses))
    energy_ok = np.all(np.abs(actual["energy"] - expected["energy"])
                       <= ENERGY_TOLERANCE_PER_ATOM * n_atoms)
    checks = {"energy": bool(energy_ok),
              "forces": record["max_abs_force_diff_eV_per_A"] <= FORCE_TOLERANCE,
              "stress": record.get("max_abs_stress_diff_eV_per_A3", 0.0) <= STRESS_TOLERANCE}
    record["passed"] = all(checks.values())
    if not record["passed"]:
        failed = ", ".join(name for name, ok in checks.items() if not ok)
        raise ModelError(f"the artifact does not reproduce the model ({failed} differ: "
                         f"{json.dumps({k: v for k, v in record.items() if k.startswith('max')})})")
    return record


def verification_structures(species: Sequence[str]) -> list[Atoms]:
    """A rattled 8-atom cubic cell (2 Å apart) of up to three of ``species``, and the same
    atoms as a non-periodic cluster: small, but every atom has neighbours and images."""
    common = [s for s in ("H", "C", "O", "Si") if s in species]
    # a universal model knows ~90 elements: test common ones; a pretrained CHGNet names none
    symbols = (list(species) if len(species) <= 3 else common[:3] or list(species)[:3]) or ["Si"]
    grid = np.array([(x, y, z) for x in range(2) for y in range(2) for z in range(2)], float)
    rng = np.random.default_rng(0)
    positions = 2.0 * grid + rng.normal(scale=0.08, size=grid.shape)
    names = [symbols[k % len(symbols)] for k in range(len(grid))]
    periodic = Atoms(names, positions=positions, cell=np.eye(3) * 4.0, pbc=True)
    cluster = Atoms(names, positions=positions, pbc=False)
    return [periodic, cluster]


def _potential_predict(potential: Potential, structures: Sequence[Atoms]) -> dict[str, Any]:
    """A Potential's numbers in Model.predict's layout (stress: ASE Voigt, None if not periodic)."""
    graph = atoms_graph(structures, potential.cutoff)
    output = potential(graph, stress=True)
    bounds = np.cumsum([len(atoms) for atoms in structures])[:-1]
    forces = np.split(output.forces.detach().cpu().double().numpy(), bounds)
    stress = output.stress.detach().cpu().double().numpy()
    voigt = [s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] if atoms.pbc.all() else None
             for atoms, s in zip(structures, stress, strict=True)]
    return {"energy": output.energy.detach().cpu().double().numpy(), "forces": forces,
            "stress": voigt}


# ---------------------------------------------------------------------------------------------
# the model card


def _model_card(source: _Source, artifact: Path, name: str, verification: dict[str, Any],
                artifact_name: str = "ARTIFACT") -> dict[str, Any]:
    """The card of the artifact being written in ``artifact`` (its files already there);
    ``artifact_name``: the directory name the usage lines refer to."""
    model = source.model
    metadata = model.metadata
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "name": name,
        "kind": model.kind,
        "recipe": metadata.get("recipe"),
        "source": source.reference,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "hifidata_version": _hifidata_version(),
        "libraries": _library_versions(model),
        "species": model.species,
        "cutoff": _cutoff(model),
        "n_parameters": _n_parameters(model),
        "rungs": model.rungs,
        "rung": _exported_rung(model),
        "modality": getattr(model, "modal", None),
        "units": UNITS,
        "training": training_summary(model),
        "metrics": metadata.get("metrics"),
    }
    if source.torchscript:
        card["torchscript"] = {"file": TORCHSCRIPT_FILE, **_torchscript_metadata(
            artifact / TORCHSCRIPT_FILE)}
    else:
        card["torchscript"] = None
        card["torchscript_reason"] = CHGNET_REASON
    card["files"] = file_entries(artifact)
    card["usage"] = _usage(card, artifact_name)
    card["verification"] = verification
    return card


def _default_name(source: _Source) -> str:
    if source.model.metadata.get("name"):
        return str(source.model.metadata["name"])
    return source.reference if source.pretrained else Path(source.reference).resolve().name


def _hifidata_version() -> str | None:
    import hifidata

    version = getattr(hifidata, "__version__", None)
    return version or _distribution_version("hifidata")


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _kinds(model: Model) -> set[str]:
    if isinstance(model, CompositeModel):
        return _kinds(model.base) | _kinds(model.delta)
    return {model.kind}


def _library_versions(model: Model) -> dict[str, str | None]:
    names = ["torch"]
    kinds = _kinds(model)
    if "sevennet" in kinds:
        names += ["sevenn", "e3nn"]
    if "chgnet" in kinds:
        names += ["chgnet"]
    return {name: _distribution_version(name) for name in names}


def _cutoff(model: Model) -> float | None:
    if isinstance(model, CompositeModel):  # the graph must hold both parts' neighbours
        cutoffs = [c for c in (_cutoff(model.base), _cutoff(model.delta)) if c is not None]
        return max(cutoffs) if cutoffs else None
    if isinstance(model, ChgnetModel):
        return float(model.network.graph_converter.atom_graph_cutoff)
    cutoff = getattr(model, "cutoff", None)
    return float(cutoff) if cutoff is not None else None


def _n_parameters(model: Model) -> int | None:
    if isinstance(model, CompositeModel):
        return (_n_parameters(model.base) or 0) + (_n_parameters(model.delta) or 0)
    network = getattr(model, "network", None)
    return int(sum(p.numel() for p in network.parameters())) if network is not None else None


def _exported_rung(model: Model) -> str | None:
    modal = getattr(model, "modal", None)
    if modal is not None and modal in model.rungs:
        return modal
    return model.metadata.get("rung")


def training_summary(model: Model) -> dict[str, Any]:
    """What the model's metadata says about its training data and run (no loss histories);
    a composite's parts each get theirs under "parts"."""
    metadata = model.metadata
    summary = {key: metadata[key] for key in _TRAINING_KEYS if key in metadata}
    record = metadata.get("training")
    if isinstance(record, dict):
        summary["run"] = {key: record[key] for key in _RECORD_KEYS if key in record}
        watched, best = record.get(record.get("watched", "")), record.get("best_epoch")
        if isinstance(watched, list) and isinstance(best, int) and 0 < best <= len(watched):
            summary["run"]["best_loss"] = watched[best - 1]
    if "hyperparameters" in summary and "train_stress" in summary["hyperparameters"]:
        summary["train_stress"] = summary["hyperparameters"]["train_stress"]
    elif "train_stress" in metadata:
        summary["train_stress"] = metadata["train_stress"]
    if isinstance(model, CompositeModel):
        summary["part_models"] = {"base": training_summary(model.base),
                                  "delta": training_summary(model.delta)}
    return summary


def _torchscript_metadata(file: Path) -> dict[str, Any]:
    _, extra = _load_torchscript(file)
    return {
        "format": "sevenn serial TorchScript (LAMMPS pair_style e3gnn)",
        "sevenn_version": extra.get("version"),
        "dtype": extra.get("dtype"),
        "cutoff": float(extra["cutoff"]),
        "elements": extra["chemical_symbols_to_index"].split(),
    }


def file_entries(artifact: Path) -> list[dict[str, Any]]:
    """{path, sha256, bytes, format} of every file of the artifact but the card and README
    (which are written from this list)."""
    entries = []
    for file in sorted(p for p in artifact.rglob("*") if p.is_file()):
        relative = file.relative_to(artifact).as_posix()
        if relative in (CARD_FILE, README_FILE):
            continue
        entries.append({"path": relative, "sha256": sha256_file(file), "bytes": file.stat().st_size,
                        "format": _file_format(file)})
    return entries


def _file_format(file: Path) -> str:
    if file.name == TORCHSCRIPT_FILE:
        return "torchscript (sevenn serial, LAMMPS pair_style e3gnn)"
    if file.name == "model.json":
        return "hifidata model.json"
    if file.name == "chgnet.pth":
        return "chgnet checkpoint (torch.save)"
    if file.name == "sevennet.pth":
        return "sevenn checkpoint (torch.save)"
    return file.suffix.lstrip(".") or "file"


def _usage(card: dict[str, Any], artifact: str) -> dict[str, Any]:
    """How to run the artifact: shell and LAMMPS lines, Python lines."""
    md = f"hifidata md {artifact} STRUCTURE.xyz --temperature 300 --steps 1000"
    if card["torchscript"] is None:
        return {"hifidata": md,
                "python": ["from hifidata.training.models import load_model",
                           f"model = load_model('{artifact}/{MODEL_DIR}')",
                           "result = model.predict([atoms])  # energy eV, forces eV/Å"]}
    elements = card["species"] if 0 < len(card["species"]) <= 8 else ["Si"]
    return {
        "hifidata": md,
        "lammps": ["units metal", "pair_style e3gnn",
                   f"pair_coeff * * {TORCHSCRIPT_FILE} {' '.join(elements)}"],
        "lammps_note": "pair_coeff names one element per LAMMPS atom type, in type order; "
                       "LAMMPS must be built with SevenNet's pair_e3gnn (sevenn patch_lammps)",
        "python": ["from hifidata.deploy.export import load_artifact",
                   f"potential = load_artifact('{artifact}')  # a TorchScriptPotential",
                   "# or, torch alone: torch.jit.load("
                   f"'{artifact}/{TORCHSCRIPT_FILE}', _extra_files={{'cutoff': ''}})"],
    }


def _write_card(card: dict[str, Any], artifact: Path) -> None:
    text = json.dumps(card, indent=2, ensure_ascii=False, default=json_default)
    (artifact / CARD_FILE).write_text(text + "\n", encoding="utf-8")
    (artifact / README_FILE).write_text(render_readme(card), encoding="utf-8")


def render_readme(card: dict[str, Any]) -> str:
    """README.md of an artifact, from its card."""
    species = ", ".join(card["species"]) if card["species"] else "(not recorded)"
    if len(card["species"]) > 12:
        species = f"{len(card['species'])} elements"
    rung = card["rung"] or "—"
    if card["modality"]:
        rung += f" (modality {card['modality']})"
    lines = [
        f"# {card['name']}",
        "",
        f"A {card['kind']} model ({card['recipe'] or 'no recipe recorded'}) exported by "
        f"hifidata {card['hifidata_version']} on {card['created']}.",
        "",
        f"- species: {species}",
        f"- cutoff: {card['cutoff']} Å",
        f"- rung: {rung}; rungs of the model: {', '.join(card['rungs']) or '—'}",
        "- units: " + ", ".join(f"{k} {v}" for k, v in card["units"].items()),
        "",
        "## Files",
        "",
        "| file | bytes | sha256 | format |",
        "|---|---|---|---|",
        *(f"| {f['path']} | {f['bytes']} | `{f['sha256'][:16]}…` | {f['format']} |"
          for f in card["files"]),
        "",
        "Full checksums, the training record and the metrics are in model_card.json.",
        "",
        "## Use",
        "",
    ]
    usage = card["usage"]
    if card["torchscript"] is not None:
        lines += ["LAMMPS (built with SevenNet's pair_e3gnn, `sevenn patch_lammps`):", "",
                  "```", *usage["lammps"], "```", "",
                  "pair_coeff names one element per atom type, in type order.", ""]
    else:
        lines += [f"No TorchScript file: {card['torchscript_reason']}.", ""]
    lines += ["Python:", "", "```python", *usage["python"], "```", "",
              "MD with hifidata:", "", "```", usage["hifidata"], "```", ""]
    check = card["verification"]
    lines += ["## Verification", "",
              f"Reloaded and compared with the source model ({check['path']}) on "
              f"{', '.join(check['structures'])}: max |ΔE| "
              f"{check['max_abs_energy_diff_eV']:.2e} eV, max |ΔF| "
              f"{check['max_abs_force_diff_eV_per_A']:.2e} eV/Å"
              + (f", max |Δσ| {check['max_abs_stress_diff_eV_per_A3']:.2e} eV/Å³"
                 if "max_abs_stress_diff_eV_per_A3" in check else "") + ".", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running an artifact


def _load_torchscript(file: Path, device: str | torch.device = "cpu"):
    """(module, {key: text}): a TorchScript file and the metadata sevenn's deploy wrote into
    it (keys it lacks read as "")."""
    extra: dict[str, Any] = {key: "" for key in TORCHSCRIPT_KEYS}
    module = torch.jit.load(str(file), map_location=device, _extra_files=extra)
    return module, {key: v.decode() if isinstance(v, bytes) else v for key, v in extra.items()}


class TorchScriptPotential(Potential):
    """A sevenn ``deployed_serial.pt`` as a Potential, fed what LAMMPS's pair_e3gnn feeds it.

    For every system of the Graph (the serial model is not batched) the inputs are: ``x`` the
    atom types (indices into the file's ``chemical_symbols_to_index``), ``edge_index`` the
    (source, destination) atom pairs, ``edge_vec`` = r_dst − r_src (Å, float32, requiring
    grad), ``num_atoms`` and ``nlocal``. Forces and the virial come from dE/d(edge_vec) as in
    the plugin: F_src += dE/dv, F_dst −= dE/dv, σ = Σ v ⊗ dE/dv / V. Needs torch only.
    """

    def __init__(self, path: str | Path, device: str | torch.device | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"no TorchScript file at {self.path}")
        self.device = torch.device(device or default_device())
        try:
            self.module, self.metadata = _load_torchscript(self.path, self.device)
        except Exception as error:  # torch raises RuntimeError/ValueError for a bad archive
            text = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise ModelError(f"cannot load TorchScript {self.path}: {text}") from None
        if not self.metadata["cutoff"] or not self.metadata["chemical_symbols_to_index"]:
            raise ModelError(f"{self.path} is not a sevenn deployed model (no cutoff or "
                             "chemical_symbols_to_index in its extra files)")
        self.cutoff = float(self.metadata["cutoff"])
        self.species = self.metadata["chemical_symbols_to_index"].split()
        self.dtype = torch.float32  # sevenn deploys single precision, as LAMMPS feeds it
        table = torch.full((len(chemical_symbols),), -1, dtype=torch.int64)
        for index, symbol in enumerate(self.species):
            table[atomic_numbers[symbol]] = index
        self._type_of = table.to(self.device)

    def check_species(self, numbers: set[int]) -> None:
        """ValueError naming the elements the file has no type for."""
        unknown = sorted(z for z in numbers if not 0 <= z < len(self._type_of)
                         or int(self._type_of[z]) < 0)
        if unknown:
            names = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)
                              for z in unknown)
            elements = " ".join(self.species) if len(self.species) <= 12 else (
                f"{len(self.species)} elements")
            raise ValueError(f"{self.path.name} knows no {names} (it has {elements})")

    def atom_types(self, numbers: torch.Tensor) -> torch.Tensor:
        """The model's type index of each atomic number; ValueError naming unknown elements."""
        types = self._type_of[numbers.to(self.device)]
        if bool((types < 0).any()):
            self.check_species({int(z) for z in numbers.unique().tolist()})
        return types

    def __call__(self, graph: Graph, stress: bool = False) -> Output:
        types = self.atom_types(graph.numbers)
        counts = graph.n_atoms.tolist()
        starts = [0, *np.cumsum(counts)[:-1].tolist()]
        edge_system = graph.system[graph.i]
        volumes = graph.volumes
        energies, forces, stresses = [], [], []
        with torch.enable_grad():  # forces are gradients, even under an engine's no_grad
            for b, (start, count) in enumerate(zip(starts, counts, strict=True)):
                edges = edge_system == b
                energy, force, virial = self._system(
                    types[start:start + count], graph.i[edges] - start, graph.j[edges] - start,
                    graph.vectors[edges], count, stress)
                energies.append(energy)
                forces.append(force)
                if stress:
                    periodic = bool(graph.pbc[b].all()) and float(volumes[b]) > 0
                    # a molecule has no stress (Model.predict: None); zeros, as ChgnetPotential
                    stresses.append(virial / volumes[b].to(virial) if periodic
                                    else torch.zeros_like(virial))
        return Output(
            energy=torch.stack(energies),
            forces=torch.cat(forces) if forces else torch.zeros((0, 3), device=self.device),
            stress=torch.stack(stresses) if stress else None,
        )

    def _system(self, types: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                vectors: torch.Tensor, count: int, stress: bool):
        """(energy (), forces (n, 3), Σ v ⊗ dE/dv (3, 3) or None) of one system."""
        device = self.device
        edge_vec = vectors.detach().to(device=device, dtype=torch.float32).clone()
        edge_vec.requires_grad_(True)
        num_atoms = torch.tensor([count], dtype=torch.int64)
        inputs = {
            "x": types,
            "edge_index": torch.stack([src, dst]).to(device),
            "edge_vec": edge_vec,
            "num_atoms": num_atoms.to(device),
            "nlocal": num_atoms,  # the plugin keeps it on the CPU
        }
        # as pair_e3gnn: no graph-executor optimisation; its profiling runs made the first calls
        # of every new edge count 2-5x slower (seconds on a busy machine), for no faster steps
        with torch.jit.optimized_execution(False):
            output = self.module(inputs)
        energy = output["inferred_total_energy"].squeeze()
        (gradient,) = torch.autograd.grad(energy, [edge_vec], allow_unused=True)
        if gradient is None:  # no edges: nothing depends on a distance
            gradient = torch.zeros_like(edge_vec)
        force = torch.zeros((count, 3), dtype=torch.float32, device=device)
        force.index_add_(0, src.to(device), gradient)
        force.index_add_(0, dst.to(device), -gradient)
        virial = None
        if stress:
            virial = edge_vec.detach().T @ gradient  # Σ_e v_a ∂E/∂v_b
            virial = 0.5 * (virial + virial.T)  # symmetric up to float32 rounding
        return energy.detach(), force, virial


def load_artifact(path: str | Path, device: str | None = None) -> Potential | Model:
    """What runs an artifact directory: a TorchScriptPotential over its ``deployed_serial.pt``
    (SevenNet models), or, for a CHGNet-based artifact (no TorchScript), the hifidata Model
    loaded from its ``model/`` folder. ModelError when ``path`` is neither."""
    path = Path(path)
    if (path / TORCHSCRIPT_FILE).is_file():
        return TorchScriptPotential(path / TORCHSCRIPT_FILE, device)
    if (path / MODEL_DIR).is_dir():
        return load_model(path / MODEL_DIR, device)
    raise ModelError(f"{path} is not a hifidata model artifact "
                     f"(no {TORCHSCRIPT_FILE} and no {MODEL_DIR}/)")
