"""Resuming after a kill, through the workflow tools, on a tiny digits run.

`snakemake` and `dvc repro` are killed with SIGKILL (their whole process tree) once the
distillation's checkpoint exists, then rerun as the README says; the rerun resumes at the last
checkpoint (the log says so), and the set equals an uninterrupted run's bit for bit. Also: the
stale temp files of killed writes are removed when a stage starts, files follow the umask, and
the library reports progress, validation, checkpoints and resumes as the events the stages read.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

import atom

from pipeline_support import make_project, project_env, tool
from stages.common.runner import ATTEMPT

pytestmark = pytest.mark.timeout(600)

D, M, K = "digits", "atom", 1
# long enough that the kill lands mid-distillation, small enough for seconds per run
EXTRA = {"experiment": {"methods": [M], "ipcs": [K], "baselines": []},
         "distill": {"iterations": 160, "checkpoint_every": 20, "log_every": 10, "validate_every": 40},
         "validation": {"per_class": 5, "epochs": 2, "seeds": [0]}}
SYN = f"results/distill/{D}/{M}/ipc{K}/synthetic.pt"
CKPT = f"state/distill/{D}/{M}/ipc{K}/checkpoint.pt"
LOG = f"logs/distill/{D}-{M}-ipc{K}.log"


def _sh(cmd, root: Path, ok: bool = True, timeout: int = 400) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=root, env=project_env(root), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _run_and_kill(cmd, root: Path) -> int:
    """Start ``cmd``, SIGKILL its whole process tree once the checkpoint exists; return the
    checkpoint's iteration."""
    out = open(root / "killed.out", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=project_env(root), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (root / CKPT).exists():
            assert proc.poll() is None, (root / "killed.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        tree = [proc] + psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and its jobs: like a pre-empted node
        for p in tree[1:]:
            try:
                p.kill()  # a job in another process group, if any
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
        psutil.wait_procs(tree[1:], timeout=30)
    finally:
        out.close()
    from atom.io import load_tensors

    return int(load_tensors(root / CKPT)["iteration"])


def _uninterrupted(root: Path) -> dict:
    """The same distillation, run straight through by the stage, into other folders."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["paths"].update(results="ref/results", state="ref/state", logs="ref/logs")
    params["mlflow"]["enabled"] = False
    (root / "ref.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh([sys.executable, "-m", "stages.distill", "--params", "ref.yaml", "--dataset", D, "--method", M,
         "--ipc", str(K)], root)
    return _sets(root / "ref")


def _sets(base: Path) -> dict:
    from atom.io import load_tensors

    d = base / f"results/distill/{D}/{M}/ipc{K}"
    return {"synthetic": load_tensors(d / "synthetic.pt"), "last": load_tensors(d / "last.pt"),
            "loss": (d / "loss.csv").read_text()}


def _check_resumed(root: Path, at: int) -> None:
    iterations = EXTRA["distill"]["iterations"]
    assert 0 < at < iterations, f"the kill did not land mid-distillation (checkpoint at {at})"
    log = (root / LOG).read_text()
    assert log.count(ATTEMPT) == 2  # the killed attempt's log is kept, the rerun's appended after it
    log = log.split(ATTEMPT)[-1]
    assert f"resumed from {CKPT} at iteration {at}" in log, log[-3000:]
    assert f"iteration {at + EXTRA['distill']['log_every']}/{iterations}" in log
    assert f"iteration {EXTRA['distill']['log_every']}/{iterations}" not in log  # nothing redone before `at`
    got, ref = _sets(root), _uninterrupted(root)
    for key in ("synthetic", "last"):
        assert torch.equal(got[key]["images"], ref[key]["images"]), key  # bit for bit
        assert torch.equal(got[key]["labels"], ref[key]["labels"]) and got[key]["iteration"] == ref[key]["iteration"]
    assert got["loss"] == ref["loss"]
    assert not [p for p in root.rglob(".*.tmp")], "a temp file survived the rerun"


def test_snakemake_killed_mid_distillation_resumes_bit_identical(tmp_path):
    root = make_project(tmp_path / "p", EXTRA)
    at = _run_and_kill([tool("snakemake"), "--cores", "1", SYN], root)
    assert not (root / SYN).exists()
    # rerun as the README says: unlock (the kill left Snakemake's lock), then rerun incomplete jobs
    locked = _sh([tool("snakemake"), "--cores", "1", SYN], root, ok=False)
    assert locked.returncode != 0 and "unlock" in (locked.stdout + locked.stderr).lower()
    _sh([tool("snakemake"), "--unlock"], root)
    _sh([tool("snakemake"), "--cores", "1", "--rerun-incomplete", SYN], root)
    _check_resumed(root, at)

    # MLflow: the killed attempt's run is closed FAILED by the rerun; the rerun's run FINISHED,
    # with the whole loss curve and the resume point
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"atom-{D}")
    runs = {r.info.status: r for r in client.search_runs([exp.experiment_id], "tags.stage = 'distill'")}
    assert set(runs) == {"FAILED", "FINISHED"}
    assert "killed" in runs["FAILED"].data.tags["error"]
    done = runs["FINISHED"]
    assert done.data.metrics["resumed_from"] == at
    steps = sorted(m.step for m in client.get_metric_history(done.info.run_id, "loss"))
    assert steps == list(range(1, EXTRA["distill"]["iterations"] + 1))
    # the run's seconds count the killed attempt's part up to the checkpoint too
    at_seconds = json.loads((root / CKPT).with_suffix(".json").read_text())["seconds_at"]
    assert 0 < at_seconds[str(at)] < at_seconds[str(EXTRA["distill"]["iterations"])] <= done.data.metrics["seconds"]


def test_dvc_repro_killed_mid_distillation_resumes_bit_identical(tmp_path):
    root = make_project(tmp_path / "p", dict(EXTRA, mlflow={"enabled": False}))
    _sh(["git", "init", "-q"], root)
    _sh([tool("dvc"), "init", "-q"], root)
    _sh([tool("dvc"), "config", "core.analytics", "false"], root)
    stage = f"distill@{D}-{M}-{K}"
    at = _run_and_kill([tool("dvc"), "repro", stage], root)
    assert not (root / SYN).exists()
    _sh([tool("dvc"), "repro", stage], root)  # as the README says: just rerun
    _check_resumed(root, at)
    assert "up to date" in _sh([tool("dvc"), "status", stage], root).stdout


def test_a_stage_removes_the_temp_files_of_its_killed_writes(tmp_path):
    from stages.common.recovery import remove_stale

    out = tmp_path / "results" / "synthetic.pt"
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    out.parent.mkdir()
    out.write_text("kept")
    stale = [tmp_path / "results/.synthetic.pt.ab12.tmp", tmp_path / "results/.synthetic.pt.old.x1",
             raw / ".images.q1.tmp", raw / ".download.zz", raw / ".cifar-10-batches-py.old.k"]
    for p in stale:
        if p.parent == raw and p.name != ".download.zz":  # folders: a killed extraction or swap
            (p / "train").mkdir(parents=True)
            (p / "train/0.png").write_bytes(b"x")
        else:
            p.write_text("partial")
    others = [tmp_path / "results/.metrics.json.cd34.tmp", tmp_path / "results/.snakemake_timestamp",
              raw / "images/.hidden", raw / ".snakemake_timestamp"]
    for p in others:
        p.write_text("another job's or not a temp")
    removed = remove_stale([out, raw])
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others) and out.read_text() == "kept"


def test_written_files_follow_the_umask(tmp_path):
    from atom.io import save_tensors, temp_dir, write_json

    old = os.umask(0o022)
    try:
        a = save_tensors({"x": torch.zeros(2)}, tmp_path / "a.pt")
        b = write_json({"a": 1}, tmp_path / "b.json")
        d = temp_dir(tmp_path, ".d.")
        os.umask(0o077)
        c = write_json({"a": 1}, tmp_path / "c.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == stat.S_IMODE(b.stat().st_mode) == 0o644  # teammates can read
    assert stat.S_IMODE(d.stat().st_mode) == 0o755 and stat.S_IMODE(c.stat().st_mode) == 0o600


def test_atomic_writes_fsync_before_the_rename(tmp_path, monkeypatch):
    import atom.io as io

    events = []
    monkeypatch.setattr(io, "fsync_path", lambda p: events.append(("fsync", Path(p).name)))
    real = os.replace
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append(("rename", Path(b).name)), real(a, b))[1])
    io.save_tensors({"x": torch.ones(1)}, tmp_path / "s.pt")
    assert events[0][0] == "fsync" and events[0][1].startswith(".s.pt.") and events[1] == ("rename", "s.pt")
    assert events[2] == ("fsync", tmp_path.name)  # the folder: the rename itself is durable


def test_distillation_reports_progress_validation_checkpoints_and_resume_as_events(tmp_path):
    # the library's one interface to the pipeline (atom.events): the stages stream metrics and
    # count time from these, never from log text
    from atom.data import load_digits
    from atom.events import Checkpointed, Progress, Resumed, Validated

    d = load_digits()
    kw = dict(ipc=1, iterations=6, batch_real=8, net=dict(width=8, depth=1), log_every=2, checkpoint_every=3,
              validate_every=3, progress=False, checkpoint_path=tmp_path / "c.pt")
    scores = iter([10.0, 30.0, 20.0, 30.0])
    events = []
    res = atom.distill(d.train_images, d.train_labels, validator=lambda x, y: next(scores), on_event=events.append,
                       **kw)
    kinds = [(type(e).__name__, e.iteration) for e in events]
    assert kinds == [("Validated", 0), ("Progress", 2), ("Validated", 3), ("Checkpointed", 3), ("Progress", 4),
                     ("Progress", 6), ("Validated", 6), ("Checkpointed", 6)]
    assert [e.loss for e in events if isinstance(e, Progress)] == [res.losses[i] for i in (1, 3, 5)]
    val = [e for e in events if isinstance(e, Validated)]
    assert [(e.score, e.best_iteration, e.new_best) for e in val] == [(10.0, 0, True), (30.0, 3, True),
                                                                      (20.0, 3, False)]
    assert res.best_iteration == val[-1].best_iteration == 3  # the kept iteration, as reported
    assert all(e.path == tmp_path / "c.pt" for e in events if isinstance(e, Checkpointed))
    again = []
    atom.distill(d.train_images, d.train_labels, validator=lambda x, y: 0.0, on_event=again.append, resume=True,
                 **kw)
    assert isinstance(again[0], Resumed) and again[0].iteration == 6 and again[0].path == tmp_path / "c.pt"


def test_evaluation_reports_each_seed_as_an_event():
    from atom.data import load_digits
    from atom.evaluation import evaluate
    from atom.events import SeedEvaluated

    d = load_digits()
    x, y = d.train_images[:40], d.train_labels[:40]
    for batched in (False, True):
        events = []
        res = evaluate(x, y, d.test_images, d.test_labels, seeds=[0, 1], epochs=1, batch_size=16, num_classes=10,
                       net=dict(width=8, depth=1), progress=False, batched=batched, on_event=events.append)
        assert [(e.seed, e.accuracy, e.batched) for e in events] == [(0, res["per_seed"][0], batched),
                                                                     (1, res["per_seed"][1], batched)]
        assert all(isinstance(e, SeedEvaluated) for e in events)


def test_a_checkpoint_made_by_other_distillation_code_is_discarded_unless_kept(tmp_path):
    # the checkpoint is keyed by the code distillation runs; --keep-checkpoint resumes across an
    # edit the user knows to be harmless (the settings must still match)
    root = make_project(tmp_path / "p", {"mlflow": {"enabled": False}, "experiment": {"baselines": []},
                                         "distill": {"iterations": 4, "checkpoint_every": 2}})
    distill = [sys.executable, "-m", "stages.distill", "--dataset", D, "--method", M, "--ipc", str(K)]
    for cmd in ([sys.executable, "-m", "stages.download", "--dataset", D],
                [sys.executable, "-m", "stages.zca", "--dataset", D], distill):
        _sh(cmd, root)
    meta = root / CKPT.replace(".pt", ".json")
    record = json.loads(meta.read_text())
    from stages.common.codedeps import code_digest

    assert record["code"] == code_digest("distill")
    for keep in (True, False):
        meta.write_text(json.dumps(dict(record, code="made by other code")))
        _sh(distill + (["--keep-checkpoint"] if keep else []), root)
        log = (root / LOG).read_text().split(ATTEMPT)[-1]  # this attempt's part of the log
        assert ("kept, as --keep-checkpoint asks" in log) == keep and ("discarding it" in log) != keep
        assert (f"resumed from {CKPT} at iteration 4" in log) == keep
        assert json.loads(meta.read_text())["code"] == code_digest("distill")  # stamped anew
