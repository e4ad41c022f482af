"""Honest model selection for distillation: a validation split carved from the training set,
and the bookkeeping that keeps the best-scoring snapshot.

The parent code evaluates intermediate synthetic sets on the *test* set and keeps the best,
which reports a maximum over noisy test scores. Here the choice of iteration is made on a
seeded, stratified validation split of the training images that distillation never samples
from; the test set is read once, by the final evaluation of the chosen set.

Example::

    train_idx, val_idx = validation_split(train_y, per_class=500, seed=0)
    best = BestSnapshot()
    best.update(0, init_images, score=31.2)
    best.update(200, images_200, score=40.5)
    best.iteration, best.images        # 200, images_200
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

__all__ = ["validation_split", "carve", "make_validator", "BestSnapshot"]


def validation_split(labels: Tensor, per_class: int, seed: int, num_classes: int | None = None
                     ) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices): ``per_class`` random images of every class go to
    validation, the rest stay for training. Disjoint, sorted, and seeded."""
    labels = labels.cpu().long()
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class: must be a positive integer, got {per_class!r}")
    counts = torch.bincount(labels, minlength=k)
    if int(counts.min()) <= per_class:
        raise ValueError(f"per_class: {per_class} validation images would leave no training image in "
                         f"class {int(counts.argmin())} ({int(counts.min())} images)")
    g = torch.Generator().manual_seed(seed)
    val = torch.cat([(labels == c).nonzero().squeeze(1)[torch.randperm(int(counts[c]), generator=g)[:per_class]]
                     for c in range(k)])
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    mask[val] = True
    return (~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)


@dataclass
class BestSnapshot:
    """The highest-scoring snapshot seen so far (ties keep the earliest), and the whole curve."""

    iteration: int = -1
    score: float = float("-inf")
    images: Tensor | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    def update(self, iteration: int, images: Tensor, score: float) -> bool:
        """Record ``score`` at ``iteration``; keep a copy of ``images`` if it is a new best."""
        self.curve.append((int(iteration), float(score)))
        if score > self.score:
            self.iteration, self.score, self.images = int(iteration), float(score), images.detach().cpu().clone()
            return True
        return False

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "score": self.score, "images": self.images,
                "curve": torch.tensor(self.curve, dtype=torch.float64).reshape(-1, 2)}

    @classmethod
    def from_state(cls, state: dict) -> "BestSnapshot":
        curve = [(int(i), float(s)) for i, s in state["curve"].tolist()]
        return cls(int(state["iteration"]), float(state["score"]), state["images"], curve)


def carve(images: Tensor, labels: Tensor, per_class: int, seed: int, num_classes: int | None = None
          ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(train images, train labels, validation images, validation labels) of
    :func:`validation_split`; ``per_class=0`` keeps every image for training (no validation)."""
    if per_class == 0:
        return images, labels, None, None
    tr, va = validation_split(labels, per_class, seed, num_classes)
    return images[tr], labels[tr], images[va], labels[va]


def make_validator(val_x: Tensor, val_y: Tensor, *, seeds, num_classes: int, device, **eval_config
                   ) -> Callable[[Tensor, Tensor], float]:
    """The score ``atom.distillation.distill(validator=...)`` expects: the mean validation accuracy
    of networks trained on the set by :func:`atom.evaluation.evaluate` with ``eval_config``."""
    from .evaluation import evaluate

    def score(images: Tensor, labels: Tensor) -> float:
        return evaluate(images, labels, val_x, val_y, seeds=seeds, num_classes=num_classes, device=device,
                        progress=False, **eval_config)["mean"]
    return score
