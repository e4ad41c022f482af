"""Benchmark: batched multi-seed evaluation vs one seed vs the seeds one by one.

Trains ConvNet-3 (width 128, InstanceNorm) on a synthetic set of CIFAR-10 shape
(10 classes x IPC images, 32x32x3; random tensors: speed does not depend on pixel values)
with the evaluation protocol (SGD, batch min(256, |S|), per-image DSA, cross-entropy) for a
few epochs, three ways in one process with the same allocator and thread settings:

- ``1 seed``: :func:`atom.evaluation.train_evaluate` once;
- ``N sequential``: :func:`atom.evaluation.evaluate` (one network after the other);
- ``N batched``: :func:`atom.evaluation.evaluate` with ``batched=True`` (:mod:`atom.batched`),
  in both of its modes: ``loop`` (the CPU default) and ``vmap`` (the CUDA default).

It prints wall time per variant, batched/sequential and batched/one-seed ratios, the core
utilisation (process CPU time / wall time, i.e. how many cores were busy on average) and
whether batched and sequential per-seed accuracies agree.

Run::

    python benchmarks/bench_evaluate.py                 # IPC 10, 5 seeds, 4 epochs
    python benchmarks/bench_evaluate.py --quick         # smoke run (tests/CI)
    python benchmarks/bench_evaluate.py --device cuda --ipc 50 --epochs 50
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atom.evaluation import EvalConfig, evaluate, train_evaluate  # noqa: E402
from atom.runtime import configure  # noqa: E402


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--test", type=int, default=500, help="test images")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: PyTorch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 epochs: a smoke run")
    a = ap.parse_args(argv)
    if a.quick:
        a.ipc, a.seeds, a.epochs, a.width, a.size, a.test = 2, 2, 2, 16, 16, 100
    configure(threads=a.threads or None)
    dev = torch.device(a.device)
    k, c = 10, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k * a.ipc, c, a.size, a.size, generator=g)
    y = torch.arange(k).repeat_interleave(a.ipc)
    tx = torch.randn(a.test, c, a.size, a.size, generator=g)
    ty = torch.arange(a.test) % k
    depth = 3 if a.size >= 32 else 2
    cfg = EvalConfig(epochs=a.epochs, net=dict(width=a.width, depth=depth, act="relu", norm="instancenorm", pool="avg"))
    seeds = list(range(a.seeds))
    print(f"# bench_evaluate: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    print(f"# |S| = {k}x{a.ipc} images {c}x{a.size}x{a.size}, ConvNet-{depth} width {a.width}, "
          f"{a.epochs} epochs, batch {min(cfg.batch_size, len(x))}, {a.seeds} seeds")
    kw = dict(num_classes=k, device=dev, config=cfg)
    # warm-up (allocator, kernels) so the first timed variant is not penalised
    warm = dict(kw, config=EvalConfig(epochs=1, net=cfg.net))
    train_evaluate(x, y, tx, ty, seed=99, **warm)
    evaluate(x, y, tx, ty, seeds=[97, 98], progress=False, batched=True, **warm)
    one, w1, c1 = timed(lambda: train_evaluate(x, y, tx, ty, seed=0, **kw))
    seq, ws, cs = timed(lambda: evaluate(x, y, tx, ty, seeds=seeds, progress=False, batched=False, **kw))
    from atom.batched import evaluate_batched
    bat, wb, cb = timed(lambda: evaluate(x, y, tx, ty, seeds=seeds, progress=False, batched=True, **kw))
    other = "vmap" if dev.type != "cuda" else "loop"
    bat2, wv, cv = timed(lambda: evaluate_batched(x, y, tx, ty, seeds=seeds, progress=False, mode=other, **kw))
    steps = a.epochs * -(-len(x) // min(cfg.batch_size, len(x)))
    default = "vmap" if dev.type == "cuda" else "loop"
    rows = [("1 seed", w1, c1, 1), (f"{a.seeds} sequential", ws, cs, a.seeds),
            (f"{a.seeds} batched {default}", wb, cb, a.seeds), (f"{a.seeds} batched {other}", wv, cv, a.seeds)]
    print(f"{'variant':<20}{'wall s':>9}{'ms/step/seed':>14}{'cores busy':>12}")
    for name, w, cpu, n in rows:
        print(f"{name:<20}{w:>9.2f}{1000 * w / steps / n:>14.1f}{cpu / w:>12.2f}")
    diff = max(abs(p - q) for p, q in zip(seq["per_seed"], bat["per_seed"] + bat2["per_seed"]))
    print(f"batched ({default}) / sequential wall: {wb / ws:.2f}   (target <= 1 on this CPU); "
          f"batched ({other}) / sequential: {wv / ws:.2f}")
    print(f"batched {a.seeds} seeds / 1 seed wall: {wb / w1:.2f}   (GPU target <= 1.5)")
    print(f"per-seed accuracy sequential {[round(v, 2) for v in seq['per_seed']]}, batched "
          f"{[round(v, 2) for v in bat['per_seed']]} ({default}), {[round(v, 2) for v in bat2['per_seed']]} ({other}), "
          f"max |diff| {diff:.2f} points")
    return {"one": w1, "sequential": ws, "batched": wb, f"batched_{other}": wv, "accuracy_diff": diff,
            "util": {"one": c1 / w1, "sequential": cs / ws, "batched": cb / wb, f"batched_{other}": cv / wv}}


if __name__ == "__main__":
    main()
