"""MLflow: where records go, and every record the stages make. The one module that talks to
MLflow (imported only when a tracker connects); the rest of the pipeline uses its public API.

The store:

- :func:`tracking_uri`: ``$MLFLOW_TRACKING_URI``, then ``mlflow.tracking_uri``, then
  ``sqlite:///mlflow.db``;
- :func:`lock_path` / :func:`stages.common.locks.file_lock`: a SQLite store is locked by ``<database>.lock`` beside
  the database, so every process writing to it (two pipelines with different ``paths.logs``
  included) takes the same lock, and the store's creation and schema migration happen once,
  not concurrently; other stores are locked by ``<paths.logs>/.mlflow.lock``;
- :func:`artifact_location`: where a new experiment keeps its artifacts. A relative
  ``mlflow.artifact_root`` lies beside the store (the MLflow server's convention): for
  ``sqlite:///<dir>/mlflow.db`` or a file store ``<dir>/mlruns``, in ``<dir>/<artifact_root>``,
  so projects that share one store share one artifact folder next to it; for the default
  ``sqlite:///mlflow.db`` that is the project's own ``mlartifacts/``;
- :func:`check_reachable`: an ``http(s)`` tracking server must answer ``/health`` within
  :data:`PROBE_TIMEOUT` seconds (at most 2 s more for a refused connection), before any
  compute; :class:`TrackingUnavailable` names the URI; :func:`bound_http_retries` caps
  MLflow's own HTTP retries, so a server that dies mid-run costs seconds, not minutes.

The records: :class:`Tracker` has one experiment per dataset and opens runs (:meth:`Tracker.run`)
tagged with stage, dataset, method, ipc, the git commit, host and pid. The store is checked
when the tracker connects: an unreachable server or a store that cannot be opened is an error
naming the URI when ``mlflow.required`` is true, else a warning and no records. After that
MLflow only records: a failed write is a warning (:meth:`Tracker.call`) and the stage's outputs
are still written. Every write runs under :func:`stages.common.signals.shielded` and the store's
lock. :meth:`Tracker.close_orphans` marks FAILED the runs a killed attempt left RUNNING;
:class:`MetricStream` turns the library's events (:mod:`atom.events`) into live metrics.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from .locks import file_lock, pid_alive
from .signals import shielded

__all__ = ["Tracker", "Run", "RunContext", "MetricStream", "tracking_uri", "experiment_name", "run_name", "flatten", "git_commit",
           "DEFAULT_TRACKING_URI", "PROBE_TIMEOUT", "TrackingUnavailable", "sqlite_path", "store_dir",
           "artifact_location", "lock_path", "check_reachable", "bound_http_retries"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PROBE_TIMEOUT = 4.0  # seconds; with the stage's start-up, an unreachable server stops it within 10 s


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or opened (the message names the URI)."""


def tracking_uri(params: dict) -> str:
    """$MLFLOW_TRACKING_URI wins, then ``mlflow.tracking_uri``, then ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"] or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working folder), else None."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///"):
        return None  # sqlite:// (in memory) or malformed: MLflow reports it
    return Path(urllib.parse.unquote(rest[3:].split("?", 1)[0]))


def store_dir(uri: str) -> Path | None:
    """The folder holding a local store: a SQLite database's folder, a file store's parent
    (``file:///x/mlruns`` or ``/x/mlruns``: ``/x``); None for a server or another database."""
    db = sqlite_path(uri)
    if db is not None:
        return db.resolve().parent
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path)).resolve().parent
    if not parts.scheme or len(parts.scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(uri).resolve().parent
    return None


def artifact_location(params: dict, uri: str, experiment: str) -> str | None:
    """The artifact location of a new experiment: ``mlflow.artifact_root`` as given when it is
    a URI; None (the server decides) for an http(s) server; else a folder, resolved beside the
    store when relative (:func:`store_dir`; the working folder for other databases), plus the
    experiment's name."""
    root = params["mlflow"]["artifact_root"]
    if "://" in root:
        return root
    if uri.startswith(("http://", "https://")):
        return None  # a shared server stores the artifacts itself (--artifacts-destination)
    base = store_dir(uri) or Path.cwd()
    return (base / root).resolve().joinpath(experiment).as_uri()


def lock_path(params: dict, uri: str) -> Path:
    db = sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".lock")
    return Path(params["paths"]["logs"]) / ".mlflow.lock"


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise :class:`TrackingUnavailable` if an ``http(s)`` server does not answer ``/health``
    within ``timeout`` seconds (a refused connection is tried once more after a second; a
    silent server is not); other stores are opened by the caller, under its lock."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    last = None
    for attempt in range(2):
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the user's URI
                if resp.status < 500:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # the server answered (e.g. 404 behind a proxy): it is there
                return
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt == 0 and time.monotonic() - t0 < 1.0:
            time.sleep(1.0)  # refused or reset at once: perhaps a restart; one more try
        else:
            break
    raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({last}); start it, fix "
                              "$MLFLOW_TRACKING_URI / mlflow.tracking_uri, or set mlflow.required: false "
                              "to run without records")


