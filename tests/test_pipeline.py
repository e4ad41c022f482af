"""The pipeline end to end, on throw-away copies of the project with tiny params.

- the Snakefile and dvc.yaml describe the same stages with the same commands, inputs, outputs
  (for the default and another experiment matrix); dvc.yaml is what the contract generates;
  each rule depends on the library files its command runs, and no others;
- `snakemake` runs the whole DAG (tests/params.tiny.yaml) and leaves every declared output,
  the report, the ImageFolder export and MLflow records; every job loaded only code its rule
  declares; after it, an edit to one library file plans only the rules that run it;
- `dvc repro` in a temp git repo (reruns, metrics/plots/experiment comparisons, push/clone/pull):
  tests/test_versioning.py.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from pipeline_support import ROOT, make_project, project_env, tool
from stages.common.contract import RULES

pytestmark = pytest.mark.timeout(600)


def _sh(cmd: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=project_env(cwd), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


def _norm_cmd(cmd: str) -> str:
    # the Snakefile runs the stages with its own interpreter; dvc.yaml says `python`
    parts = cmd.strip().split()
    assert parts[1] == "-m" and parts[2].startswith("stages."), cmd
    return " ".join(["python"] + parts[1:])


def snakemake_jobs(root: Path) -> dict[str, dict]:
    """{command: {rule, inputs, outputs}} of every job, from a forced dry run's job listing."""
    res = _sh([tool("snakemake"), "-n", "-p", "--forceall", "--cores", "1"], root)
    jobs: dict[str, dict] = {}
    job: dict | None = None
    for line in (res.stdout + "\n" + res.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            job = {"rule": m.group(1), "inputs": set(), "outputs": set()}
        elif job is not None and line.startswith(("    input: ", "    output: ")):
            key, _, value = line.strip().partition(": ")
            job["inputs" if key == "input" else "outputs"].update(v.rstrip("/") for v in value.split(", ") if v)
        elif job is not None and line.startswith("Shell command: "):
            if line.strip() == "Shell command: None":  # rule all
                job = None
                continue
            cmd = _norm_cmd(line[len("Shell command: "):])
            assert cmd not in jobs, f"two jobs run {cmd}"
            jobs[cmd] = job
            job = None
    assert jobs, res.stdout[-2000:]
    return jobs


def dvc_stages(root: Path) -> dict[str, dict]:
    """{command: {stage, deps, outs}} of every stage of dvc.yaml (params files left out)."""
    from dvc.dependency import ParamsDependency
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True)
    with Repo(str(root)) as repo:
        out = {}
        for st in repo.index.stages:
            out[" ".join(st.cmd.split())] = {
                "stage": st.name.split("@")[0],
                "deps": {d.def_path for d in st.deps if not isinstance(d, ParamsDependency)},
                "outs": {o.def_path for o in st.outs},
            }
        return out


def _covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


# (experiment overrides, expected job count per rule): the default matrix, and two datasets x
# one method x three ipcs
MATRICES = {
    "default": ({}, {"download": 1, "zca": 1, "pool": 1, "distill": 6, "evaluate": 6, "visualize": 6, "export": 6,
                     "evaluate_random": 2,
                     "evaluate_selected": 2, "evaluate_full": 1, "accuracy": 1, "crossarch": 1, "nas": 2, "nas_merge": 1, "report": 1}),
    "two-datasets-one-method": ({"datasets": ["digits", "cifar10"], "methods": ["datadam"], "ipcs": [1, 10, 50]},
                                {"download": 2, "zca": 2, "pool": 2, "distill": 6, "evaluate": 6, "visualize": 6,
                                 "export": 6, "evaluate_random": 6, "evaluate_selected": 6, "evaluate_full": 2, "accuracy": 2, "crossarch": 2, "nas": 4,
                                 "nas_merge": 2, "report": 1}),
}


@pytest.mark.parametrize("matrix", list(MATRICES))
def test_snakefile_and_dvc_yaml_describe_the_same_pipeline(tmp_path, matrix):
    experiment, counts = MATRICES[matrix]
    root = make_project(tmp_path / "p", {"experiment": experiment} if experiment else None, tiny=False)
    snake = snakemake_jobs(root)
    dvc = dvc_stages(root)
    assert set(snake) == set(dvc), f"commands differ: {set(snake) ^ set(dvc)}"
    assert {j["rule"] for j in snake.values()} == {s["stage"] for s in dvc.values()}
    for cmd, job in snake.items():
        st = dvc[cmd]
        assert job["rule"] == st["stage"], cmd
        assert job["outputs"] == st["outs"], f"{cmd}: outputs differ: {job['outputs'] ^ st['outs']}"
        # dvc.yaml may name a folder (atom/, results/evaluate/<dataset>) where the Snakefile
        # lists the files in it: every input is covered by a dep and every dep covers an input
        uncovered = {p for p in job["inputs"] if not any(_covers(d, p) for d in st["deps"])}
        assert not uncovered, f"{cmd}: Snakefile inputs missing from dvc.yaml: {uncovered}"
        unused = {d for d in st["deps"] if not any(_covers(d, p) for p in job["inputs"])}
        assert not unused, f"{cmd}: dvc.yaml deps missing from the Snakefile: {unused}"
    rules = [j["rule"] for j in snake.values()]
    assert {r: rules.count(r) for r in set(rules)} == counts


