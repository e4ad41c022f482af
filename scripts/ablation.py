"""One cell of the distillation ablation: distil with validation-selected iterations, then
evaluate the chosen set on the test set.

    python scripts/ablation.py --dataset cifar10-jpeg --protocol cpu --method atom --ipc 10 \
        --name init-herding --set distill.init=herding

The recipe is what the pipeline would run for that dataset group under the named protocol
(``stages.common.params``: the shared sections, the group's overrides, then ``protocols.<protocol>``),
with the ``--set`` overrides applied to the resolved ``distill`` / ``evaluate`` / ``validation``
settings (dotted keys, YAML values). Every choice (the iteration kept, and across cells the
recipe) is made on the validation split carved from the training set; the test set is read
once per cell, after the choice, by the final evaluation. ``--method random`` or
``--method selected`` evaluates an initial set alone (no distillation). One JSON file per
cell lands in ``--out``: the resolved recipe, the validation curve, the chosen iteration,
per-seed test accuracies, mean, std, n, wall times. ``--prepared`` defaults to the zca stage's
output for the dataset (run ``python -m stages.download`` and ``python -m stages.zca`` first).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atom.distillation import distill  # noqa: E402
from atom.evaluation import baseline_set, evaluate  # noqa: E402
from atom.io import load_tensors, save_tensors, write_json  # noqa: E402
from atom.formation import decode  # noqa: E402
from atom.pool import EncoderPool  # noqa: E402
from atom.selection import rule_of, selected_set  # noqa: E402
from atom.validation import carve, make_validator  # noqa: E402
from stages.common.contract import METHODS, path  # noqa: E402
from stages.common.params import distill_kwargs, evaluate_settings, load_params, section, uses_pool  # noqa: E402


def set_key(d: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[last] = value


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """``recipe`` with each ``KEY=VALUE`` (``distill.`` / ``evaluate.`` / ``validation.`` dotted
    keys, YAML values) set in place; a malformed entry stops with its text."""
    for kv in overrides:
        key, sep, value = kv.partition("=")
        if not sep or key.split(".")[0] not in recipe or "." not in key:
            raise SystemExit(f"--set: expected distill.KEY=VALUE, evaluate.KEY=VALUE or validation.KEY=VALUE, got {kv!r}")
        set_key(recipe, key, yaml.safe_load(value))
    return recipe


def run_cell(data: dict, recipe: dict, method: str, ipc: int, device: str = "cpu", crosscheck: bool = False,
             save: str | None = None, pool=None) -> dict:
    """Distil (or select) on the training part of ``data`` with ``recipe``, keep the
    validation-selected set, evaluate it on the test set; return the record.

    ``crosscheck`` also scores the kept set, after the choice, with each protocol on the other
    split: the evaluation's networks (its epochs and seeds) on the validation split, and the
    validation scorer's networks on the test set. Together with the validation curve and the
    test result this separates what the split does from what the evaluator does when the two
    rank sets differently; nothing is chosen with it. ``save`` writes the kept (decoded) set
    as ``{"images", "labels"}`` tensors. ``pool``: the :class:`atom.pool.EncoderPool` that
    ``distill.encoder`` pool/trained and ``distill.calibration`` read (trained on the same
    training part: the pool stage carves the same validation split)."""
    x, y = data["train_images"], data["train_labels"]
    k = len(data["classes"])
    val = recipe["validation"]
    xt, yt, xv, yv = carve(x, y, val["per_class"], val["seed"], k)
    if xv is None:  # every cell keeps the validation-selected iteration; --crosscheck scores on it too
        raise ValueError(f"validation.per_class: an ablation cell needs a validation split (a positive count), "
                         f"got {val['per_class']!r}")
    ev = {key: v for key, v in recipe["evaluate"].items() if key != "seeds"}
    scorer = dict(ev, epochs=val["epochs"])  # the validation scorer: the evaluation's settings, its own epochs
    validator = make_validator(xv, yv, seeds=val["seeds"], num_classes=k, device=device, **scorer)
    dcfg = dict(recipe["distill"])
    seed = dcfg.pop("seed")

    t0 = time.perf_counter()
    out = {"method": method, "ipc": ipc, "recipe": recipe, "threads": torch.get_num_threads(), "device": device}
    if pool is not None and uses_pool(dcfg):
        out["pool"] = {"fingerprint": pool.fingerprint, "members": len(pool), **pool.meta}
    if method in ("random", "selected"):
        if method == "random":
            syn_x, syn_y = baseline_set("random", xt, yt, ipc=ipc, seed=seed, num_classes=k)
        else:  # distillation's start (factor > 1: mosaics of factor**2 selected images, decoded)
            syn_x, syn_y = decode(*selected_set(xt, yt, ipc, rule_of(dcfg["init"]), factor=dcfg["factor"], seed=seed,
                                                num_classes=k, device=device, net=dcfg["net"],
                                                **dcfg["init_options"]), dcfg["factor"])
        out["val_curve"] = [[0, validator(syn_x, syn_y)]]
        out["best_iteration"] = 0
    else:
        res = distill(xt, yt, ipc=ipc, method=method, num_classes=k, device=device, progress=False, seed=seed,
                      validator=validator, pool=pool, **dcfg)
        syn_x, syn_y = res.training_set()  # decoded when distill.factor > 1
        out.update(val_curve=res.val_curve, best_iteration=res.best_iteration, losses=res.losses,
                   distill_seconds=res.seconds, speed=res.config.get("resolved"))
    out["select_seconds"] = time.perf_counter() - t0
    r = evaluate(syn_x, syn_y, data["test_images"], data["test_labels"], seeds=recipe["evaluate"]["seeds"],
                 num_classes=k, device=device, progress=False, **ev)
    out.update(test=r["per_seed"], mean=r["mean"], std=r["std"], n=r["n"], seconds=time.perf_counter() - t0)
    if crosscheck:  # reported beside the result; the kept iteration was fixed above
        cross = {"validation_by_evaluation": evaluate(syn_x, syn_y, xv, yv, seeds=recipe["evaluate"]["seeds"],
                                                      num_classes=k, device=device, progress=False, **ev),
                 "test_by_scorer": evaluate(syn_x, syn_y, data["test_images"], data["test_labels"],
                                            seeds=val["seeds"], num_classes=k, device=device, progress=False,
                                            **scorer)}
        out["crosscheck"] = {name: {"per_seed": c["per_seed"], "seeds": c["seeds"], "mean": c["mean"], "std": c["std"],
                                    "n": c["n"]} for name, c in cross.items()}
    if save:
        save_tensors({"images": syn_x.cpu(), "labels": syn_y.cpu()}, save)
    return out


def recipe_for(params: dict, dataset: str, method: str, protocol: str | None) -> dict:
    """The resolved distill / evaluate / validation settings the pipeline would use."""
    params = copy.deepcopy(params)
    if protocol is not None:
        params["datasets"][dataset]["protocol"] = protocol
    seeds, ev, batched = evaluate_settings(params, dataset, method if method in METHODS else "random")
    ev["batched"] = batched  # true | false | "auto": atom.evaluation resolves it per device
    dcfg = distill_kwargs(params, dataset, method if method in METHODS else METHODS[0])
    return {"distill": dcfg, "evaluate": dict(ev, seeds=seeds), "validation": section(params, "validation", dataset)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10-jpeg", help="a key of params.yaml's datasets")
    ap.add_argument("--prepared", help="the zca stage's output (default: <paths.prepared>/<dataset>.pt)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--protocol", default="cpu", help="a key of params.yaml's protocols ('none': the group's own)")
    ap.add_argument("--method", required=True, help="atom | datadam | dm | random | selected")
    ap.add_argument("--ipc", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(ROOT / "results" / "ablation"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crosscheck", action="store_true",
                    help="also score the kept set with the evaluation's networks on the validation split and with "
                         "the validation scorer's networks on the test set (reported, never used to choose)")
    ap.add_argument("--pool", metavar="PATH", help="the pool stage's pool.pt (for distill.encoder pool/trained "
                                                   "and distill.calibration > 0)")
    ap.add_argument("--save", metavar="PATH", help="write the kept (decoded) set here ({images, labels} tensors)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = load_params(a.params)
    if a.dataset not in params["datasets"]:
        raise SystemExit(f"--dataset: {a.dataset!r} is not a key of datasets in {a.params}")
    recipe = apply_overrides(recipe_for(params, a.dataset, a.method, None if a.protocol == "none" else a.protocol),
                             a.set)
    prepared = a.prepared or path(params, "prepared", dataset=a.dataset)
    out = {"name": a.name, "dataset": a.dataset, "protocol": a.protocol, "overrides": a.set,
           **run_cell(load_tensors(prepared), recipe, a.method, a.ipc, device=a.device, crosscheck=a.crosscheck,
                      save=a.save, pool=EncoderPool.load_file(a.pool) if a.pool else None)}
    dest = Path(a.out) / f"{a.method}-ipc{a.ipc}-{a.name}.json"
    write_json(out, dest)
    print(json.dumps({k: out[k] for k in ("name", "method", "ipc", "best_iteration", "mean", "std", "n", "seconds")}
                     | {"val": out["val_curve"]}), flush=True)


if __name__ == "__main__":
    main()