def bound_http_retries() -> None:
    """Cap MLflow's HTTP retries and timeout unless the user set them (defaults: minutes)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


# ------------------------------------------------------------------------------------- records

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


class Run:
    """One MLflow run (or none: ``run_id`` None, every method a no-op); every write goes through
    :meth:`Tracker.call`, so it is serialised by the store's lock and never raises."""

    def __init__(self, tracker: "Tracker", run_id: str | None):
        self.tracker, self.run_id = tracker, run_id

    def _call(self, what: str, fn: Callable[..., Any], *args, **kwargs):
        if self.run_id is None:
            return None
        return self.tracker.call(what, fn, self.run_id, *args, **kwargs)

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
            self.call("connect", self._connect)
            if self.client is None:
                self._unavailable(f"MLflow tracking store {self.uri} cannot be opened (see the warning above)")

    def _unavailable(self, message: str) -> None:
        if self.required:
            raise TrackingUnavailable(message)
        self.log.warning("mlflow: %s; recording nothing (mlflow.required is false)", message)
        self.enabled = False

    def call(self, what: str, fn: Callable[..., Any], *args, **kwargs):
        """``fn(*args, **kwargs)`` under the store's lock, with SIGTERM/SIGINT held until it
        returns; a failure is a warning naming ``what`` (a locked SQLite store is retried
        twice), and the result is then None: recording never breaks a stage."""
        for attempt in range(3):
            try:
                with shielded(), file_lock(self.lock_path):  # a signal here is raised after the write
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
        location = artifact_location(self.params, uri, name)  # beside a local store
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

    def run(self, stage: str, method: str | None = None, ipc: int | None = None,
            parent: Run | None = None, name: str | None = None, extra_tags: dict | None = None) -> "RunContext":
        """A context manager: start a run (RUNNING) tagged with stage/dataset/method/ipc/git
        commit, host and pid; end it FINISHED, or FAILED with the error (tag ``error``) if the
        block raises, SIGTERM and SIGINT included (:func:`stages.common.signals.call` turns them
        into exceptions). A signal that arrives while the run is created, or while it is ended
        FINISHED, is held until that write is done (:class:`RunContext`)."""
        tags = {"stage": stage, "dataset": self.dataset, "method": method or "", "ipc": "" if ipc is None else str(ipc),
                "git_commit": self.commit, "mlflow.source.git.commit": self.commit,
                "host": socket.gethostname(), "pid": str(os.getpid()),
                "mlflow.runName": name or run_name(stage, self.dataset, method, ipc)}
        if parent is not None and parent.run_id:
            tags["mlflow.parentRunId"] = parent.run_id
        tags.update(extra_tags or {})
        return RunContext(self, tags)

    def find_runs(self, status: str | None = None, **tags: str) -> list:
        """This experiment's runs whose tags equal ``tags`` (and status, if given), newest first."""
        if self.client is None:
            return []
        query = " and ".join([f"tags.{k} = '{v}'" for k, v in tags.items()]
                             + ([f"attributes.status = '{status}'"] if status else []))
        return self.call("search runs", self.client.search_runs, [self.experiment_id], query,
                         order_by=["attributes.start_time DESC"]) or []

    def attach(self, run_id: str, local: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Add a file to another (e.g. an ended) run: the distill run gets the grid of its set
        when the visualize stage draws it."""
        if self.client is not None:
            self.call("log artifact", self.client.log_artifact, run_id, str(local), artifact_path)

    def close_orphans(self, stage: str, method: str | None, ipc: int | None) -> int:
        """Mark FAILED the RUNNING runs of the same job whose process (on this host) is gone: a
        SIGKILL leaves them open. Returns how many were closed."""
        runs = self.find_runs("RUNNING", stage=stage, dataset=self.dataset, method=method or "",
                              ipc="" if ipc is None else str(ipc))
        host, closed = socket.gethostname(), 0
        for r in runs:
            tags = r.data.tags
            if tags.get("host") != host or not tags.get("pid", "").isdigit() or pid_alive(int(tags["pid"])):
                continue
            self.call("close run", self.client.set_tag, r.info.run_id, "error",
                      f"process {tags['pid']} ended without closing the run (killed)")
            self.call("close run", self.client.set_terminated, r.info.run_id, "FAILED")
            closed += 1
        if closed:
            self.log.warning("mlflow: marked %d run(s) of a killed earlier attempt FAILED", closed)
        return closed


class RunContext:
    """The run of :meth:`Tracker.run`. A class, not a generator: with ``@contextmanager`` a
    signal raised in contextlib's ``__enter__`` just after the run was created (the generator
    suspended at its ``yield``) left it RUNNING, as nothing ever resumed the generator. Here the
    creation runs under :func:`~stages.common.signals.shielded`, and a signal held there (raised
    when the shield ends) ends the new run FAILED before ``__enter__`` passes it on; ending the
    run FINISHED is shielded the same way. Entering it into an ``ExitStack`` goes through
    :func:`stages.common.signals.enter`, which holds signals until the exit is registered."""

    def __init__(self, tracker: Tracker, tags: dict):
        self.tracker, self.tags = tracker, tags
        self.handle = Run(tracker, None)

    def __enter__(self) -> Run:
        t = self.tracker
        if not t.enabled:
            return self.handle
        try:
            with shielded():  # a signal during the creation is raised here, once the run has its id
                info = t.call("create run", t.client.create_run, t.experiment_id, tags=self.tags)
                self.handle.run_id = info.info.run_id if info is not None else None
            if info is None and t.required:
                raise TrackingUnavailable(f"MLflow tracking store {t.uri}: cannot create a run (see the warning "
                                          "above)")
        except BaseException as exc:
            self._failed(exc)
            raise
        return self.handle

    def __exit__(self, kind, exc, tb) -> bool:
        if self.handle.run_id is None:
            return False
        if exc is not None:
            self._failed(exc)
            return False
        # a signal during the last write is raised after it (from here): the run stays FINISHED
        with shielded():
            self.handle._call("end run", self.tracker.client.set_terminated, "FINISHED")
        return False

    def _failed(self, exc: BaseException) -> None:
        if self.handle.run_id is None:
            return
        with shielded():  # a second signal waits until the run is ended
            self.handle.set_tag("error", f"{type(exc).__name__}: {str(exc) or 'interrupted (SIGINT)'}"[:5000])
            self.handle._call("end run", self.tracker.client.set_terminated, "FAILED")


class MetricStream:
    """The library's events (:mod:`atom.events`) -> metrics of an open run, as they happen, so
    the MLflow UI shows live curves. ``rules`` maps an event type to a function of the event
    returning ``(key, value, step)``; :attr:`steps` collects the logged steps per key, so the
    stage adds only the missing ones at the end. Pass the stream as ``on_event``."""

    def __init__(self, run: Run, rules: dict[type, Callable[[Any], tuple[str, float, int]]]):
        self.run, self.rules = run, rules
        self.steps: dict[str, set[int]] = {}

    def __call__(self, event) -> None:
        rule = self.rules.get(type(event))
        if rule is None or self.run.run_id is None:
            return
        key, value, step = rule(event)
        self.run.log_metrics({key: value}, step=int(step))
        self.steps.setdefault(key, set()).add(int(step))
