"""MLflow records of the stages (stages.common.tracking.Tracker), read back with MlflowClient, and the
MLflow UI serving them over HTTP. Every store lives in a temp folder."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.request

import pytest

from pipeline_support import free_port, stop_group, tiny_params, tool
from stages.common import tracking

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one distill-like run (params, a loss history, an artifact) and an
    evaluate-like parent with two child runs, written through the stages' Tracker."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    params = tiny_params({"mlflow": {"artifact_root": str(tmp / "artifacts")},
                          "paths": {"logs": str(tmp / "logs")}})
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        tracker = tracking.Tracker(params, "digits", logging.getLogger("test"))
        assert tracker.enabled and tracker.client is not None
        artifact = tmp / "loss.csv"
        artifact.write_text("iteration,loss\n1,3.0\n2,2.0\n3,1.5\n")
        with tracker.run("distill", "atom", 10) as run:
            run.log_params({"iterations": 3, "net": {"width": 16, "depth": 3}, "lr_milestones": []})
            run.log_history("loss", [3.0, 2.0, 1.5], [1, 2, 3])
            run.log_artifact(artifact)
        with tracker.run("evaluate", "atom", 10) as parent:
            parent.log_metrics({"accuracy_mean": 50.0, "accuracy_std": 1.0})
            for seed in (0, 1):
                with tracker.run("evaluate", "atom", 10, parent=parent, extra_tags={"seed": str(seed)}) as child:
                    child.log_metrics({"accuracy": 49.0 + 2 * seed})
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return {"uri": uri, "tmp": tmp, "distill": run.run_id, "parent": parent.run_id,
            "experiment": tracker.experiment_id, "commit": tracker.commit}


def test_records_read_back_with_mlflow_client(store, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"])
    assert client.get_experiment(store["experiment"]).name == "atom-digits"
    run = client.get_run(store["distill"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["stage"], tags["dataset"], tags["method"], tags["ipc"]) == ("distill", "digits", "atom", "10")
    assert tags["git_commit"] == store["commit"] and tags["mlflow.runName"] == "distill/digits/atom/ipc10"
    assert run.data.params == {"iterations": "3", "net.width": "16", "net.depth": "3", "lr_milestones": "[]"}
    hist = sorted(client.get_metric_history(store["distill"], "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert [a.path for a in client.list_artifacts(store["distill"])] == ["loss.csv"]
    local = client.download_artifacts(store["distill"], "loss.csv", str(tmp_path))
    assert open(local).read().splitlines()[-1] == "3,1.5"

    children = client.search_runs([store["experiment"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{store['parent']}'")
    assert sorted(r.data.tags["seed"] for r in children) == ["0", "1"]
    assert sorted(r.data.metrics["accuracy"] for r in children) == [49.0, 51.0]
    assert client.get_run(store["parent"]).data.metrics["accuracy_mean"] == 50.0


def test_disabled_tracker_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    params = tiny_params({"mlflow": {"enabled": False}, "paths": {"logs": str(tmp_path / "logs")}})
    tracker = tracking.Tracker(params, "digits", logging.getLogger("test"))
    with tracker.run("distill", "atom", 1) as run:
        run.log_params({"a": 1})
        run.log_history("loss", [1.0], [1])
    assert run.run_id is None and not (tmp_path / "none.db").exists()


def test_tracking_uri_precedence(monkeypatch):
    params = tiny_params()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(params) == "sqlite:///mlflow.db"
    params["mlflow"]["tracking_uri"] = "sqlite:///elsewhere.db"
    assert tracking.tracking_uri(params) == "sqlite:///elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.tracking_uri(params) == "http://127.0.0.1:9"


def _get(url: str, data: dict | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def test_mlflow_ui_serves_the_runs(store):
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=store["uri"])
    proc = subprocess.Popen([tool("mlflow"), "ui", "--backend-store-uri", store["uri"], "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=store["tmp"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: the server forks workers
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                status, _ = _get(base + "/")
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200, "mlflow ui did not answer within 120 s"
        status, body = _get(base + "/api/2.0/mlflow/runs/search",
                            {"experiment_ids": [store["experiment"]], "max_results": 100})
        assert status == 200
        ids = {r["info"]["run_id"] for r in json.loads(body)["runs"]}
        assert {store["distill"], store["parent"]} <= ids and len(ids) == 4
    finally:
        stop_group(proc)  # the process group we started, by its id
    assert proc.returncode is not None
