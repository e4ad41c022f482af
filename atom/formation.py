"""Multi-formation (IDC: Kim et al., "Dataset Condensation via Efficient Synthetic-Data
Parameterization", ICML 2022): more training images from the same storage.

With ``factor`` f > 1 every stored synthetic image is a mosaic of f x f tiles of
(H/f, W/f) pixels. :func:`decode` cuts the tiles and upsamples each to (H, W) (bilinear), so
``ipc`` stored images per class train a network as ``ipc * f**2`` images; the storage budget
(the number of H x W images kept) is unchanged. Distillation matches the decoded images (the
gradient flows through the upsampling into the mosaic), every evaluation trains on the decoded
images, and :func:`encode` builds the initial mosaics from ``f**2`` real images each
(area-downsampled). ``factor = 1`` is the identity everywhere.

This is not part of the ATOM paper's method; it is a parameterisation that any of the three
losses can use (``distill.factor``), reported as such in ``docs/results.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["decode", "encode", "check_factor", "training_set"]


def check_factor(factor, height: int | None = None, width: int | None = None) -> None:
    """``factor`` must be an integer >= 1 and, given an image size, divide it."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor: must be an integer >= 1, got {factor!r}")
    if height is not None and (height % factor or width % factor):
        raise ValueError(f"factor: {factor} does not divide the image size {height}x{width}")


def decode(images: Tensor, labels: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) mosaics -> (N * f**2, C, H, W) upsampled tiles, tile-major per mosaic;
    labels repeated alike. Differentiable."""
    n, c, h, w = images.shape
    check_factor(factor, h, w)
    if factor == 1:
        return images, labels
    hs, ws = h // factor, w // factor
    tiles = images.reshape(n, c, factor, hs, factor, ws).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, hs, ws)
    up = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    return up, labels.repeat_interleave(factor * factor)


def encode(images: Tensor, factor: int) -> Tensor:
    """(M * f**2, C, H, W) images -> (M, C, H, W) mosaics: each run of f**2 consecutive images,
    downsampled to (H/f, W/f), fills one mosaic row by row."""
    n, c, h, w = images.shape
    check_factor(factor, h, w)
    if factor == 1:
        return images
    if n % (factor * factor):
        raise ValueError(f"encode: {n} images do not fill mosaics of {factor * factor}")
    hs, ws = h // factor, w // factor
    small = F.interpolate(images, size=(hs, ws), mode="area")
    return small.reshape(-1, factor, factor, c, hs, ws).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h, w)


def training_set(record: dict) -> tuple[Tensor, Tensor]:
    """The images a network trains on from a distill stage record (``synthetic.pt``): the
    decoded mosaics when the set was distilled with ``factor > 1``."""
    factor = int((record.get("config") or {}).get("factor", 1))
    return decode(record["images"], record["labels"], factor)
