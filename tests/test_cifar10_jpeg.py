"""The real CIFAR-10 JPEG archive through `imagefolder` + normalisation + Kornia ZCA.

Uses ``../shared/datasets/cifar10-jpeg/cifar10.tar.xz`` relative to the repository root, or
the file named by ``ATOM_CIFAR10_JPEG``; skipped when neither exists. Prepares the archive
the way the download and zca stages do (sha256-checked safe extraction, decoding, in-place
``fit_apply``) and checks counts, the exact inverse and the whitened covariance.

Whitened covariance: with eps = 0.1 it is not the identity. For the normalised training
covariance C = U diag(l) U^T, Kornia's T = U diag((l + eps)^-1/2) U^T gives
cov(T z) = U diag(l / (l + eps)) U^T = I - eps T^2, identity only along directions where
l >> eps. The test compares the measured covariance with I - eps T^2 on all 3,072 variances and
on a seeded 384 x 384 block of covariances, tolerance 2e-3 absolute (float32 accumulation over
50,000 images), and checks that the correlation of neighbouring pixels (median above 0.8 before) drops
by more than 0.2.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from atom import data, preprocess

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("ATOM_CIFAR10_JPEG", REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "cifar10.tar.xz"))
SHA256 = "40018c4988ba5c3d6dc7ffa3770d18459599d3c5ce27fa139a8dcff040451741"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EPS = 0.1
TOL = 2e-3

pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")


def test_prepare_real_cifar10_jpeg(tmp_path):
    t = {"start": time.perf_counter()}
    raw = tmp_path / "raw" / "cifar10-jpeg"
    # The published sha256 only applies to the shared copy; an override may be another file.
    sha = SHA256 if "ATOM_CIFAR10_JPEG" not in os.environ else None
    data.download("imagefolder", raw, source=str(ARCHIVE), sha256=sha)
    t["download"] = time.perf_counter()
    print(f"download: {t['download'] - t['start']:.1f} s since start", flush=True)
    d = data.load("imagefolder", raw, source=str(ARCHIVE), mode="rgb", workers=2)
    t["load"] = time.perf_counter()
    print(f"load: {t['load'] - t['start']:.1f} s since start", flush=True)
    assert d.classes == CLASSES
    assert d.train_images.shape == (50000, 3, 32, 32) and d.test_images.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(d.train_labels, minlength=10), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(d.test_labels, minlength=10), torch.full((10,), 1000))
    assert 0 <= float(d.train_images.min()) and float(d.train_images.max()) <= 1

    keep = d.train_images[:2000].clone()
    # Neighbouring pixels (same channel, adjacent columns) before whitening, normalised.
    z = keep.flatten(1)
    z = (z - z.mean(0)) / z.std(0)
    pairs = torch.arange(0, 3072 - 1, 7)
    pairs = pairs[(pairs % 32) != 31]
    corr_before = (z[:, pairs] * z[:, pairs + 1]).mean(0)
    assert float(corr_before.median()) > 0.8

    state, train = preprocess.fit_apply(d.train_images, normalize=True, zca=True, zca_eps=EPS, inplace=True)
    t["fit"] = time.perf_counter()
    print(f"fit: {t['fit'] - t['start']:.1f} s since start", flush=True)
    test = preprocess.apply(d.test_images, state)
    t["apply"] = time.perf_counter()
    print(f"apply: {t['apply'] - t['start']:.1f} s since start", flush=True)

    # Exact inverse (up to float error) on train and test images.
    assert float((preprocess.inverse(train[:2000], state) - keep).abs().max()) < 1e-4
    assert float((preprocess.inverse(test, state) - d.test_images).abs().max()) < 1e-4

    # Whitened covariance against theory: I - eps T^2.
    n = train.shape[0]
    flat = train.view(n, -1)
    tm = state["zca_matrix"].double()
    mean = torch.zeros(3072, dtype=torch.float64)
    sq = torch.zeros(3072, dtype=torch.float64)
    for i in range(0, n, 5000):  # chunked, in float64: no full-size copy
        b = flat[i:i + 5000].double()
        mean += b.sum(0)
        sq += (b * b).sum(0)
    mean /= n
    var = (sq - n * mean * mean) / (n - 1)
    assert float(mean.abs().max()) < 1e-3
    theory_var = 1 - EPS * (tm * tm).sum(1)  # diag(I - eps T^2), T symmetric
    assert float((var - theory_var).abs().max()) < TOL
    idx = torch.randperm(3072, generator=torch.Generator().manual_seed(0))[:384]
    sub = flat[:, idx].double()
    sub -= sub.mean(0)
    cov = sub.T @ sub / (n - 1)
    theory = torch.eye(384, dtype=torch.float64) - EPS * (tm[idx] @ tm[:, idx])
    dev = float((cov - theory).abs().max())
    assert dev < TOL
    # Decorrelation: neighbouring pixels are much less correlated (not fully: eps = 0.1
    # keeps the high-frequency directions, where l < eps, shrunk rather than whitened).
    wz = flat[:2000] / flat[:2000].std(0)
    corr_after = (wz[:, pairs] * wz[:, pairs + 1]).mean(0)
    assert float(corr_after.median()) < float(corr_before.median()) - 0.2
    t["checks"] = time.perf_counter()
    steps = list(t)
    print("timings (s): " + ", ".join(f"{b}={t[b] - t[a]:.1f}" for a, b in zip(steps, steps[1:]))
          + f", total={t['checks'] - t['start']:.1f}; cov deviation {dev:.2e}, var deviation "
          f"{float((var - theory_var).abs().max()):.2e}, whitened var range [{float(var.min()):.3f}, "
          f"{float(var.max()):.3f}], neighbour corr {float(corr_before.median()):.2f} -> "
          f"{float(corr_after.median()):.2f}")
