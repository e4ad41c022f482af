"""State the pipeline can trust (issue 36), on a tiny digits project with a one-member pool:

- every file a stage reads (prepared data, its preprocessing, the pool, a pool member's state,
  a distill checkpoint, a synthetic set) is refused in one line, exit code 4, with nothing
  computed or written, when it is truncated, has a flipped byte, is a pickle of plain tensors,
  lacks a field, or is another stage's file;
- distill refuses a pool whose weights are not those the pool stage recorded;
- a pool member's state made by other training code is trained afresh, and says why;
- two runs on one project, whichever tools start them, never compute a job twice: the second
  is refused in one line; a job held by one process is refused to another.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline_support import make_project, project_env, tool
from stages import distill, download, evaluate, export, pool, visualize, zca
from stages.common import runner

pytestmark = pytest.mark.timeout(600)

EXTRA = {"mlflow": {"enabled": False}, "experiment": {"baselines": []},
         "pool": {"models": 1, "epochs": 1}, "distill": {"encoder": "pool"}}
ONE = ["--dataset", "digits", "--method", "atom", "--ipc", "1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("state") / "p", EXTRA)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("TQDM_DISABLE", "1")
    for main, argv in ((download.main, ["--dataset", "digits"]), (zca.main, ["--dataset", "digits"]),
                       (pool.main, ["--dataset", "digits"]), (distill.main, ONE), (evaluate.main, ONE),
                       (visualize.main, ONE), (export.main, ONE)):
        assert runner.run(main, argv) == 0, main.__module__
    yield root
    mp.undo()


# (file, the stage that reads it, another stage's file to put in its place)
LOADERS = {
    "prepared": ("data/prepared/digits.pt", (distill.main, ONE), "results/distill/digits/atom/ipc1/synthetic.pt"),
    "preprocess": ("data/prepared/digits.preprocess.pt", (export.main, ONE), "data/prepared/digits.pt"),
    "pool": ("results/pool/digits/pool.pt", (distill.main, ONE), "state/distill/digits/atom/ipc1/checkpoint.pt"),
    "pool member": ("state/pool/digits/member0.pt", (pool.main, ["--dataset", "digits"]), "results/pool/digits/pool.pt"),
    "checkpoint": ("state/distill/digits/atom/ipc1/checkpoint.pt", (distill.main, ONE), "results/pool/digits/pool.pt"),
    "synthetic set": ("results/distill/digits/atom/ipc1/synthetic.pt", (evaluate.main, ONE), "data/prepared/digits.pt"),
}


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "payload flipped":  # up to 100 bytes of tensor data, past the header
        b, start = bytearray(data), 8 + int.from_bytes(data[:8], "little")
        mid = (start + len(b)) // 2
        for i in range(max(start, mid - 50), min(len(b), mid + 50)):
            b[i] ^= 0x5A
        path.write_bytes(bytes(b))
    elif how == "plain-tensor pickle":
        torch.save({"x": torch.zeros(3), "y": torch.ones(2, 2)}, path)
    elif how == "missing keys":  # a well-formed file of the right kind, its first field gone
        from atom.io import load_tensors, save_tensors

        save_tensors(dict(list(load_tensors(path).items())[1:]), path, kind=_kind(data))
    elif how == "another stage's file":
        shutil.copyfile(other, path)


def _header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


def _kind(data: bytes) -> str | None:
    """The kind atom.io wrote into a file's one metadata document."""
    doc = json.loads(_header(data)["__metadata__"]["atom.io"])
    assert doc["__kind__"], "the fixture's files all name their kind"
    return doc["__kind__"]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of data/, results/ and state/ with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for d in ("data", "results", "state")
            for p in (root / d).rglob("*") if p.is_file()}


