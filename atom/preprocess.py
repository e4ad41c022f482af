"""Preprocessing: per-channel normalisation and ZCA whitening, with the exact inverse.

The state is a plain dict of tensors and flags (loadable with ``weights_only=True``), fitted
once on the training set and applied unchanged to train, test and visualisation::

    state = fit(train_x, normalize=True, zca=True, zca_eps=0.1)   # spec section 4
    xw = apply(x, state)          # normalise, then whiten
    x_back = inverse(xw, state)   # un-whiten, then un-normalise (exact up to float error)

ZCA uses Kornia's :class:`kornia.enhance.ZCAWhitening` (``compute_inv=True``); its fitted
mean, transform and inverse are copied into the state so that loading needs no Kornia object.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fit", "apply", "inverse", "channel_stats"]


def channel_stats(x: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) std of (N, C, H, W), accumulated in float64 chunks
    so a large set needs no second full-size copy."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for i in range(0, x.shape[0], chunk):
        b = x[i:i + chunk].to(torch.float64)
        s += b.sum((0, 2, 3))
        s2 += (b * b).sum((0, 2, 3))
        n += b.numel() // c
    mean = s / n
    std = (s2 / n - mean * mean).clamp(min=0).sqrt()
    return mean.float(), std.float()


def fit(train_images: Tensor, *, normalize: bool = True, zca: bool = False, zca_eps: float = 0.1) -> dict:
    """Fit normalisation (and optionally ZCA) on the training images (N, C, H, W) in [0, 1]."""
    if train_images.dim() != 4:
        raise ValueError(f"train_images: expected (N, C, H, W), got shape {tuple(train_images.shape)}")
    if zca_eps <= 0:
        raise ValueError(f"zca_eps: must be > 0, got {zca_eps}")
    c = train_images.shape[1]
    state: dict = {"normalize": bool(normalize), "zca": bool(zca), "zca_eps": float(zca_eps),
                   "shape": list(train_images.shape[1:])}
    if normalize:
        mean, std = channel_stats(train_images)
        if (std <= 0).any():
            raise ValueError("train_images: a channel has zero variance; cannot normalise")
    else:
        mean, std = torch.zeros(c), torch.ones(c)
    state["mean"], state["std"] = mean, std
    if zca:
        import kornia

        flat = _normalize(train_images, state).flatten(1)  # the one extra full-size copy
        whitening = kornia.enhance.ZCAWhitening(eps=zca_eps, compute_inv=True)
        whitening.fit(flat)
        state["zca_mean"] = whitening.mean_vector.detach().reshape(-1).clone()
        state["zca_matrix"] = whitening.transform_matrix.detach().clone()
        state["zca_inverse"] = whitening.transform_inv.detach().clone()
        del flat, whitening
    return state


def _normalize(x: Tensor, state: dict) -> Tensor:
    mean = state["mean"].to(x.device, x.dtype).view(1, -1, 1, 1)
    std = state["std"].to(x.device, x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def apply(x: Tensor, state: dict, chunk: int = 8192) -> Tensor:
    """Normalise then whiten ``x`` (N, C, H, W) with a fitted state."""
    if x.dim() != 4 or list(x.shape[1:]) != list(state["shape"]):
        raise ValueError(f"x: expected (N, {', '.join(map(str, state['shape']))}), got {tuple(x.shape)}")
    out = _normalize(x, state)
    if state["zca"]:
        m = state["zca_mean"].to(x.device, x.dtype)
        w = state["zca_matrix"].to(x.device, x.dtype)
        flat = out.flatten(1)
        for i in range(0, flat.shape[0], chunk):  # in place, chunk by chunk: no second copy
            flat[i:i + chunk] = (flat[i:i + chunk] - m) @ w.t()
        out = flat.view_as(out)
    return out


def inverse(x: Tensor, state: dict) -> Tensor:
    """Exact inverse of :func:`apply`: un-whiten, then un-normalise."""
    out = x
    if state["zca"]:
        m = state["zca_mean"].to(x.device, x.dtype)
        w_inv = state["zca_inverse"].to(x.device, x.dtype)
        out = (out.flatten(1) @ w_inv.t() + m).view_as(x)
    mean = state["mean"].to(x.device, x.dtype).view(1, -1, 1, 1)
    std = state["std"].to(x.device, x.dtype).view(1, -1, 1, 1)
    return out * std + mean
