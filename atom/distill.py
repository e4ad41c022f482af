"""The distillation loop shared by ATOM, DataDAM and DM (spec section 2).

Each iteration draws a fresh random ConvNet (frozen), a real batch of ``batch_real`` images
per class, and one DSA draw per class shared by that class's real and synthetic images; all
classes go through the network in one batched forward per branch. The real branch runs under
``torch.inference_mode`` and is reduced to class-mean statistics right away; only the
synthetic branch builds an autograd graph, and SGD updates the synthetic pixels alone.

All randomness (initial subset, network weights, real batches, augmentation) comes from one
CPU ``torch.Generator`` seeded by ``seed``; its state is saved in every checkpoint, so the same
seed gives the same synthetic set and a resumed run ends bit-identical to an uninterrupted
one (on the same device and thread count).

Loss values stay on the device and are read back every ``log_every`` iterations, so the loop
never waits on the host in between.

Example::

    import atom
    d = atom.load_digits()
    res = atom.distill(d.train_images, d.train_labels, ipc=10, method="atom", iterations=500, seed=0)
    res.images, res.labels, res.losses
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .augment import DSA, DSAParams
from .io import load_tensors, save_tensors
from .losses import LossConfig, MatchingLoss
from .networks import ConvNet, init_weights
from .runtime import tune_allocator
from .selection import RULES as SELECTION_RULES, select
from .sets import check_dataset, random_subset, resolve_device
from .validation import BestSnapshot

__all__ = ["DistillConfig", "DistillResult", "distill", "random_subset", "resolve_device", "check_dataset",
           "CheckpointMismatchError", "DistillStep", "INITS", "LR_SCHEDULES", "learning_rate", "pixel_range"]

INITS = ("real", "noise") + tuple(r for r in SELECTION_RULES if r != "random")  # real = random real subset
LR_SCHEDULES = ("step", "cosine")

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """Every knob of the loop. Defaults are the spec's; ``lr_img=None`` means 1.0 for
    ipc <= 50 and 10.0 above (section 2)."""

    ipc: int
    method: str = "atom"
    iterations: int = 8000
    batch_real: int = 128
    # images per forward chunk, real and synthetic (0: the whole batch); results do not change
    # beyond rounding. Small chunks keep activations in cache: 32 measured ~2x faster than
    # 256 at 32x32 on the CPU.
    real_chunk: int = 32
    lr_img: float | None = None
    momentum: float = 0.5
    # "step": lr_img * lr_gamma ** (milestones passed), constant without milestones;
    # "cosine": lr_img * (1 + cos(pi * it / iterations)) / 2, which damps the late overshoot
    # of the whitened pixels
    lr_schedule: str = "step"
    lr_milestones: list[float] = field(default_factory=list)  # fractions of `iterations`
    lr_gamma: float = 0.1
    # clamp the synthetic pixels, after every step, to the per-channel [min, max] of the real
    # images in the preprocessed space (keeps them on the data's support)
    clamp: bool = False
    init: str = "real"  # real | noise | herding | kcenter (atom.selection)
    init_options: dict = field(default_factory=dict)  # atom.selection.select keywords (encoder_epochs, ...)
    validate_every: int = 0  # score the set every K iterations with `validator` (0: never)
    seed: int = 0
    net: dict = field(default_factory=lambda: dict(width=128, depth=3, act="relu", norm="instancenorm", pool="avg"))
    loss: dict = field(default_factory=dict)  # overrides of LossConfig.for_method(method)
    dsa: bool = True
    dsa_params: dict = field(default_factory=dict)
    log_every: int = 50
    checkpoint_every: int = 0
    snapshot_every: int = 0
    channels_last: bool = False
    compile: bool = False
    bf16: bool = False

    def __post_init__(self):
        if not isinstance(self.ipc, int) or self.ipc < 1:
            raise ValueError(f"ipc: must be a positive integer, got {self.ipc!r}")
        for name in ("iterations", "batch_real", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("checkpoint_every", "snapshot_every", "real_chunk", "validate_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")
        if self.init not in INITS:
            raise ValueError(f"init: must be one of {INITS}, got {self.init!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        unknown = set(self.init_options) - {"encoder_epochs", "encoder_per_class"}
        if unknown:
            raise ValueError(f"init_options: unknown keys {sorted(unknown)}")
        if self.lr_img is None:
            self.lr_img = 1.0 if self.ipc <= 50 else 10.0
        if not self.lr_img > 0:
            raise ValueError(f"lr_img: must be > 0, got {self.lr_img}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: must lie in [0, 1), got {self.momentum}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones: fractions in (0, 1), got {self.lr_milestones}")
        self.loss_config = LossConfig.for_method(self.method, **self.loss)  # validates method, powers
        self.dsa_config = DSAParams(**self.dsa_params)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_resolved"] = self.loss_config.to_dict()
        return d


@dataclass
class DistillResult:
    images: Tensor
    labels: Tensor
    losses: list[float]
    config: dict
    seconds: float = 0.0
    snapshots: list[tuple[int, Tensor]] = field(default_factory=list)
    # with a validator: the best-scoring set (iteration 0 is the initial set), its iteration
    # and score, and the whole (iteration, score) curve; without one, the final set
    best_images: Tensor | None = None
    best_iteration: int | None = None
    best_score: float | None = None
    val_curve: list[tuple[int, float]] = field(default_factory=list)

    def __iter__(self):  # `x, y = atom.distill(...)`
        yield self.images
        yield self.labels


class CheckpointMismatchError(ValueError):
    """``resume=True`` found a checkpoint made with other settings (the message names the key)."""


# Keys that must agree between a checkpoint and the run resuming from it.
_RESUME_KEYS = ("ipc", "method", "iterations", "batch_real", "lr_img", "momentum", "lr_schedule", "lr_milestones",
                "lr_gamma", "clamp", "init", "init_options", "seed", "net", "loss", "dsa", "dsa_params",
                "validate_every")


def learning_rate(cfg: DistillConfig, it: int) -> float:
    """The image learning rate of iteration ``it`` (0-based) under ``cfg.lr_schedule``."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr_img * 0.5 * (1.0 + math.cos(math.pi * it / cfg.iterations))
    milestones = [int(round(m * cfg.iterations)) for m in cfg.lr_milestones]
    return cfg.lr_img * cfg.lr_gamma ** sum(it >= m for m in milestones)


