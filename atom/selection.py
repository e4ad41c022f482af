"""Initialisation by selection: pick ``ipc`` representative real images per class.

Distillation starts from real images; which ones matters, most at low IPC and in short runs
(the parent DataDAM code's best numbers start from a hand-curated set shipped with it). This
module replaces hand curation with seeded, documented rules that work in the embedding space
of a ConvNet:

- ``herding`` (Welling, 2009): greedily add the image that keeps the running mean of the
  chosen embeddings closest to the class mean. It minimises, over real subsets, the very
  distribution term DM and ATOM optimise, so the start already matches the class mean;
  with ``ipc=1`` it is the image nearest the class mean (the class prototype).
- ``kcenter``: greedy farthest-first traversal from the image nearest the class mean; covers
  the class's modes rather than its centre.
- ``random``: ``ipc`` random images per class (the same draw as :func:`atom.sets.random_subset`).

The embedding comes from a ConvNet built from ``net`` and initialised from ``seed``, trained
for ``encoder_epochs`` epochs of plain SGD on at most ``encoder_per_class`` images per class
of the *given* images (pass the training split: the selection never sees validation or test
images). ``encoder_epochs=0`` keeps the network random, as in distillation itself.

Example::

    from atom.selection import select
    idx = select(train_x, train_y, ipc=10, rule="herding", seed=0, encoder_epochs=2)
    init = train_x[idx]          # class-major: ipc images of class 0, then class 1, ...
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .formation import check_factor, encode
from .sets import check_dataset, random_subset, resolve_device
from .networks import ConvNet, init_weights

__all__ = ["RULES", "select", "selected_set", "herding", "kcenter", "train_encoder", "embed", "rule_of"]

log = logging.getLogger(__name__)

RULES = ("random", "herding", "kcenter")
DEFAULT_NET = dict(width=128, depth=3, act="relu", norm="instancenorm", pool="avg")


def rule_of(init: str) -> str:
    """The selection rule behind a distillation ``init``: the rule itself for a selection init,
    ``herding`` for ``real``/``noise`` (the ``selected`` baseline of a run that starts elsewhere)."""
    return init if init in RULES and init != "random" else "herding"


def herding(features: Tensor, k: int) -> Tensor:
    """Indices (into ``features``, (N, D)) of ``k`` distinct rows chosen by kernel herding."""
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k: must lie in [1, {n}], got {k}")
    f = features.double()
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for t in range(1, k + 1):
        # distance of the running mean, if row i were added, to the class mean
        dist = ((total[None] + f) / t - mu[None]).pow(2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += f[i]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter(features: Tensor, k: int) -> Tensor:
    """Indices of ``k`` rows by farthest-first traversal, starting at the row nearest the mean."""
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k: must lie in [1, {n}], got {k}")
    f = features.double()
    first = int((f - f.mean(0)).pow(2).sum(1).argmin())
    chosen = [first]
    mind = (f - f[first]).pow(2).sum(1)
    for _ in range(k - 1):
        mind[chosen] = -1.0
        i = int(mind.argmax())
        chosen.append(i)
        mind = torch.minimum(mind, (f - f[i]).pow(2).sum(1))
    return torch.tensor(chosen, dtype=torch.long)


@torch.no_grad()
def embed(net: ConvNet, images: Tensor, batch_size: int = 512) -> Tensor:
    """Final-block embeddings (flattened, as distillation's distribution term sees them)."""
    dev = next(net.parameters()).device
    net.eval()
    out = [net.features(images[i:i + batch_size].to(dev))[1].float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def train_encoder(images: Tensor, labels: Tensor, num_classes: int, *, net: dict, epochs: int,
                  generator: torch.Generator, device: torch.device, batch_size: int = 256,
                  lr: float = 0.01, progress: bool = False) -> ConvNet:
    """A ConvNet initialised from ``generator`` and trained ``epochs`` epochs (SGD, momentum
    0.9, weight decay 5e-4, no augmentation) on ``images``."""
    model = init_weights(ConvNet(images.shape[1], num_classes, images.shape[2], **net), generator).to(device)
    if epochs == 0:
        return model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = images.shape[0]
    model.train()
    for _ in tqdm(range(epochs), disable=not progress, desc="selection encoder", leave=False):
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def select(images: Tensor, labels: Tensor, ipc: int, rule: str = "herding", *, seed: int = 0,
           num_classes: int | None = None, net: dict | None = None, encoder_epochs: int = 2,
           encoder_per_class: int = 1000, device: str | torch.device = "auto",
           progress: bool = False) -> Tensor:
    """Indices of ``ipc`` images per class, class-major (class 0's first), chosen by ``rule``.

    Everything random (the encoder's images, weights and batch order) comes from one
    generator seeded with ``seed``: the same seed and inputs give the same indices.
    """
    if rule not in RULES:
        raise ValueError(f"rule: unknown selection rule {rule!r}; choose from {RULES}")
    if not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"ipc: must be a positive integer, got {ipc!r}")
    for name, v in (("encoder_epochs", encoder_epochs), ("encoder_per_class", encoder_per_class)):
        if not isinstance(v, int) or v < (0 if name == "encoder_epochs" else 1):
            raise ValueError(f"{name}: must be an integer >= {0 if name == 'encoder_epochs' else 1}, got {v!r}")
    k = check_dataset(images, labels, num_classes)
    labels = labels.cpu().long()
    counts = torch.bincount(labels, minlength=k)
    if int(counts.min()) < ipc:
        raise ValueError(f"ipc: {ipc} exceeds the smallest class ({int(counts.min())} images, "
                         f"class {int(counts.argmin())})")
    g = torch.Generator().manual_seed(seed)
    if rule == "random":
        return random_subset(labels, ipc, g, k)
    dev = resolve_device(device)
    # the encoder's training images: a seeded, class-balanced subset (CPU-sized by default)
    train_idx = random_subset(labels, min(encoder_per_class, int(counts.min())), g, k)
    encoder = train_encoder(images[train_idx], labels[train_idx], k, net=dict(DEFAULT_NET, **(net or {})),
                            epochs=encoder_epochs, generator=g, device=dev, progress=progress)
    picker = herding if rule == "herding" else kcenter
    chosen = []
    for c in range(k):
        cls = (labels == c).nonzero().squeeze(1)
        feats = embed(encoder, images[cls])
        chosen.append(cls[picker(feats, ipc)])
    log.info("selected %d images per class by %s (encoder: %d epochs)", ipc, rule, encoder_epochs)
    return torch.cat(chosen)


def selected_set(images: Tensor, labels: Tensor, ipc: int, rule: str = "herding", *, factor: int = 1,
                 **select_options) -> tuple[Tensor, Tensor]:
    """The stored set a selection start gives, as distillation stores it: ``ipc * factor**2``
    images per class chosen by :func:`select`, packed into ``ipc`` mosaics per class
    (:func:`atom.formation.encode`; with ``factor`` 1, the chosen images themselves), and their
    labels. :func:`atom.formation.decode` turns it into the images a network trains on.

    Distillation with a selection ``init`` starts from exactly this set, and the ``selected``
    baseline evaluates it, so the baseline measures distillation's real start."""
    check_factor(factor, images.shape[-2], images.shape[-1])
    if not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"ipc: must be a positive integer, got {ipc!r}")
    idx = select(images, labels, ipc * factor * factor, rule, **select_options)
    return encode(images[idx].clone(), factor), labels[idx].cpu().long()[::factor * factor].clone()
