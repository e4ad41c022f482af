"""The pipeline through a real SLURM scheduler: a one-node cluster the test starts itself
(scripts/slurm_cluster.py: munge, slurmctld and slurmd, partitions cpu and gpu, two fake GPUs,
no accounting database), and the tiny digits pipeline run with profiles/slurm; only the timings
(status delays) and the node's size (--cores 2) differ. It checks that

- every rule ran as a SLURM job (the short finishing rules as one group job), read back with
  `squeue --states=all` (the cluster keeps finished jobs for MinJobAge = 600 s);
- a distill job cancelled with `scancel` mid-run fails the run, and a rerun with the same
  command resumes from its checkpoint;
- the outputs equal, byte for byte, those of a `--cores 2` run of the same params (the resumed
  set included).

Marked `slurm`: `make test-slurm` runs it (`.ci/run` installs the packages as root first);
`make test` leaves it out. Skipped, with the reason, where the cluster cannot start (not root,
packages missing, a SLURM configuration of the machine's own).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_support import ROOT, make_project, project_env, tool

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

SCRIPT = ROOT / "scripts" / "slurm_cluster.py"
EXTRA = {"mlflow": {"enabled": False},
         "distill": {"iterations": 300, "checkpoint_every": 20, "log_every": 20, "validate_every": 100}}
CKPT = "state/distill/digits/atom/ipc1/checkpoint.pt"
# the test node has 2 CPUs (a profile for a real cluster keeps its own `cores`); status queries
# every few seconds instead of the profile's 20 s, so the test takes minutes, not a quarter hour
TIMINGS = ["--cores", "2", "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    res = subprocess.run([sys.executable, str(SCRIPT), "start", "--dir", str(folder)], capture_output=True, text=True,
                         timeout=180)
    if res.returncode != 0:
        pytest.skip(f"no one-node SLURM cluster here: {res.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "stop", "--dir", str(folder)], capture_output=True, timeout=120)


def _project(path: Path) -> Path:
    root = make_project(path, EXTRA)
    shutil.copytree(ROOT / "profiles", root / "profiles")
    return root


def _jobs() -> list[tuple[str, str, str]]:
    """(SLURM job id, its comment: the rule or group, its state) of every job the cluster knows."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%k|%T"], capture_output=True, text=True,
                         check=True).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]


def _digests(root: Path) -> dict[str, str]:
    from atom.io import sha256

    return {str(p.relative_to(root)): sha256(p) for d in ("data", "results") for p in sorted((root / d).rglob("*"))
            if p.is_file() and not p.name.endswith("info.json")}  # info.json: wall-clock seconds


def test_the_tiny_pipeline_runs_through_slurm_and_a_cancelled_distill_resumes(cluster, tmp_path):
    from atom.io import load_tensors
    from stages.common.runner import ATTEMPT

    root = _project(tmp_path / "slurm")
    env = project_env(root)
    known = {job for job, _, _ in _jobs()}
    cmd = [tool("snakemake"), "--profile", "profiles/slurm", *TIMINGS]
    out = open(root / "first.out", "w")
    first = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (root / CKPT).exists():  # distill has saved its first checkpoint
            assert first.poll() is None and time.monotonic() < deadline, (root / "first.out").read_text()[-3000:]
            time.sleep(0.2)
        (job,) = [j for j, comment, state in _jobs() if comment.startswith("rule_distill_") and state == "RUNNING"]
        subprocess.run(["scancel", job], check=True)
        assert first.wait(timeout=300) != 0  # the run stops: its distill job was cancelled
    finally:
        if first.poll() is None:
            first.kill()
        out.close()
    at = int(load_tensors(root / CKPT)["iteration"])
    assert 0 < at < EXTRA["distill"]["iterations"], at
    log = (root / "logs/distill/digits-atom-ipc1.log").read_text()
    assert "terminated by SIGTERM" in log.split(ATTEMPT)[-1]

    rerun = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    log = (root / "logs/distill/digits-atom-ipc1.log").read_text().split(ATTEMPT)[-1]
    assert f"resumed from {CKPT} at iteration {at}" in log

    # every rule ran as a SLURM job (the finishing rules as one group job)
    ran = {comment for job, comment, state in _jobs() if job not in known and state == "COMPLETED"}
    rules = {c[len("rule_"):].split("_wildcards")[0] for c in ran if "_wildcards" in c}
    groups = [c for c in ran if c.startswith("rule_finish_")]
    assert {"download", "zca", "pool", "distill", "evaluate", "evaluate_random", "evaluate_full", "crossarch",
            "nas"} <= rules, ran
    assert groups and all(r in groups[0] for r in ("visualize", "export", "accuracy", "nas_merge", "report")), ran

    # the same outputs as the same params run with --cores, the resumed set included
    local = make_project(tmp_path / "local", EXTRA)
    res = subprocess.run([tool("snakemake"), "--cores", "2"], cwd=local, env=project_env(local), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    mine, theirs = _digests(root), _digests(local)
    assert mine.keys() == theirs.keys() and "results/distill/digits/atom/ipc1/synthetic.pt" in mine
    assert {k for k in mine if mine[k] != theirs[k]} == set()


def test_a_profile_whose_status_queries_cannot_work_stops_in_one_line_before_submitting(cluster, tmp_path):
    # sacct on a cluster without accounting: the plugin would never learn that a job ended and
    # wait for ever; the Snakefile's onstart refuses first
    root = _project(tmp_path / "p")
    before = {job for job, _, _ in _jobs()}
    res = subprocess.run([tool("snakemake"), "--profile", "profiles/slurm", *TIMINGS, "--slurm-status-command", "sacct"],
                         cwd=root, env=project_env(root), capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    lines = [x for x in out.splitlines() if x.startswith("profile: ")]
    assert len(lines) == 1 and "sacct" in lines[0] and "slurm-status-command: squeue" in lines[0], out[-3000:]
    assert {job for job, _, _ in _jobs()} == before  # nothing was submitted
    assert not (root / "results").exists()
