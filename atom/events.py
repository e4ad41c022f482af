"""What the library's long computations report while they run: small immutable events.

:func:`atom.distill`, :func:`atom.evaluate` (and :func:`atom.batched.evaluate_batched`) and
:func:`atom.train_pool` take ``on_event``, a callable that receives each event the moment it
happens. It is the library's one interface to whatever watches it (a progress display, the
pipeline's live MLflow metrics and its resume clock); the log lines the library also writes
are for people and carry no contract.

- :class:`Progress`: every ``log_every`` distillation iterations and the last, with the loss;
- :class:`Validated`: a validation score of the set, and the best so far (the iteration the
  result will keep);
- :class:`Checkpointed`: the resumable state was written (after the iteration it names);
- :class:`Resumed`: a run continued from a checkpoint at this iteration;
- :class:`SeedEvaluated`: one evaluation seed's test accuracy;
- :class:`MemberTrained`: one pool member finished training.

An exception raised by ``on_event`` propagates: a watcher that must never stop the run catches
its own errors.

Example::

    events = []
    atom.distill(x, y, ipc=1, iterations=20, log_every=5, on_event=events.append)
    [e.loss for e in events if isinstance(e, atom.events.Progress)]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

__all__ = ["Progress", "Validated", "Checkpointed", "Resumed", "SeedEvaluated", "MemberTrained", "Event",
           "Listener", "emit"]


@dataclass(frozen=True)
class Progress:
    """Distillation reached ``iteration`` (1-based, of ``total``) with this loss."""

    iteration: int
    total: int
    loss: float


@dataclass(frozen=True)
class Validated:
    """The set at ``iteration`` (0: the initial set) scored ``score`` on the validation split;
    the best so far scored ``best_score`` at ``best_iteration`` (ties keep the earliest)."""

    iteration: int
    score: float
    best_iteration: int
    best_score: float

    @property
    def new_best(self) -> bool:
        return self.best_iteration == self.iteration


@dataclass(frozen=True)
class Checkpointed:
    """The resumable state after ``iteration`` is in ``path`` (written atomically)."""

    iteration: int
    path: Path


@dataclass(frozen=True)
class Resumed:
    """The run continues from the checkpoint ``path``, made after ``iteration``."""

    iteration: int
    path: Path


@dataclass(frozen=True)
class SeedEvaluated:
    """One network trained with ``seed`` scored ``accuracy`` (%) on the test images;
    ``seconds`` is its training time (with ``batched``, the shared time of all seeds)."""

    seed: int
    accuracy: float
    seconds: float
    batched: bool = False


@dataclass(frozen=True)
class MemberTrained:
    """Pool member ``index`` (0-based, of ``total``) is trained: its accuracy (%) on the
    training images and its training seconds (0 when it was reloaded, finished already)."""

    index: int
    total: int
    train_accuracy: float
    seconds: float


Event = Union[Progress, Validated, Checkpointed, Resumed, SeedEvaluated, MemberTrained]
Listener = Callable[[Event], None]


def emit(listener: Listener | None, event: Event) -> None:
    """Hand ``event`` to ``listener`` (nothing when there is none)."""
    if listener is not None:
        listener(event)