def test_dvc_yaml_is_what_the_contract_generates():
    # dvc.yaml is not a hand-kept copy: it is rendered from stages/common/contract.py
    from stages.common import dvc_yaml

    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml.render(), \
        "dvc.yaml differs from the contract: regenerate it with `python -m stages.common.dvc_yaml`"
    rules = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(rules) == list(RULES)


def test_each_rule_depends_on_the_library_files_it_runs_and_no_others():
    from stages.common.codedeps import code_deps, library_deps

    deps = {rule: set(code_deps(rule)) for rule in RULES}
    users = lambda f: {rule for rule, d in deps.items() if f in d}  # noqa: E731
    # a loss variant reruns distill alone (and, through its sets, what reads them); a picture
    # change reruns the pictures; the data stages run neither
    assert users("atom/losses.py") == users("atom/distillation.py") == {"distill"}
    assert users("atom/viz.py") == {"visualize", "export", "accuracy", "nas_merge"}
    assert users("atom/preprocess.py") == {"zca"} | users("atom/viz.py")  # viz maps sets back to pixels
    # one command, four rules: each runs its own branch only (the whole-set baseline runs no
    # selection, formation or validation-split code)
    assert not {"atom/selection.py", "atom/formation.py", "atom/validation.py"} & deps["evaluate_full"]
    assert users("atom/selection.py") == {"distill", "evaluate_selected"}
    assert "atom/formation.py" in deps["evaluate"] and "atom/validation.py" in deps["evaluate_random"]
    # every rule runs its command, the package markers and the runner; the checkpoint key leaves
    # the machinery out
    for rule, d in deps.items():
        assert {f"{RULES[rule].module.replace('.', '/')}.py", "atom/__init__.py", "stages/__init__.py",
                "stages/common/__init__.py", "stages/common/runner.py"} <= d, rule
    lib = library_deps("distill")
    assert "stages/distill.py" in lib and "atom/losses.py" in lib
    assert not [f for f in lib if f.startswith("stages/common/") or f.endswith("__init__.py")]


def test_the_package_roots_import_nothing_of_the_project():
    from stages.common.codedeps import imports

    for package in ("atom", "stages", "stages.common"):
        assert imports(package) == frozenset(), package


# A sitecustomize for the pipeline's jobs: at exit, each stage command records the project
# modules it really loaded (beside the project, in imports/<pid>.json).
RECORDER = """
import atexit, json, os, sys


def _record():
    root, where = os.getcwd(), os.environ.get("ATOM_TEST_IMPORTS")
    main = os.path.abspath(getattr(sys.modules.get("__main__"), "__file__", None) or "")
    if not where or not main.startswith(os.path.join(root, "stages") + os.sep):
        return
    files = {os.path.relpath(os.path.abspath(m.__file__), root) for m in list(sys.modules.values())
             if getattr(m, "__file__", None)}
    mine = sorted(f for f in files if f.split(os.sep)[0] in ("atom", "stages"))
    with open(os.path.join(where, f"{os.getpid()}.json"), "w") as out:
        json.dump({"argv": sys.argv, "modules": mine}, out)


atexit.register(_record)
"""


