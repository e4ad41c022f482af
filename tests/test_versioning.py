"""Results that DVC can version and compare, on throw-away copies of the project (tiny params).

- every stage run twice on the same inputs and params writes byte-identical files, so a rerun
  (by Snakemake or DVC) never invalidates DVC's hashes;
- in a temp git repo: `dvc repro` runs the DAG; metrics files hold numbers only; after one
  distill parameter changes only distill and what is downstream reruns; after a commit,
  `dvc metrics diff` shows the old and the new value and `dvc plots diff` both revisions;
  `dvc push` to a local remote, `git clone`, `dvc pull` gives a clean `dvc status` and a
  `dvc repro` that runs nothing; an edit to one library file changes only the stages that run
  it; Snakemake in the same folder finds nothing to do (after
  `dvc repro`; in the clone after `snakemake --touch`); `dvc exp run -S` then `dvc exp show --json` has numeric
  metrics for the baseline and the experiment.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline_support import make_project, project_env, tool

pytestmark = pytest.mark.timeout(600)


# Wall-clock seconds live only in these info files (crossarch, the NAS shards, nas_merge)
TIMED = ("results/crossarch/digits/ipc1/info.json", "results/nas/digits/shard0.info.json",
         "results/nas/digits/shard1.info.json", "results/nas_merge/digits/info.json")


def stage_commands(params: dict) -> list[tuple[str, list[str] | None]]:
    """Every stage of the tiny matrix (one dataset, method and ipc) in DAG order: (module, argv)."""
    (m,), (k,) = params["experiment"]["methods"], params["experiment"]["ipcs"]
    one = ["--method", m, "--ipc", str(k)]
    return ([("download", []), ("zca", []), ("pool", []), ("distill", one), ("evaluate", one)]
            + [("evaluate", ["--method", b, "--ipc", str(k)]) for b in params["experiment"]["baselines"] if b != "full"]
            + [("evaluate", ["--method", "full"]), ("visualize", one), ("export", one), ("visualize", [])]
            + [("crossarch", ["--ipc", str(i)]) for i in params["crossarch"]["ipcs"]]
            + [("nas", ["--shard", str(i)]) for i in params["nas"]["shards"]] + [("nas_merge", [])]
            + [("report", None)])


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under data/ and results/; of an info file with timings, of its JSON
    without its ``seconds``."""
    import hashlib

    from atom.io import sha256

    out = {}
    for p in sorted(p for d in ("data", "results") for p in (root / d).rglob("*") if p.is_file()):
        key = str(p.relative_to(root))
        if key in TIMED:
            info = json.loads(p.read_text())
            assert "seconds" in info, key
            info.pop("seconds")
            out[key] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        else:
            out[key] = sha256(p)
    return out


def test_every_stage_run_twice_writes_identical_bytes(tmp_path, monkeypatch):
    import importlib

    from stages.common import runner as runtime

    root = make_project(tmp_path / "p", {"mlflow": {"enabled": False}, "pool": {"models": 1, "epochs": 1}})
    monkeypatch.chdir(root)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    runs = []
    for _ in range(2):
        for folder in ("data", "results", "state", "logs"):  # from scratch: no checkpoint to resume from
            shutil.rmtree(root / folder, ignore_errors=True)
        for name, args in stage_commands(yaml.safe_load((root / "params.yaml").read_text())):
            argv = [] if args is None else ["--dataset", "digits", *args]
            assert runtime.run(importlib.import_module(f"stages.{name}").main, argv) == 0, (name, argv)
        runs.append(_digests(root))
    first, second = runs
    assert {"data/prepared/digits.pt", "results/distill/digits/atom/ipc1/synthetic.pt", "results/pool/digits/pool.pt",
            "results/visualize/digits/atom/ipc1/grid.png", "results/report/summary.csv"} | set(TIMED) <= set(first)
    assert set(first) == set(second)
    assert not {k for k in first if first[k] != second[k]}  # every output the same bytes, timings aside


