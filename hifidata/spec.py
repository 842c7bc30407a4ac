"""The campaign spec: pydantic models, YAML loading, and validation with one-line errors.

``load_spec(path)`` checks everything that can be checked before anything runs: the YAML
fields, the seed files, every seed structure (overlapping atoms, charge/spin against the
electron count), every rung's method, and that each rung's engine accepts each seed (e.g. the
basis has functions for every element). A spec that loads is one the campaign can start on.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hifidata.calculators.base import InvalidStructure, Method, engine_module
from hifidata.errors import SpecError
from hifidata.structures import StructureError, check_structure, with_charge_and_spin

STAGES = ("explore", "select", "label", "audit", "train", "evaluate", "deploy", "release")

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Seed(_Strict):
    file: str
    charge: int = 0
    spin: PositiveInt | None = None  # multiplicity 2S+1; the lowest possible when omitted


class _Dynamics(_Strict):
    """What every exploration MD protocol shares; trajectories start from the seeds."""

    steps: PositiveInt
    timestep: Positive = 0.5  # fs
    friction: Positive = 0.01  # 1/fs (Langevin thermostat)
    sample_every: PositiveInt = 5
    seeds: list[int] = Field(default=[0], min_length=1)


class MDProtocol(_Dynamics):
    """Langevin NVT with the exploration MLIP, one trajectory per (seed, temperature, md seed)."""

    kind: Literal["md"]
    temperatures: list[Positive] = Field(min_length=1)  # K


class NPTProtocol(_Dynamics):
    """NPT MD of periodic seeds, one trajectory per (seed, temperature, pressure, md seed)."""

    kind: Literal["npt"]
    temperatures: list[Positive] = Field(min_length=1)  # K
    pressures: list[float] = Field(min_length=1)  # GPa
    sample_every: PositiveInt = 10


class RampProtocol(_Dynamics):
    """Langevin MD whose target temperature follows a piecewise-linear ``schedule`` over the
    run: [300, 2000, 300] heats to a melt and quenches it."""

    kind: Literal["ramp"]
    schedule: list[Positive] = Field(min_length=2)  # K at evenly spaced points of the run
    sample_every: PositiveInt = 10


DYNAMICS = ("md", "npt", "ramp")
DERIVED = ("rattle", "strain", "vacancy", "interstitial", "substitution", "slab", "cluster")

#: what a derived protocol may start from: the seeds, MD frames, or another protocol's output
Parents = list[Literal["seed", "md", "npt", "ramp", "rattle", "strain", "vacancy",
                       "interstitial", "substitution", "slab", "cluster"]]


class RattleProtocol(_Strict):
    """Gaussian displacements of the seeds and of MD snapshots (or of ``parents``)."""

    kind: Literal["rattle"]
    count: PositiveInt
    stdev: Positive = 0.05  # Å
    seed: int = 0
    min_bond_ratio: Annotated[float, Field(ge=0, lt=2)] = 0.8  # × covalent bond length
    parents: Parents = Field(default=["seed", "md"], min_length=1)


class StrainProtocol(_Strict):
    """Homogeneous strains of periodic parents, each Voigt component within ±max_strain."""

    kind: Literal["strain"]
    count: PositiveInt
    max_strain: Annotated[float, Field(gt=0, lt=0.5)] = 0.03
    shear: bool = True
    #: which components vary: all, normal (no shear), hydrostatic (volume only) or shear only;
    #: none: all, or normal with shear: false
    mode: Literal["all", "normal", "hydrostatic", "shear"] | None = None
    seed: int = 0
    parents: Parents = Field(default=["seed"], min_length=1)


class VacancyProtocol(_Strict):
    """Single vacancies at symmetry-distinct sites of periodic parents."""

    kind: Literal["vacancy"]
    count: PositiveInt
    seed: int = 0
    parents: Parents = Field(default=["seed"], min_length=1)


class InterstitialProtocol(_Strict):
    """One extra atom at an interstitial site of a periodic parent (pymatgen's Voronoi sites)."""

    kind: Literal["interstitial"]
    count: PositiveInt
    species: list[str] | None = None  # default: the parent's own elements (self-interstitials)
    seed: int = 0
    min_distance_ratio: Annotated[float, Field(ge=0, lt=2)] = 0.7  # × covalent bond length
    parents: Parents = Field(default=["seed"], min_length=1)


class SubstitutionProtocol(_Strict):
    """One atom of element A replaced by B, at symmetry-distinct sites: {A: [B, ...]}."""

    kind: Literal["substitution"]
    count: PositiveInt
    substitutions: dict[str, list[str]] = Field(min_length=1)
    seed: int = 0
    parents: Parents = Field(default=["seed"], min_length=1)


class SlabProtocol(_Strict):
    """Surface slabs of periodic parents (pymatgen's SlabGenerator), vacuum along the normal."""

    kind: Literal["slab"]
    count: PositiveInt
    miller_indices: list[tuple[int, int, int]] | None = None  # default: all up to max_index
    max_index: PositiveInt = 1
    min_slab: Positive = 8.0  # Å
    min_vacuum: Positive = 10.0  # Å
    max_atoms: PositiveInt = 64
    seed: int = 0
    parents: Parents = Field(default=["seed"], min_length=1)


class ClusterProtocol(_Strict):
    """Finite clusters carved out of periodic parents: every atom within ``radius`` of a centre
    atom, for molecular codes (CCSD(T) of local environments)."""

    kind: Literal["cluster"]
    count: PositiveInt
    radius: Positive = 4.0  # Å
    max_atoms: PositiveInt | None = None
    passivate: bool = False
    seed: int = 0
    parents: Parents = Field(default=["seed"], min_length=1)


Dynamics = MDProtocol | NPTProtocol | RampProtocol
DerivedProtocol = (RattleProtocol | StrainProtocol | VacancyProtocol | InterstitialProtocol
                   | SubstitutionProtocol | SlabProtocol | ClusterProtocol)
Protocol = Annotated[Dynamics | DerivedProtocol, Field(discriminator="kind")]


class Explore(_Strict):
    model: str = "chgnet-0.3.0"
    protocols: list[Protocol] = Field(min_length=1)
    replicas: PositiveInt = 32  # MD trajectories advanced together, one model call per step
    device: str | None = None  # default: cuda when present, else cpu


class Uncertainty(_Strict):
    """Rank the members of each DIRECT cluster by how unsure the models are about them.

    ``committee``: two or more models (pretrained names such as chgnet-0.3.0 and chgnet-r2scan,
    or models this campaign trained, by name) whose force disagreement is the score;
    ``distance_to``: a rung before this one whose selected structures count as known, the
    score being the feature-space distance to the nearest of them (no model needed).
    """

    committee: list[str] | None = Field(default=None, min_length=2)
    distance_to: str | None = None
    batch_size: PositiveInt = 32

    @model_validator(mode="after")
    def _one_kind(self) -> Uncertainty:
        if (self.committee is None) == (self.distance_to is None):
            raise ValueError("give either committee (two or more models) or distance_to (a rung)")
        return self


class Pick(_Strict):
    """DIRECT pick of one rung: ``clusters`` BIRCH clusters, ``per_cluster`` from each."""

    source: str = Field("candidates", alias="from")  # "candidates" or a lower rung's name
    clusters: PositiveInt
    per_cluster: PositiveInt = 1
    weighting: bool = False  # weight principal components by explained variance
    strategy: Literal["center", "spread", "random"] = "center"
    seed: int = 0
    #: only structures this small enter the pool (CCSD(T) on small clusters, a plane-wave audit
    #: of small cells); none: every structure
    max_atoms: PositiveInt | None = None
    #: within each cluster, take the most uncertain members instead of the central ones
    uncertainty: Uncertainty | None = None
    #: CPU-hours this rung may spend: the clusters whose structures cover the feature space
    #: best per predicted CPU-second get labels, until the budget is spent
    budget_hours: Positive | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Rung(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    engine: Literal["pyscf", "cp2k", "espresso"] = "pyscf"
    method: dict
    select: Pick
    threads: PositiveInt = 1  # OpenMP threads per label (per MPI rank)
    ranks: PositiveInt = 1  # MPI ranks per label (engines that run a program: cp2k, espresso)
    #: folder that relative paths in ``method`` (e.g. espresso's pseudo_dir) are relative to
    base_dir: Path = Field(default=Path("."), exclude=True)

    @cached_property
    def resolved(self) -> Method:
        paths = getattr(engine_module(self.engine), "PATH_SETTINGS", ())
        method = {
            key: str((self.base_dir / value).resolve())
            if key in paths and isinstance(value, str) else value
            for key, value in self.method.items()
        }
        return Method.resolve(self.engine, method, name=self.name)


class Audit(_Strict):
    """Compare rung ``methods[1]`` against ``methods[0]`` on the structures both labeled (or on a
    stratified ``count`` of the first's, labeling the missing ones with the second)."""

    methods: list[str] = Field(min_length=2, max_length=2)
    count: PositiveInt | None = None
    seed: int = 0


class Select(_Strict):
    features: str = "chgnet-0.3.0"  # the MLIP whose structure features DIRECT stratifies
    batch_size: PositiveInt = 64


RECIPES = ("finetune", "delta", "multifidelity")  # hifidata.training.recipes, by name


class Finetune(_Strict):
    """Fine-tune a pretrained MLIP on one rung: CHGNet (chgnet-0.3.0, chgnet-r2scan) or
    SevenNet (7net-0)."""

    rung: str
    base: str = "chgnet-0.3.0"
    epochs: PositiveInt = 100
    learning_rate: Positive = 1e-3
    batch_size: PositiveInt = 8
    patience: PositiveInt = 25


class Delta(_Strict):
    """A Δ-model of ``high`` − ``low`` on top of the model fine-tuned on ``low``."""

    low: str  # rung the fine-tuned model learned
    high: str  # rung whose difference to ``low`` the Δ-model learns
    epochs: PositiveInt = 300
    learning_rate: Positive = 3e-3
    batch_size: PositiveInt = 4
    patience: PositiveInt = 60


class MultiFidelity(_Strict):
    """One SevenNet model trained on several rungs at once, a modality per rung, starting from
    7net-MF-0; it predicts any of them (``predict``: the one a campaign deploys)."""

    rungs: list[str] | None = Field(default=None, min_length=2)  # default: every rung
    predict: str | None = None  # default: the last of ``rungs``, the top rung
    base: Literal["7net-mf-0"] = "7net-mf-0"
    epochs: PositiveInt = 60
    learning_rate: Positive = 3e-3  # new modalities start at zero: 1e-3 left them behind
    batch_size: PositiveInt = 4
    patience: PositiveInt = 20


class Train(_Strict):
    """How the campaign turns labels into a model: ``recipe`` names the one whose model is
    deployed; the default is multifidelity when that block is given, else delta when that
    block is given, else finetune."""

    recipe: Literal[RECIPES] | None = None
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    validation_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.15
    seed: int = 0
    device: str | None = None  # default: cuda when present, else cpu
    finetune: Finetune | None = None
    delta: Delta | None = None
    multifidelity: MultiFidelity | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_recipe(cls, data):
        if isinstance(data, dict) and data.get("recipe") is None:
            data = {**data, "recipe": ("multifidelity" if data.get("multifidelity") else
                                       "delta" if data.get("delta") else "finetune")}
        if isinstance(data, dict) and data["recipe"] == "multifidelity":
            data = {**data, "multifidelity": data.get("multifidelity") or {}}
        return data

    @model_validator(mode="after")
    def _recipe(self) -> Train:
        if self.recipe in ("finetune", "delta") and self.finetune is None:
            raise ValueError(f"recipe {self.recipe} needs a finetune block (rung, base, ...)")
        if self.recipe == "delta" and self.delta is None:
            raise ValueError("recipe delta needs a delta block (low, high)")
        return self


class Stability(_Strict):
    """MD stability of the final model: ``replicas`` Langevin runs per temperature."""

    temperatures: list[Positive] = Field(default=[300.0, 600.0], min_length=1)  # K
    replicas: PositiveInt = 4
    steps: PositiveInt = 2000
    timestep: Positive = 0.5  # fs
    min_distance: Positive = 0.6  # Å


class ScanCoordinate(_Strict):
    atoms: tuple[NonNegativeInt, NonNegativeInt]  # indices in the first seed structure
    values: tuple[float, float]  # Å, first and last
    points: Annotated[int, Field(ge=2, le=200)] = 9


class Scan(_Strict):
    """An energy-landscape slice of the first seed: one distance (1-D) or two (a 2-D grid),
    with labels computed on the scan by ``rungs`` (default: every rung, 1-D scans only)."""

    coordinates: list[ScanCoordinate] = Field(min_length=1, max_length=2)
    rungs: list[str] | None = None


class Evaluate(_Strict):
    stability: Stability | None = Stability()
    scans: list[Scan] = []


class Deploy(_Strict):
    """Production MD of the first seed with the final model on the batched engine."""

    temperature: Positive = 300.0
    steps: PositiveInt = 4000
    timestep: Positive = 0.5
    ensemble: Literal["nve", "langevin", "csvr", "npt"] = "langevin"
    pressure: float = 0.0  # GPa (npt)
    friction: Positive = 0.01  # 1/fs (langevin)
    replicas: PositiveInt = 1  # seeds seed, seed + 1, ... run together
    min_distance: Positive = 0.6  # Å; closer atoms mean the model went unphysical
    sample_every: PositiveInt = 20
    seed: int = 0
    device: str | None = None  # default: cuda when present, else cpu
    export: bool = True  # also write the final model's artifact (TorchScript, model card)


class Author(_Strict):
    name: str
    affiliation: str | None = None
    orcid: str | None = None


class Release(_Strict):
    """The dataset release the campaign writes to ``release/`` (docs/release.md)."""

    license: str = "CC-BY-4.0"  # an SPDX identifier
    formats: list[Literal["extxyz", "hdf5", "asedb"]] = ["extxyz", "hdf5"]
    description: str = ""
    version: str = "1.0.0"
    extends: str | None = None  # an earlier release folder, relative to the spec
    only_ok: bool = False  # leave failed labels out
    authors: list[Author] = []
    citation: str | None = None
    doi: str | None = None
    links: list[str] = []


class Job(_Strict):
    """One batch job of a Slurm or PBS cluster; each job is one Dask worker."""

    cores: PositiveInt = 1  # cores the job asks for; labels take rung.threads × rung.ranks each
    memory: str = "4GB"
    walltime: str = "01:00:00"
    queue: str | None = None  # partition (Slurm) or queue (PBS)
    account: str | None = None
    #: extra scheduler lines, e.g. ["--constraint=cpu", "--qos=normal"] (written as #SBATCH …)
    directives: list[str] = []
    #: shell lines run before the worker starts, e.g. ["module load cp2k"]
    prologue: list[str] = []


class Scale(_Strict):
    """Adaptive scaling: jobs come and go with the work queued, within these bounds."""

    minimum: NonNegativeInt = 0
    maximum: PositiveInt = 4

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) is above maximum ({self.maximum})")
        return self


class EngineExecution(_Strict):
    """How one engine's labels run: at most ``limit`` at once (a Prefect tag concurrency
    limit on the tag named after the engine), in batch jobs of their own (``job``)."""

    limit: PositiveInt | None = None
    job: Job | None = None  # none: execution.job


class Execution(_Strict):
    #: local: labels run as threads of the campaign process; dask: on a Dask cluster
    runner: Literal["local", "dask"] = "local"
    #: local runner: tasks at a time; dask on a local cluster: worker processes
    max_workers: PositiveInt = 2
    #: dask only: local (worker processes on this machine), slurm or pbs (batch jobs through
    #: dask-jobqueue) or the address of a running Dask scheduler (tcp://host:8786)
    cluster: str = Field("local", pattern=r"^(local|slurm|pbs|(tcp|tls|ucx)://.+)$")
    job: Job = Job()
    scale: Scale = Scale()
    engines: dict[Literal["pyscf", "cp2k", "espresso"], EngineExecution] = {}
    #: a rung whose labels fail at more than this rate (after 10) emits a Prefect event
    failure_rate_alert: Annotated[float, Field(ge=0, le=1)] = 0.2

    @property
    def batch(self) -> bool:
        """Labels run in batch jobs (Slurm, PBS) that dask-jobqueue submits."""
        return self.runner == "dask" and self.cluster in ("slurm", "pbs")

    def job_for(self, engine: str) -> Job | None:
        """The batch job an engine's labels run in (none unless the cluster is Slurm or PBS)."""
        if not self.batch:
            return None
        own = self.engines.get(engine)
        return own.job if own and own.job else self.job


class Spec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    store: str | None = None  # default: <name>.h5 beside the spec
    seeds: list[Seed] = Field(min_length=1)
    explore: Explore
    select: Select = Select()
    ladder: list[Rung] = Field(min_length=1)
    audit: list[Audit] = []
    train: Train | None = None  # without it the campaign stops at its dataset (no model)
    evaluate: Evaluate = Evaluate()
    deploy: Deploy = Deploy()
    release: Release = Release()
    execution: Execution = Execution()
    #: folder the spec was read from; relative paths in the spec are relative to it
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _cross_references(self) -> Spec:
        # MD runs first (from the seeds); derived protocols run in the order listed
        available = {"seed", *DYNAMICS}
        for i, protocol in enumerate(self.explore.protocols):
            if protocol.kind not in DYNAMICS:
                missing = [p for p in protocol.parents if p not in available]
                if missing:
                    raise ValueError(
                        f"explore.protocols[{i}].parents: {missing[0]!r} comes later in the list "
                        f"or not at all (available here: {sorted(available)})"
                    )
            available.add(protocol.kind)
        names = [rung.name for rung in self.ladder]
        if len(set(names)) != len(names):
            raise ValueError(f"ladder: rung names must be unique, got {names}")
        for i, rung in enumerate(self.ladder):
            allowed = ["candidates", *names[:i]]
            if rung.select.source not in allowed:
                raise ValueError(
                    f"ladder[{i}].select.from: {rung.select.source!r} is not one of {allowed}"
                )
        for i, rung in enumerate(self.ladder):
            pick = rung.select
            if pick.uncertainty and pick.uncertainty.distance_to not in (None, *names[:i]):
                raise ValueError(f"ladder[{i}].select.uncertainty.distance_to: "
                                 f"{pick.uncertainty.distance_to!r} is not a rung before it "
                                 f"({names[:i]})")
            if pick.uncertainty and pick.budget_hours:
                raise ValueError(f"ladder[{i}].select: give uncertainty or budget_hours, not both")
        for i, audit in enumerate(self.audit):
            for name in audit.methods:
                if name not in names:
                    raise ValueError(f"audit[{i}].methods: no rung named {name!r} (rungs: {names})")
            if audit.methods[0] == audit.methods[1]:
                raise ValueError(f"audit[{i}].methods: give two different rungs")
        for i, rung in enumerate(self.ladder):
            job = self.execution.job_for(rung.engine)
            if job and rung.threads * rung.ranks > job.cores:
                raise ValueError(
                    f"ladder[{i}] ({rung.name}): a label takes threads × ranks = "
                    f"{rung.threads * rung.ranks} cores, more than the {job.cores} of a "
                    f"{rung.engine} job (execution.job.cores)"
                )
        if self.train is None:
            return self
        train = self.train
        rungs = {"finetune.rung": train.finetune.rung} if train.finetune else {}
        if train.delta:
            rungs.update({"delta.low": train.delta.low, "delta.high": train.delta.high})
            if train.finetune and train.delta.low != train.finetune.rung:
                raise ValueError("train.delta.low must be the rung train.finetune learns")
        if train.multifidelity:
            mf = train.multifidelity
            rungs.update({f"multifidelity.rungs[{i}]": r for i, r in enumerate(mf.rungs or [])})
            if mf.predict:
                rungs["multifidelity.predict"] = mf.predict
                if mf.predict not in (mf.rungs or names):
                    raise ValueError("train.multifidelity.predict must be one of its rungs")
            if len(names) < 2 and not mf.rungs:
                raise ValueError("train.multifidelity needs a ladder of two rungs or more")
        for i, scan in enumerate(self.evaluate.scans):
            rungs.update({f"evaluate.scans[{i}].rungs": r for r in scan.rungs or []})
        for where, rung in rungs.items():
            if rung not in names:
                raise ValueError(f"{'' if where.startswith('eval') else 'train.'}{where}: "
                                 f"no rung named {rung!r} (rungs: {names})")
        return self

    def multifidelity_rungs(self) -> list[str]:
        """The rungs the multi-fidelity model learns, cheapest first."""
        chosen = self.train.multifidelity.rungs
        return [r.name for r in self.ladder if chosen is None or r.name in chosen]

    # -- derived paths ---------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return (self.base_dir / (self.store or f"{self.name}.h5")).resolve()

    @property
    def campaign_dir(self) -> Path:
        return self.store_path.parent

    def rung(self, name: str) -> Rung:
        return next(r for r in self.ladder if r.name == name)

    # -- inputs ------------------------------------------------------------------------------
    def seed_structures(self) -> list[Atoms]:
        """Every seed structure, with charge and spin set (raises SpecError)."""
        from ase.io import read

        out = []
        for i, seed in enumerate(self.seeds):
            path = (self.base_dir / seed.file).resolve()
            if not path.is_file():
                raise SpecError(f"seeds[{i}].file: {path}: no such file")
            try:
                frames = read(path, index=":")
            except Exception as error:
                raise SpecError(f"seeds[{i}].file: {path}: unreadable ({error})") from None
            for j, atoms in enumerate(frames):
                atoms = with_charge_and_spin(atoms, seed.charge, seed.spin)
                try:
                    check_structure(atoms)
                except StructureError as error:
                    raise SpecError(f"seeds[{i}] ({path.name}, frame {j}): {error}") from None
                out.append(atoms)
        return out


def load_spec(path: str | Path, check_inputs: bool = True) -> Spec:
    """Read and validate a spec; every problem is a SpecError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping")
    base_dir = path.parent.resolve()
    if isinstance(raw.get("ladder"), list):  # each rung resolves its paths from the spec's folder
        raw["ladder"] = [{**r, "base_dir": base_dir} if isinstance(r, dict) else r
                         for r in raw["ladder"]]
    try:
        spec = Spec.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as error:
        raise SpecError(f"{path}: {first_error(error)}") from None
    if check_inputs:
        check_spec_inputs(spec, path)
    return spec


def check_spec_inputs(spec: Spec, path: Path) -> None:
    """Seeds readable and sane, methods valid, and every engine accepts every seed."""
    seeds = spec.seed_structures()
    for i, protocol in enumerate(spec.explore.protocols):
        if protocol.kind == "npt" and not any(atoms.pbc.all() for atoms in seeds):
            raise SpecError(f"{path}: explore.protocols[{i}] (npt): no seed is periodic; NPT "
                            "needs a crystal (pbc on all three axes, with a cell)")
    for i, scan in enumerate(spec.evaluate.scans):
        for j, coordinate in enumerate(scan.coordinates):
            if max(coordinate.atoms) >= len(seeds[0]) or len(set(coordinate.atoms)) < 2:
                raise SpecError(f"{path}: evaluate.scans[{i}].coordinates[{j}].atoms: "
                                f"{list(coordinate.atoms)} are not two atoms of the first seed "
                                f"({len(seeds[0])} atoms, indices from 0)")
    for i, rung in enumerate(spec.ladder):
        try:
            method = rung.resolved
        except ValueError as error:
            raise SpecError(f"{path}: ladder[{i}].method: {error}") from None
        engine = engine_module(rung.engine)
        for atoms in seeds:
            try:
                engine.check(atoms, method.params)
            except InvalidStructure as error:
                raise SpecError(
                    f"{path}: ladder[{i}] ({rung.name}): {atoms.get_chemical_formula()}: {error}"
                ) from None


def first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"