def pixel_range(images: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per-channel minimum and maximum of (N, C, H, W), shaped (1, C, 1, 1) for broadcasting."""
    lo = hi = None
    for i in range(0, images.shape[0], chunk):
        b = images[i:i + chunk].transpose(0, 1).flatten(1)
        blo, bhi = b.min(1).values, b.max(1).values
        lo = blo if lo is None else torch.minimum(lo, blo)
        hi = bhi if hi is None else torch.maximum(hi, bhi)
    return lo.view(1, -1, 1, 1), hi.view(1, -1, 1, 1)


class DistillStep:
    """One distillation iteration on fixed data; kept separate so benchmarks can time it.

    Speed (none of it changes the result beyond float rounding; ``tests/test_fast_vs_reference``
    checks loss and gradient against the parent-structured reference to 1e-4 relative):

    - all classes go through the network together, and the real branch runs under
      ``torch.inference_mode`` in chunks of ``real_chunk`` images that are reduced to
      per-class sums at once, so activations stay cache-sized;
    - the ``|f|^p`` map is computed once for both attentions (``MatchingLoss``);
    - the synthetic branch runs in chunks of the same size (with autograd), summed into
      class means before the loss;
    - ``compile=True`` compiles the per-chunk forward + per-class reduction of both branches
      (inductor fuses normalisation, activation, powers, sums and pooling); its warm-up
      happens on the first iterations (one graph per chunk shape);
    - ``channels_last`` and ``bf16`` (autocast, CUDA only) are opt-in accelerator settings.
    """

    def __init__(self, cfg: DistillConfig, images: Tensor, labels: Tensor, num_classes: int,
                 device: torch.device, dtype: torch.dtype):
        self.cfg, self.k, self.device = cfg, num_classes, device
        self.images = images.to(device, dtype)
        self.labels = labels
        self.class_idx = [(labels == c).nonzero().squeeze(1) for c in range(num_classes)]
        c, h = images.shape[1], images.shape[2]
        self.net = ConvNet(c, num_classes, h, **cfg.net).to(device, dtype)
        self.net.requires_grad_(False)  # the network is never trained: no parameter gradients
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.loss = MatchingLoss(cfg.loss_config, num_classes)
        self.dsa = DSA(cfg.dsa_config) if cfg.dsa else None
        self.autocast = cfg.bf16 and device.type == "cuda"
        self._real_sums = self._syn_sums = self._sums
        if cfg.compile:  # two compiled functions: one runs under inference mode, one with autograd
            self._real_sums = torch.compile(self._sums, dynamic=False)
            self._syn_sums = torch.compile(self._sums, dynamic=False)

    def sample_real(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A real batch (on the device) and its labels (on the CPU: they index DSA slots and
        class sums, and keeping them there avoids a device-to-host sync)."""
        b = self.cfg.batch_real
        idx = torch.cat([ci[torch.randperm(len(ci), generator=g)[:b]] for ci in self.class_idx])
        return self.images[idx.to(self.device)], self.labels[idx]

    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            feats, emb = self.net.features(self._prepare(x))
        if self.autocast:  # statistics in float32
            feats, emb = [f.float() for f in feats], emb.float()
        return feats, emb

    def _sums(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """Per-class sums of every loss term's vectors for one chunk of images."""
        return self.loss.class_sums(*self._forward(x), y)

    def _chunk(self, n: int) -> int:
        return n if (not self.cfg.real_chunk or self.cfg.net.get("norm") == "batchnorm") else self.cfg.real_chunk

    def _class_means(self, x: Tensor, labels: Tensor, sums_fn, draw=None) -> list[Tensor]:
        """Class means of every loss term over ``x`` (labels on the CPU), reduced chunk by
        chunk: class means are sums over images, so chunking changes nothing but keeps every
        activation small (on the CPU a large fresh allocation costs more in page faults than
        the arithmetic on it, and a chunk whose activations stay in cache runs about 2x faster
        than one that does not). ``draw``: augment each chunk with it first."""
        n, y_dev = x.shape[0], labels.to(self.device, non_blocking=True)
        chunk, sums = self._chunk(n), None
        for i in range(0, n, chunk):
            xi = x[i:i + chunk]
            if draw is not None:
                xi = self.dsa.apply(xi, draw, labels[i:i + chunk])
            part = sums_fn(xi, y_dev[i:i + chunk])
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
        counts = torch.bincount(labels, minlength=self.k).clamp(min=1).to(sums[0].device, sums[0].dtype)
        return [s / counts[:, None] for s in sums]

    def real_statistics(self, real: Tensor, real_labels: Tensor, draw) -> list[Tensor]:
        """Class means of the (augmented) real batch; call under ``torch.inference_mode``."""
        return self._class_means(real, real_labels, self._real_sums, draw)

    def __call__(self, syn: Tensor, syn_labels: Tensor, g: torch.Generator) -> Tensor:
        """Draw net, real batch and augmentation from ``g``; return the loss (graph to ``syn``).
        ``syn_labels`` live on the CPU."""
        init_weights(self.net, g)
        real, real_labels = self.sample_real(g)
        draw = self.dsa.sample(self.k, g) if self.dsa else None
        with torch.inference_mode():
            stats_real = self.real_statistics(real, real_labels, draw)
        stats_real = [s.clone() for s in stats_real]  # plain tensors, usable in the autograd graph
        x = self.dsa.apply(syn, draw, syn_labels) if draw is not None else syn
        if syn_labels.min() < 0 or syn_labels.max() >= self.k:  # CPU labels: no device sync
            raise ValueError(f"labels: values must lie in [0, {self.k}), got "
                             f"[{int(syn_labels.min())}, {int(syn_labels.max())}]")
        # the synthetic branch in chunks too: the graph keeps the same activations, but each
        # is a small allocation the heap reuses (at IPC 50 one 500-image forward was slower
        # than the reference's per-class forwards: every 260 MB activation was page-faulted)
        return self.loss.compare(stats_real, self._class_means(x, syn_labels, self._syn_sums))


def distill(images: Tensor, labels: Tensor, *, ipc: int, method: str = "atom", num_classes: int | None = None,
            device: str | torch.device = "auto", dtype: torch.dtype = torch.float32,
            checkpoint_path: str | Path | None = None, resume: bool = False, progress: bool = True,
            callback: Callable[[int, Tensor], None] | None = None,
            validator: Callable[[Tensor, Tensor], float] | None = None, **config) -> DistillResult:
    """Distil ``images`` (N, C, H, W) with integer ``labels`` into ``ipc`` images per class.

    ``config`` takes any :class:`DistillConfig` field (iterations, batch_real, lr_img, seed,
    net, loss, dsa_params, ...). With ``checkpoint_path`` and ``checkpoint_every > 0`` the
    state is saved periodically (atomically); ``resume=True`` continues from it.
    ``callback(iteration, images)`` is called every ``snapshot_every`` iterations.
    ``validator(images, labels) -> score`` (higher is better) is called on the initial set and
    every ``validate_every`` iterations and at the end; the result then carries the best set
    (:class:`atom.validation.BestSnapshot`). Pass only training images here: the validator
    holds the validation split, and distillation never sees it.
    """
    cfg = DistillConfig(ipc=ipc, method=method, **config)
    k = check_dataset(images, labels, num_classes)
    counts = torch.bincount(labels, minlength=k)
    if int(counts.min()) < ipc:
        raise ValueError(f"ipc: {ipc} exceeds the smallest class ({int(counts.min())} images, "
                         f"class {int(counts.argmin())})")
    if cfg.validate_every and validator is None:
        raise ValueError("validate_every: > 0 needs a validator(images, labels) -> score")
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    labels = labels.cpu().long()
    g = torch.Generator().manual_seed(cfg.seed)
    start, losses, snapshots = 0, [], []

    init_idx = random_subset(labels, ipc, g, k)  # consumed for every init: the same RNG stream
    if cfg.init == "real":
        syn0 = images[init_idx].clone()
    elif cfg.init == "noise":
        syn0 = torch.randn((k * ipc, *images.shape[1:]), generator=g)
    else:  # a selection rule; its own generator is seeded with the same seed
        syn0 = images[select(images, labels, ipc, cfg.init, seed=cfg.seed, num_classes=k, device=dev,
                             progress=progress, net=cfg.net, **cfg.init_options)].clone()
    syn_labels = torch.arange(k).repeat_interleave(ipc)
    syn = syn0.to(dev, dtype).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
    bounds = [b.to(dev, dtype) for b in pixel_range(images)] if cfg.clamp else None
    best = BestSnapshot()

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if resume and ckpt is not None and ckpt.exists():
        state = load_tensors(ckpt)
        saved = state["config"]
        for key in _RESUME_KEYS:
            if saved.get(key) != getattr(cfg, key):
                raise CheckpointMismatchError(f"{ckpt}: checkpoint was made with {key}={saved.get(key)!r}, "
                                              f"this run has {key}={getattr(cfg, key)!r}")
        with torch.no_grad():
            syn.copy_(state["images"].to(dev, dtype))
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        start, losses = int(state["iteration"]), list(map(float, state["losses"]))
        if "best" in state:
            best = BestSnapshot.from_state(state["best"])
        log.info("resumed from %s at iteration %d", ckpt, start)

    step = DistillStep(cfg, images, labels, k, dev, dtype)
    pending: list[Tensor] = []

    def flush():
        if pending:
            losses.extend(torch.stack(pending).tolist())
            pending.clear()

    def save(iteration: int):
        flush()
        save_tensors({"images": syn.detach().cpu(), "labels": syn_labels, "optimizer": opt.state_dict(),
                      "generator": g.get_state(), "iteration": iteration,
                      "losses": torch.tensor(losses, dtype=torch.float64), "best": best.state_dict(),
                      "config": {key: getattr(cfg, key) for key in _RESUME_KEYS}}, ckpt)

    def validate(iteration: int):
        score = float(validator(syn.detach().cpu().clone(), syn_labels))
        if best.update(iteration, syn, score):
            log.info("iteration %d: validation %.4g (new best)", iteration, score)
        else:
            log.info("iteration %d: validation %.4g (best %.4g at %d)", iteration, score, best.score, best.iteration)

    if validator is not None and start == 0:
        validate(0)
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not progress,
               desc=f"distill {method} ipc{ipc}", dynamic_ncols=True)
    for it in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, it)
        loss = step(syn, syn_labels, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                syn.clamp_(bounds[0], bounds[1])
        pending.append(loss.detach())
        done = it + 1
        if done % cfg.log_every == 0 or done == cfg.iterations:
            flush()
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"loss became {losses[-1]} at iteration {done}; lower lr_img")
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
            log.info("iteration %d/%d loss %.6g", done, cfg.iterations, losses[-1])
        if validator is not None and ((cfg.validate_every and done % cfg.validate_every == 0)
                                      or done == cfg.iterations):
            validate(done)
        if ckpt is not None and cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.iterations):
            save(done)
        if cfg.snapshot_every and done % cfg.snapshot_every == 0 and done < cfg.iterations:
            snap = syn.detach().cpu().clone()
            snapshots.append((done, snap))
            if callback is not None:
                callback(done, snap)
    flush()
    final = syn.detach().cpu()
    if validator is None:
        return DistillResult(final, syn_labels, losses, cfg.to_dict(), time.perf_counter() - t0, snapshots,
                             best_images=final)
    return DistillResult(final, syn_labels, losses, cfg.to_dict(), time.perf_counter() - t0, snapshots,
                         best_images=best.images, best_iteration=best.iteration, best_score=best.score,
                         val_curve=list(best.curve))
