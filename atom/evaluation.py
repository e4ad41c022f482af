"""Evaluation: train fresh networks on a (synthetic) set, report test accuracy (spec section 6).

The protocol of one training run (SGD, per-image DSA, the learning-rate schedule, the final
epoch's test accuracy as the score) is :func:`atom.eval_protocol.train_evaluate`; this module
repeats it over seeds and builds the baselines' training sets.

``evaluate`` runs it once per seed (each seed fixes the network initialisation, the
data order and the augmentation draws), or all seeds together (``batched=True``,
:mod:`atom.batched`), and returns every per-seed value with mean and std.

Example::

    res = atom.evaluate(syn_x, syn_y, d.test_images, d.test_labels, seeds=[0, 1, 2], epochs=300)
    print(f"{res['mean']:.2f} +- {res['std']:.2f}")
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .batched import evaluate_batched
from .events import Listener, SeedEvaluated, emit
from .sets import check_dataset, random_subset, resolve_device
from .speed import resolve_batched
# the per-seed protocol lives in atom.eval_protocol; re-exported here, where it was first defined
from .eval_protocol import EvalConfig, accuracy, summarize, train_evaluate

__all__ = ["train_evaluate", "evaluate", "baseline_set", "accuracy", "summarize", "EvalConfig"]

log = logging.getLogger(__name__)


def evaluate(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *,
             seeds: list[int] | tuple[int, ...] = (0, 1, 2, 3, 4), num_classes: int | None = None,
             device: str | torch.device = "auto", progress: bool = True, batched: bool | str = "auto",
             on_event: Listener | None = None, **kwargs) -> dict:
    """Run :func:`train_evaluate` once per seed; return per-seed accuracies, mean and std.
    ``batched=True`` trains all seeds together (:mod:`atom.batched`; same per-seed results);
    ``"auto"`` does so on CUDA only (:func:`atom.speed.resolve_batched`). ``on_event`` gets a
    :class:`atom.events.SeedEvaluated` as each seed's accuracy is known."""
    if not seeds:
        raise ValueError("seeds: need at least one seed")
    cfg = kwargs.pop("config", None) or EvalConfig(**kwargs)
    if resolve_batched(batched, resolve_device(device)):
        return evaluate_batched(train_x, train_y, test_x, test_y, seeds=seeds, num_classes=num_classes,
                                device=device, progress=progress, config=cfg, on_event=on_event)
    runs = []
    for seed in tqdm(list(seeds), disable=not progress, desc="evaluate", dynamic_ncols=True):
        runs.append(train_evaluate(train_x, train_y, test_x, test_y, num_classes=num_classes, seed=seed,
                                   device=device, config=cfg, progress=progress))  # epochs of this seed
        log.info("seed %d: accuracy %.2f%% (%.1fs)", seed, runs[-1]["accuracy"], runs[-1]["seconds"])
        emit(on_event, SeedEvaluated(seed, runs[-1]["accuracy"], runs[-1]["seconds"]))
    accs = [r["accuracy"] for r in runs]
    return {"per_seed": accs, "seeds": list(seeds), "runs": runs, **summarize(accs)}


def baseline_set(kind: str, images: Tensor, labels: Tensor, *, ipc: int | None = None, seed: int = 0,
                 num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """The training set of a baseline: ``random`` (``ipc`` real images per class, the same draw
    a ``real`` initialisation with ``seed`` and factor 1 starts from) or ``full`` (the whole set).
    The ``selected`` baseline is :func:`atom.selection.selected_set`."""
    k = check_dataset(images, labels, num_classes)
    if kind == "full":
        return images, labels
    if kind != "random":
        raise ValueError(f"baseline: unknown kind {kind!r}; choose 'random' or 'full'")
    if ipc is None or ipc < 1:
        raise ValueError(f"ipc: the random baseline needs a positive ipc, got {ipc!r}")
    counts = torch.bincount(labels, minlength=k)
    if int(counts.min()) < ipc:
        raise ValueError(f"ipc: {ipc} exceeds the smallest class ({int(counts.min())} images)")
    idx = random_subset(labels.cpu(), ipc, torch.Generator().manual_seed(seed), k)
    return images[idx].clone(), labels[idx].clone()
