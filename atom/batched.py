"""Batched multi-seed evaluation: train the networks of several seeds together as one model.

:func:`evaluate_batched` gives the same per-seed results as running
:func:`atom.eval_protocol.train_evaluate` once per seed (to float rounding), but trains all seeds'
networks in one batched forward/backward per step, which keeps an accelerator busy where one
seed's small batches (|S| = 10..500 images) leave it mostly idle.

How the seeds stay independent and identical to the sequential protocol:

- every seed has its own ``torch.Generator(seed)`` and consumes it in exactly the order
  ``train_evaluate`` does: network initialisation, then per epoch one ``randperm`` for the
  data order and per batch one DSA draw (per-image parameters, one family per batch). The
  seeds' generators are stepped one after the other each step, which does not change any
  seed's stream;
- the seeds' parameters are stacked (``torch.func.stack_module_state``) and the network is
  applied with ``torch.func.vmap`` + ``functional_call`` (``mode="vmap"``, the default on
  CUDA): convolutions become grouped convolutions, and no seed's activations or
  normalisation statistics mix with another's. On the CPU (``mode="loop"``, the default
  there) the seeds' forwards run one after the other inside each step on slices of the
  stacked parameters: the CPU gains nothing from grouping (measured ~2x slower with vmap);
- the loss is the *sum* of the seeds' mean cross-entropies, so each seed's parameters get
  exactly their own gradient; SGD (momentum, weight decay) is elementwise, so one optimizer
  over the stacked tensors updates every seed as its own optimizer would;
- the DSA draws of all seeds go into one :class:`atom.augment.Draw` whose slots are the
  images of every seed (each seed's family shared by its batch), applied in one call.

BatchNorm keeps running statistics that ``vmap`` cannot update in place, so networks with
``norm="batchnorm"`` fall back to the sequential loop (``evaluate_batched`` says so in its
result: ``"batched": False``).

Example::

    from atom.batched import evaluate_batched
    res = evaluate_batched(syn_x, syn_y, test_x, test_y, seeds=[0, 1, 2, 3, 4], epochs=300)
    # or: atom.evaluate(..., batched=True)
"""
from __future__ import annotations

import copy
import logging
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from .augment import DSA, Draw
from .events import Listener, SeedEvaluated, emit
from .eval_protocol import EvalConfig, check_train_test, summarize, train_evaluate
from .networks import build_network

__all__ = ["BatchedNets", "train_batched", "evaluate_batched", "supports_batching", "MODES"]

# "vmap": one grouped forward/backward for all seeds (accelerators); "loop": the seeds'
# forwards one after the other inside each step, sharing data movement, augmentation and one
# optimizer step (the CPU, where vmap's grouped convolutions measured ~2x slower than the
# seeds one by one, and one seed's batch already keeps the cores busy); "auto": vmap on
# CUDA, loop elsewhere.
MODES = ("auto", "vmap", "loop")

log = logging.getLogger(__name__)


def supports_batching(net_config: dict) -> bool:
    """Whether networks of this configuration can be trained batched (no BatchNorm)."""
    return net_config.get("norm", "instancenorm") != "batchnorm"


