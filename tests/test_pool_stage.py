"""The `pool` stage (stages/pool.py) in a tiny project: what it writes, that it reads only the
training split, that a rerun reloads finished members instead of retraining them, that distill
draws its encoders from it, and that a setting needing a pool without one is refused up front."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_support import make_project, project_env

PY = sys.executable
POOL = {"pool": {"models": 2, "epochs": 1, "batch_size": 64}}


def _stage(root: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([PY, "-m", *args], cwd=root, env=project_env(root), capture_output=True, text=True,
                         timeout=400)
    assert (res.returncode == 0) == ok, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def pooled(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("pool"), {**POOL, "distill": {"encoder": "pool",
                                                                              "calibration": 1.0}})
    _stage(root, "stages.download", "--dataset", "digits")
    _stage(root, "stages.zca", "--dataset", "digits")
    _stage(root, "stages.pool", "--dataset", "digits")
    return root


def test_pool_stage_writes_the_pool_its_metrics_and_fingerprint(pooled):
    from atom.pool import EncoderPool

    out = pooled / "results/pool/digits"
    pool = EncoderPool.load_file(out / "pool.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "info.json").read_text())
    assert len(pool) == 2 and metrics["members"] == 2 and metrics["epochs"] == 1
    assert info["fingerprint"] == pool.fingerprint and info["dataset"] == "digits"
    # trained on the distillation split: all digits training images less validation.per_class (5) x 10
    from atom.io import load_tensors
    prep = load_tensors(pooled / "data/prepared/digits.pt")
    assert metrics["images"] == prep["train_images"].shape[0] - 5 * 10
    assert 0.0 <= metrics["mean_train_accuracy"] <= 100.0
    assert (pooled / "state/pool/digits").is_dir()


def test_a_rerun_reloads_finished_members(pooled):
    from atom.pool import EncoderPool

    out = pooled / "results/pool/digits/pool.pt"
    before = EncoderPool.load_file(out).fingerprint
    out.unlink()
    res = _stage(pooled, "stages.pool", "--dataset", "digits")
    log = res.stdout + res.stderr
    assert EncoderPool.load_file(out).fingerprint == before, log[-2000:]
    # both members come back finished from their state files: no epoch is trained again
    assert log.count("finished already, reloaded from") == 2 and "epoch 1/1 loss" not in log, log[-2000:]


def test_distill_draws_its_encoders_from_the_pool(pooled):
    res = _stage(pooled, "stages.distill", "--dataset", "digits", "--method", "atom", "--ipc", "1")
    assert (pooled / "results/distill/digits/atom/ipc1/synthetic.pt").is_file()
    log = res.stdout + res.stderr
    assert "distilling inside the pool" in log and "encoder pool, calibration 1.0" in log, log[-2000:]


def test_no_members_writes_an_empty_pool_at_once(tmp_path):
    root = make_project(tmp_path, {"pool": {"models": 0}})
    _stage(root, "stages.download", "--dataset", "digits")
    _stage(root, "stages.zca", "--dataset", "digits")
    _stage(root, "stages.pool", "--dataset", "digits")
    assert json.loads((root / "results/pool/digits/metrics.json").read_text())["members"] == 0


def test_a_pool_encoder_without_pool_members_is_refused_before_any_work(tmp_path):
    root = make_project(tmp_path, {"pool": {"models": 0}, "distill": {"encoder": "pool"}})
    res = _stage(root, "stages.download", "--dataset", "digits", ok=False)
    assert "pool.models" in res.stderr and "Traceback" not in res.stderr
    assert not (root / "results").exists() and not (root / "data").exists()
