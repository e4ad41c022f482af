"""Preprocessing: per-channel normalisation and ZCA whitening, with the exact inverse.

The state is a plain dict of tensors and flags (loadable with ``weights_only=True``), fitted
once on the training set and applied unchanged to train, test and visualisation::

    state = fit(train_x, normalize=True, zca=True, zca_eps=0.1)   # spec section 4
    xw = apply(x, state)          # normalise, then whiten
    x_back = inverse(xw, state)   # un-whiten, then un-normalise (exact up to float error)

ZCA uses Kornia's :class:`kornia.enhance.ZCAWhitening` (``compute_inv=True``); its fitted
mean, transform and inverse are copied into the state so that loading needs no Kornia object.

Memory. Kornia's ``fit`` makes one centred full-size copy of its input (``x - mean``) before
the covariance product. :func:`fit` must leave its input untouched, so it also holds a
normalised copy: three full-size matrices at its peak. :func:`fit_apply` with
``inplace=True`` normalises the training set in its own buffer, lets Kornia fit on that, and
whitens the same buffer chunk by chunk, so it never holds more than two (the input and
Kornia's centred copy) plus a few D x D matrices. That is the path for CIFAR-sized sets::

    state, train = fit_apply(train_x, zca=True, inplace=True)   # train_x is overwritten
    test = apply(test_x, state, inplace=True)
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fit", "fit_apply", "apply", "inverse", "channel_stats"]


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


def _fit_stats(train_images: Tensor, normalize: bool, zca: bool, zca_eps: float) -> dict:
    if train_images.dim() != 4:
        raise ValueError(f"train_images: expected (N, C, H, W), got shape {tuple(train_images.shape)}")
    if not train_images.is_floating_point():
        raise ValueError(f"train_images: expected a float tensor, got {train_images.dtype}")
    if not isinstance(zca_eps, (int, float)) or zca_eps <= 0:
        raise ValueError(f"zca_eps: must be > 0, got {zca_eps!r}")
    if zca and train_images.shape[0] < 2:
        raise ValueError(f"train_images: ZCA needs at least 2 images, got {train_images.shape[0]}")
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
    return state


def _fit_zca(normalized: Tensor, state: dict) -> None:
    """Fit Kornia's ZCA on already-normalised images; store mean, matrix and inverse."""
    import kornia

    flat = normalized.flatten(1)  # a view for contiguous input: Kornia's centring is the one copy
    whitening = kornia.enhance.ZCAWhitening(eps=float(state["zca_eps"]), compute_inv=True)
    whitening.fit(flat)
    state["zca_mean"] = whitening.mean_vector.detach().reshape(-1).clone()
    state["zca_matrix"] = whitening.transform_matrix.detach().clone()
    state["zca_inverse"] = whitening.transform_inv.detach().clone()


def fit(train_images: Tensor, *, normalize: bool = True, zca: bool = False, zca_eps: float = 0.1) -> dict:
    """Fit normalisation (and optionally ZCA) on the training images (N, C, H, W) in [0, 1].

    Leaves ``train_images`` untouched; with ``zca`` its peak is three full-size copies (see the
    module note). Use :func:`fit_apply` with ``inplace=True`` to stay within two."""
    state = _fit_stats(train_images, normalize, zca, zca_eps)
    if zca:
        work = train_images.contiguous().clone()
        _normalize_(work, state)
        _fit_zca(work, state)
        del work
    return state


def fit_apply(train_images: Tensor, *, normalize: bool = True, zca: bool = False, zca_eps: float = 0.1,
              inplace: bool = False) -> tuple[dict, Tensor]:
    """Fit on ``train_images`` and return ``(state, apply(train_images, state))``.

    With ``inplace=True`` the result is written into ``train_images`` itself (which must be a
    contiguous float tensor); the peak is then two full-size copies: that buffer and Kornia's
    centred copy during the fit."""
    state = _fit_stats(train_images, normalize, zca, zca_eps)
    if inplace:
        if not train_images.is_contiguous():
            raise ValueError("train_images: inplace=True needs a contiguous tensor")
        out = train_images
    else:
        out = train_images.contiguous().clone()
    _normalize_(out, state)
    if zca:
        _fit_zca(out, state)
        _whiten_(out, state)
    return state, out


def _normalize_(x: Tensor, state: dict) -> Tensor:
    mean = state["mean"].to(x.device, x.dtype).view(1, -1, 1, 1)
    std = state["std"].to(x.device, x.dtype).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def _whiten_(x: Tensor, state: dict, chunk: int = 8192) -> Tensor:
    m = state["zca_mean"].to(x.device, x.dtype)
    w = state["zca_matrix"].to(x.device, x.dtype)
    flat = x.view(x.shape[0], -1)
    for i in range(0, flat.shape[0], chunk):  # chunk by chunk: one chunk-sized temporary
        flat[i:i + chunk] = (flat[i:i + chunk] - m) @ w.t()
    return x


def apply(x: Tensor, state: dict, chunk: int = 8192, inplace: bool = False) -> Tensor:
    """Normalise then whiten ``x`` (N, C, H, W) with a fitted state; ``inplace=True`` writes
    into ``x`` (contiguous float) instead of a new tensor."""
    if x.dim() != 4 or list(x.shape[1:]) != list(state["shape"]):
        raise ValueError(f"x: expected (N, {', '.join(map(str, state['shape']))}), got {tuple(x.shape)}")
    if inplace and not (x.is_contiguous() and x.is_floating_point()):
        raise ValueError("x: inplace=True needs a contiguous float tensor")
    out = x if inplace else x.contiguous().clone()
    if not out.is_floating_point():
        out = out.float()
    _normalize_(out, state)
    if state["zca"]:
        _whiten_(out, state, chunk)
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
