"""Datasets: the embedded digits set and the registry of downloadable datasets.

Every loader returns an :class:`ImageDataset`: float tensors in [0, 1] of shape
(N, C, H, W), integer labels ``0..K-1`` and the class names. ``load_digits`` needs no
network: it reads scikit-learn's bundled copy of the UCI handwritten digits (1,797 real
8x8 grayscale images) and splits it with a fixed seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

__all__ = ["ImageDataset", "load_digits", "DATASETS", "register", "download", "load"]


@dataclass
class ImageDataset:
    """A labelled image set with a fixed train/test split."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, classes={self.num_classes})")


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's digits as (N, 1, 8, 8) floats in [0, 1]; a stratified split fixed by ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: must lie in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    test_idx, train_idx = [], []
    for k in range(10):  # stratified: the same fraction of every class goes to test
        idx = (y == k).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx, test_idx = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return ImageDataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx],
                        [str(k) for k in range(10)])


@dataclass
class DatasetSpec:
    """How to fetch a dataset into ``raw_dir`` and how to load it from there."""

    download: Callable[..., Path]
    load: Callable[..., ImageDataset]
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {}


def register(name: str, spec: DatasetSpec) -> None:
    DATASETS[name] = spec


def _check_name(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return DATASETS[name]


def download(name: str, raw_dir: str | Path, **options) -> Path:
    """Fetch ``name`` into ``raw_dir`` (no network when its files are already there)."""
    return _check_name(name).download(Path(raw_dir), **options)


def load(name: str, raw_dir: str | Path, **options) -> ImageDataset:
    """Decode ``name`` from ``raw_dir`` into an :class:`ImageDataset`."""
    return _check_name(name).load(Path(raw_dir), **options)


def _digits_download(raw_dir: Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    # scikit-learn ships the data; "downloading" exports the split tensors so that the DAG is
    # the same for every dataset and DVC can track the raw folder.
    from .io import save_tensors

    d = load_digits(test_fraction=test_fraction, seed=seed)
    out = raw_dir / "digits.pt"
    save_tensors({"train_images": d.train_images, "train_labels": d.train_labels,
                  "test_images": d.test_images, "test_labels": d.test_labels,
                  "classes": d.classes}, out)
    return out


def _digits_load(raw_dir: Path, **_ignored) -> ImageDataset:
    from .io import load_tensors

    t = load_tensors(raw_dir / "digits.pt")
    return ImageDataset("digits", t["train_images"], t["train_labels"], t["test_images"],
                        t["test_labels"], list(t["classes"]))


register("digits", DatasetSpec(_digits_download, _digits_load,
                               "scikit-learn's bundled UCI digits, 1,797 8x8 grayscale images"))
