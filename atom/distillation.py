"""The distillation loop shared by ATOM, DataDAM and DM (spec section 2).

Each iteration draws a fresh random ConvNet (frozen), a real batch of ``batch_real`` images
per class, and one DSA draw per class shared by that class's real and synthetic images; all
classes go through the network in one batched forward per branch. The real branch runs under
``torch.inference_mode`` and is reduced to class-mean statistics right away; only the
synthetic branch builds an autograd graph, and SGD updates the synthetic pixels alone.

All randomness comes from generators seeded by ``seed``: the initial subset from a CPU
``torch.Generator``, and every iteration's network weights, real batch and augmentation from
a generator on the device (on the CPU, the same generator continues). Their states are saved
in every checkpoint, so the same seed gives the same synthetic set and a resumed run ends
bit-identical to an uninterrupted one (on the same device and thread count). On CUDA the
iteration then runs without a host round trip.

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
from .events import Checkpointed, Listener, Progress, Resumed, Validated, emit
from .formation import check_factor, decode, encode
from .io import load_tensors, save_tensors
from .losses import LossConfig, MatchingLoss
from .networks import ConvNet, init_weights
from .pool import ENCODERS, EncoderPool
from .runtime import tune_allocator
from .selection import RULES as SELECTION_RULES, selected_set
from .sets import check_dataset, random_subset, resolve_device
from .speed import DISTILL_SETTINGS, check_setting, resolve_distill
from .validation import BestSnapshot

__all__ = ["DistillConfig", "DistillResult", "distill", "random_subset", "resolve_device", "check_dataset",
           "CheckpointMismatchError", "DistillStep", "RealSampler", "INITS", "LR_SCHEDULES", "learning_rate",
           "pixel_range", "ENCODERS"]

INITS = ("real", "noise") + tuple(r for r in SELECTION_RULES if r != "random")  # real = random real subset
LR_SCHEDULES = ("step", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

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
    # 256 at 32x32 on the CPU. "auto" here and in the speed settings below: atom.speed.
    real_chunk: int | str = "auto"
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
    # multi-formation (atom.formation): each stored image holds factor x factor tiles that train
    # as factor**2 images; 1 = off (the paper's parameterisation)
    factor: int = 1
    validate_every: int = 0  # score the set every K iterations with `validator` (0: never)
    seed: int = 0
    net: dict = field(default_factory=lambda: dict(width=128, depth=3, act="relu", norm="instancenorm", pool="avg"))
    loss: dict = field(default_factory=dict)  # overrides of LossConfig.for_method(method)
    dsa: bool = True
    dsa_params: dict = field(default_factory=dict)
    log_every: int = 50
    checkpoint_every: int = 0
    snapshot_every: int = 0
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead | max-autotune
    bf16: bool | str = "auto"
    winograd: bool | str = "auto"  # CPU: the real branch's 3x3 convolutions as NNPACK Winograd
    # where an iteration's network comes from (atom.pool): "random" (the paper's: a fresh
    # random init), "pool" (a pool member's init and trained weights interpolated with
    # lam ~ U(encoder_lambda), DANCE/NCFM's) or "trained" (a pool member's trained weights)
    encoder: str = "random"
    encoder_lambda: list[float] = field(default_factory=lambda: [0.0, 1.0])
    # weight of the calibration term: cross-entropy of the (augmented) synthetic images under
    # the drawn pool member's trained weights (0: off; needs a pool)
    calibration: float = 0.0

    def __post_init__(self):
        if not isinstance(self.ipc, int) or self.ipc < 1:
            raise ValueError(f"ipc: must be a positive integer, got {self.ipc!r}")
        for name in ("iterations", "batch_real", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("checkpoint_every", "snapshot_every", "validate_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")
        for name in DISTILL_SETTINGS:
            check_setting(name, getattr(self, name), int if name == "real_chunk" else bool)
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode: must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        check_factor(self.factor)
        if self.init not in INITS:
            raise ValueError(f"init: must be one of {INITS}, got {self.init!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        unknown = set(self.init_options) - {"encoder_epochs", "encoder_per_class"}
        if unknown:
            raise ValueError(f"init_options: unknown keys {sorted(unknown)}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder: must be one of {ENCODERS}, got {self.encoder!r}")
        lam = self.encoder_lambda
        if (not isinstance(lam, (list, tuple)) or len(lam) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lam)
                or not 0 <= lam[0] <= lam[1] <= 1):
            raise ValueError(f"encoder_lambda: must be [lo, hi] with 0 <= lo <= hi <= 1, got {lam!r}")
        self.encoder_lambda = [float(v) for v in lam]
        if isinstance(self.calibration, bool) or not isinstance(self.calibration, (int, float)) \
                or not self.calibration >= 0:
            raise ValueError(f"calibration: must be a number >= 0, got {self.calibration!r}")
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

    def training_set(self, best: bool = True) -> tuple[Tensor, Tensor]:
        """The images a network trains on: the best (or final) set, decoded when it was
        distilled with ``factor > 1`` (:mod:`atom.formation`)."""
        images = self.best_images if best and self.best_images is not None else self.images
        return decode(images, self.labels, int(self.config.get("factor", 1)))

    def __iter__(self):  # `x, y = atom.distill(...)`
        yield self.images
        yield self.labels


class CheckpointMismatchError(ValueError):
    """``resume=True`` found a checkpoint made with other settings (the message names the key)."""


# What a checkpoint holds (atom.io.check_fields): a file lacking one is refused, never a KeyError.
CHECKPOINT_FIELDS = {"images": "float[4]", "labels": "int[1]", "optimizer": "dict", "generator": "tensor",
                     "iteration": "int", "losses": "float[1]", "best": "dict", "config": "dict"}

# Keys that must agree between a checkpoint and the run resuming from it.
_RESUME_KEYS = ("ipc", "method", "iterations", "batch_real", "lr_img", "momentum", "lr_schedule", "lr_milestones",
                "lr_gamma", "clamp", "init", "init_options", "seed", "net", "loss", "dsa", "dsa_params",
                "validate_every", "factor", "encoder", "encoder_lambda", "calibration")


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


class RealSampler:
    """Draws ``batch_real`` real images per class without replacement, for all classes in one
    vectorised draw on the generator's device (no per-class loop, no host sync): a uniform key
    per member of a (classes, largest class) table, the ``b`` smallest keys per row. Class
    ``c``'s images are rows ``c*b .. c*b+b-1`` of the batch (a class smaller than ``b``
    contributes all its images, and then the labels say which rows are whose)."""

    def __init__(self, labels: Tensor, num_classes: int, batch: int, device: torch.device):
        counts = torch.bincount(labels, minlength=num_classes)
        m = int(counts.max())
        table = torch.full((num_classes, m), -1, dtype=torch.long)
        for c in range(num_classes):  # once, at construction
            members = (labels == c).nonzero().squeeze(1)
            table[c, :len(members)] = members
        self.b = min(batch, m)
        self.short = bool((counts < self.b).any())
        self.table, self.pad = table.to(device), (table < 0).to(device)
        self.labels = torch.arange(num_classes).repeat_interleave(self.b)  # CPU; valid unless short

    def sample(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """(indices on the sampler's device, labels on the CPU); the keys come from ``g`` on its
        own device (a CUDA generator for a CUDA sampler: nothing crosses the bus)."""
        keys = torch.rand(self.table.shape, generator=g, device=g.device).to(self.table.device)
        keys.masked_fill_(self.pad, 2.0)  # padding sorts last
        idx = self.table.gather(1, keys.topk(self.b, dim=1, largest=False, sorted=True).indices)
        if not self.short:
            return idx.flatten(), self.labels
        idx_cpu = idx.cpu()  # a class smaller than batch_real: drop its padding (one sync)
        keep = idx_cpu >= 0
        labels = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx_cpu)[keep]
        return idx_cpu[keep].to(idx.device), labels


class DistillStep:
    """One distillation iteration on fixed data; kept separate so benchmarks can time it.

    Speed (none of it changes the result beyond float rounding; ``tests/test_fast_vs_reference``
    checks loss and gradient against the parent-structured reference to 1e-4 relative):

    - all classes go through the network together, and the real branch runs under
      ``torch.inference_mode`` in chunks of ``real_chunk`` images that are reduced to
      per-class sums at once, so activations stay cache-sized;
    - the ``|f|^p`` map is computed once for both attentions (``MatchingLoss``), without the
      abs pass after ReLU, and in place in the real branch;
    - the synthetic branch runs in chunks of the same size (with autograd), summed into
      class means before the loss;
    - on the CPU, 2x2 average pooling runs as a GEMM (``atom.networks.avg_pool_2x2``) and,
      with ``winograd``, the real branch's wide 3x3 convolutions run as NNPACK Winograd;
    - randomness (network weights, real batch, augmentation) is drawn on the generator's
      device: with a CUDA generator the iteration has no host round trip;
    - ``compile`` compiles the per-chunk forward + per-class reduction of both branches
      (``compile_mode``: torch.compile's mode); ``channels_last`` and ``bf16`` (autocast) are
      accelerator settings. ``"auto"`` values resolve in :mod:`atom.speed` (``self.settings``).
    """

    def __init__(self, cfg: DistillConfig, images: Tensor, labels: Tensor, num_classes: int,
                 device: torch.device, dtype: torch.dtype, pool: EncoderPool | None = None):
        self.cfg, self.k, self.device = cfg, num_classes, torch.device(device)
        self.settings = resolve_distill({key: getattr(cfg, key) for key in DISTILL_SETTINGS}, self.device,
                                        tuple(images.shape[1:]), cfg.iterations)
        st = self.settings
        self.images = images.to(device, dtype)
        self.labels = labels
        self.sampler = RealSampler(labels.cpu(), num_classes, cfg.batch_real, self.device)
        c, h = images.shape[1], images.shape[2]
        self.net = ConvNet(c, num_classes, h, **cfg.net).to(device, dtype)
        self.net.requires_grad_(False)  # the network is never trained: no parameter gradients
        self.net.cpu_kernels, self.net.winograd = True, st["winograd"]
        if st["channels_last"]:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.pool = pool
        self.expert = None  # the calibration term's network: a pool member's trained weights
        if cfg.calibration > 0:
            self.expert = ConvNet(c, num_classes, h, **cfg.net).to(device, dtype).eval()
            self.expert.requires_grad_(False)
        self.loss = MatchingLoss(cfg.loss_config, num_classes, nonnegative=cfg.net.get("act", "relu") == "relu")
        self.dsa = DSA(cfg.dsa_config) if cfg.dsa else None
        self.autocast = st["bf16"]
        self._labels_dev: dict = {}
        self._real_sums = self._syn_sums = self._sums
        if st["compile"]:  # two compiled functions: one runs under inference mode, one with autograd
            self._real_sums = torch.compile(self._sums, dynamic=False, mode=cfg.compile_mode)
            self._syn_sums = torch.compile(self._sums, dynamic=False, mode=cfg.compile_mode)

    def fall_back(self, exc: BaseException) -> bool:
        """Drop the first of ``compile``, ``bf16`` that is on, with a warning naming it and the
        error; False when both are off already (the error is not theirs)."""
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        for name in ("compile", "bf16"):
            if self.settings.get(name):
                log.warning("%s failed on %s (%s: %s); continuing without it (distill.%s: false)", name,
                            self.device, type(exc).__name__, first, name)
                self.settings[name] = False
                if name == "compile":
                    self._real_sums = self._syn_sums = self._sums
                else:
                    self.autocast = False
                return True
        return False

    def sample_real(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A real batch (on the device) and its labels (on the CPU: they index DSA slots and
        class sums, and keeping them there avoids a device-to-host sync)."""
        idx, labels = self.sampler.sample(g)
        return self.images[idx.to(self.device)], labels

    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.settings["channels_last"] else x

    def _forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            feats, emb = self.net.features(self._prepare(x))
        if self.autocast:  # statistics in float32
            feats, emb = [f.float() for f in feats], emb.float()
        return feats, emb

    def _sums(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """Per-class sums of every loss term's vectors for one chunk of images."""
        return self.loss.class_sums(*self._forward(x), y)

    def _chunk(self, n: int) -> int:
        chunk = self.settings["real_chunk"]
        return n if (not chunk or self.cfg.net.get("norm") == "batchnorm") else chunk

    def _on_device(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(labels, per-class counts) on the device, cached per labels tensor: the iteration
        then copies nothing from the host. The device labels double as DSA slots."""
        key = (labels.data_ptr(), labels.numel())
        hit = self._labels_dev.get(key)
        if hit is None or not torch.equal(hit[2], labels):
            counts = torch.bincount(labels, minlength=self.k).clamp(min=1)
            hit = (labels.to(self.device), counts.to(self.device), labels.clone())
            if len(self._labels_dev) > 8:
                self._labels_dev.clear()
            self._labels_dev[key] = hit
        return hit[:2]

    def _class_means(self, x: Tensor, labels: Tensor, sums_fn, draw=None) -> list[Tensor]:
        """Class means of every loss term over ``x`` (labels on the CPU), reduced chunk by
        chunk: class means are sums over images, so chunking changes nothing but keeps every
        activation small (on the CPU a large fresh allocation costs more in page faults than
        the arithmetic on it, and a chunk whose activations stay in cache runs about 2x faster
        than one that does not). ``draw``: augment each chunk with it first."""
        n = x.shape[0]
        y_dev, counts = self._on_device(labels)
        # slots where the draw lives: a CPU draw's gather path reads them on the host
        slots = y_dev if draw is not None and draw.family.device.type != "cpu" else labels
        chunk, sums = self._chunk(n), None
        for i in range(0, n, chunk):
            xi = x[i:i + chunk]
            if draw is not None:
                xi = self.dsa.apply(xi, draw, slots[i:i + chunk])
            part = sums_fn(xi, y_dev[i:i + chunk])
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
        return [s / counts[:, None].to(s.dtype) for s in sums]

    def real_statistics(self, real: Tensor, real_labels: Tensor, draw) -> list[Tensor]:
        """Class means of the (augmented) real batch; call under ``torch.inference_mode``."""
        return self._class_means(real, real_labels, self._real_sums, draw)

    def __call__(self, syn: Tensor, syn_labels: Tensor, g: torch.Generator) -> Tensor:
        """Draw net, real batch and augmentation from ``g`` (on its device); return the loss
        (graph to ``syn``). ``syn_labels`` live on the CPU."""
        if self.cfg.encoder == "random":
            init_weights(self.net, g)
            member = None
        else:
            member = self.pool.load(self.net, g, self.cfg.encoder, self.cfg.encoder_lambda)
        if self.expert is not None:
            if member is None:  # random encoders: the expert is a member drawn on its own
                member = int(torch.randint(len(self.pool), (1,), generator=g, device=g.device))
            self.pool.load_trained(self.expert, member)
        real, real_labels = self.sample_real(g)
        draw = self.dsa.sample(self.k, g) if self.dsa else None
        with torch.inference_mode():
            stats_real = self.real_statistics(real, real_labels, draw)
        stats_real = [s.clone() for s in stats_real]  # plain tensors, usable in the autograd graph
        if syn_labels.min() < 0 or syn_labels.max() >= self.k:  # CPU labels: no device sync
            raise ValueError(f"labels: values must lie in [0, {self.k}), got "
                             f"[{int(syn_labels.min())}, {int(syn_labels.max())}]")
        # the synthetic branch in chunks too: the graph keeps the same activations, but each
        # is a small allocation the heap reuses (at IPC 50 one 500-image forward was slower
        # than the reference's per-class forwards: every 260 MB activation was page-faulted)
        loss = self.loss.compare(stats_real, self._class_means(syn, syn_labels, self._syn_sums, draw))
        if self.expert is not None:
            loss = loss + self.cfg.calibration * self.calibration(syn, syn_labels, draw)
        return loss

    def calibration(self, syn: Tensor, syn_labels: Tensor, draw) -> Tensor:
        """Cross-entropy of the synthetic images (augmented with the iteration's draw) under the
        expert's trained weights: pulls each image towards what a trained network reads as its
        class (NCFM/DANCE's calibration)."""
        y_dev, _ = self._on_device(syn_labels)
        if draw is not None:
            slots = y_dev if draw.family.device.type != "cpu" else syn_labels
            syn = self.dsa.apply(syn, draw, slots)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.expert(self._prepare(syn))
        return torch.nn.functional.cross_entropy(logits.float(), y_dev)


def _first_step(step: DistillStep, syn: Tensor, syn_labels: Tensor, train_labels: Tensor, g: torch.Generator,
                gd: torch.Generator, cfg: DistillConfig, opt: torch.optim.Optimizer) -> Tensor:
    """The first iteration's forward and backward. ``compile`` and ``bf16`` fail, where they
    fail, here (a compiler missing on the device, bf16 unsupported): then the step drops the
    setting with a warning naming it (compile first, then bf16), the generators go back to
    where the iteration started, and it runs again, so the run is the one eager float32 would
    have made. A failure with neither setting on is raised as it is."""
    states = (g.get_state(), None if gd is g else gd.get_state())
    while True:
        try:
            loss = step(decode(syn, syn_labels, cfg.factor)[0], train_labels, gd)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            return loss
        except Exception as exc:  # noqa: BLE001 - which setting failed is unknowable from its type
            if not step.fall_back(exc):
                raise
            g.set_state(states[0])
            if states[1] is not None:
                gd.set_state(states[1])
            opt.zero_grad(set_to_none=True)


def distill(images: Tensor, labels: Tensor, *, ipc: int, method: str = "atom", num_classes: int | None = None,
            device: str | torch.device = "auto", dtype: torch.dtype = torch.float32,
            checkpoint_path: str | Path | None = None, resume: bool = False, progress: bool = True,
            callback: Callable[[int, Tensor], None] | None = None,
            validator: Callable[[Tensor, Tensor], float] | None = None, pool: EncoderPool | None = None,
            on_event: Listener | None = None, **config) -> DistillResult:
    """Distil ``images`` (N, C, H, W) with integer ``labels`` into ``ipc`` images per class.

    ``config`` takes any :class:`DistillConfig` field (iterations, batch_real, lr_img, seed,
    net, loss, dsa_params, ...). With ``checkpoint_path`` and ``checkpoint_every > 0`` the
    state is saved periodically (atomically); ``resume=True`` continues from it.
    ``callback(iteration, images)`` is called every ``snapshot_every`` iterations.
    ``on_event`` receives what the run reports as it goes (:mod:`atom.events`): the loss every
    ``log_every`` iterations (:class:`~atom.events.Progress`), each validation score with the
    best so far (:class:`~atom.events.Validated`), each checkpoint written
    (:class:`~atom.events.Checkpointed`) and a resume (:class:`~atom.events.Resumed`).
    ``validator(images, labels) -> score`` (higher is better) is called on the initial set and
    every ``validate_every`` iterations and at the end; the result then carries the best set
    (:class:`atom.validation.BestSnapshot`). Pass only training images here: the validator
    holds the validation split, and distillation never sees it. ``pool``
    (:class:`atom.pool.EncoderPool`, trained on the same training images) is needed by
    ``encoder="pool"``/``"trained"`` and by ``calibration > 0``.
    """
    cfg = DistillConfig(ipc=ipc, method=method, **config)
    k = check_dataset(images, labels, num_classes)
    uses_pool = cfg.encoder != "random" or cfg.calibration > 0
    if uses_pool:
        if pool is None or not len(pool):
            raise ValueError(f"pool: encoder={cfg.encoder!r}, calibration={cfg.calibration!r} need a trained pool "
                             f"(atom.train_pool / the pool stage with pool.models >= 1)")
        pool.check_compatible(cfg.net, images.shape[1], k, images.shape[2])
    fingerprint = pool.fingerprint if uses_pool else None
    check_factor(cfg.factor, images.shape[2], images.shape[3])
    f2 = cfg.factor * cfg.factor  # real images per stored image (multi-formation)
    counts = torch.bincount(labels, minlength=k)
    if int(counts.min()) < ipc * f2:
        raise ValueError(f"ipc: {ipc}{f' x factor**2 = {ipc * f2}' if f2 > 1 else ''} exceeds the smallest class "
                         f"({int(counts.min())} images, class {int(counts.argmin())})")
    if cfg.validate_every and validator is None:
        raise ValueError("validate_every: > 0 needs a validator(images, labels) -> score")
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    labels = labels.cpu().long()
    g = torch.Generator().manual_seed(cfg.seed)
    # the loop's draws: on the CPU the same generator continues (one stream); elsewhere a
    # generator on the device, seeded alike, so no draw is copied from the host
    gd = g if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(cfg.seed)
    start, losses, snapshots = 0, [], []

    init_idx = random_subset(labels, ipc * f2, g, k)  # consumed for every init: the same RNG stream
    if cfg.init == "real":
        syn0 = encode(images[init_idx].clone(), cfg.factor)
    elif cfg.init == "noise":
        syn0 = torch.randn((k * ipc, *images.shape[1:]), generator=g)
    else:  # a selection rule; its own generator is seeded with the same seed
        syn0 = selected_set(images, labels, ipc, cfg.init, factor=cfg.factor, seed=cfg.seed, num_classes=k,
                            device=dev, progress=progress, net=cfg.net, **cfg.init_options)[0]
    syn_labels = torch.arange(k).repeat_interleave(ipc)
    train_labels = decode(syn0[:0], syn_labels, cfg.factor)[1]  # the labels of the decoded set
    syn = syn0.to(dev, dtype).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
    bounds = [b.to(dev, dtype) for b in pixel_range(images)] if cfg.clamp else None
    best = BestSnapshot()

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if resume and ckpt is not None and ckpt.exists():
        state = load_tensors(ckpt, kind="checkpoint", fields=CHECKPOINT_FIELDS)
        saved = state["config"]
        for key in _RESUME_KEYS:
            if saved.get(key) != getattr(cfg, key):
                raise CheckpointMismatchError(f"{ckpt}: checkpoint was made with {key}={saved.get(key)!r}, "
                                              f"this run has {key}={getattr(cfg, key)!r}")
        with torch.no_grad():
            syn.copy_(state["images"].to(dev, dtype))
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        if gd is not g:
            if "device_generator" not in state:
                raise CheckpointMismatchError(f"{ckpt}: checkpoint was made on the CPU, this run is on {dev}")
            gd.set_state(state["device_generator"])
        elif "device_generator" in state:
            raise CheckpointMismatchError(f"{ckpt}: checkpoint was made on an accelerator, this run is on the CPU")
        if state.get("pool") != fingerprint:
            raise CheckpointMismatchError(f"{ckpt}: checkpoint was made with pool {state.get('pool')!r}, this run "
                                          f"has pool {fingerprint!r}")
        start, losses = int(state["iteration"]), list(map(float, state["losses"]))
        if "best" in state:
            best = BestSnapshot.from_state(state["best"])
        log.info("resumed from %s at iteration %d", ckpt, start)
        emit(on_event, Resumed(start, ckpt))

    step = DistillStep(cfg, images, labels, k, dev, dtype, pool=pool if uses_pool else None)
    log.info("speed settings on %s: %s", dev, ", ".join(f"{key}={v}" for key, v in step.settings.items()))
    config = dict(cfg.to_dict(), resolved=dict(step.settings), pool=fingerprint)
    pending: list[Tensor] = []

    def flush():
        if pending:
            losses.extend(torch.stack(pending).tolist())
            pending.clear()

    def save(iteration: int):
        flush()
        save_tensors({"images": syn.detach().cpu(), "labels": syn_labels, "optimizer": opt.state_dict(),
                      "generator": g.get_state(), "iteration": iteration,
                      **({} if gd is g else {"device_generator": gd.get_state()}),
                      "losses": torch.tensor(losses, dtype=torch.float64), "best": best.state_dict(),
                      "pool": fingerprint,
                      "config": {key: getattr(cfg, key) for key in _RESUME_KEYS}}, ckpt, kind="checkpoint")
        emit(on_event, Checkpointed(iteration, ckpt))

    def validate(iteration: int):
        score = float(validator(*decode(syn.detach().cpu().clone(), syn_labels, cfg.factor)))
        if best.update(iteration, syn, score):
            log.info("iteration %d: validation %.4g (new best)", iteration, score)
        else:
            log.info("iteration %d: validation %.4g (best %.4g at %d)", iteration, score, best.score, best.iteration)
        emit(on_event, Validated(iteration, score, best.iteration, best.score))

    if validator is not None and start == 0:
        validate(0)
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not progress,
               desc=f"distill {method} ipc{ipc}", dynamic_ncols=True)
    for it in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, it)
        if it == start:  # the first step compiles: a setting this device cannot run falls back
            loss = _first_step(step, syn, syn_labels, train_labels, g, gd, cfg, opt)
            config["resolved"] = dict(step.settings)
        else:
            loss = step(decode(syn, syn_labels, cfg.factor)[0], train_labels, gd)
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
            emit(on_event, Progress(done, cfg.iterations, losses[-1]))
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
        return DistillResult(final, syn_labels, losses, config, time.perf_counter() - t0, snapshots,
                             best_images=final)
    return DistillResult(final, syn_labels, losses, config, time.perf_counter() - t0, snapshots,
                         best_images=best.images, best_iteration=best.iteration, best_score=best.score,
                         val_curve=list(best.curve))
