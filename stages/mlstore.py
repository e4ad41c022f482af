"""Where MLflow records go, and whether they can get there: the tracking URI, the lock that
serialises the store's writers, and a bounded reachability check.

- :func:`tracking_uri`: ``$MLFLOW_TRACKING_URI``, then ``mlflow.tracking_uri``, then
  ``sqlite:///mlflow.db``.
- :func:`lock_path`: a SQLite store is locked by ``<database>.lock`` beside the database, so
  every process writing to it (two pipelines with different ``paths.logs`` included) takes the
  same lock, and the store's creation and schema migration happen once, not concurrently;
  other stores are locked by ``<paths.logs>/.mlflow.lock``.
- :func:`artifact_location`: where a new experiment keeps its artifacts. A relative
  ``mlflow.artifact_root`` lies beside the store (the MLflow server's convention): for
  ``sqlite:///<dir>/mlflow.db`` or a file store ``<dir>/mlruns``, in ``<dir>/<artifact_root>``,
  so projects that share one store share one artifact folder next to it rather than writing
  into whichever project created the experiment first; for the default
  ``sqlite:///mlflow.db`` that is the project's own ``mlartifacts/``.
- :func:`check_reachable`: an ``http(s)`` tracking server must answer ``/health`` within
  :data:`PROBE_TIMEOUT` seconds (at most 2 s more for a refused connection), before any compute; :class:`TrackingUnavailable` names the URI.
- :func:`bound_http_retries`: MLflow's own HTTP client retries for minutes by default; a
  stage bounds it so a server that dies mid-run costs seconds, not minutes.

Torch-free and MLflow-free (MLflow is imported only by :mod:`stages.tracking` when it connects).
"""
from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

__all__ = ["DEFAULT_TRACKING_URI", "PROBE_TIMEOUT", "TrackingUnavailable", "tracking_uri", "sqlite_path",
           "store_dir", "artifact_location", "lock_path", "file_lock", "check_reachable", "bound_http_retries"]

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


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
