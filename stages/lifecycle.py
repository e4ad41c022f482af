"""A stage's MLflow run from start to end, whatever ends the stage.

:meth:`stages.runtime.Stage.start_run` opens the run before the compute (RUNNING) and
registers it here; :func:`call` runs the stage's ``main`` with SIGTERM turned into the
exception :class:`Terminated` (SIGINT is Python's ``KeyboardInterrupt``), then ends every
registered run: FINISHED when ``main`` returned, FAILED with the error (the signal included)
when it raised. SIGKILL cannot be caught: such a run stays RUNNING, and the next attempt of the
same job marks it FAILED (:meth:`stages.tracking.Tracker.run`).
"""
from __future__ import annotations

import contextlib
import signal
from typing import Callable

__all__ = ["Terminated", "register", "call"]

_OPEN: list[contextlib.ExitStack] = []


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler, ``kill``, or Snakemake stopping its jobs)."""


def register(stack: contextlib.ExitStack) -> contextlib.ExitStack:
    _OPEN.append(stack)
    return stack


def _terminate(signum, frame):
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def _close(exc: BaseException | None) -> None:
    while _OPEN:
        stack = _OPEN.pop()
        if exc is None:
            stack.close()
        else:
            stack.__exit__(type(exc), exc, exc.__traceback__)


def call(main: Callable[[list[str] | None], None], argv: list[str] | None) -> None:
    """``main(argv)`` with SIGTERM raising :class:`Terminated`; end the registered runs."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            main(argv)
        except BaseException as exc:
            _close(exc)
            raise
        _close(None)
    finally:
        signal.signal(signal.SIGTERM, previous)


def close_orphans(tracker, stage: str, method: str | None, ipc: int | None) -> int:
    """Mark FAILED the RUNNING runs of the same job whose process (on this host) is gone: a
    SIGKILL leaves them open. Returns how many were closed."""
    import socket

    if tracker.client is None:
        return 0
    query = " and ".join([f"tags.stage = '{stage}'", f"tags.dataset = '{tracker.dataset}'",
                          f"tags.method = '{method or ''}'", f"tags.ipc = '{'' if ipc is None else ipc}'",
                          "attributes.status = 'RUNNING'"])
    runs = tracker._guard("search runs", tracker.client.search_runs, [tracker.experiment_id], query) or []
    host, closed = socket.gethostname(), 0
    for r in runs:
        tags = r.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit() or _alive(int(tags["pid"])):
            continue
        tracker._guard("close run", tracker.client.set_tag, r.info.run_id, "error",
                       f"process {tags['pid']} ended without closing the run (killed)")
        tracker._guard("close run", tracker.client.set_terminated, r.info.run_id, "FAILED")
        closed += 1
    if closed:
        tracker.log.warning("mlflow: marked %d run(s) of a killed earlier attempt FAILED", closed)
    return closed


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
