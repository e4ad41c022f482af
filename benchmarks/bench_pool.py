"""Benchmark: what ATOM+ costs, the pool stage and the iteration inside it, side by side.

Measured in one process, on random tensors of CIFAR-10 shape (10 classes, 3x32x32, ConvNet-3
width 128, batch_real 128; speed does not depend on pixel values):

1. **The pool stage's training throughput**: :func:`atom.pool.train_pool` for one member and
   one epoch over ``--train-images`` images (per-image DSA on, batch 256), as images per second,
   and what that rate makes of a whole pool over CIFAR-10's distillation training split
   (``--split`` images, 45,000 after the validation split) at the sizes params.yaml's presets
   give (``PRESETS``: ``cpu-wide-pool`` 4 members x 1 epoch, ``spec-short-atomplus`` 10 x 20,
   ``spec-atomplus`` 20 x 60). Also in distillation iterations: the pool's cost divided by one
   random-encoder iteration.
2. **One distillation iteration** (loss + backward to the synthetic pixels) of
   :class:`atom.distillation.DistillStep` with the paper's random encoders, with ``encoder: pool``
   (a member's initial and trained weights interpolated per iteration) and with
   ``encoder: pool`` + ``calibration`` (the extra cross-entropy forward/backward of the
   synthetic images under the trained expert). Same synthetic set, same seeds per iteration,
   interleaved (a load change hits all three alike); best of ``--iters`` after one untimed
   warm-up. Printed as seconds and as the ratio to random encoders.

The synthetic branch carries ``ipc * factor**2`` images per class, as multi-formation decodes
them (``cpu-wide`` uses factor 2). The pool used in part 2 is the one trained in part 1
(weights do not change the cost).

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_pool.py              # CIFAR-10 shape, IPC 1 and 10
    python benchmarks/bench_pool.py --quick                        # smoke run (tests), ~10 s
    python benchmarks/bench_pool.py --device cuda --threads 0      # GPU figures
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from atom.distillation import DistillConfig, DistillStep  # noqa: E402
from atom.pool import train_pool  # noqa: E402
from atom.runtime import configure  # noqa: E402
from benchmarks.bench_distill import one_iteration, _sync  # noqa: E402
from stages.common.params import load_params, protocol_overrides  # noqa: E402

# the protocols whose whole pools are estimated (their sizes come from params.yaml)
PRESETS = ("cpu-wide-pool", "spec-short-atomplus", "spec-atomplus")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preset_sizes(params_path: str | None = None) -> dict[str, tuple[int, int]]:
    """(members, epochs) of each preset's pool, as params.yaml (the repository's by default)
    resolves them."""
    params = load_params(params_path or os.path.join(ROOT, "params.yaml"))
    sizes = {}
    for name in PRESETS:
        pool = dict(params["pool"], **protocol_overrides(params, name, "pool"))
        sizes[name] = (pool["models"], pool["epochs"])
    return sizes
VARIANTS = {  # name: DistillConfig overrides
    "random encoders (paper)": {},
    "pool": {"encoder": "pool"},
    "pool + calibration": {"encoder": "pool", "calibration": 10.0},
}


def pool_throughput(a, dev: torch.device, x: torch.Tensor, y: torch.Tensor, net: dict):
    """Train a 2-member, 1-epoch pool; return (images/s of member training, the pool)."""
    _sync(dev)
    t = time.perf_counter()
    pool = train_pool(x, y, models=2, epochs=1, net=net, seed=0, device=dev, progress=False)
    _sync(dev)
    wall = time.perf_counter() - t
    return 2 * x.shape[0] / wall, pool, wall


def bench_iteration(a, dev: torch.device, x: torch.Tensor, y: torch.Tensor, net: dict, pool, ipc: int) -> dict:
    k = 10
    per_class = ipc * a.factor ** 2
    syn0 = torch.cat([x[y == i][:per_class] for i in range(k)]).to(dev)
    syn_labels = torch.arange(k).repeat_interleave(per_class)
    steps, syn = {}, {}
    for name, over in VARIANTS.items():
        cfg = DistillConfig(ipc=ipc, method=a.method, batch_real=a.batch_real, net=net, compile=False, **over)
        steps[name] = DistillStep(cfg, x, y, k, dev, torch.float32, pool=pool if over else None)
        syn[name] = syn0.clone().requires_grad_(True)
        one_iteration(steps[name], syn[name], syn_labels, 10_000, dev)  # warm-up, not timed
    times = {name: [] for name in steps}
    losses = {}
    for it in range(a.iters):  # interleaved
        for name, st in steps.items():
            dt, loss = one_iteration(st, syn[name], syn_labels, it, dev)
            times[name].append(dt)
            losses.setdefault(name, loss)
    best = {name: min(ts) for name, ts in times.items()}
    return {"ipc": ipc, "synthetic_images": per_class * k, "seconds": best,
            "ratio": {name: best[name] / best["random encoders (paper)"] for name in best}, "loss": losses}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: a shared machine)")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--factor", type=int, default=2, help="multi-formation factor (cpu-wide: 2)")
    ap.add_argument("--method", default="atom", choices=["atom", "datadam", "dm"])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch-real", dest="batch_real", type=int, default=128)
    ap.add_argument("--train-images", dest="train_images", type=int, default=2560,
                    help="images per pool member in the throughput run (10 batches of 256)")
    ap.add_argument("--split", type=int, default=45_000, help="training split the pool presets train on")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per variant")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="smoke run: 16x16 images, width 16, IPC 1, 1 iteration")
    a = ap.parse_args(argv)
    size = 32
    if a.quick:
        a.ipc, a.width, a.batch_real, a.iters, a.train_images, size = [1], 16, 16, 1, 320, 16
    configure(threads=a.threads or None)
    dev = torch.device(a.device)
    net = dict(width=a.width, depth=3, act="relu", norm="instancenorm", pool="avg")
    g = torch.Generator().manual_seed(0)
    n = max(a.train_images, 10 * max(a.batch_real, max(a.ipc) * a.factor ** 2))
    x, y = torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 10
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    print(f"# bench_pool: device {gpu or dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cores, load avg {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"3x{size}x{size}, ConvNet-3 width {a.width}, method {a.method}, factor {a.factor}")
    rate, pool, wall = pool_throughput(a, dev, x[:a.train_images], y[:a.train_images], net)
    rows = [bench_iteration(a, dev, x, y, net, pool, ipc) for ipc in a.ipc]
    sizes = preset_sizes()
    out = {"device": gpu or str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "pool": {"images_per_s": rate, "wall_s": wall, "train_images": a.train_images, "sizes": sizes,
                    "presets": {p: m * e * a.split / rate for p, (m, e) in sizes.items()}},
           "iterations": rows}
    print(f"\n## The pool stage: {a.train_images} images x 2 members x 1 epoch in {wall:.1f} s = "
          f"{rate:.0f} images/s per member-epoch")
    rnd = {r["ipc"]: r["seconds"]["random encoders (paper)"] for r in rows}
    head = " | ".join(f"= random-encoder iterations at IPC {ipc}" for ipc in rnd)
    print(f"| preset | members x epochs over {a.split} images | time at that rate | {head} |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in rnd) + " |")
    for p, (m, e) in sizes.items():
        s = out["pool"]["presets"][p]
        its = " | ".join(f"{s / t:.0f}" for t in rnd.values())
        print(f"| {p} | {m} x {e} | {s:.0f} s ({s / 3600:.2f} h) | {its} |")
    print("\n## One iteration (loss + backward), best of", a.iters)
    print("| IPC | synthetic images (decoded) | random encoders s | pool s | pool + calibration s | "
          "pool / random | pool + calibration / random |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        s, q = r["seconds"], r["ratio"]
        print(f"| {r['ipc']} | {r['synthetic_images']} | {s['random encoders (paper)']:.4f} | {s['pool']:.4f} | "
              f"{s['pool + calibration']:.4f} | {q['pool']:.2f}x | {q['pool + calibration']:.2f}x |")
    bad = [(r["ipc"], v, l) for r in rows for v, l in r["loss"].items() if not math.isfinite(l)]
    if bad:
        raise SystemExit(f"non-finite losses: {bad}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
