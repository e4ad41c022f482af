"""One cell of the distillation ablation: distil with validation-selected iterations, then
evaluate the chosen set on the test set.

    python scripts/ablation.py --prepared data/prepared/cifar10-jpeg.pt --protocol cpu \\
        --method atom --ipc 10 --name init-herding --set distill.init=herding

The recipe is ``params.yaml``'s ``protocols.<protocol>`` group (distillation, validation and
evaluation settings) with the ``--set`` overrides applied (dotted keys, YAML values). Every
choice (the iteration kept, and across cells the recipe) is made on the validation split
carved from the training set; the test set is read once per cell, after the choice, by the
final evaluation. ``--method random`` or ``--method selected`` evaluates the initial set
alone (no distillation). One JSON file per cell lands in ``--out``: the recipe, the
validation curve, the chosen iteration, per-seed test accuracies, mean, std, n, wall times.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atom.distill import distill  # noqa: E402
from atom.evaluate import evaluate  # noqa: E402
from atom.io import load_tensors, write_json  # noqa: E402
from atom.selection import select  # noqa: E402
from atom.sets import random_subset  # noqa: E402
from atom.validation import validation_split  # noqa: E402


def set_key(d: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[last] = value


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True, help="a zca stage output (<dataset>.pt)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--protocol", default="cpu")
    ap.add_argument("--method", required=True, help="atom | datadam | dm | random | selected")
    ap.add_argument("--ipc", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(ROOT / "results" / "ablation"))
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = yaml.safe_load(Path(a.params).read_text())
    recipe = copy.deepcopy(params["protocols"][a.protocol])
    for kv in a.set:
        key, _, value = kv.partition("=")
        set_key(recipe, key, yaml.safe_load(value))
    torch.manual_seed(0)  # nothing should draw from it; set so a stray draw is at least repeatable

    data = load_tensors(a.prepared)
    x, y = data["train_images"], data["train_labels"]
    val = recipe["validation"]
    tr, va = validation_split(y, val["per_class"], val["seed"])
    xt, yt, xv, yv = x[tr], y[tr], x[va], y[va]
    ev = recipe["evaluate"]
    vev = dict(ev, **{k: v for k, v in val.items() if k not in ("per_class", "seed", "seeds")})
    dcfg = dict(recipe["distill"])
    seed = dcfg.pop("seed", 0)

    def validator(images, labels):
        return evaluate(images, labels, xv, yv, seeds=val["seeds"], device="cpu", progress=False, **vev)["mean"]

    t0 = time.perf_counter()
    out = {"name": a.name, "method": a.method, "ipc": a.ipc, "protocol": a.protocol, "recipe": recipe,
           "overrides": a.set, "threads": torch.get_num_threads()}
    if a.method in ("random", "selected"):
        if a.method == "random":
            idx = random_subset(yt, a.ipc, torch.Generator().manual_seed(seed), 10)
        else:
            opts = dict(dcfg.get("init_options", {}))
            opts["net"] = dict(dcfg["net"], **opts.get("net", {}))
            idx = select(xt, yt, a.ipc, dcfg["init"], seed=seed, device="cpu", **opts)
        syn_x, syn_y = xt[idx], yt[idx]
        out["val_curve"] = [[0, validator(syn_x, syn_y)]]
        out["best_iteration"] = 0
    else:
        res = distill(xt, yt, ipc=a.ipc, method=a.method, device="cpu", progress=False, seed=seed,
                      validator=validator, **dcfg)
        syn_x, syn_y = res.best_images, res.labels
        out.update(val_curve=res.val_curve, best_iteration=res.best_iteration, losses=res.losses,
                   distill_seconds=res.seconds)
    out["select_seconds"] = time.perf_counter() - t0
    r = evaluate(syn_x, syn_y, data["test_images"], data["test_labels"], device="cpu", progress=False, **ev)
    out.update(test=r["per_seed"], mean=r["mean"], std=r["std"], n=r["n"], seconds=time.perf_counter() - t0)
    path = Path(a.out) / f"{a.method}-ipc{a.ipc}-{a.name}.json"
    write_json(out, path)
    print(json.dumps({k: out[k] for k in ("name", "method", "ipc", "best_iteration", "mean", "std", "n", "seconds")}
                     | {"val": out["val_curve"]}), flush=True)


if __name__ == "__main__":
    main()
