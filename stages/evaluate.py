"""Stage `evaluate`: train fresh networks on one set and score them on the test set (spec 6).

    python -m stages.evaluate --dataset digits --method atom --ipc 10    # a synthetic set
    python -m stages.evaluate --dataset digits --method random --ipc 10  # random real subset
    python -m stages.evaluate --dataset digits --method full             # whole training set

    python -m stages.evaluate --dataset digits --method selected --ipc 10 # the selection init

The random baseline draws ``ipc`` real images per class with ``runtime.seed``, the same draw
the real initialisation makes with factor 1; the selected baseline is the set
``distill.init``'s selection rule picks (herding when init is real or noise), the set
distillation starts from (with ``distill.factor`` f > 1: ipc mosaics of f**2 selected images
per class, decoded). Both draw from the training part of the validation split
(``validation``), as distillation does. Settings: the ``evaluate`` section merged with the
dataset group's overrides (``evaluate.full`` applies to the full baseline);
``evaluate.batched`` (``auto``: batched on CUDA, ``atom.speed.resolve_batched``) is passed to
the evaluator. Writes ``<paths.results>/evaluate/<dataset>/<method>/ipc<k>/metrics.json``
(``.../full/metrics.json``): numbers only (mean, std, n, n_train, epochs, the accuracy per
seed), and ``info.json`` beside it (dataset, method, ipc, seeds, scheduler, device, ...).

MLflow: a parent run opened before the compute (params; each seed's accuracy as it finishes,
metric ``seed_accuracy`` by seed; mean, std, n at the end) with one child run per seed.
"""
from __future__ import annotations

import sys

from .common import runner
from .common.contract import BASELINES, METHODS, eval_path
from .common.params import evaluate_settings, section
from .common.tracking import MetricStream, run_name


# The training set of each rule of the family; a rule's code is its own branch's imports (and
# the module's shared ones), never another's (stages.common.codedeps).

def synthetic_set(st: runner.Stage, prep: dict):
    """Rule ``evaluate``: a distilled set as a network trains on it (decoded when factor > 1)."""
    from atom.formation import training_set

    return training_set(st.load("synthetic"))


def whole_set(st: runner.Stage, prep: dict):
    """Rule ``evaluate_full``: every training image."""
    return prep["train_images"], prep["train_labels"]


def random_set(st: runner.Stage, prep: dict):
    """Rule ``evaluate_random``: ``ipc`` random real images per class of distillation's training
    part, with distillation's seed (the draw ``init: real`` starts from at factor 1)."""
    from atom.evaluation import baseline_set
    from atom.validation import carve

    k = len(prep["classes"])
    val = section(st.params, "validation", st.dataset)
    pool_x, pool_y, _, _ = carve(prep["train_images"], prep["train_labels"], val["per_class"], val["seed"], k)
    return baseline_set("random", pool_x, pool_y, ipc=st.ipc, seed=st.params["runtime"]["seed"], num_classes=k)


def selected_set(st: runner.Stage, prep: dict):
    """Rule ``evaluate_selected``: distillation's start by ``distill.init``'s selection rule; with
    ``distill.factor`` > 1, ipc mosaics of factor**2 selected images per class, decoded."""
    from atom.formation import decode
    from atom.selection import rule_of, selected_set as select
    from atom.validation import carve

    k = len(prep["classes"])
    val = section(st.params, "validation", st.dataset)
    pool_x, pool_y, _, _ = carve(prep["train_images"], prep["train_labels"], val["per_class"], val["seed"], k)
    dist = section(st.params, "distill", st.dataset)
    return decode(*select(pool_x, pool_y, st.ipc, rule_of(dist["init"]), factor=dist["factor"],
                          seed=st.params["runtime"]["seed"], num_classes=k, device=st.resolved_device(),
                          net=dist["net"], **dist["init_options"]), dist["factor"])


