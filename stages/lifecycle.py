"""A stage's MLflow run from start to end, whatever ends the stage.

:meth:`stages.runtime.Stage.start_run` opens the run before the compute (RUNNING) and
registers it here; :func:`call` runs the stage's ``main`` with SIGTERM turned into the
exception :class:`Terminated` and SIGINT into ``KeyboardInterrupt``, then ends every registered
run: FINISHED when ``main`` returned, FAILED with the error (the signal included) when it raised.
SIGKILL cannot be caught: such a run stays RUNNING, and the next attempt of the same job marks it
FAILED (:meth:`stages.tracking.Tracker.run`).

A signal turned into an exception can land between any two bytecodes. Inside a tracking write that
is unsafe: an exception raised in a context manager's ``__enter__``/``__exit__`` leaves it
half-entered, its file lock or SQLite write transaction held by a frame the traceback keeps alive,
and the writes that end the run then wait on the stage's own lock (for ever, or for SQLite's busy
timeout per attempt). So writes run under :func:`shielded`: a signal that arrives there is held
and raised when the write is done (milliseconds; at most the store's own timeout). Ending the runs
ignores further SIGTERM/SIGINT; it is bounded by the tracker's retries.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Callable

__all__ = ["Terminated", "register", "call", "shielded"]

_OPEN: list[contextlib.ExitStack] = []
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler, ``kill``, or Snakemake stopping its jobs)."""


def register(stack: contextlib.ExitStack) -> contextlib.ExitStack:
    _OPEN.append(stack)
    return stack


def _exception(signum: int) -> BaseException:
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated(f"terminated by {signal.Signals(signum).name}")


class _Shield:
    """Defers :func:`call`'s signals while ``depth > 0``; re-entrant. A class, not a generator:
    a signal at its edges finds nothing half-entered."""

    depth = 0
    pending: int | None = None

    def __enter__(self) -> None:
        _Shield.depth += 1

    def __exit__(self, *exc) -> None:
        _Shield.depth -= 1
        if _Shield.depth == 0 and _Shield.pending is not None:
            signum, _Shield.pending = _Shield.pending, None
            raise _exception(signum)


def shielded() -> _Shield:
    """A block that :func:`call`'s SIGTERM/SIGINT cannot interrupt: a signal that arrives inside
    it is raised when the outermost such block ends (the first signal wins)."""
    return _Shield()


def _on_signal(signum, frame):
    # no "already stopping, ignore the rest" flag: a handler that runs inside a finalizer has its
    # exception swallowed, and such a flag would then make the stage deaf to every later signal
    if _Shield.depth:
        if _Shield.pending is None:
            _Shield.pending = signum
        return
    raise _exception(signum)


def _close(exc: BaseException | None) -> None:
    while _OPEN:
        stack = _OPEN.pop()
        if exc is None:
            stack.close()
        else:
            stack.__exit__(type(exc), exc, exc.__traceback__)


def call(main: Callable[[list[str] | None], None], argv: list[str] | None) -> None:
    """``main(argv)`` with SIGTERM raising :class:`Terminated` and SIGINT ``KeyboardInterrupt``
    (held while a :func:`shielded` block runs); then end the registered runs, ignoring further
    signals meanwhile."""
    previous = {s: signal.signal(s, _on_signal) for s in _SIGNALS}
    try:
        try:
            main(argv)
        except BaseException as exc:
            _ignore_signals()
            _close(exc)
            raise
        _ignore_signals()
        _close(None)
    finally:
        _Shield.pending = None  # only _on_signal sets it, and only while call() runs
        for s, handler in previous.items():
            signal.signal(s, handler)


def _ignore_signals() -> None:
    # the runs' last writes: a second Ctrl-C or SIGTERM must not leave them half-ended
    for s in _SIGNALS:
        signal.signal(s, signal.SIG_IGN)


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
