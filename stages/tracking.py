"""MLflow recording of the stages: one experiment per dataset, one run per stage invocation.

:class:`Tracker` tags every run with stage, dataset, method, ipc and the git commit. The
store is checked when the tracker connects, before any compute: an unreachable server or a
store that cannot be opened is an error naming the URI when ``mlflow.required`` is true, else
a warning and no records. After that MLflow only records: a failed write is a warning and the
stage's outputs are still written. Writes are serialised across processes by a file lock
beside the SQLite database (:mod:`stages.mlstore`), so parallel jobs and pipelines never race
on the store, its creation and migration included. :class:`MetricStream` turns the library's
log records (loss every ``log_every``, validation scores, evaluation seeds) into metrics as
they happen. MLflow is imported only when a tracker connects.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from typing import Any, Callable, Iterator

from .lifecycle import shielded
from .mlstore import (DEFAULT_TRACKING_URI, TrackingUnavailable, artifact_location, bound_http_retries,
                      check_reachable, file_lock, lock_path, tracking_uri)

__all__ = ["Tracker", "tracking_uri", "experiment_name", "run_name", "flatten", "git_commit",
           "DEFAULT_TRACKING_URI", "TrackingUnavailable"]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'net': {'width': 128}} -> {'net.width': 128} (MLflow params are flat)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit(cwd: str | os.PathLike = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"

def experiment_name(params: dict, dataset: str) -> str:
    return f"{params['mlflow']['experiment_prefix']}{dataset}"


def run_name(stage: str | None, dataset: str | None, method: str | None = None, ipc: int | None = None,
             *rest: str) -> str:
    """``evaluate/digits/atom/ipc10/seed0``: the parts given (no ``ipc`` part without an ipc:
    ``evaluate/digits/full/seed0`` for the whole-set baseline)."""
    return "/".join(str(x) for x in (stage, dataset, method, None if ipc is None else f"ipc{ipc}", *rest) if x)


class _Run:
    """One MLflow run; every call is serialised by the tracker's lock and never raises."""

    def __init__(self, tracker: "Tracker", run_id: str | None):
        self.tracker, self.run_id = tracker, run_id

    def _call(self, what: str, fn: Callable[..., Any], *args, **kwargs):
        if self.run_id is None:
            return None
        return self.tracker._guard(what, fn, self.run_id, *args, **kwargs)

    def log_params(self, params: dict) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                 for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self._call("log params", self.tracker.client.log_batch, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self._call("log metrics", self.tracker.client.log_batch, metrics=items)

    def log_history(self, key: str, values: list[float], steps: list[int]) -> None:
        """A metric with one value per step (e.g. the loss curve)."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(v), now, int(s)) for s, v in zip(steps, values)]
        for i in range(0, len(items), 1000):  # MLflow accepts at most 1000 metrics per batch
            self._call("log metric history", self.tracker.client.log_batch, metrics=items[i:i + 1000])

    def log_artifact(self, local: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.run_id is None:
            return
        self._call("log artifact", self.tracker.client.log_artifact, str(local), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id is None:
            return
        self._call("set tag", self.tracker.client.set_tag, key, value)


class Tracker:
    """MLflow recording for one dataset's experiment. Disabled (all no-ops) when
    ``mlflow.enabled`` is false. Writes are serialised across processes by a file lock, so two
    jobs never race on the SQLite store (its first creation included)."""

    def __init__(self, params: dict, dataset: str, log: logging.Logger):
        self.params, self.dataset, self.log = params, dataset, log
        self.enabled = bool(params["mlflow"]["enabled"])
        self.required = bool(params["mlflow"]["required"])
        self.client = None
        self.experiment_id = None
        self.uri = tracking_uri(params)
        self.lock_path = lock_path(params, self.uri)
        self.commit = git_commit()
        if self.enabled:
            try:
                check_reachable(self.uri)  # bounded: an unreachable server fails here, before compute
            except TrackingUnavailable as exc:
                self._unavailable(str(exc))
                return
            bound_http_retries()
            self._guard("connect", self._connect)
            if self.client is None:
                self._unavailable(f"MLflow tracking store {self.uri} cannot be opened (see the warning above)")

    def _unavailable(self, message: str) -> None:
        if self.required:
            raise TrackingUnavailable(message)
        self.log.warning("mlflow: %s; recording nothing (mlflow.required is false)", message)
        self.enabled = False

    def _lock(self):
        return file_lock(self.lock_path)

    def _guard(self, what: str, fn: Callable[..., Any], *args, **kwargs):
        for attempt in range(3):
            try:
                with shielded(), self._lock():  # a signal here is raised after the write (stages.lifecycle)
                    return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - recording must never break a stage
                if attempt == 2 or "locked" not in str(exc).lower():
                    self.log.warning("mlflow: %s failed (%s): %s", what, self.uri, exc)
                    return None
                time.sleep(1.0 + attempt)
        return None

    def _connect(self) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        uri = self.uri
        client = MlflowClient(tracking_uri=uri)
        name = experiment_name(self.params, self.dataset)
        exp = client.get_experiment_by_name(name)
        location = artifact_location(self.params, uri, name)  # beside a local store (stages.mlstore)
        if exp is None:
            self.experiment_id = client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
            if location is not None and exp.artifact_location != location:
                # made elsewhere (by an older version, or another artifact_root): its location holds
                self.log.warning("mlflow: experiment %r keeps its artifacts in %s (set when it was created), not "
                                 "%s; see docs/tracking.md", name, exp.artifact_location, location)
        self.client = client
        self.log.info("mlflow: %s, experiment %r, artifacts in %s", uri, name,
                      location if exp is None else exp.artifact_location)

    @contextlib.contextmanager
    def run(self, stage: str, method: str | None = None, ipc: int | None = None,
            parent: _Run | None = None, name: str | None = None, extra_tags: dict | None = None) -> Iterator[_Run]:
        """Start a run (RUNNING) tagged with stage/dataset/method/ipc/git commit, host and pid;
        end it FINISHED, or FAILED with the error (tag ``error``) if the block raises, SIGTERM
        and SIGINT included (:func:`stages.runtime.run` turns them into exceptions)."""
        if not self.enabled:
            yield _Run(self, None)
            return
        tags = {"stage": stage, "dataset": self.dataset, "method": method or "", "ipc": "" if ipc is None else str(ipc),
                "git_commit": self.commit, "mlflow.source.git.commit": self.commit,
                "host": socket.gethostname(), "pid": str(os.getpid()),
                "mlflow.runName": name or run_name(stage, self.dataset, method, ipc)}
        if parent is not None and parent.run_id:
            tags["mlflow.parentRunId"] = parent.run_id
        tags.update(extra_tags or {})
        info = self._guard("create run", self.client.create_run, self.experiment_id, tags=tags)
        if info is None and self.required:
            raise TrackingUnavailable(f"MLflow tracking store {self.uri}: cannot create a run (see the warning above)")
        handle = _Run(self, info.info.run_id if info is not None else None)
        try:
            yield handle
        except BaseException as exc:
            handle.set_tag("error", f"{type(exc).__name__}: {str(exc) or 'interrupted (SIGINT)'}"[:5000])
            handle._call("end run", self.client.set_terminated, "FAILED")
            raise
        handle._call("end run", self.client.set_terminated, "FINISHED")

