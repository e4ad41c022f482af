"""A pool of trained ConvNets to distil inside (ATOM+): train it, store it, draw encoders from it.

The paper's ATOM (like DM and DataDAM) matches features inside a freshly *randomly*
initialised ConvNet at every iteration. The family's stronger methods (IDM, DSDM, NCFM, DANCE)
match inside *trained* networks instead. This module provides that source of features, for
every matching method alike (the loss is unchanged; only the encoder changes):

- :func:`train_pool` trains ``models`` ConvNets on the distillation training split (never the
  validation split, never test) and keeps each member's initial and trained weights;
- :class:`EncoderPool` draws an iteration's encoder from it: member ``i`` uniformly, then
  ``encoder="pool"``: the interpolation ``theta = lam * theta_init + (1 - lam) * theta_trained``
  with ``lam ~ U(lo, hi)`` (DANCE/NCFM's, ``lambda_range`` default ``[0, 1]``), or
  ``encoder="trained"``: the trained weights themselves (``lam = 0``);
- the optional calibration term of :mod:`atom.distillation` reads the trained endpoint of the same
  member (:meth:`EncoderPool.load_trained`).

Each member's randomness (its initial weights, batch order and augmentation) comes from a
generator seeded from ``seed`` and the member's index, so the same seed gives the same pool,
and :func:`train_pool` resumes after a kill from the last finished epoch of the member in
progress, bit-identically (``state_dir``: one file per member, written atomically).

Example::

    pool = atom.train_pool(x, y, models=4, epochs=2, net=dict(width=128), seed=0)
    res = atom.distill(x, y, ipc=10, method="atom", encoder="pool", pool=pool)
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import DSA, DSAParams
from .events import Listener, MemberTrained, emit
from .io import check_fields, load_tensors, save_tensors
from .networks import ConvNet, init_weights
from .runtime import tune_allocator
from .sets import check_dataset, resolve_device

__all__ = ["PoolConfig", "EncoderPool", "train_pool", "ENCODERS", "member_seed"]

ENCODERS = ("random", "pool", "trained")
# what the files of this module hold (atom.io.check_fields): a pool, one member's state (a
# finished member, or one in progress), and each member of a pool
POOL_FIELDS = {"members": "list", "net": "dict", "channels": "int", "num_classes": "int", "im_size": "int",
               "meta": "dict"}
MEMBER_FIELDS = {"config": "dict", "index": "int", "done": "bool", "epoch": "int", "losses": "float[1]",
                 "seconds": "number"}
DONE_FIELDS = {"init": "dict", "trained": "dict", "train_accuracy": "number"}
PROGRESS_FIELDS = {"weights": "dict", "optimizer": "dict", "generator": "tensor"}

log = logging.getLogger(__name__)


@dataclass
class PoolConfig:
    """How each pool member is trained: SGD with momentum, cross-entropy on the real training
    split, per-image DSA (when ``dsa``), the learning rate divided by 10 at half the epochs
    (the evaluation protocol's ``halfway`` schedule)."""

    models: int = 4
    epochs: int = 2
    net: dict = field(default_factory=lambda: dict(width=128, depth=3, act="relu", norm="instancenorm", pool="avg"))
    seed: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True
    dsa_params: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("models", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "models" else 1):
                raise ValueError(f"pool.{name}: must be an integer >= {0 if name == 'models' else 1}, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"pool.seed: must be an integer, got {self.seed!r}")
        if not self.lr > 0:
            raise ValueError(f"pool.lr: must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"pool.momentum: must lie in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"pool.weight_decay: must be >= 0, got {self.weight_decay!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def member_seed(seed: int, index: int) -> int:
    """Member ``index``'s generator seed: distinct per member and per pool seed, and not the
    distillation seed's stream (a pool member never shares weights with an iteration's
    random network)."""
    return int.from_bytes(hashlib.sha256(f"atom-pool:{seed}:{index}".encode()).digest()[:7], "big")


def _state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _lr(cfg: PoolConfig, epoch: int) -> float:
    return cfg.lr * (0.1 if epoch >= cfg.epochs // 2 and cfg.epochs > 1 else 1.0)


@torch.no_grad()
def _accuracy(net: nn.Module, x: Tensor, y: Tensor, dev: torch.device, batch: int = 1024) -> float:
    net.eval()
    correct = sum(int((net(x[i:i + batch].to(dev)).argmax(1) == y[i:i + batch].to(dev)).sum())
                  for i in range(0, x.shape[0], batch))
    net.train()
    return 100.0 * correct / max(1, x.shape[0])


def _train_member(cfg: PoolConfig, index: int, x: Tensor, y: Tensor, k: int, dev: torch.device,
                  state_file: Path | None, progress: bool, state_key: str | None = None) -> dict:
    """Train member ``index`` (resuming from ``state_file`` when it holds this member's state,
    made with these settings and, when given, the same ``state_key``)."""
    g = torch.Generator().manual_seed(member_seed(cfg.seed, index))
    net = init_weights(ConvNet(x.shape[1], k, x.shape[2], **cfg.net), g).to(dev)
    init = _state(net)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    dsa = DSA(DSAParams(**cfg.dsa_params)) if cfg.dsa else None
    start, seconds, losses = 0, 0.0, []
    if state_file is not None and state_file.exists():
        st = load_tensors(state_file, kind="pool-member", fields=MEMBER_FIELDS)
        check_fields(st, state_file, "pool-member", DONE_FIELDS if st["done"] else PROGRESS_FIELDS)
        if st.get("config") != cfg.to_dict() or st.get("index") != index:
            log.warning("%s: made with other pool settings; training member %d afresh", state_file, index)
        elif st.get("key") != state_key:
            log.warning("%s: made by other code (the pool's training code changed since); training member %d "
                        "afresh", state_file, index)
        else:
            if st["done"]:
                log.info("pool member %d: finished already, reloaded from %s", index, state_file)
                return st
            net.load_state_dict({kk: v.to(dev) for kk, v in st["weights"].items()})
            opt.load_state_dict(st["optimizer"])
            g.set_state(st["generator"])
            start, seconds, losses = int(st["epoch"]), float(st["seconds"]), list(map(float, st["losses"]))
            log.info("pool member %d: resumed from %s at epoch %d", index, state_file, start)
    n, bs = x.shape[0], min(cfg.batch_size, x.shape[0])
    net.train()
    bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, disable=not progress,
               desc=f"pool member {index}", dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, epoch)
        perm = torch.randperm(n, generator=g)
        total, batches = torch.zeros((), device=dev), 0
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            if dsa is not None:
                xb = dsa(xb, g)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            batches += 1
        losses.append(float(total) / batches)
        seconds += time.perf_counter() - t0
        if not torch.isfinite(torch.tensor(losses[-1])):
            raise FloatingPointError(f"pool member {index}: the training loss became {losses[-1]} in epoch "
                                     f"{epoch + 1}; lower pool.lr")
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        log.info("pool member %d: epoch %d/%d loss %.4f (%.1fs)", index, epoch + 1, cfg.epochs, losses[-1],
                 time.perf_counter() - t0)
        if state_file is not None and epoch + 1 < cfg.epochs:
            save_tensors({"config": cfg.to_dict(), "index": index, "key": state_key, "done": False,
                          "epoch": epoch + 1, "weights": _state(net), "optimizer": opt.state_dict(),
                          "generator": g.get_state(), "seconds": seconds,
                          "losses": torch.tensor(losses, dtype=torch.float64)}, state_file, kind="pool-member")
    member = {"config": cfg.to_dict(), "index": index, "key": state_key, "done": True, "epoch": cfg.epochs,
              "init": init, "trained": _state(net), "seconds": seconds,
              "losses": torch.tensor(losses, dtype=torch.float64), "train_accuracy": _accuracy(net, x, y, dev)}
    if state_file is not None:
        save_tensors(member, state_file, kind="pool-member")
    return member


class EncoderPool:
    """Trained pool members (initial and trained weights of one ConvNet architecture) and the
    draw of an iteration's encoder from them. ``members``: dicts with ``init`` and ``trained``
    state dicts; ``net``: the architecture they were trained with (ConvNet keywords);
    ``meta``: anything to keep beside them (settings, timings, accuracies)."""

    def __init__(self, members: list[dict], net: dict, channels: int, num_classes: int, im_size: int,
                 meta: dict | None = None):
        if not members:
            raise ValueError("pool: has no members (pool.models is 0); train a pool with pool.models >= 1 "
                             "or distil with encoder: random and calibration: 0")
        self.members = [{"init": m["init"], "trained": m["trained"]} for m in members]
        self.net = dict(net)
        self.channels, self.num_classes, self.im_size = channels, num_classes, im_size
        self.meta = dict(meta or {})
        keys = set(self.members[0]["init"])
        for i, m in enumerate(self.members):
            if set(m["init"]) != keys or set(m["trained"]) != keys:
                raise ValueError(f"pool: member {i} has other weights than member 0")

    def __len__(self) -> int:
        return len(self.members)

    @property
    def fingerprint(self) -> str:
        """A digest of every member's weights: a distillation checkpoint made with another pool
        does not resume with this one."""
        h = hashlib.sha256()
        for m in self.members:
            for part in ("init", "trained"):
                for key in sorted(m[part]):
                    h.update(key.encode())
                    h.update(m[part][key].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def check_compatible(self, net: dict, channels: int, num_classes: int, im_size: int) -> None:
        """Raise naming the setting when a distillation's network differs from the pool's."""
        for name, a, b in (("channels", self.channels, channels), ("classes", self.num_classes, num_classes),
                           ("image size", self.im_size, im_size)):
            if a != b:
                raise ValueError(f"pool: was trained on {a} {name}, the distillation's data has {b}")
        # compared as built (defaults filled in), so {width: 128} and the full spelling agree
        mine = ConvNet(channels, num_classes, im_size, **self.net).config
        theirs = ConvNet(channels, num_classes, im_size, **dict(net)).config
        for key, value in theirs.items():
            if mine.get(key) != value:
                raise ValueError(f"pool: was trained with net.{key}={mine.get(key)!r}, the distillation uses "
                                 f"net.{key}={value!r}; retrain the pool with the distillation's net "
                                 f"(pool.net) or change distill.net")

    @torch.no_grad()
    def load(self, net: nn.Module, generator: torch.Generator, encoder: str = "pool",
             lambda_range: tuple[float, float] = (0.0, 1.0)) -> int:
        """Put the drawn encoder's weights into ``net``; return the member's index. Draws the
        member (and for ``pool`` the mixing weight) from ``generator`` on its own device."""
        if encoder not in ENCODERS[1:]:
            raise ValueError(f"encoder: must be one of {ENCODERS[1:]} to load from a pool, got {encoder!r}")
        dev = generator.device
        i = int(torch.randint(len(self.members), (1,), generator=generator, device=dev))
        m = self.members[i]
        if encoder == "trained":
            state = m["trained"]
        else:
            lo, hi = lambda_range
            lam = float(torch.rand((), generator=generator, device=dev)) * (hi - lo) + lo
            state = {k: (lam * m["init"][k].float() + (1.0 - lam) * m["trained"][k].float()).to(m["init"][k].dtype)
                     if m["init"][k].is_floating_point() else m["trained"][k] for k in m["init"]}
        self._copy(net, state)
        return i

    @torch.no_grad()
    def load_trained(self, net: nn.Module, index: int) -> None:
        """Member ``index``'s trained weights into ``net`` (the calibration expert)."""
        self._copy(net, self.members[index]["trained"])

    @staticmethod
    def _copy(net: nn.Module, state: dict[str, Tensor]) -> None:
        own = net.state_dict()
        for key, value in state.items():
            own[key].copy_(value)

    def state(self) -> dict:
        """What :meth:`from_state` reads back (the pool stage's file)."""
        return {"members": self.members, "net": self.net, "channels": self.channels,
                "num_classes": self.num_classes, "im_size": self.im_size, "meta": self.meta}

    @classmethod
    def from_state(cls, state: dict) -> "EncoderPool":
        return cls(state["members"], state["net"], state["channels"], state["num_classes"], state["im_size"],
                   state.get("meta"))

    def save(self, path: str | Path) -> Path:
        return save_tensors(self.state(), path, kind="pool")

    @classmethod
    def load_file(cls, path: str | Path) -> "EncoderPool":
        """A pool saved by :meth:`save` (or the pool stage), checked (:func:`atom.io.load_tensors`):
        a corrupt file, another kind of file or one lacking a field is an
        :class:`atom.io.UnreadableFileError` naming it."""
        state = load_tensors(path, kind="pool", fields=POOL_FIELDS)
        for member in state["members"]:
            check_fields(member, path, "pool", {"init": "dict", "trained": "dict"})
        return cls.from_state(state)


def train_pool(images: Tensor, labels: Tensor, *, num_classes: int | None = None,
               device: str | torch.device = "auto", state_dir: str | Path | None = None, progress: bool = True,
               on_event: Listener | None = None, state_key: str | None = None, **config) -> EncoderPool:
    """Train ``config["models"]`` ConvNets (:class:`PoolConfig` fields) on ``images``/``labels``
    (pass the distillation training split only) and return them as an :class:`EncoderPool`.

    With ``state_dir`` every member's progress is saved there after each epoch (and when it is
    done), and a rerun resumes from it; a member's state made with other settings, or with
    another ``state_key`` (the pipeline passes a digest of the training code), is trained
    afresh. ``on_event`` gets an :class:`atom.events.MemberTrained` as each member ends."""
    cfg = PoolConfig(**config)
    k = check_dataset(images, labels, num_classes)
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    labels = labels.cpu().long()
    state = Path(state_dir) if state_dir is not None else None
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
    members = []
    for i in range(cfg.models):
        m = _train_member(cfg, i, images, labels, k, dev, None if state is None else state / f"member{i}.pt",
                          progress, state_key)
        log.info("pool member %d/%d: trained %d epochs in %.1fs, training accuracy %.2f %%", i + 1, cfg.models,
                 cfg.epochs, m["seconds"], m["train_accuracy"])
        members.append(m)
        emit(on_event, MemberTrained(i, cfg.models, float(m["train_accuracy"]), float(m["seconds"])))
    meta = {"config": cfg.to_dict(), "seconds": [float(m["seconds"]) for m in members],
            "train_accuracy": [float(m["train_accuracy"]) for m in members],
            "losses": [[float(v) for v in m["losses"]] for m in members], "images": int(images.shape[0])}
    if not members:
        return _EmptyPool(cfg, images, k, meta)
    return EncoderPool(members, cfg.net, images.shape[1], k, images.shape[2], meta)


class _EmptyPool:
    """``models: 0``: nothing trained (the pool stage still writes a valid, empty file)."""

    def __init__(self, cfg: PoolConfig, images: Tensor, k: int, meta: dict):
        self.members, self.net, self.meta = [], dict(cfg.net), meta
        self.channels, self.num_classes, self.im_size = images.shape[1], k, images.shape[2]

    def __len__(self) -> int:
        return 0

    def state(self) -> dict:
        return {"members": [], "net": self.net, "channels": self.channels, "num_classes": self.num_classes,
                "im_size": self.im_size, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        return save_tensors(self.state(), path, kind="pool")