@pytest.mark.parametrize("how", ["truncated", "payload flipped", "plain-tensor pickle", "missing keys",
                                 "another stage's file"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_a_bad_file_in_one_line_and_runs_nothing(project, capsys, loader, how):
    rel, (main, argv), other = LOADERS[loader]
    path = project / rel
    good = path.read_bytes()
    try:
        _damage(path, how, project / other)
        before = _tree(project)
        capsys.readouterr()
        assert runner.run(main, argv) == 4, (loader, how)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
        assert lines[0].startswith(f"error: {rel}: ") and "to recover, delete it" in lines[0], lines[0]
        if how == "payload flipped":
            assert "corrupt" in lines[0]
        assert _tree(project) == before  # nothing computed, nothing written (the stale file aside)
    finally:
        path.write_bytes(good)


def test_distill_refuses_a_pool_that_is_not_the_one_the_pool_stage_recorded(project, capsys):
    info = project / "results/pool/digits/info.json"
    good = info.read_text()
    try:
        info.write_text(json.dumps(dict(json.loads(good), fingerprint="0" * 64)))
        before = _tree(project)
        capsys.readouterr()
        assert runner.run(distill.main, ONE) == 4
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
        assert "results/pool/digits/pool.pt" in line and "info.json" in line and "python -m stages.pool" in line
        assert _tree(project) == before
    finally:
        info.write_text(good)


def test_a_pool_member_made_by_other_training_code_is_trained_afresh(project):
    from atom.io import load_tensors, save_tensors
    from stages.common.runner import ATTEMPT

    member = project / "state/pool/digits/member0.pt"
    pool_file = project / "results/pool/digits/pool.pt"
    trained = pool_file.read_bytes()
    state = load_tensors(member)
    save_tensors(dict(state, key="made by other code"), member, kind="pool-member")
    assert runner.run(pool.main, ["--dataset", "digits"]) == 0
    log = (project / "logs/pool/digits.log").read_text().split(ATTEMPT)[-1]
    assert "made by other code (the pool's training code changed since); training member 0 afresh" in log
    assert load_tensors(member)["key"] == state["key"]  # retrained and stamped with this code's digest
    assert pool_file.read_bytes() == trained  # the same training: the same bytes (no wall clock inside)
    assert runner.run(pool.main, ["--dataset", "digits"]) == 0  # and now reloaded, not retrained
    assert "finished already, reloaded" in (project / "logs/pool/digits.log").read_text().split(ATTEMPT)[-1]
    # the case: the training code edited (here, a comment) in the project itself
    code = project / "atom/pool.py"
    text = code.read_text()
    try:
        code.write_text(text + "\n# an edit to the pool's training code\n")
        res = subprocess.run([sys.executable, "-m", "stages.pool", "--dataset", "digits"], cwd=project,
                             env=project_env(project), capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
        log = (project / "logs/pool/digits.log").read_text().split(ATTEMPT)[-1]
        assert "made by other code" in log and "training member 0 afresh" in log
    finally:
        code.write_text(text)


# --------------------------------------------------------------------------------- one lock

def test_a_job_held_by_one_process_is_refused_to_another(project, capsys):
    from stages.common import locks

    logs = project / "logs"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.'); from pathlib import Path; from stages.common import locks; "
        "locks.hold_job(Path('logs'), 'evaluate', 'digits-atom-ipc1'); print('held', flush=True); time.sleep(30)")],
        cwd=project, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(project)
        capsys.readouterr()
        assert runner.run(evaluate.main, ONE) == 4
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
        assert "job evaluate digits-atom-ipc1 is being computed by pid" in line
        assert _tree(project) == before
    finally:
        holder.kill()
        holder.wait()
    assert runner.run(visualize.main, ONE) == 0  # other jobs, and the same job once released, run
    locks.hold_job(logs, "evaluate", "digits-atom-ipc1")
    locks.release_jobs()


def test_two_tools_on_one_project_never_compute_a_job_twice(tmp_path):
    # `dvc repro` holds the project; `snakemake` started a moment later stops at its first job,
    # in one line naming the DVC run, and computes nothing (the issue: both ran zca, pool,
    # distill and evaluate twice)
    root = make_project(tmp_path / "p", {"mlflow": {"enabled": False},
                                         "distill": {"iterations": 60, "checkpoint_every": 10}})
    env = project_env(root)
    for cmd in (["git", "init", "-q"], [tool("dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    dvc = subprocess.Popen([tool("dvc"), "repro", "distill@digits-atom-1"], cwd=root, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (root / "logs/.pipeline.lock").exists():
            assert dvc.poll() is None and time.monotonic() < deadline, dvc.stdout.read()[-3000:]
            time.sleep(0.05)
        assert json.loads((root / "logs/.pipeline.lock").read_text())["tool"] == "dvc"
        snake = subprocess.run([tool("snakemake"), "--cores", "1", "results/distill/digits/atom/ipc1/synthetic.pt"],
                               cwd=root, env=env, capture_output=True, text=True, timeout=240)
        out = snake.stdout + snake.stderr
        assert snake.returncode != 0, out[-3000:]
        refused = [x for x in out.splitlines() if x.startswith("error: another pipeline run is using this project")]
        assert len(refused) == 1 and "dvc repro" in refused[0] and "wait for it to end" in refused[0], out[-3000:]
        assert dvc.wait(timeout=300) == 0, dvc.stdout.read()[-3000:]
    finally:
        if dvc.poll() is None:
            dvc.kill()
    # each job ran once: one attempt in each log, all of them DVC's
    from stages.common.runner import ATTEMPT

    logs = sorted((root / "logs").glob("*/*.log"))
    assert {p.parent.name for p in logs} == {"download", "zca", "pool", "distill"}
    assert all(p.read_text().count(ATTEMPT) == 1 for p in logs), [(p, p.read_text().count(ATTEMPT)) for p in logs]
    # once DVC's run has ended, Snakemake may run in the project (it finds the work done by
    # mtime order and has nothing to compute)
    after = subprocess.run([tool("snakemake"), "-n", "--cores", "1", "results/distill/digits/atom/ipc1/synthetic.pt"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert after.returncode == 0 and "Nothing to be done" in after.stdout + after.stderr
    assert yaml.safe_load((root / "params.yaml").read_text())  # the project is intact