def _sh(cmd: list[str], cwd: Path, timeout: int = 1000, stderr: bool = False) -> str:
    """stdout of a command that must succeed (and its stderr with ``stderr``)."""
    res = subprocess.run(cmd, cwd=cwd, env=project_env(cwd), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + (res.stderr if stderr else "")


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def _leaves_by_file(shown: dict):
    """(metrics file, its values) from `dvc metrics show --json` ({rev: {data: {file: {data}}}})."""
    for rev in shown.values():
        for f, content in rev["data"].items():
            yield f, list(_leaves(content["data"]))


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.mark.timeout(1200)
def test_dvc_reruns_what_changed_compares_commits_and_experiments_and_a_clone_pulls_clean(tmp_path):
    root = make_project(tmp_path / "p", {"mlflow": {"enabled": False}, "nas": {"shards": [0]}})  # fewer jobs
    dvc = tool("dvc")
    _sh(["git", "init", "-q", "-b", "main"], root)
    _sh([dvc, "init", "-q"], root)
    _sh([dvc, "config", "core.analytics", "false"], root)
    _sh([dvc, "remote", "add", "-d", "local", str(tmp_path / "remote")], root)
    with open(root / ".git/info/exclude", "a") as f:  # project_env's DVC site cache and MLflow files
        f.write(".dvc-site-cache/\nmlflow.db\n")
    assert _ran(_sh([dvc, "repro"], root)) == {
        "download@digits", "zca@digits", "pool@digits", "distill@digits-atom-1", "evaluate@digits-atom-1",
        "evaluate_random@digits-1", "evaluate_selected@digits-1", "evaluate_full@digits",
        "visualize@digits-atom-1", "export@digits-atom-1", "accuracy@digits", "crossarch@digits-1", "nas@digits-0",
        "nas_merge@digits", "report"}
    assert "Data and pipelines are up to date" in _sh([dvc, "status"], root)
    # Snakemake in the same folder: DVC ran the stages in DAG order, so nothing is out of date
    assert "Nothing to be done" in _sh([tool("snakemake"), "-n", "--cores", "1"], root, stderr=True)
    # an edit to one library file: DVC finds changed exactly the stages whose command runs it
    # (their descendants rerun only if those stages' outputs then change)
    for edited, changed in (("atom/losses.py", {"distill@digits-atom-1"}),
                            ("atom/viz.py", {"visualize@digits-atom-1", "export@digits-atom-1", "accuracy@digits",
                                             "nas_merge@digits"})):
        f = root / edited
        text = f.read_bytes()
        f.write_bytes(text + b"\n# a comment\n")
        try:
            status = json.loads(_sh([dvc, "status", "--json"], root))
        finally:
            f.write_bytes(text)
        assert set(status) == changed, (edited, sorted(status))
    assert "Data and pipelines are up to date" in _sh([dvc, "status"], root)
    _sh(["git", "add", "-A"], root)
    _sh(["git", "commit", "-qm", "baseline"], root)
    tracked = _sh(["git", "ls-files", "results"], root).split()
    dist = "results/distill/digits/atom/ipc1/metrics.json"
    assert {dist, "results/evaluate/digits/full/metrics.json", "results/visualize/digits/accuracy.csv",
            "results/report/summary.csv"} <= set(tracked)
    assert not [p for p in tracked if p.endswith((".pt", ".png"))]  # those are DVC-cached

    # metrics files: numbers only
    shown = json.loads(_sh([dvc, "metrics", "show", "--json"], root))
    core = dict(_leaves_by_file(shown))
    assert {dist, "results/zca/digits.json", "results/evaluate/digits/atom/ipc1/metrics.json"} <= set(core)
    bad = {f: v for f, vals in core.items() for v in vals if not isinstance(v, (int, float)) or isinstance(v, bool)}
    assert not bad, bad

    # one distill parameter changes: only distill and what is downstream of it reruns
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["distill"]["iterations"] += 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = _sh([dvc, "repro"], root)
    # distill and what reads its output or its params rerun; a stage whose deps come out
    # byte-identical (accuracy, when the tiny run's accuracies do not move) is skipped
    downstream = {"distill@digits-atom-1", "evaluate@digits-atom-1", "evaluate_selected@digits-1",
                  "visualize@digits-atom-1", "export@digits-atom-1", "accuracy@digits", "crossarch@digits-1",
                  "nas@digits-0", "nas_merge@digits", "report"}
    assert {"distill@digits-atom-1", "evaluate@digits-atom-1", "visualize@digits-atom-1"} <= _ran(second) <= downstream
    skipped = set(re.findall(r"Stage '([^']+)' didn't change", second))
    assert {"download@digits", "zca@digits", "pool@digits", "evaluate_random@digits-1", "evaluate_full@digits"} <= skipped
    loss = (root / "results/distill/digits/atom/ipc1/loss.csv").read_text().splitlines()
    assert len(loss) == 1 + params["distill"]["iterations"]

    # ... and a commit: `dvc metrics diff` has the old and the new number, `dvc plots diff` both revisions
    _sh(["git", "commit", "-qam", "two more distillation iterations"], root)
    diff = json.loads(_sh([dvc, "metrics", "diff", "HEAD~1", "--all", "--json"], root))
    old = params["distill"]["iterations"] - 2
    assert diff[dist]["iterations"] == {"old": old, "new": old + 2, "diff": 2}
    # the field's metrics of every set, numbers only: accuracy, HLR, IOR
    field = {k for k in diff["results/report/metrics.json"]}
    assert {"digits.atom.ipc1.accuracy", "digits.atom.ipc1.hlr", "digits.atom.ipc1.ior"} <= field, field
    assert all(isinstance(diff[dist]["final_loss"][k], float) for k in ("old", "new"))
    plots = _sh([dvc, "plots", "diff", "HEAD~1", "--json", "--split"], root)
    assert '"rev": "HEAD~1"' in plots and '"rev": "workspace"' in plots and '"method": "random"' in plots

    # share: push, clone, pull -> up to date, nothing to rerun
    _sh([dvc, "push"], root)
    clone = tmp_path / "clone"
    _sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    _sh([dvc, "pull"], clone)
    assert "Data and pipelines are up to date" in _sh([dvc, "status"], clone)
    assert not _ran(_sh([dvc, "repro"], clone))
    # a clone's files carry checkout times in any order: `snakemake --touch` once (README)
    _sh([tool("snakemake"), "--touch", "--cores", "1"], clone)
    assert "Nothing to be done" in _sh([tool("snakemake"), "-n", "--cores", "1"], clone, stderr=True)
    assert "Data and pipelines are up to date" in _sh([dvc, "status"], clone)

    # an experiment (a cheap one: only the report reruns): numeric metrics for both rows
    assert _ran(_sh([dvc, "exp", "run", "-n", "three-decimals", "-S", "report.decimals=3"], root)) == {"report"}
    rows = json.loads(_sh([dvc, "exp", "show", "--json"], root))
    found = {}
    for row in rows:
        for exp in [row] + [e for ex in (row.get("experiments") or []) for e in ex.get("revs", [])]:
            data = exp.get("data") or {}
            if dist in (data.get("metrics") or {}):
                found[exp.get("name")] = (data["metrics"][dist]["data"], data["params"]["params.yaml"]["data"])
    assert {"main", "three-decimals"} <= set(found), found
    for name, decimals in (("main", params["report"]["decimals"]), ("three-decimals", 3)):
        metrics, exp_params = found[name]
        assert metrics["iterations"] == old + 2 and isinstance(metrics["final_loss"], float)
        assert exp_params["report"]["decimals"] == decimals