class BatchedNets:
    """``n`` networks of one architecture as stacked parameters applied with ``vmap``."""

    def __init__(self, nets: list[torch.nn.Module], mode: str = "vmap"):
        if not nets:
            raise ValueError("nets: need at least one network")
        if mode not in MODES[1:]:
            raise ValueError(f"mode: must be one of {MODES[1:]}, got {mode!r}")
        self.n, self.mode = len(nets), mode
        self.params, self.buffers = stack_module_state(nets)
        # a parameter-less skeleton: functional_call supplies each seed's tensors
        self.base = copy.deepcopy(nets[0]).to("meta")

    def _one(self, params: dict, buffers: dict, x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` (n, B, C, H, W), one batch per network -> logits (n, B, K)."""
        if self.mode == "loop":
            return torch.stack([self._one(*self._slice(i), x[i]) for i in range(self.n)])
        return vmap(self._one)(self.params, self.buffers, x)

    def shared(self, x: Tensor) -> Tensor:
        """The same batch ``x`` (B, C, H, W) through every network -> logits (n, B, K)."""
        if self.mode == "loop":
            return torch.stack([self._one(*self._slice(i), x) for i in range(self.n)])
        return vmap(self._one, in_dims=(0, 0, None))(self.params, self.buffers, x)

    def _slice(self, i: int) -> tuple[dict, dict]:
        return {k: v[i] for k, v in self.params.items()}, {k: v[i] for k, v in self.buffers.items()}

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def unstack(self, i: int) -> dict[str, Tensor]:
        """Network ``i``'s state (parameters and buffers), detached."""
        return {k: v[i].detach() for k, v in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor, batch_size: int = 1024) -> list[float]:
        """Top-1 accuracy in percent of every network on (images, labels)."""
        dev = self.parameters()[0].device
        self.base.eval()
        correct = torch.zeros(self.n, dtype=torch.long)
        for i in range(0, images.shape[0], batch_size):
            x, y = images[i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev)
            correct += (self.shared(x).argmax(2) == y[None]).sum(1).cpu()
        self.base.train()
        return [100.0 * int(c) / images.shape[0] for c in correct]


def _merge(draws: list[Draw]) -> Draw:
    return Draw(torch.cat([d.family for d in draws]), torch.cat([d.uniforms for d in draws]))


def train_batched(train_x: Tensor, train_y: Tensor, *, seeds: list[int], num_classes: int,
                  device: torch.device, config: EvalConfig, epochs: int | None = None,
                  progress: bool = False, mode: str = "auto") -> BatchedNets:
    """Train one network per seed on (train_x, train_y), all together; return them.

    Consumes each seed's generator exactly like :func:`atom.eval_protocol.train_evaluate`.
    ``epochs`` (default ``config.epochs``) stops early for tests; the learning-rate schedule
    is still ``config``'s. ``mode`` is one of :data:`MODES`.
    """
    cfg = config
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        mode = "vmap" if torch.device(device).type == "cuda" else "loop"
    if not supports_batching(cfg.net):
        raise ValueError("net: batchnorm networks cannot be trained batched; use the sequential evaluator")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    nets = [build_network(train_x.shape[1], num_classes, train_x.shape[2], generator=g, **cfg.net).to(device)
            for g in gens]
    model = BatchedNets(nets, mode)
    del nets
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    dsa = DSA(cfg.dsa_params) if cfg.dsa else None
    x_all, y_all = train_x.to(device), train_y.to(device)
    n, bs, s = x_all.shape[0], min(cfg.batch_size, x_all.shape[0]), len(gens)
    per_seed_ce = vmap(F.cross_entropy)
    for epoch in tqdm(range(cfg.epochs if epochs is None else epochs), disable=not progress,
                      desc=f"evaluate {s} seeds batched", leave=False):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        perms = [torch.randperm(n, generator=g) for g in gens]
        for i in range(0, n, bs):
            idx = torch.stack([p[i:i + bs] for p in perms]).to(device)  # (s, b)
            b = idx.shape[1]
            x = x_all[idx.flatten()]  # (s*b, C, H, W), seed-major
            if dsa is not None:
                # each seed's draw from its own generator, as dsa(x, g) draws it in train_evaluate
                draw = _merge([dsa.sample(b, g, family_groups=torch.zeros(b, dtype=torch.long)) for g in gens])
                x = dsa.apply(x, draw)
            logits = model(x.view(s, b, *x.shape[1:]))
            loss = per_seed_ce(logits, y_all[idx]).sum()  # sum: every seed gets its own gradient
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def evaluate_batched(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *,
                     seeds: list[int] | tuple[int, ...] = (0, 1, 2, 3, 4), num_classes: int | None = None,
                     device: str | torch.device = "auto", progress: bool = True,
                     config: EvalConfig | None = None, mode: str = "auto", on_event: Listener | None = None,
                     **kwargs) -> dict:
    """Like :func:`atom.evaluation.evaluate`, with all seeds trained together.

    Returns ``{"per_seed", "seeds", "runs", "mean", "std", "n", "batched"}``; each run's
    ``seconds`` is the shared wall time of the batched training. ``mode``: see :data:`MODES`.
    ``on_event`` gets a :class:`atom.events.SeedEvaluated` per seed.
    """
    if not seeds:
        raise ValueError("seeds: need at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: must be distinct, got {list(seeds)}")
    cfg = config or EvalConfig(**kwargs)
    if not supports_batching(cfg.net):
        log.info("batchnorm network: evaluating the %d seeds sequentially", len(seeds))
        runs = []
        for s in seeds:
            runs.append(train_evaluate(train_x, train_y, test_x, test_y, num_classes=num_classes, seed=s,
                                       device=device, config=cfg))
            log.info("seed %d: accuracy %.2f%% (%.1fs)", s, runs[-1]["accuracy"], runs[-1]["seconds"])
            emit(on_event, SeedEvaluated(s, runs[-1]["accuracy"], runs[-1]["seconds"]))
        accs = [r["accuracy"] for r in runs]
        return {"per_seed": accs, "seeds": list(seeds), "runs": runs, **summarize(accs), "batched": False}
    k, dev = check_train_test(train_x, train_y, test_x, test_y, num_classes, device)
    t0 = time.perf_counter()
    model = train_batched(train_x, train_y, seeds=list(seeds), num_classes=k, device=dev, config=cfg,
                          progress=progress, mode=mode)
    seconds = time.perf_counter() - t0
    accs = model.accuracy(test_x, test_y, cfg.eval_batch_size)
    if not all(math.isfinite(a) for a in accs):
        raise FloatingPointError("accuracy is not finite")
    train_accs = model.accuracy(train_x, train_y, cfg.eval_batch_size)
    runs = [{"accuracy": a, "train_accuracy": t, "seconds": seconds, "seed": s}
            for a, t, s in zip(accs, train_accs, seeds)]
    for r in runs:
        log.info("seed %d: accuracy %.2f%% (batched, %.1fs for all seeds)", r["seed"], r["accuracy"], seconds)
        emit(on_event, SeedEvaluated(r["seed"], r["accuracy"], seconds, batched=True))
    return {"per_seed": accs, "seeds": list(seeds), "runs": runs, **summarize(accs), "batched": True}
