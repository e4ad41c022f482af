"""Training one fresh network on a (synthetic) set and scoring it: the evaluation protocol
(spec section 6) shared by the sequential (:mod:`atom.evaluation`) and batched
(:mod:`atom.batched`) evaluators.

Protocol: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batch 256 (or the set size if
smaller), per-image DSA on every batch, cross-entropy on the hard labels, ``epochs`` epochs,
and the learning rate multiplied by 0.1 once at half the epochs (``scheduler="halfway"``, the
parent code's schedule) or StepLR (``scheduler="step"``). The score is the test accuracy after
the final epoch: no checkpoint, epoch or learning rate is ever picked by test accuracy.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .augment import DSA, DSAParams
from .sets import check_dataset, resolve_device
from .networks import ARCHITECTURES, build_network
from .runtime import tune_allocator

__all__ = ["EvalConfig", "train_evaluate", "accuracy", "summarize", "check_train_test", "SCHEDULERS",
           "DEFAULT_NET"]

DEFAULT_NET = dict(width=128, depth=3, act="relu", norm="instancenorm", pool="avg")
SCHEDULERS = ("halfway", "step", "none")


@dataclass
class EvalConfig:
    """The training protocol; defaults are the spec's (section 6). ``dsa_params`` (a dict or
    ``None``) becomes a :class:`atom.augment.DSAParams`; ``arch`` picks the network family
    (cross-architecture evaluation: the same set on AlexNet/VGG-11/ResNet-18)."""

    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    scheduler: str = "halfway"
    step_size: int = 15
    step_gamma: float = 0.5
    dsa: bool = True
    dsa_params: DSAParams | dict | None = field(default_factory=dict)
    net: dict | None = field(default_factory=lambda: dict(DEFAULT_NET))
    eval_batch_size: int = 1024
    arch: str = "convnet"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "step_size", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("lr", "step_gamma"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name}: must be > 0, got {v!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if not isinstance(self.dsa_params, DSAParams):
            self.dsa_params = DSAParams(**(self.dsa_params or {}))
        self.net = dict(self.net or DEFAULT_NET)
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch: unknown architecture {self.arch!r}; available: {sorted(ARCHITECTURES)}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (0-based)."""
        if self.scheduler == "halfway":
            return self.lr * (0.1 if epoch >= self.epochs // 2 else 1.0)
        if self.scheduler == "step":
            return self.lr * self.step_gamma ** (epoch // self.step_size)
        return self.lr


def check_train_test(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                     num_classes: int | None, device: str | torch.device) -> tuple[int, torch.device]:
    """Validate a train/test pair and resolve the device: (number of classes, device)."""
    k = check_dataset(train_x, train_y, num_classes)
    check_dataset(test_x, test_y, k, name="test images")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"test images: shape {tuple(test_x.shape[1:])} differs from train {tuple(train_x.shape[1:])}")
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    return k, dev


@torch.no_grad()
def accuracy(net: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    images, labels = images.to(dev), labels.to(dev)  # one transfer, one count read back at the end
    correct = torch.zeros((), dtype=torch.long, device=dev)
    for i in range(0, images.shape[0], batch_size):
        correct += (net(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum()
    net.train(was_training)
    return 100.0 * int(correct) / images.shape[0]


def train_evaluate(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *,
                   num_classes: int | None = None, seed: int = 0, device: str | torch.device = "auto",
                   config: EvalConfig | None = None, progress: bool = False, return_net: bool = False,
                   **kwargs) -> dict:
    """Train one fresh network on (train_x, train_y) and return its final test accuracy.

    Returns ``{"accuracy", "train_accuracy", "seconds", "seed"}`` (and ``"net"``, the trained
    network, with ``return_net=True``).
    """
    cfg = config or EvalConfig(**kwargs)
    k, dev = check_train_test(train_x, train_y, test_x, test_y, num_classes, device)
    g = torch.Generator().manual_seed(seed)
    net = build_network(train_x.shape[1], k, train_x.shape[2], arch=cfg.arch, generator=g, **cfg.net).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    dsa = DSA(cfg.dsa_params) if cfg.dsa else None
    x_all, y_all = train_x.to(dev), train_y.to(dev)
    n, bs = x_all.shape[0], min(cfg.batch_size, x_all.shape[0])
    t0 = time.perf_counter()
    net.train()
    for epoch in tqdm(range(cfg.epochs), disable=not progress, desc=f"evaluate seed {seed}", leave=False):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        perm = torch.randperm(n, generator=g).to(dev)  # one transfer per epoch, none per batch
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            x, y = x_all[idx], y_all[idx]
            if dsa is not None:
                x = dsa(x, g)  # per-image parameters, one family per batch
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t0
    acc = accuracy(net, test_x, test_y, cfg.eval_batch_size)
    if not math.isfinite(acc):
        raise FloatingPointError("accuracy is not finite")
    out = {"accuracy": acc, "train_accuracy": accuracy(net, x_all, y_all, cfg.eval_batch_size),
           "seconds": seconds, "seed": seed}
    if return_net:
        out["net"] = net
    return out


def summarize(values: list[float]) -> dict:
    """Mean and population std (as the parent code's ``np.std``) of per-seed accuracies."""
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}
