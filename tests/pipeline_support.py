"""Helpers of the pipeline tests: a throw-away copy of the project with tiny params.

``make_project(tmp)`` copies what the pipeline needs (atom/, stages/, schemas/, report/, plots/,
Snakefile, dvc.yaml, .dvcignore, .gitignore) into ``tmp`` and writes params.yaml = the project's params.yaml with
tests/params.tiny.yaml (and ``extra``) merged over it, or the defaults (with ``extra``) with ``tiny=False``; ``project_env(tmp)`` points MLflow, DVC's site cache
and the interpreter at that copy, so nothing outside ``tmp`` is touched. ``free_port()`` and
``stop_group(proc)`` serve the tests that start a server (MLflow) on a loopback port.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from stages.common.params import merge

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).resolve().parent / "params.tiny.yaml"
COPY = ["atom", "stages", "schemas", "report", "plots", "Snakefile", "dvc.yaml", ".dvcignore", ".gitignore"]


def tiny_params(extra: dict | None = None) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = merge(params, yaml.safe_load(TINY.read_text()))
    return merge(params, extra or {})


def make_project(tmp: Path, extra: dict | None = None, tiny: bool = True) -> Path:
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, ignore=ignore)
        else:
            shutil.copy2(src, tmp / name)
    if tiny:
        (tmp / "params.yaml").write_text(yaml.safe_dump(tiny_params(extra), sort_keys=False))
    elif extra:
        params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), extra)
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    else:
        shutil.copy2(ROOT / "params.yaml", tmp / "params.yaml")
    return tmp


def project_env(tmp: Path) -> dict:
    tmp = Path(tmp)
    env = dict(os.environ)
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_SITE_CACHE_DIR": str(tmp / ".dvc-site-cache"),
        "DVC_NO_ANALYTICS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
        "TQDM_DISABLE": "1",
    })
    env.pop("PYTHONPATH", None)
    return env


def tool(name: str) -> str:
    """A console script of the running interpreter's environment (snakemake, dvc, mlflow)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, wait: float = 20.0) -> None:
    """Stop a server started with ``start_new_session=True`` (it forks workers): SIGTERM to its
    process group, by the group's id, then SIGKILL after ``wait`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:  # e.g. a graceful shutdown waiting on idle keep-alive clients
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()