SETS = {"evaluate": synthetic_set, "evaluate_full": whole_set, "evaluate_random": random_set,
        "evaluate_selected": selected_set}


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.method is None:
        raise ValueError(f"--method: required, one of {METHODS + BASELINES}")
    if args.method == "full":
        if args.ipc is not None:
            raise ValueError("--ipc: the full baseline takes no ipc")
    elif args.ipc is None:
        raise ValueError(f"--ipc: required for {args.method!r}")
    st = runner.Stage("evaluate", args)
    st.remove_stale()
    out = eval_path(st.params, st.dataset, st.method, st.ipc)
    seeds, cfg, batched = evaluate_settings(st.params, st.dataset, st.method)
    if st.method == "full":  # its own epochs and seeds: say so, a shortened `evaluate` does not shorten it
        st.log.info("the whole-set baseline trains with evaluate.full: epochs %d, seeds %s (evaluate.epochs and "
                    "evaluate.seeds apply to the other sets)", cfg["epochs"], seeds)
    parent = st.start_run(st.method, st.ipc)  # RUNNING from here on; FAILED if anything below raises
    parent.log_params({"dataset": st.dataset, "method": st.method, **({"ipc": st.ipc} if st.ipc is not None else {}),
                       "seeds": seeds, "batched": batched, **cfg})
    from atom.events import SeedEvaluated
    from atom.evaluation import evaluate
    from atom.io import write_json

    prep = st.load("prepared")
    k = len(prep["classes"])
    train_x, train_y = SETS[st.rule](st, prep)
    device = st.resolved_device()
    from atom.speed import resolve_batched
    batched = resolve_batched(batched, device)
    st.log.info("evaluating %s: %d images, seeds %s, %s", run_name(None, st.dataset, st.method, st.ipc),
                train_x.shape[0], seeds, cfg)
    # each seed's accuracy as it finishes: metric seed_accuracy, step = seed
    stream = MetricStream(parent, {SeedEvaluated: lambda e: ("seed_accuracy", e.accuracy, e.seed)})
    res = evaluate(train_x, train_y, prep["test_images"], prep["test_labels"], seeds=seeds, num_classes=k,
                   device=device, progress=True, batched=batched, on_event=stream, **cfg)
    runs = [{key: r[key] for key in ("seed", "accuracy", "train_accuracy", "seconds") if key in r}
            for r in res["runs"]]
    # numbers only (`dvc metrics diff` / `dvc exp show`), per seed under the seed's name; no
    # wall-clock times, so the same inputs give the same bytes (timings: the log and MLflow)
    metrics = {"mean": res["mean"], "std": res["std"], "n": res["n"], "n_train": int(train_x.shape[0]),
               "epochs": cfg["epochs"], "per_seed": {str(r["seed"]): r["accuracy"] for r in runs}}
    info = {"dataset": st.dataset, "method": st.method, "ipc": st.ipc, "seeds": list(res["seeds"]),
            "scheduler": cfg["scheduler"], "batched": batched, "device": device,
            "train_accuracy": [r.get("train_accuracy") for r in runs]}
    write_json(metrics, out)
    write_json(info, eval_path(st.params, st.dataset, st.method, st.ipc, info=True))
    st.log.info("accuracy %.2f +- %.2f over %d seeds in %.1fs -> %s", res["mean"], res["std"], res["n"],
                sum(r.get("seconds", 0.0) for r in runs), out)

    parent.log_params({"device": device, "n_train": metrics["n_train"]})
    parent.log_metrics({"accuracy_mean": res["mean"], "accuracy_std": res["std"], "n_seeds": res["n"]})
    parent.log_artifact(out)
    for r in runs:
        with st.tracker().run("evaluate", st.method, st.ipc, parent=parent,
                              name=run_name("evaluate", st.dataset, st.method, st.ipc, f"seed{r['seed']}"),
                              extra_tags={"seed": str(r["seed"])}) as child:
            child.log_params({"seed": r["seed"]})
            child.log_metrics({k2: v for k2, v in r.items() if k2 != "seed"})


if __name__ == "__main__":
    sys.exit(runner.run(main))
