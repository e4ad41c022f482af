"""Signals and the end of a stage: whatever ends it, what it opened is closed.

:meth:`stages.common.runner.Stage.start_run` opens the stage's MLflow run before the compute
(RUNNING) and registers it here; :func:`call` runs the stage's ``main`` with SIGTERM turned
into the exception :class:`Terminated` and SIGINT into ``KeyboardInterrupt``, then closes
every registered context: the run ends FINISHED when ``main`` returned, FAILED with the error
(the signal included) when it raised. SIGKILL cannot be caught: such a run stays RUNNING, and
the next attempt of the same job marks it FAILED
(:meth:`stages.common.tracking.Tracker.close_orphans`).

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

__all__ = ["Terminated", "register", "enter", "call", "shielded"]

_OPEN: list[contextlib.ExitStack] = []
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler, ``kill``, or Snakemake stopping its jobs)."""


def register(stack: contextlib.ExitStack) -> contextlib.ExitStack:
    _OPEN.append(stack)
    return stack


def enter(stack: contextlib.ExitStack, cm):
    """``stack.enter_context(cm)`` with SIGTERM/SIGINT held until the context's exit is
    registered: a signal between its ``__enter__`` and the registration would leave what it
    opened (an MLflow run) without anyone to close it."""
    with shielded():
        return stack.enter_context(cm)


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