@pytest.fixture(scope="module")
def snake_project(tmp_path_factory):
    base = tmp_path_factory.mktemp("snake")
    root = make_project(base / "p")
    (base / "hook").mkdir()
    (base / "hook" / "sitecustomize.py").write_text(RECORDER)
    (base / "imports").mkdir()
    env = dict(project_env(root), PYTHONPATH=str(base / "hook"), ATOM_TEST_IMPORTS=str(base / "imports"))
    res = subprocess.run([tool("snakemake"), "--cores", "2"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=500)
    assert res.returncode == 0, f"snakemake failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return root, res


def test_every_job_loaded_only_code_its_rule_declares(snake_project):
    # the code inputs are true: no job ran a project module its rule does not list, so no edit
    # to the code a job runs can leave its outputs stale
    from stages.common.codedeps import code_deps
    from stages.common.contract import jobs, rule_for

    root, _ = snake_project
    ran = {}
    for record in (root.parent / "imports").glob("*.json"):
        rec = json.loads(record.read_text())
        args = rec["argv"][1:]
        rule = rule_for(Path(rec["argv"][0]).stem, {k.lstrip("-"): v for k, v in zip(args[::2], args[1::2])})
        extra = set(rec["modules"]) - set(code_deps(rule))
        assert not extra, f"{rule} ({' '.join(args)}) loaded code its rule does not declare: {sorted(extra)}"
        ran.setdefault(rule, set()).update(rec["modules"])
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert set(ran) == {rule for rule, _ in jobs(params)}
    assert "atom/losses.py" in ran["distill"] and "atom/selection.py" not in ran["evaluate_full"]


def _plan(root: Path, edited: str) -> set[str]:
    """The rules `snakemake -n` plans after a comment is appended to ``edited`` (then restored,
    bytes and mtime)."""
    f = root / edited
    text, st = f.read_bytes(), f.stat()
    try:
        f.write_bytes(text + b"\n# a comment\n")
        res = _sh([tool("snakemake"), "-n", "--cores", "1"], root)
    finally:
        f.write_bytes(text)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = res.stdout + res.stderr
    table = out[out.index("Job stats:"):].splitlines()[3:]
    return {line.split()[0] for line in table[:table.index(next(x for x in table if x.startswith("total")))]} - {"all"}


def test_an_edit_to_one_library_file_reruns_only_the_rules_that_run_it(snake_project):
    root, _ = snake_project
    assert _plan(root, "atom/losses.py") == {"distill", "evaluate", "visualize", "export", "crossarch", "nas",
                                             "nas_merge", "accuracy", "report"}
    assert _plan(root, "atom/viz.py") == {"visualize", "export", "accuracy", "nas_merge", "report"}
    assert _plan(root, "stages/report.py") == {"report"}


def test_snakemake_runs_the_whole_dag(snake_project):
    root, _ = snake_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    exp = params["experiment"]
    d, m, k = exp["datasets"][0], exp["methods"][0], exp["ipcs"][0]
    dist = root / f"results/distill/{d}/{m}/ipc{k}"
    for name in ("synthetic.pt", "loss.csv", "metrics.json"):
        assert (dist / name).is_file(), name
    # the resumable state lives outside the declared outputs (neither tool deletes it)
    assert not (dist / "checkpoint.pt").exists()
    assert (root / params["paths"]["state"] / f"distill/{d}/{m}/ipc{k}/checkpoint.pt").is_file()
    loss = (dist / "loss.csv").read_text().splitlines()
    assert loss[0] == "iteration,loss" and len(loss) == 1 + params["distill"]["iterations"]

    # metrics.json: numbers only (the accuracy per seed keyed by seed); info.json: the rest
    ev = json.loads((root / f"results/evaluate/{d}/{m}/ipc{k}/metrics.json").read_text())
    ev_info = json.loads((root / f"results/evaluate/{d}/{m}/ipc{k}/info.json").read_text())
    assert ev_info["seeds"] == params["evaluate"]["seeds"] and (ev_info["method"], ev_info["ipc"]) == (m, k)
    assert list(ev["per_seed"]) == [str(s) for s in ev_info["seeds"]] and ev["n"] == len(ev["per_seed"])
    assert min(ev["per_seed"].values()) <= ev["mean"] <= max(ev["per_seed"].values()) and ev["std"] >= 0
    full = json.loads((root / f"results/evaluate/{d}/full/metrics.json").read_text())
    full_info = json.loads((root / f"results/evaluate/{d}/full/info.json").read_text())
    assert full_info["seeds"] == params["evaluate"]["full"]["seeds"] and full["epochs"] == params["evaluate"]["full"]["epochs"]
    rnd = json.loads((root / f"results/evaluate/{d}/random/ipc{k}/metrics.json").read_text())
    assert rnd["n_train"] == ev["n_train"] == 10 * k
    for metrics in (ev, full, rnd, json.loads((dist / "metrics.json").read_text())):
        assert all(isinstance(v, (int, float)) for v in metrics.values() if not isinstance(v, dict)), metrics

    # the export: <class>/<n>.png, ipc images per class, decodable, shaped like the data; set.pt
    # loads back (atom.load_set) as exactly what the evaluate stage trained on
    from PIL import Image

    import atom
    from atom.formation import training_set
    from atom.io import load_tensors

    export = root / f"results/export/{d}/{m}/ipc{k}"
    folder = export / "images"
    classes = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # Snakemake stamps dirs
    assert classes == [str(i) for i in range(10)]
    for c in classes:
        pngs = sorted(p.name for p in (folder / c).iterdir())
        assert pngs == [f"{i}.png" for i in range(k)]
        with Image.open(folder / c / "0.png") as im:
            assert im.size == (8, 8) and im.mode == "L"
    s = atom.load_set(export)
    trained_x, trained_y = training_set(load_tensors(dist / "synthetic.pt"))
    assert torch.equal(s.images, trained_x) and torch.equal(s.labels, trained_y)
    assert s.manifest["method"] == m and s.manifest["ipc"] == k
    for name in ("grid.png", "loss.png"):
        assert (root / f"results/visualize/{d}/{m}/ipc{k}/{name}").stat().st_size > 0
    assert (root / f"results/visualize/{d}/accuracy.png").is_file()
    acc = (root / f"results/visualize/{d}/accuracy.csv").read_text().splitlines()
    assert acc[0] == "method,ipc,mean,std,n" and len(acc) == 1 + 3  # atom, random, full

    summary = json.loads((root / "results/report/summary.json").read_text())
    rows = {(r["method"], r["ipc"]) for r in summary["datasets"][d]["rows"]}
    assert rows == {(m, k), ("random", k), ("full", None)}
    md = (root / "results/report/summary.md").read_text()
    assert f"| IPC {k} |" in md and "ATOM" in md and "random real" in md and "whole training set" in md
    assert re.search(r"\d+\.\d{2} ± \d+\.\d{2} \(n=2\)", md)
    # cross-architecture and NAS: every set on every architecture, one NAS row per proxy
    cross = json.loads((root / f"results/crossarch/{d}/ipc{k}/metrics.json").read_text())
    assert cross["sets"] == [m, "random"] and cross["archs"] == params["crossarch"]["archs"]
    nas = json.loads((root / f"results/nas_merge/{d}/metrics.json").read_text())
    assert set(nas["proxies"]) == {f"{m}/ipc{k}", f"random/ipc{k}"} and nas["candidates"] == params["nas"]["sample"]
    assert f"Cross-architecture, IPC {k}" in md and "| proxy | Spearman | Kendall |" in md
    assert (root / f"results/nas_merge/{d}/scatter.png").stat().st_size > 0

    for stage in ("download", "zca", "distill", "evaluate", "visualize", "crossarch", "nas", "nas_merge", "report"):
        assert list((root / "logs" / stage).glob("*.log")), stage
    assert (root / f"logs/distill/{d}-{m}-ipc{k}.log").read_text().count("iteration") >= 2
    # everything is up to date afterwards
    again = _sh([tool("snakemake"), "--cores", "1", "-n"], root)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_snakemake_report_holds_the_results_table_and_figures(snake_project, tmp_path):
    root, _ = snake_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    exp = params["experiment"]
    d, m, k = exp["datasets"][0], exp["methods"][0], exp["ipcs"][0]
    archive = tmp_path / "report.zip"
    _sh([tool("snakemake"), "--cores", "1", "--report", str(archive)], root)
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        (table,) = [n for n in names if n.endswith("/summary.csv")]
        rows = list(csv.DictReader(io.StringIO(z.read(table).decode())))
        html = z.read(next(n for n in names if n.endswith("report.html"))).decode()
    assert {(r["dataset"], r["method"], r["ipc"]) for r in rows} == {
        (d, "ATOM", str(k)), (d, "random real", str(k)), (d, "whole training set", "all")}
    assert all(0 <= float(r["mean"]) <= 100 and int(r["n"]) >= 1 for r in rows)
    # the figures, each with its caption (report/*.rst)
    assert {"grid.png", "loss.png", "accuracy.png"} <= {Path(n).name for n in names}
    assert "The results table" in html and "one row per class" in html and "one line per" in html


def test_pipeline_records_runs_in_mlflow(snake_project):
    root, _ = snake_project
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("atom-digits")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=200)
    by_stage = defaultdict(list)
    for r in runs:
        by_stage[r.data.tags["stage"]].append(r)
    assert {"download", "zca", "distill", "evaluate", "visualize", "crossarch", "nas", "nas_merge",
            "report"} <= set(by_stage)
    assert all(r.info.status == "FINISHED" for r in runs)
    (dist,) = by_stage["distill"]
    assert dist.data.tags["method"] == "atom" and dist.data.tags["ipc"] == "1" and dist.data.tags["git_commit"]
    assert dist.data.params["iterations"] == "4" and dist.data.params["net.width"] == "16"
    hist = client.get_metric_history(dist.info.run_id, "loss")
    assert sorted(h.step for h in hist) == [1, 2, 3, 4]
    arts = {a.path for a in client.list_artifacts(dist.info.run_id)}
    assert {"grid.png", "synthetic.pt", "loss.csv"} <= arts
    evals = by_stage["evaluate"]
    parents = [r for r in evals if "mlflow.parentRunId" not in r.data.tags and r.data.tags["method"] == "atom"]
    assert len(parents) == 1 and "accuracy_mean" in parents[0].data.metrics
    children = [r for r in evals if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["seed"] for r in children) == ["0", "1"]
