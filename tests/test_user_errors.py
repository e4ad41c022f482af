"""The errors a user meets (issue 27): each fails before the compute, in one line naming the
file or folder and the params.yaml key, with a non-zero exit code and nothing left to clean
up by hand (no results, no state, no data written; at most the stage's log).

The stages run as subprocesses of a tiny project (tests/pipeline_support.py). A read-only or
full disk is made for real where the test can: a folder without write permission (not root),
or a read-only bind mount / a 64 KiB tmpfs in a private mount namespace (`unshare -rm`, as
root); else the stage runs with ``os.access`` / ``shutil.disk_usage`` patched to say so.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import yaml

from pipeline_support import ROOT, make_project, project_env, tiny_params, tool
from atom.catalog import DIGITS_CLASS_COUNTS, MiB
from stages.common import contract as layout, preflight, runner as runtime
from stages.common.params import ParamsError, evaluate_settings, validate_params

pytestmark = pytest.mark.timeout(300)

PY = sys.executable
# the sections as tests/params.tiny.yaml sets them (no protocol on top); no MLflow store unless a test wants one
BASE = {"datasets": {"digits": {"protocol": None}}, "mlflow": {"enabled": False}}
DISTILL = ("stages.distill", "--dataset", "digits", "--method", "atom", "--ipc", "1")

# runs a stage with os.access (kind "ro") or shutil.disk_usage (kind "full") saying that the
# folders under a path are read-only / hold 64 KiB free: where no real mechanism is at hand
WRAP = """
import os, runpy, shutil, sys
kind, target = sys.argv[1], os.path.abspath(sys.argv[2])
under = lambda p: (os.path.abspath(p) + "/").startswith(target + "/")
if kind == "full":
    real_usage = shutil.disk_usage
    shutil.disk_usage = lambda p: real_usage(p)._replace(free=65536) if under(p) else real_usage(p)
else:
    real_access = os.access
    os.access = lambda p, mode, *a, **k: False if mode & os.W_OK and under(p) else real_access(p, mode, *a, **k)
sys.argv = sys.argv[3:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _stage(root: Path, *args: str, prefix: tuple = (PY, "-m")) -> subprocess.CompletedProcess:
    """``python -m <args>`` in the project (``prefix``: what runs the module)."""
    return subprocess.run([*prefix, *args], cwd=root, env=project_env(root), capture_output=True, text=True,
                          timeout=240)


def _error_line(res: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The one ``error:`` line of a failed stage (no traceback), which names every word."""
    out = res.stdout + res.stderr
    assert res.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _files(root: Path) -> set[str]:
    """Every file of the project but the copied code and params (what a stage could leave)."""
    skip = {"atom", "stages", "schemas", "report", "plots"}
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in skip and "__pycache__" not in p.parts}


def _new(root: Path, before: set[str]) -> set[str]:
    """Files a stage added, its log aside."""
    return {f for f in _files(root) - before if not f.startswith("logs/")}


@lru_cache(maxsize=None)
def _can_mount() -> bool:
    """Whether a private mount namespace is at hand (root in a container that allows it)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        res = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(probe)],
                             capture_output=True, timeout=30)
        return res.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        probe.rmdir()


