"""Checks and draws on labelled image sets shared by distillation, selection and evaluation:
validating an (N, C, H, W) set, resolving ``"auto"`` to a device, and the seeded
class-by-class random subset that both the real initialisation and the ``random`` baseline use.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["resolve_device", "check_dataset", "random_subset"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


def check_dataset(images: Tensor, labels: Tensor, num_classes: int | None = None,
                  name: str = "images") -> int:
    """Validate an (N, C, H, W) float batch and its labels; return the number of classes."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a 4-D tensor (N, C, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected floating-point pixels, got {images.dtype}")
    lname = "labels" if name == "images" else f"{name} labels"
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lname}: expected a 1-D tensor of {images.shape[0]} class indices")
    if labels.is_floating_point():
        raise ValueError(f"{lname}: expected integer class indices, got {labels.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: the set is empty")
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(f"{lname}: values must lie in [0, {k}), got [{int(labels.min())}, {int(labels.max())}]")
    return k


def random_subset(labels: Tensor, ipc: int, generator: torch.Generator, num_classes: int) -> Tensor:
    """Indices of ``ipc`` random images per class, class by class. Distillation's real
    initialisation and the ``random`` baseline both call this first on a fresh generator
    seeded with the same seed, so they pick the same images."""
    idx = []
    for k in range(num_classes):
        cls = (labels == k).nonzero().squeeze(1)
        idx.append(cls[torch.randperm(len(cls), generator=generator)[:ipc]])
    return torch.cat(idx)
