"""Bad input: one line on stderr, exit status 2, and the store exactly as it was."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest
from ase.collections import s22
from cli_batch import run_cli_calls
from conftest import tiny_spec, write_spec

from hifidata.datasets.store import Store
from hifidata.errors import SpecError
from hifidata.spec import load_spec

WATER_AND_XENON = """4
water and a xenon atom: cc-pVDZ has no functions for Xe
O 0.0 0.0 0.0
H 0.0 0.757 0.587
H 0.0 -0.757 0.587
Xe 4.0 0.0 0.0
"""
OVERLAPPING = """3
an H sitting on the O
O 0.0 0.0 0.0
H 0.05 0.0 0.0
H 0.0 -0.757 0.587
"""


def hifidata(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hifidata.cli", *args], capture_output=True,
                          text=True, timeout=300)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_change(change):
    spec = tiny_spec()
    change(spec)
    return spec


BAD_INPUTS = {
    "missing seed file": (
        lambda s: s["seeds"][0].update(file="nowhere.xyz"), None,
        r"seeds\[0\]\.file: .*no such file"),
    "negative temperature": (
        lambda s: s["explore"]["protocols"][0].update(temperatures=[-5]), None,
        r"temperatures\[0\]: Input should be greater than 0"),
    "misspelled field": (
        lambda s: s["ladder"][0].update(engin="pyscf"), None,
        r"ladder\[0\]\.engin: unknown field"),
    "unknown engine setting": (
        lambda s: s["ladder"][0]["method"].update(bsis="6-31g"), None,
        r"ladder\[0\]\.method: .*bsis"),
    "element not in the basis": (
        lambda s: None, WATER_AND_XENON,
        r"ladder\[0\] \(dft\): H2OXe: .*no functions for element Xe"),
    "overlapping atoms": (
        lambda s: None, OVERLAPPING, r"seeds\[0\].*atoms 0 \(O\) and 1 \(H\) are 0\.050 Å apart"),
    "spin that does not fit": (
        lambda s: s["seeds"][0].update(spin=2), None,
        r"charge 0 and spin multiplicity 2 do not fit 20 electrons"),
    "audit of a rung that does not exist": (
        lambda s: s.update(audit=[{"methods": ["dft", "pbe-qe"]}]), None,
        r"audit\[0\]\.methods: no rung named 'pbe-qe'"),
    "rattle of strains before any strain": (
        lambda s: s["explore"]["protocols"][1].update(parents=["strain"]), None,
        r"explore\.protocols\[1\]\.parents: 'strain' comes later in the list or not at all"),
    "NPT of a molecule": (
        lambda s: s["explore"]["protocols"].append(
            {"kind": "npt", "temperatures": [300], "pressures": [1.0], "steps": 10}), None,
        r"explore\.protocols\[2\] \(npt\): no seed is periodic"),
    "uncertainty of two kinds at once": (
        lambda s: s["ladder"][1]["select"].update(
            uncertainty={"committee": ["chgnet-0.3.0", "chgnet-r2scan"], "distance_to": "dft"}),
        None, r"ladder\[1\]\.select\.uncertainty: give either committee .* or distance_to"),
    "uncertainty measured from a later rung": (
        lambda s: s["ladder"][0]["select"].update(uncertainty={"distance_to": "ccsdt"}), None,
        r"ladder\[0\]\.select\.uncertainty\.distance_to: 'ccsdt' is not a rung before it"),
    "unknown protocol": (
        lambda s: s["explore"]["protocols"].append({"kind": "anneal", "count": 3}), None,
        r"explore\.protocols\[2\]: Input tag 'anneal' found using 'kind' does not match"),
    "unknown engine": (
        lambda s: s["ladder"][0].update(engine="vasp"), None,
        r"ladder\[0\]\.engine: Input should be 'pyscf', 'cp2k' or 'espresso'"),
    "a time limit that is not a number": (
        lambda s: s["ladder"][0]["method"].update(time_limit="an hour"), None,
        r"ladder\[0\]\.method: time_limit must be a positive number of seconds"),
    "multi-fidelity over a rung that does not exist": (
        lambda s: s["train"].update(recipe="multifidelity",
                                    multifidelity={"rungs": ["dft", "mp2"]}),
        None, r"train\.multifidelity\.rungs\[1\]: no rung named 'mp2'"),
    "delta recipe without its block": (
        lambda s: s["train"].update(recipe="delta", delta=None), None,
        r"train: .*recipe delta needs a delta block"),
    "unknown recipe": (
        lambda s: s["train"].update(recipe="transfer"), None,
        r"train\.recipe: Input should be 'finetune', 'delta' or 'multifidelity'"),
    "scan of an atom the seed lacks": (
        lambda s: s.update(evaluate={"scans": [{"coordinates": [
            {"atoms": [0, 6], "values": [2.5, 4.0]}]}]}), None,
        r"evaluate\.scans\[0\]\.coordinates\[0\]\.atoms: \[0, 6\] are not two atoms"),
    "a label bigger than its batch job": (
        lambda s: (s["ladder"][1].update(threads=4),
                   s.update(execution={"runner": "dask", "cluster": "slurm",
                                       "job": {"cores": 2}})), None,
        r"ladder\[1\] \(ccsdt\): a label takes threads × ranks = 4 cores, more than the 2"),
    "an unknown cluster": (
        lambda s: s.update(execution={"runner": "dask", "cluster": "sge"}), None,
        r"execution\.cluster: String should match pattern"),
    "scaling bounds the wrong way round": (
        lambda s: s.update(execution={"scale": {"minimum": 5, "maximum": 2}}), None,
        r"execution\.scale: .*minimum \(5\) is above maximum \(2\)"),
    "a Slurm cluster without a Prefect server": (
        lambda s: s.update(execution={"runner": "dask", "cluster": "slurm"}), None,
        r"execution\.cluster slurm: the Dask workers need a Prefect server"),
    "rung picked from a later rung": (
        lambda s: s["ladder"][0]["select"].update({"from": "ccsdt"}), None,
        r"ladder\[0\]\.select\.from: 'ccsdt' is not one of \['candidates'\]"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> dict[str, tuple]:
    """Every BAD_INPUTS case in a folder of its own, beside a store that already has data,
    then all their `hifidata run`s in one process (tests/cli_batch.py).
    case -> (folder, the store's digest before, exit code, stderr)."""
    water = s22["Water_dimer"].copy()
    water.info = {"charge": 0, "spin": 1}
    prepared = {}
    for case, (change, seeds, _) in BAD_INPUTS.items():
        folder = tmp_path_factory.mktemp("bad-input")
        spec_path = write_spec(folder, with_change(change), seeds=seeds)
        with Store(folder / "water-dimer.h5", "a") as store:
            store.add_structures([water])
        prepared[case] = (folder, spec_path, digest(folder / "water-dimer.h5"))
    results = run_cli_calls([["run", str(spec_path)] for _, spec_path, _ in prepared.values()])
    return {case: (folder, before, *result)
            for (case, (folder, _, before)), result in zip(prepared.items(), results,
                                                             strict=True)}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_changes_nothing(bad_runs, case):
    message = BAD_INPUTS[case][2]
    folder, before, code, stderr = bad_runs[case]
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hifidata: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert digest(folder / "water-dimer.h5") == before
    assert sorted(p.name for p in folder.iterdir()) == [
        "campaign.yaml", "water-dimer.h5", "water-dimer.h5.lock", "water-dimer.xyz"]


def test_missing_files_given_to_commands(tmp_path):
    calls = [
        (["run", str(tmp_path / "nope.yaml")], "nope.yaml: no such file"),
        (["status", str(tmp_path / "nope.h5")], "nope.h5: no such store"),
        (["export", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "r")], "no such store"),
        (["predict", str(tmp_path), str(tmp_path / "x.xyz"), "--out", str(tmp_path / "p.xyz")],
         "model"),
        (["dashboard", str(tmp_path / "nope")], "no such store or folder"),
    ]
    for (args, message), (code, stderr) in zip(
            calls, run_cli_calls([args for args, _ in calls]), strict=True):
        assert code == 2, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert message in stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "p.xyz").exists()


