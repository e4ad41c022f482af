"""The pipeline on a cluster, without a cluster: the SLURM profile resolves every job with its
resources (dry run through the executor plugin), and the stages log to a shared `mlflow server`
(SQLite backend, its own artifact root) given by MLFLOW_TRACKING_URI, read back over REST."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline_support import ROOT, free_port, make_project, project_env, stop_group, tool

pytestmark = pytest.mark.timeout(300)

GPU_RULES = {"pool", "distill", "evaluate", "evaluate_random", "evaluate_selected", "evaluate_full", "crossarch", "nas"}


def _dry_run_jobs(root: Path, *args: str) -> list[dict]:
    res = subprocess.run([tool("snakemake"), "--dry-run", "--forceall", *args], cwd=root, env=project_env(root),
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs, job = [], None
    for line in (res.stdout + "\n" + res.stderr).splitlines():
        m = re.match(r"^\s*(?:local)?rule (\w+):$", line)  # a group job's rules are indented
        if m:
            job = {"rule": m.group(1), "resources": None}
            jobs.append(job)
        elif job is not None and line.strip().startswith("resources: "):
            job["resources"] = dict(kv.split("=", 1) for kv in line.strip()[len("resources: "):].split(", "))
    return [j for j in jobs if j["rule"] != "all"]


def test_slurm_profile_resolves_every_job_with_its_resources(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    root = make_project(tmp_path / "p", tiny=False)
    shutil.copytree(ROOT / "profiles", root / "profiles")
    slurm = _dry_run_jobs(root, "--profile", "profiles/slurm")
    local = _dry_run_jobs(root, "--cores", "1")
    assert sorted(j["rule"] for j in slurm) == sorted(j["rule"] for j in local)  # the same DAG
    assert GPU_RULES | {"download", "zca", "nas_merge", "report"} <= {j["rule"] for j in slurm}
    for j in slurm:
        r = j["resources"]
        assert r is not None, j["rule"]
        assert int(r["runtime"]) > 0 and int(r["mem_mb"]) > 0, j
        if j["rule"] in GPU_RULES:
            assert (r["slurm_partition"], r.get("gpu")) == ("gpu", "1"), j
        else:
            assert r["slurm_partition"] == "cpu" and r.get("gpu", "0") == "0", j


def _rest(base: str, endpoint: str, body: dict | None = None, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free loopback port: SQLite backend, artifacts under a temp root."""
    port, store = free_port(), tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen([tool("mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                             "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: the server forks workers
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer within 120 s"
            time.sleep(0.5)
        yield base, store / "artifacts"
    finally:
        stop_group(proc, wait=5)  # the process group we started, by its id


def test_stages_log_to_a_shared_mlflow_server(tmp_path, mlflow_server, monkeypatch):
    from stages import distill, download, evaluate, zca
    from stages.common import runner as runtime

    base, artifacts = mlflow_server
    root = make_project(tmp_path / "p")
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)  # what a cluster job gets from its environment
    for main, argv in ((download.main, []), (zca.main, []), (distill.main, ["--method", "atom", "--ipc", "1"]),
                       (evaluate.main, ["--method", "atom", "--ipc", "1"])):
        assert runtime.run(main, ["--dataset", "digits", *argv]) == 0  # the stage commands, in this process
    assert not (root / "mlflow.db").exists()  # nothing went to the local default store

    exp = _rest(base, "experiments/get-by-name", experiment_name="atom-digits")["experiment"]
    runs = _rest(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    by_stage: dict[str, list] = {}
    for r, t in zip(runs, tags):
        by_stage.setdefault(t["stage"], []).append((r, t))
    assert {"download", "zca", "distill", "evaluate"} <= set(by_stage)
    assert all(r["info"]["status"] == "FINISHED" for r in runs), [(t["mlflow.runName"], r["info"]["status"])
                                                                  for r, t in zip(runs, tags)]
    ((dist, dtags),) = by_stage["distill"]
    assert (dtags["method"], dtags["ipc"]) == ("atom", "1")
    assert any(m["key"] == "final_loss" for m in dist["data"]["metrics"])
    listed = _rest(base, "artifacts/list", run_id=dist["info"]["run_id"])
    assert {"synthetic.pt", "loss.csv"} <= {f["path"] for f in listed.get("files", [])}
    assert list(artifacts.rglob("synthetic.pt")), "artifacts are stored under the server's artifact root"
    parents = [r for r, t in by_stage["evaluate"] if "mlflow.parentRunId" not in t]
    children = [t for _, t in by_stage["evaluate"] if "mlflow.parentRunId" in t]
    assert len(parents) == 1 and sorted(t["seed"] for t in children) == ["0", "1"]


# --------------------------------------------------------- a profile that cannot hang (no cluster)

@pytest.mark.parametrize("command,config,init,fix", [
    ("sacct", {"AccountingStorageType": "accounting_storage/none", "MinJobAge": "600 sec"}, 20,
     "slurm-status-command: squeue"),
    ("squeue", {"AccountingStorageType": "accounting_storage/none", "MinJobAge": "30 sec"}, 20,
     "slurm-init-seconds-before-status-checks to at most 10"),
    ("squeue", {"AccountingStorageType": "accounting_storage/none", "MinJobAge": "600 sec"}, 20, None),
    ("squeue", {"AccountingStorageType": "accounting_storage/slurmdbd", "MinJobAge": "30 sec"}, 20, None),
    ("sacct", {"AccountingStorageType": "accounting_storage/slurmdbd", "MinJobAge": "300 sec"}, 40, None),
])
def test_a_status_command_that_cannot_work_is_named_with_its_fix(command, config, init, fix):
    # squeue forgets a job MinJobAge after it ends, and the plugin uses it only while MinJobAge >=
    # 3 x its first status delay (else it falls back to sacct); sacct needs accounting
    from stages.common.cluster import status_problem

    problem = status_problem(config, command, init)
    assert (problem is None) == (fix is None), problem
    if fix:
        assert fix in problem and "\n" not in problem


def test_the_slurm_profile_chooses_its_status_command_and_sizes_every_rule():
    import yaml

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["slurm-status-command"] == "squeue"
    from stages.common.cluster import status_problem

    # a cluster without accounting and with SLURM's default MinJobAge (300 s) works with it
    assert status_problem({"AccountingStorageType": "accounting_storage/none", "MinJobAge": "300 sec"},
                          profile["slurm-status-command"], profile["slurm-init-seconds-before-status-checks"]) is None
    from stages.common.contract import RULES

    assert set(profile["set-resources"]) == set(RULES)  # every rule, pool included, has its entry
    assert not any("mem_mb" in r for r in profile["set-resources"].values())  # memory follows the data
    assert not [r for r in profile["default-resources"] if r.startswith("mem_mb")]


def test_the_cluster_script_refuses_in_one_line_where_it_cannot_work(monkeypatch, tmp_path):
    import importlib.util
    import socket

    spec = importlib.util.spec_from_file_location("slurm_cluster", ROOT / "scripts/slurm_cluster.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script.os, "geteuid", lambda: 1000)
    with pytest.raises(script.Refused, match="needs root"):
        script.check_machine()
    monkeypatch.setattr(script.os, "geteuid", lambda: 0)
    monkeypatch.setattr(script, "_which", lambda name: None)
    with pytest.raises(script.Refused, match=r"munged not found: install the packages first \(apt-get install"):
        script.check_machine()
    monkeypatch.setattr(script, "_which", lambda name: f"/usr/sbin/{name}")

    def unresolved(name):
        raise OSError("unknown host")

    monkeypatch.setattr(script.socket, "gethostbyname", unresolved)
    with pytest.raises(script.Refused, match="does not resolve: add it to /etc/hosts"):
        script.check_machine()
    monkeypatch.setattr(script.socket, "gethostbyname", socket.gethostbyname)
    # what it writes: partitions cpu and gpu on the one node, one gres line per fake GPU (each its
    # own character device), squeue-friendly MinJobAge, no cgroups
    conf = script.write_config(tmp_path, "n1", 2, False).read_text()
    for line in ("PartitionName=cpu Nodes=n1 Default=YES", "PartitionName=gpu Nodes=n1", "GresTypes=gpu",
                 "MinJobAge=600", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
                 "AccountingStorageType=accounting_storage/none", "SlurmdParameters=config_overrides"):
        assert line in conf, line
    gres = (tmp_path / "gres.conf").read_text().splitlines()
    assert gres == ["NodeName=n1 Name=gpu File=/dev/null", "NodeName=n1 Name=gpu File=/dev/zero"]
