"""Live MLflow metrics from the library's log records, while a stage computes.

The library (``atom/``) knows nothing of MLflow; it logs its progress through ``logging``
(``atom.distill``: ``"iteration %d/%d loss %.6g"`` every ``log_every`` iterations and the
validation scores; ``atom.evaluate``: ``"seed %d: accuracy ..."`` per evaluation seed). A
:class:`MetricStream` attached to those loggers turns each record into a metric of the stage's
open run the moment it is logged, so the MLflow UI shows a live curve.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

__all__ = ["MetricStream"]


class MetricStream(logging.Handler):
    """Log records -> MLflow metrics as they happen. ``rules`` maps a record's message format
    (``record.msg``, e.g. the library's ``"iteration %d/%d loss %.6g"``) to a function of its
    arguments returning ``(key, value, step)``; ``steps[key]`` collects the logged steps so
    the stage can add only the missing ones at the end. Attach with :meth:`attach`."""

    def __init__(self, run, rules: dict[str, Callable[[tuple], tuple[str, float, int]]]):
        super().__init__(logging.INFO)
        self.run, self.rules = run, rules
        self.steps: dict[str, set[int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        rule = self.rules.get(record.msg) if isinstance(record.msg, str) else None
        if rule is None or self.run.run_id is None:
            return
        try:
            key, value, step = rule(record.args)
        except (TypeError, ValueError, IndexError):
            return
        self.run.log_metrics({key: value}, step=int(step))
        self.steps.setdefault(key, set()).add(int(step))

    @contextlib.contextmanager
    def attach(self, *loggers: str) -> Iterator["MetricStream"]:
        for name in loggers:
            logging.getLogger(name).addHandler(self)
        try:
            yield self
        finally:
            for name in loggers:
                logging.getLogger(name).removeHandler(self)