def test_not_yaml_and_not_a_mapping(tmp_path):
    (tmp_path / "a.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- a list")
    with pytest.raises(SpecError, match="a spec is a YAML mapping"):
        load_spec(tmp_path / "b.yaml")


def test_the_example_spec_loads():
    from conftest import EXAMPLES

    spec = load_spec(EXAMPLES / "water-dimer.yaml")
    assert [r.name for r in spec.ladder] == ["dft", "ccsdt"]
    assert spec.ladder[1].resolved.params["frozen_core"] is True
    assert spec.store_path == (EXAMPLES / "water-dimer.h5").resolve()


def test_the_silicon_example_s_cluster_block_is_a_valid_execution_section():
    """The commented Slurm set-up users copy from examples/silicon.yaml validates."""
    import yaml
    from conftest import EXAMPLES

    from hifidata.spec import Execution

    lines = (EXAMPLES / "silicon.yaml").read_text().split("# on a Slurm cluster")[1]
    block = "\n".join(line.strip()[2:] for line in lines.splitlines()[1:]
                      if line.strip().startswith("#"))
    execution = Execution(**yaml.safe_load(block))
    assert execution.batch and execution.job_for("cp2k").cores == 8
    assert execution.engines["cp2k"].limit == 50


def test_the_recipe_follows_the_blocks_given():
    base = tiny_spec()["train"]
    from hifidata.spec import Train

    only_finetune = {k: v for k, v in base.items() if k not in ("recipe", "delta")}
    assert Train(**only_finetune).recipe == "finetune"
    assert Train(**{**only_finetune, "delta": base["delta"]}).recipe == "delta"
    chosen = Train(**{**only_finetune, "multifidelity": {"epochs": 5}})
    assert chosen.recipe == "multifidelity" and chosen.multifidelity.epochs == 5
    assert Train(recipe="multifidelity").multifidelity.base == "7net-mf-0"


def test_every_command_has_help():
    for command in ["--help", "init --help", "run --help", "status --help", "predict --help",
                    "export --help", "audit --help", "train --help", "evaluate --help",
                    "plan --help", "schedule --help", "md --help", "export-model --help",
                    "verify --help", "diff --help", "import --help", "dashboard --help"]:
        result = hifidata(*command.split())
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
