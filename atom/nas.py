"""Neural architecture search proxy (spec section 7).

A distilled set is a cheap stand-in for the whole training set when ranking architectures:
train every candidate ConvNet on the proxy and on the whole set, and compare the two
rankings by Spearman rank correlation. Candidates are scored on a *validation* split carved
from the training data by the caller, never on the test set; the test accuracy reported for
the picked and the best architecture is measured once, after the choice.

The paper's space is 720 ConvNets (depth x width x activation x normalisation x pooling);
:func:`search_space` builds it (or any sub-grid), skipping configurations that do not fit
the input size (a pooling net deeper than log2(size)); :func:`sample_space` draws a seeded
subset. :func:`spearman` and :func:`kendall` (tau-b) handle ties as ``scipy.stats.spearmanr``
and ``kendalltau`` do; :func:`rank_agreement` turns two accuracy lists into both correlations,
the proxy's pick and the best candidate. :func:`train_candidate` trains one candidate on several
sets with the same recipe (the pipeline's ``nas`` stage runs it shard by shard).

Example::

    space = search_space(depths=(1, 2), widths=(32,), acts=("relu",), norms=("instancenorm",), pools=("avg",))
    res = nas_proxy(syn_x, syn_y, train_x, train_y, val_x, val_y, space=space, epochs_proxy=300, epochs_full=30)
    res["spearman"], res["picked"], res["best"]
"""
from __future__ import annotations

import itertools
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .eval_protocol import accuracy, train_evaluate
from .networks import ACTIVATIONS, NORMS, POOLS

__all__ = ["search_space", "sample_space", "spearman", "kendall", "rank_agreement", "train_candidate",
           "nas_proxy"]


def search_space(depths=(1, 2, 3, 4), widths=(32, 64, 128, 256), acts=ACTIVATIONS, norms=NORMS, pools=POOLS,
                 im_size: int | None = None) -> list[dict]:
    """Every ConvNet of the grid (720 with the defaults); with ``im_size``, those that fit it."""
    space = []
    for depth, width, act, norm, pool in itertools.product(depths, widths, acts, norms, pools):
        if im_size is not None and pool != "none" and im_size >> depth < 1:
            continue
        space.append(dict(depth=depth, width=width, act=act, norm=norm, pool=pool))
    return space


def sample_space(size: int, n: int | None, seed: int) -> list[int]:
    """Indices of ``n`` distinct candidates of a space of ``size``, drawn with ``seed`` and
    returned in increasing order; ``n=None`` (or ``n >= size``) means the whole space."""
    if size < 1:
        raise ValueError(f"space: empty search space")
    if n is None or n >= size:
        return list(range(size))
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"sample: need at least two candidates, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=g)[:n].tolist())


def _ranks(values: list[float]) -> Tensor:
    """Ranks 1..n with ties given their average rank."""
    v = torch.tensor(values, dtype=torch.float64)
    order = torch.argsort(v)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(1, len(v) + 1, dtype=torch.float64)
    for value in torch.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (Pearson correlation of the tie-averaged ranks, as
    ``scipy.stats.spearmanr``). A constant list gives 0.0 (scipy: nan)."""
    _check_pair("spearman", a, b)
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0


def _check_pair(name: str, a, b) -> None:
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"{name}: need two lists of equal length >= 2, got {len(a)} and {len(b)}")


def kendall(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b)) over all
    pairs, n0 = n (n - 1) / 2 (``scipy.stats.kendalltau``'s default). A constant list gives 0.0
    (scipy: nan)."""
    _check_pair("kendall", a, b)
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    sx = torch.sign(x[:, None] - x[None, :])
    sy = torch.sign(y[:, None] - y[None, :])
    n0 = len(a) * (len(a) - 1) / 2
    s = float((sx * sy).sum().item()) / 2  # every pair counted twice
    ties_x = float((sx == 0).sum().item() - len(a)) / 2  # off-diagonal zeros: tied pairs
    ties_y = float((sy == 0).sum().item() - len(a)) / 2
    denom = ((n0 - ties_x) * (n0 - ties_y)) ** 0.5
    return s / denom if denom > 0 else 0.0