def _read_only(folder: Path):
    """(prefix for _stage, undo) that makes ``folder`` read-only for the stage."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        return (PY, "-m"), lambda: folder.chmod(mode)
    if _can_mount():
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        return ("unshare", "-rm", "sh", "-c", script, str(folder), PY, "-m"), lambda: None
    return (PY, "-c", WRAP, "ro", str(folder)), lambda: None


def _full(folder: Path):
    """A prefix for _stage that leaves 64 KiB free on ``folder``'s disk."""
    if _can_mount():
        return ("unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"', str(folder),
                PY, "-m")
    return (PY, "-c", WRAP, "full", str(folder))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny project with digits downloaded and prepared (the stages before distill)."""
    root = make_project(tmp_path_factory.mktemp("prepared") / "p", BASE)
    for stage in ("stages.download", "stages.zca"):
        res = _stage(root, stage, "--dataset", "digits")
        assert res.returncode == 0, res.stderr[-3000:]
    return root


@pytest.fixture
def project(prepared, tmp_path) -> Path:
    """A copy of the prepared project of its own."""
    return Path(shutil.copytree(prepared, tmp_path / "p", symlinks=True))


# ------------------------------------------------------------- 1. folders checked before compute

def test_a_read_only_results_folder_is_refused_before_distilling(project):
    before = _files(project)
    prefix, undo = _read_only(project / "results")
    try:
        res = _stage(project, *DISTILL, prefix=prefix)
    finally:
        undo()
    _error_line(res, 4, "paths.results", "results", "not writable")
    assert not _new(project, before) and not (project / "state").exists()  # no checkpoint: nothing ran


def test_a_full_results_disk_is_refused_before_distilling(project):
    before = _files(project)
    res = _stage(project, *DISTILL, prefix=_full(project / "results" if _can_mount() else project))
    line = _error_line(res, 4, "paths.results", "free", "64.0 KiB")
    assert "MiB" in line.split("needs about", 1)[1]  # what it needs, beside what there is
    assert not _new(project, before) and not (project / "state").exists()


def test_an_uncreatable_results_path_is_one_line_naming_the_setting(tmp_path):
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    root = make_project(tmp_path / "p", dict(BASE, paths={"results": "/proc/nope"}))
    before = _files(root)
    _error_line(_stage(root, "stages.download", "--dataset", "digits"), 4, "paths.results", "/proc/nope")
    assert not _new(root, before) and not (root / "data").exists() and not (root / "logs").exists()


def test_the_space_estimate_follows_what_the_stage_writes(tmp_path):
    params = tiny_params(BASE)
    cifar = tiny_params(dict(BASE, experiment={"datasets": ["cifar10"]}))
    small = preflight.estimate(params, "distill", {"dataset": "digits", "method": "atom", "ipc": 1})
    big = preflight.estimate(params, "distill", {"dataset": "digits", "method": "atom", "ipc": 50})
    assert 0 < small["paths.results"] < big["paths.results"] and 0 < small["paths.state"] < big["paths.state"]
    # CIFAR-10 before download: its archive and extracted files; prepared: 60,000 x 3,072 floats and the ZCA
    assert preflight.estimate(cifar, "download", {"dataset": "cifar10"})["paths.raw"] > 300 * MiB
    assert preflight.estimate(cifar, "zca", {"dataset": "cifar10"})["paths.prepared"] > 60000 * 3072 * 4
    # the shape of a prepared file comes from its header (written by atom.io, checksummed), not its data
    from atom.io import save_tensors

    prepared = tmp_path / "data/prepared/digits.pt"
    save_tensors({"train_images": torch.zeros(7, 1, 8, 8), "train_labels": torch.zeros(7, dtype=torch.long),
                  "test_images": torch.zeros(3, 1, 8, 8), "test_labels": torch.zeros(3, dtype=torch.long),
                  "classes": ["a", "b"], "state": {}}, prepared, kind="prepared")
    assert preflight._prepared_shape(prepared) == (7, 3, 2, 1, 8, 8)
    # a disk with less than the estimate (with its margin) is refused, naming every setting on it
    with pytest.raises(preflight.PreflightError, match="paths.results"):
        preflight.check_folders({"paths.results": [Path.cwd()]}, {"paths.results": 1 << 60})


# ------------------------------------------------------------ 2. class sizes before any stage runs

def test_digits_class_counts_are_scikit_learns():
    import numpy as np
    from sklearn.datasets import load_digits

    assert tuple(np.bincount(load_digits().target)) == DIGITS_CLASS_COUNTS


@pytest.mark.parametrize("extra, words", [
    ({"experiment": {"ipcs": [500]}, "crossarch": {"ipcs": [500]}, "nas": {"ipcs": [500]}},
     ["experiment.ipcs", "ipc 500", "'digits'", "139", "smallest class ('8')", "at most 134"]),
    ({"validation": {"per_class": 1000}}, ["validation.per_class", "1000", "'digits'", "139"]),
    ({"experiment": {"datasets": ["cifar100"], "ipcs": [460]}, "crossarch": {"ipcs": [460]},
      "nas": {"ipcs": [460]}, "datasets": {"cifar100": {"protocol": None}}},
     ["experiment.ipcs", "ipc 460", "'cifar100'", "500", "450"]),
])
def test_ipcs_and_validation_splits_beyond_the_class_sizes_fail_params_validation(extra, words):
    with pytest.raises(ParamsError) as err:
        validate_params(tiny_params({**BASE, **extra}))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_multi_formation_counts_its_tiles():
    ok = tiny_params({**BASE, "experiment": {"ipcs": [27]}, "crossarch": {"ipcs": [27]}, "nas": {"ipcs": [27]},
                      "validation": {"per_class": 30}})
    validate_params(ok)  # 27 x 1 <= 139 - 30
    with pytest.raises(ParamsError, match=r"27 x distill.factor\*\*2 = 108"):
        validate_params(tiny_params({**BASE, "experiment": {"ipcs": [27]}, "crossarch": {"ipcs": [27]},
                                     "nas": {"ipcs": [27]}, "validation": {"per_class": 32},
                                     "distill": {"factor": 2}}))


def test_a_too_large_ipc_stops_every_stage_and_snakemake_before_download(tmp_path):
    root = make_project(tmp_path / "p", {**BASE, "experiment": {"ipcs": [500]}, "crossarch": {"ipcs": [500]},
                                         "nas": {"ipcs": [500]}})
    _error_line(_stage(root, "stages.download", "--dataset", "digits"), 2, "experiment.ipcs", "500")
    snake = subprocess.run([tool("snakemake"), "-n", "--cores", "1"], cwd=root, env=project_env(root),
                           capture_output=True, text=True, timeout=120)
    assert snake.returncode != 0 and "experiment.ipcs: ipc 500" in snake.stdout + snake.stderr
    assert not any((root / d).exists() for d in ("data", "results", "logs", "state"))


def _imagefolder_project(tmp: Path, source: Path) -> Path:
    group = {"loader": "imagefolder", "options": {"source": str(source), "sha256": None, "mode": "rgb",
                                                  "resize": None, "test_fraction": 0.2, "seed": 0, "workers": 1},
             "preprocess": {"normalize": True, "zca": False, "zca_eps": 0.1}, "protocol": None,
             "distill": {}, "evaluate": {}, "validation": {"per_class": 2}, "pool": {}, "paper": None}
    return make_project(tmp, {**BASE, "experiment": {"datasets": ["mine"], "ipcs": [4]}, "crossarch": {"ipcs": [4]},
                              "nas": {"ipcs": [4]}, "datasets": {"mine": group}})


@pytest.mark.parametrize("archive", [False, True])
def test_an_imagefolder_too_small_for_the_ipc_is_refused_at_download(tmp_path, archive):
    from PIL import Image

    tree = tmp_path / "mine"
    for c in ("cat", "dog", "emu"):  # 6 images a class: 1 to test, 5 to train, 3 after validation
        for i in range(6):
            (tree / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(tree / c / f"{i}.png")
    source = tree
    if archive:
        source = tmp_path / "mine.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tree, arcname="mine")
    root = _imagefolder_project(tmp_path / "p", source)
    before = _files(root)
    _error_line(_stage(root, "stages.download", "--dataset", "mine"), 2,
                "experiment.ipcs", "ipc 4", "'mine'", "5 training images", "3 once")
    assert not _new(root, before) and not (root / "data").exists()  # no raw folder, no temp folder


# --------------------------------------------------------------------- 3. files refused for safety

class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_checkpoint_is_refused_naming_the_file_and_the_way_out(project):
    ckpt = layout.path(tiny_params(BASE), "checkpoint", dataset="digits", method="atom", ipc=1)
    marker = project / "pwned"
    (project / ckpt).parent.mkdir(parents=True)
    torch.save({"images": torch.zeros(2), "x": _Payload(str(marker))}, project / ckpt)
    before = _files(project)
    line = _error_line(_stage(project, *DISTILL), 4, str(ckpt), "refused for safety", f"rm {ckpt}",
                       "starts afresh")
    assert "weights_only" not in line and "trusted source" not in line
    log = (project / "logs/distill/digits-atom-ipc1.log").read_text()
    assert "weights_only" not in log and str(ckpt) in log
    assert not marker.exists() and not _new(project, before)  # nothing ran, nothing was written
    (project / ckpt).unlink()  # the advice: the next run starts afresh (checked by test_resume's kill tests)


def test_load_tensors_refuses_pickles_without_passing_on_torchs_advice(tmp_path):
    from atom.io import UntrustedFileError, load_tensors

    marker = tmp_path / "pwned"
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pickle.dumps({"x": _Payload(str(marker))}, protocol=2))
    zipped = tmp_path / "zipped.pt"
    torch.save({"x": _Payload(str(marker))}, zipped)
    for f in (bare, zipped):
        with pytest.raises(UntrustedFileError) as err:
            load_tensors(f)
        assert err.value.path == f and str(f) in str(err.value) and "refused for safety" in str(err.value)
        assert "weights_only" not in str(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no traceback carries it either
    assert not marker.exists()
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pt")  # plain tensors still load
    assert load_tensors(tmp_path / "plain.pt")["w"].sum() == 3


def test_every_safetensors_header_length_loads_even_when_it_starts_like_a_pickle(tmp_path):
    # safetensors opens with its header's length (u64, little-endian); for one length in 256 the
    # first byte is 0x80, pickle's PROTO opcode: such a file of this project's own must not be
    # taken for a pickle and refused (a real pool.pt hit this)
    from atom.io import load_tensors, save_tensors

    first = set()
    for pad in range(256):  # the metadata grows a byte at a time: every low byte of the length
        f = save_tensors({"w": torch.arange(3.0), "note": "x" * pad}, tmp_path / f"p{pad}.pt")
        first.add(f.read_bytes()[0])
        back = load_tensors(f)
        assert back["note"] == "x" * pad and torch.equal(back["w"], torch.arange(3.0))
    assert 0x80 in first


def test_a_bad_file_names_the_stage_that_writes_it_again(tmp_path):
    params = tiny_params(BASE)
    runtime._CURRENT[:] = [params]
    try:
        assert "python -m stages.zca --dataset digits" in runtime.recovery(Path("data/prepared/digits.pt"))
        assert "python -m stages.download --dataset digits" in runtime.recovery(Path("data/raw/digits/digits.pt"))
        assert "--method dm --ipc 10" in runtime.recovery(Path("results/distill/digits/dm/ipc10/synthetic.pt"))
        assert "rm elsewhere.pt" in runtime.recovery(Path("elsewhere.pt"))
    finally:
        runtime._CURRENT.clear()


# ------------------------------------------------------------------------------- 4. cosmetics

@pytest.mark.parametrize("signum, code, reason", [(signal.SIGINT, 130, "interrupted (SIGINT)"),
                                                  (signal.SIGTERM, 143, "terminated by SIGTERM")])
def test_a_signal_is_logged_with_its_reason(caplog, signum, code, reason):
    def main(argv):
        os.kill(os.getpid(), signum)
        time.sleep(10)

    with caplog.at_level(logging.ERROR, logger="stages"):
        assert runtime.run(main, []) == code
    assert [r.getMessage() for r in caplog.records] == [f"stage stopped: {reason}"]


def test_snakemake_config_overrides_are_refused_before_the_schema_check(tmp_path):
    root = make_project(tmp_path / "p", BASE)
    res = subprocess.run([tool("snakemake"), "-n", "--cores", "1", "--config", "distill={iterations: 5}"], cwd=root,
                         env=project_env(root), capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "overrides (--config/--configfile) are not supported" in out, out[-2000:]
    assert "ValidationError" not in out and "is not of type" not in out
    assert not (root / "results").exists()


def test_evaluate_before_its_data_is_prepared_names_the_file_and_the_stage_to_run(tmp_path):
    root = make_project(tmp_path / "p", {**BASE, "mlflow": {"enabled": True}})
    _error_line(_stage(root, "stages.evaluate", "--dataset", "digits", "--method", "full"), 4,
                "data/prepared/digits.pt", "not found", "python -m stages.zca --dataset digits")
    assert not any((root / d).exists() for d in ("data", "results", "logs", "state", "mlflow.db", "mlartifacts"))


def test_evaluate_before_its_set_is_distilled_names_the_distill_command(project):
    before = _files(project)
    _error_line(_stage(project, "stages.evaluate", "--dataset", "digits", "--method", "atom", "--ipc", "1"), 4,
                "synthetic.pt", "python -m stages.distill --dataset digits --method atom --ipc 1")
    assert not _new(project, before)


def test_the_whole_set_baseline_is_named_without_an_ipc(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["mlflow"]["enabled"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    res = _stage(project, "stages.evaluate", "--dataset", "digits", "--method", "full")
    assert res.returncode == 0, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("atom-digits")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    names = sorted(r.data.tags["mlflow.runName"] for r in runs)
    assert names == ["evaluate/digits/full", "evaluate/digits/full/seed0"]
    for r in runs:
        assert "None" not in json.dumps(r.data.params) and "null" not in r.data.params.get("ipc", "")
        assert r.data.tags["ipc"] == ""
    log = (project / "logs/evaluate/digits-full.log").read_text()
    assert "ipc None" not in log and "ipc=None" not in log and "evaluate.full: epochs 1, seeds [0]" in log


# -------------------------------------------------------------------------- 5. targets in the matrix

def test_a_snakemake_target_outside_the_matrix_is_refused_by_name(tmp_path):
    root = make_project(tmp_path / "p", BASE)
    for target, words in [("results/evaluate/digits/atom/ipc7/metrics.json", "ipc 7 is not in experiment.ipcs [1]"),
                          ("results/distill/cifar10/atom/ipc1/synthetic.pt",
                           "dataset 'cifar10' is not in experiment.datasets ['digits']")]:
        res = subprocess.run([tool("snakemake"), "-n", "--cores", "1", target], cwd=root, env=project_env(root),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and words in res.stdout + res.stderr, (res.stdout + res.stderr)[-2000:]
    assert not (root / "results").exists()


def test_check_job_names_the_value_and_its_key():
    params = tiny_params(BASE)
    layout.check_job(params, "evaluate", {"dataset": "digits", "method": "atom", "ipc": "1"})
    layout.check_job(params, "report", {})
    for stage, wc, words in [("distill", {"dataset": "digits", "method": "dm", "ipc": "1"}, "experiment.methods"),
                             ("nas", {"dataset": "digits", "shard": "5"}, "shard 5 is not in nas.shards"),
                             ("crossarch", {"dataset": "digits", "ipc": "2"}, "crossarch.ipcs"),
                             ("evaluate_selected", {"dataset": "digits", "ipc": "1"}, "experiment.baselines")]:
        with pytest.raises(ValueError, match=words):
            layout.check_job(params, stage, wc)


# ------------------------------------------------------------------- 6. artifacts of a shared store

def test_projects_sharing_a_store_keep_their_artifacts_beside_it(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from stages.common.tracking import Tracker

    store = tmp_path / "shared"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_ids = {}
    for name in ("a", "b"):
        project = tmp_path / name
        project.mkdir()
        monkeypatch.chdir(project)
        params = tiny_params({"mlflow": {"enabled": True}, "paths": {"logs": str(project / "logs")}})
        tracker = Tracker(params, "digits", logging.getLogger("test"))
        (project / "note.txt").write_text(name)
        with tracker.run("report") as run:
            run.log_artifact(project / "note.txt")
        run_ids[name] = run.run_id
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("atom-digits")
    assert exp.artifact_location == (store / "mlartifacts" / "atom-digits").as_uri()
    shutil.rmtree(tmp_path / "a")  # the project that created the experiment goes: b's artifacts stay
    for name, rid in run_ids.items():
        assert (store / "mlartifacts" / "atom-digits" / rid / "artifacts" / "note.txt").read_text() == name
    assert not (tmp_path / "b" / "mlartifacts").exists()


def test_the_artifact_location_of_a_store():
    from stages.common.tracking import artifact_location

    params = tiny_params({"mlflow": {"artifact_root": "mlartifacts"}})
    assert artifact_location(params, "sqlite:///mlflow.db", "e") == (Path.cwd() / "mlartifacts" / "e").as_uri()
    assert artifact_location(params, "sqlite:////srv/ml/mlflow.db", "e") == "file:///srv/ml/mlartifacts/e"
    assert artifact_location(params, "file:///srv/ml/mlruns", "e") == "file:///srv/ml/mlartifacts/e"
    assert artifact_location(params, "http://host:5000", "e") is None  # the server's own --artifacts-destination
    assert artifact_location(tiny_params({"mlflow": {"artifact_root": "s3://b/x"}}), "sqlite:///m.db", "e") == "s3://b/x"
    assert artifact_location(tiny_params({"mlflow": {"artifact_root": "/data/art"}}), "sqlite:///m.db", "e") == \
        "file:///data/art/e"


# ---------------------------------------------------------------------- 7. the whole-set baseline

def test_the_whole_set_baseline_keeps_its_own_epochs_and_says_so():
    params = tiny_params({**BASE, "evaluate": {"epochs": 1, "seeds": [0], "full": {"epochs": 7, "seeds": [3, 4]}}})
    seeds, cfg, _ = evaluate_settings(params, "digits", "full")
    assert (seeds, cfg["epochs"]) == ([3, 4], 7)  # shortening evaluate leaves evaluate.full as it is
    # and says so where a user shortening `evaluate` looks: params.yaml's comment, the schema
    schema = yaml.safe_load((ROOT / "schemas/params.schema.yaml").read_text())
    full = schema["$defs"]["evaluate"]["properties"]["full"]
    assert "does not shorten it" in full["description"] and "evaluate.epochs" in full["description"]
    assert "shortening evaluate does not shorten it" in (ROOT / "params.yaml").read_text()


# ----------------------------------------------------------------- a write refused in mid-run

def test_a_write_the_disk_refuses_in_mid_run_is_one_line(capsys, monkeypatch):
    import errno

    import atom.io
    import safetensors.torch

    def full(*a, **k):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    target = Path("results/distill/digits/atom/ipc1/synthetic.pt")
    with pytest.raises(OSError) as err:
        atom.io.save_tensors({"x": torch.zeros(1)}, Path(os.environ.get("TMPDIR", "/tmp")) / "atom-io-full.pt")
    assert err.value.errno == errno.ENOSPC and "atom-io-full.pt" in str(err.value)

    def main(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    runtime._CURRENT[:] = [tiny_params(BASE)]
    try:
        assert runtime.run(main, []) == 4
    finally:
        runtime._CURRENT.clear()
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err_lines) == 1 and str(target) in err_lines[0] and "paths.results" in err_lines[0]
