"""Pilot for the selection rules: validation accuracy of initial sets chosen by each rule.

    python scripts/selection_pilot.py --prepared data/prepared/cifar10-jpeg.pt --ipc 10 \\
        --rules random herding:0 herding:2 kcenter:2

``rule:E`` selects with an embedding ConvNet trained for E epochs (0 = random weights). Each
set is scored on the validation split (500 images per class carved from the training set,
seed 0) by ConvNet-3 width 64 trained 300 epochs (seeds 0 and 1); the test set is not read.
One JSON line per rule.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atom.evaluation import evaluate  # noqa: E402
from atom.io import load_tensors  # noqa: E402
from atom.selection import select  # noqa: E402
from atom.validation import carve  # noqa: E402

NET = dict(width=64, depth=3, act="relu", norm="instancenorm", pool="avg")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--ipc", type=int, required=True)
    ap.add_argument("--rules", nargs="+", default=["random", "herding:0", "herding:2", "kcenter:2"])
    a = ap.parse_args(argv)
    d = load_tensors(a.prepared)
    xt, yt, xv, yv = carve(d["train_images"], d["train_labels"], 500, 0, len(d["classes"]))
    for spec in a.rules:
        rule, _, epochs = spec.partition(":")
        t0 = time.perf_counter()
        idx = select(xt, yt, a.ipc, rule, seed=0, encoder_epochs=int(epochs or 0), net=NET, device="cpu")
        t1 = time.perf_counter()
        r = evaluate(xt[idx], yt[idx], xv, yv, seeds=[0, 1], epochs=300, net=NET, device="cpu", progress=False)
        print(json.dumps({"ipc": a.ipc, "rule": rule, "encoder_epochs": int(epochs or 0), "select_s": round(t1 - t0, 1),
                          "val": r["per_seed"], "mean": r["mean"]}), flush=True)


if __name__ == "__main__":
    main()