def rank_agreement(proxy: list[float], full: list[float]) -> dict:
    """How well a proxy ranking predicts the whole-data ranking: Spearman and Kendall
    correlations, the index of the proxy's pick and of the best candidate (ties: the first)."""
    _check_pair("rank_agreement", proxy, full)
    return {"spearman": spearman(proxy, full), "kendall": kendall(proxy, full),
            "picked": max(range(len(proxy)), key=lambda i: (proxy[i], -i)),
            "best": max(range(len(full)), key=lambda i: (full[i], -i))}


def train_candidate(config: dict, sets: dict[str, tuple[Tensor, Tensor, int]], val_x: Tensor, val_y: Tensor, *,
                    test_x: Tensor | None = None, test_y: Tensor | None = None, seed: int = 0, device="auto",
                    num_classes: int | None = None, **protocol) -> dict:
    """Train the ConvNet ``config`` on every ``name -> (images, labels, epochs)`` set with the same
    recipe and seed; per set, its validation accuracy and seconds (and test accuracy when a test
    set is given: read after training, never used to choose)."""
    out = {}
    for name, (x, y, epochs) in sets.items():
        r = train_evaluate(x, y, val_x, val_y, seed=seed, device=device, epochs=epochs, net=dict(config),
                           num_classes=num_classes, return_net=test_x is not None, **protocol)
        out[name] = {"val_accuracy": r["accuracy"], "seconds": r["seconds"]}
        if test_x is not None:
            out[name]["test_accuracy"] = accuracy(r["net"], test_x, test_y, protocol.get("eval_batch_size", 1024))
    return out


def nas_proxy(proxy_x: Tensor, proxy_y: Tensor, full_x: Tensor, full_y: Tensor, val_x: Tensor, val_y: Tensor, *,
              space: list[dict], epochs_proxy: int, epochs_full: int, seed: int = 0,
              test_x: Tensor | None = None, test_y: Tensor | None = None, device="auto",
              progress: bool = True, **protocol) -> dict:
    """Train every candidate on the proxy and on the whole set; rank both by validation accuracy.

    Returns per-candidate results, the Spearman correlation, the candidate the proxy picks and
    the best one on whole data (with test accuracy when a test set is given), and the time each
    search took.
    """
    if len(space) < 2:
        raise ValueError(f"space: need at least two candidates, got {len(space)}")
    rows, t_proxy, t_full = [], 0.0, 0.0
    for cfg in tqdm(space, disable=not progress, desc="nas", dynamic_ncols=True):
        t0 = time.perf_counter()
        p = train_evaluate(proxy_x, proxy_y, val_x, val_y, seed=seed, device=device, epochs=epochs_proxy,
                           net=cfg, **protocol)
        t1 = time.perf_counter()
        f = train_evaluate(full_x, full_y, val_x, val_y, seed=seed, device=device, epochs=epochs_full,
                           net=cfg, **protocol)
        t2 = time.perf_counter()
        t_proxy, t_full = t_proxy + t1 - t0, t_full + t2 - t1
        rows.append({"config": cfg, "proxy_accuracy": p["accuracy"], "full_accuracy": f["accuracy"],
                     "proxy_seconds": t1 - t0, "full_seconds": t2 - t1})
    agree = rank_agreement([r["proxy_accuracy"] for r in rows], [r["full_accuracy"] for r in rows])
    out = {"candidates": rows, "spearman": agree["spearman"], "kendall": agree["kendall"], "proxy_seconds": t_proxy,
           "full_seconds": t_full, "picked": dict(rows[agree["picked"]]), "best": dict(rows[agree["best"]])}
    if test_x is not None:  # measured once, after the choice
        for key in ("picked", "best"):
            r = train_evaluate(full_x, full_y, test_x, test_y, seed=seed, device=device, epochs=epochs_full,
                               net=out[key]["config"], **protocol)
            out[key]["full_test_accuracy"] = r["accuracy"]
    return out
