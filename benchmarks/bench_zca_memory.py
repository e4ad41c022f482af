"""Peak memory of ZCA fitting on a CIFAR-10-sized training set (50,000 x 3,072 floats).

    .venv/bin/python benchmarks/bench_zca_memory.py [--n 50000] [--threads 2]

Each variant runs in its own fresh process, because the peak resident set size
(``resource.getrusage(...).ru_maxrss``) is a per-process high-water mark. Prints, per variant,
the peak RSS above the process's resident size just before the matrix was created, in MB and
in units of one copy of the matrix (N x 3,072 x 4 bytes), plus the wall time. Variants:

- ``fit_apply_inplace``: ``preprocess.fit_apply(x, zca=True, inplace=True)`` then
  ``apply(test, inplace=True)`` (the memory-bounded path: input + Kornia's centred copy);
- ``fit_then_apply``: ``fit(x)`` then ``apply(x)`` (input untouched: normalised copy, Kornia's
  centred copy, then the output);
- ``dxd_only``: Kornia's fit on 16 x 3,072 images: the fixed cost of its 3,072 x 3,072
  covariance, float64 SVD and LAPACK workspace, which any N pays on top of the copies.

The data are uniform random numbers: the memory and time of the fit do not depend on them.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(variant: str, n: int, threads: int) -> dict:
    import torch

    from atom import preprocess

    torch.set_num_threads(threads)
    import kornia  # noqa: F401  (imported before the baseline so its import is not counted)

    base = _rss_now_mb()
    g = torch.Generator().manual_seed(0)
    if variant == "dxd_only":
        n = 16
    x = torch.empty(n, 3, 32, 32).uniform_(0, 1, generator=g)  # filled in place: no temporary
    test = torch.empty(max(n // 5, 1), 3, 32, 32).uniform_(0, 1, generator=g)
    after_data = _rss_now_mb()
    t0 = time.perf_counter()
    if variant in ("fit_apply_inplace", "dxd_only"):
        state, train = preprocess.fit_apply(x, zca=True, zca_eps=0.1, inplace=True)
        test_w = preprocess.apply(test, state, inplace=True)
    elif variant == "fit_then_apply":
        state = preprocess.fit(x, zca=True, zca_eps=0.1)
        train = preprocess.apply(x, state)
        test_w = preprocess.apply(test, state)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    seconds = time.perf_counter() - t0
    copy_mb = x.numel() * 4 / 2**20
    test_mb = test.numel() * 4 / 2**20
    peak = _peak_mb()
    return {"variant": variant, "n": n, "train_copy_mb": round(copy_mb, 1), "test_mb": round(test_mb, 1),
            "base_mb": round(base, 1), "peak_above_base_mb": round(peak - base, 1),
            "peak_minus_test_in_train_copies": round((peak - base - test_mb) / copy_mb, 2),
            "seconds": round(seconds, 1), "finite": bool(train.isfinite().all() and test_w.isfinite().all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(child(a.variant, a.n, a.threads)))
        return
    rows = []
    for v in ("dxd_only", "fit_apply_inplace", "fit_then_apply"):
        out = subprocess.run([sys.executable, __file__, "--variant", v, "--n", str(a.n), "--threads", str(a.threads)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    dxd = rows[0]["peak_above_base_mb"]
    for r in rows[1:]:
        full = (r["peak_above_base_mb"] - r["test_mb"] - dxd) / r["train_copy_mb"]
        print(f"{r['variant']}: peak {r['peak_above_base_mb']:.0f} MB above baseline = test set "
              f"{r['test_mb']:.0f} MB + fixed D x D work {dxd:.0f} MB + {full:.2f} copies of the "
              f"{r['n']} x 3072 matrix ({r['train_copy_mb']:.0f} MB each); {r['seconds']} s")


if __name__ == "__main__":
    main()
