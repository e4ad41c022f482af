"""Stage `report`: the summary of every experiment in the matrix.

    python -m stages.report

Reads every evaluation (``<paths.results>/evaluate/...``) and distillation metrics file of the
experiment matrix and writes ``<paths.results>/report/summary.md`` (per dataset: methods and
baselines x ipc as mean +- std over n seeds, the paper's numbers from the spec's section 8
where the dataset has them, the ordering checks, the field's metrics HLR and IOR of every set
(DD-Ranking's, from the final-epoch accuracies), the method x architecture table of the
crossarch stage and the NAS table of nas_merge) and ``summary.json`` (the same, with every
per-seed value), ``summary.csv`` (the results table, one row per evaluation, for Snakemake's
``--report``) and ``metrics.json`` (numbers only: each set's accuracy, HLR and IOR, for `dvc
metrics diff`). MLflow: one `report` run per dataset with the means, HLR, IOR and the files.
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import runner
from .common.contract import LABELS, METHODS, PARAMS, eval_path, evaluations, experiments, path
from .common.params import protocol, section
from .common.tracking import git_commit

# the order of METHODS + random is the ordering the paper reports
RANKED = METHODS + ("random",)


NORM_TEXT = {"instancenorm": "instance norm", "batchnorm": "batch norm", "layernorm": "layer norm",
             "groupnorm": "group norm", "none": "no norm"}
POOL_TEXT = {"avg": "average pooling", "max": "max pooling", "none": "no pooling"}
# below this many distillation iterations the methods' order is not reproduced (docs/results.md:
# at 100 iterations ATOM ranks below its own herding start on CIFAR-10; spec-short's 2000 on
# one H100 gave the paper's ATOM > DataDAM > DM)
SHORT_RUN = 2000


# ----------------------------------------------------------------- cross-architecture and NAS tables

ARCH_LABELS = {"convnet": "ConvNet", "alexnet": "AlexNet", "vgg11": "VGG-11", "resnet18": "ResNet-18"}


def collect_tables(params: dict, dataset: str) -> dict:
    """{"crossarch": [metrics per crossarch ipc], "nas": nas_merge's metrics}."""
    cross = [json.loads(path(params, "crossarch", dataset=dataset, ipc=k).read_text())
             for k in params["crossarch"]["ipcs"]]
    return {"crossarch": cross, "nas": json.loads(path(params, "nas_json", dataset=dataset).read_text())}


def _net(c: dict) -> str:
    return f"{c['depth']}x{c['width']} {c['act']}/{c['norm']}/{c['pool']}"


def tables_markdown(data: dict, labels: dict, dec: int) -> list[str]:
    """Markdown lines: a method x architecture table per ipc, then the NAS table."""
    out = []
    for m in data["crossarch"]:
        archs = m["archs"]
        out += [f"Cross-architecture, IPC {m['ipc']} (test accuracy %, mean ± std over seeds {m['seeds']}, "
                f"{m['epochs']} epochs each):", "",
                "| set | " + " | ".join(ARCH_LABELS.get(a, a) for a in archs) + " |",
                "| --- |" + " --- |" * len(archs)]
        for name in m["sets"]:
            r = m["results"][name]
            out.append(f"| {labels.get(name, name)} | "
                       + " | ".join(f"{r[a]['mean']:.{dec}f} ± {r[a]['std']:.{dec}f}" for a in archs) + " |")
        out.append("")
        for arch, why in (m.get("skipped") or {}).items():
            out += [f"{ARCH_LABELS.get(arch, arch)} left out: {why}.", ""]
    nas = data["nas"]
    out += [f"NAS proxy: {nas['candidates']} candidate ConvNets (sample {nas['sample']}, seed {nas['seed']}), each "
            f"trained {nas['proxy_epochs']} epochs on the proxy and {nas['full_epochs']} on the whole training part; "
            "ranked by validation accuracy; the pick's and the best candidate's whole-data test accuracy (%); the "
            "proxy search's training as a share of the whole-data search's, in image-epochs (the wall-clock "
            "seconds of both are in nas_merge's info.json):", "",
            "| proxy | Spearman | Kendall | pick: whole-data test | best: whole-data test | proxy cost "
            "| pick | best |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in nas["proxies"].items():
        method, _, ipc = name.partition("/ipc")
        out.append(f"| {labels.get(method, method)} IPC {ipc} | {v['spearman']:.3f} | {v['kendall']:.3f} | "
                   f"{v['picked']['full_test_accuracy']:.{dec}f} | {v['best']['full_test_accuracy']:.{dec}f} | "
                   f"{100 * v['proxy_image_epochs'] / v['full_image_epochs']:.2g} % | {_net(v['picked']['config'])} | "
                   f"{_net(v['best']['config'])} |")
    return out + [""]


# ------------------------------------------------------------------------------------ the report

def net_text(net: dict) -> str:
    """A ConvNet's settings as words: ``ConvNet-3, 128 channels, ReLU, instance norm, average pooling``."""
    act = {"relu": "ReLU", "leakyrelu": "leaky ReLU", "sigmoid": "sigmoid"}.get(net.get("act"), net.get("act"))
    return (f"ConvNet-{net.get('depth')}, {net.get('width')} channels, {act}, "
            f"{NORM_TEXT.get(net.get('norm'), net.get('norm'))}, {POOL_TEXT.get(net.get('pool'), net.get('pool'))}")


def _cell(r: dict | None, dec: int) -> str:
    if r is None:
        return "-"
    return f"{r['mean']:.{dec}f} ± {r['std']:.{dec}f} (n={r['n']})"


def collect(params: dict, dataset: str) -> dict:
    rows = []
    for kind, ipc in evaluations(params, dataset):
        m = {**json.loads(eval_path(params, dataset, kind, ipc, info=True).read_text()),
             **json.loads(eval_path(params, dataset, kind, ipc).read_text())}
        m["per_seed"] = [m["per_seed"][str(seed)] for seed in m["seeds"]]  # metrics key it by seed
        rows.append({k: m.get(k) for k in ("method", "ipc", "mean", "std", "n", "seeds", "per_seed", "n_train",
                                            "epochs", "scheduler")})
    distilled = []
    for d, method, ipc in experiments(params):
        if d == dataset:
            m = {**json.loads(path(params, "distill_info", dataset=d, method=method, ipc=ipc).read_text()),
                 **json.loads(path(params, "distill_metrics", dataset=d, method=method, ipc=ipc).read_text())}
            distilled.append({k: m.get(k) for k in ("method", "ipc", "iterations", "final_loss", "device",
                                                    "best_iteration", "best_val_accuracy")})
    by = {(r["method"], r["ipc"]): r for r in rows}
    checks = []
    for ipc in params["experiment"]["ipcs"]:
        ours = by.get(("atom", ipc))
        rnd = by.get(("random", ipc))
        if ours and rnd:
            checks.append({"check": f"ATOM > random at IPC {ipc}", "passed": ours["mean"] > rnd["mean"],
                           "values": [ours["mean"], rnd["mean"]]})
        present = [m for m in RANKED if (m, ipc) in by]
        if len(present) > 1:
            order = sorted(present, key=lambda m: -by[(m, ipc)]["mean"])
            checks.append({"check": f"ordering at IPC {ipc}", "order": order,
                           "passed": order == [m for m in RANKED if m in present]})
    return {"rows": rows, "distill": distilled, "paper": params["datasets"][dataset]["paper"], "checks": checks,
            "field_metrics": field_metrics(rows), **collect_tables(params, dataset)}


# DD-Ranking's names for how a set compares with the whole set and with random real images
FIELD_METRICS = ("HLR (hard-label recovery) = whole-training-set accuracy - the set's accuracy (lower is better); "
                 "IOR (improvement over random) = the set's accuracy - the accuracy of random real images at "
                 "the same IPC (higher is better); both from this project's final-epoch test accuracies "
                 "(DD-Ranking's own evaluator takes the best of its checkpoints and tunes the learning rate "
                 "on test accuracy)")


def field_metrics(rows: list[dict]) -> list[dict]:
    """HLR and IOR of every distilled (and selected) set, from the evaluations' means; None
    where the whole-set or the random baseline is not in the matrix."""
    by = {(r["method"], r["ipc"]): r for r in rows}
    full = by.get(("full", None))
    out = []
    for r in rows:
        if r["method"] in ("full", "random"):
            continue
        rnd = by.get(("random", r["ipc"]))
        out.append({"method": r["method"], "ipc": r["ipc"], "accuracy": r["mean"],
                    "hlr": None if full is None else full["mean"] - r["mean"],
                    "ior": None if rnd is None else r["mean"] - rnd["mean"]})
    return out


def metrics_json(summary: dict) -> dict:
    """Numbers only, for `dvc metrics diff`: {dataset: {method: {ipc<k>: {accuracy, hlr, ior}}}}."""
    out: dict = {}
    for dataset, s in summary["datasets"].items():
        for f in s["field_metrics"]:
            out.setdefault(dataset, {}).setdefault(f["method"], {})[f"ipc{f['ipc']}"] = {
                k: f[k] for k in ("accuracy", "hlr", "ior") if f[k] is not None}
    return out


def dataset_note(params: dict, dataset: str) -> str:
    """The warning a reader needs before the numbers: a smoke-scale dataset, a short run."""
    notes = []
    if params["datasets"][dataset]["loader"] == "digits":
        notes.append("digits (8x8 grey images, 1,797 in all) is a smoke-scale set: its numbers show that the "
                     "pipeline runs end to end, they do not rank the methods (see docs/results.md for CIFAR-10)")
    its = section(params, "distill", dataset)["iterations"]
    if its < SHORT_RUN:
        notes.append(f"a short run ({its} distillation iterations; the paper runs 8000, 20000 in its code): "
                     "short runs do not reproduce the methods' ordering, and gaps of a point or two are "
                     "within the seeds' spread")
    return ("**Read with care:** " + "; ".join(notes) + ".") if notes else ""


def start_labels(init: str, factor: int = 1) -> dict:
    """The baselines' row labels, saying which one is distillation's start: ``init: real``
    starts from the ``random`` baseline's own subset (atom.sets.random_subset, same seed),
    a selection rule from the ``selected`` set; ``selected`` is herding for real/noise."""
    if init == "real":
        return {"random": "random real (distillation's start)" if factor == 1 else "random real",
                "selected": "selected real (herding)"}
    if init == "noise":
        return {"random": "random real", "selected": "selected real (herding)"}
    return {"random": "random real", "selected": f"selected real ({init}: distillation's start)"}


def markdown(params: dict, summary: dict) -> str:
    dec = params["report"]["decimals"]
    ipcs = params["experiment"]["ipcs"]
    out = ["# Results", "",
           "Test accuracy (%) of a ConvNet trained from scratch on each set, mean ± std over n seeds "
           "(spec section 6). Generated by `python -m stages.report` from params.yaml.", ""]
    for dataset, s in summary["datasets"].items():
        by = {(r["method"], r["ipc"]): r for r in s["rows"]}
        ev = section(params, "evaluate", dataset)
        full = by.get(("full", None))
        proto = protocol(params, dataset)
        val = section(params, "validation", dataset)
        dist = section(params, "distill", dataset)
        out += [f"## {dataset}", "",
                "Protocol: " + (f"`{proto}`, {params['protocols'][proto]['description']}." if proto
                                else "params.yaml's own settings (this dataset group names no protocol).")
                + f" Distillation: {net_text(dist['net'])}; {dist['iterations']} iterations. Evaluation: "
                f"{net_text(ev['net'])}; batch {ev['batch_size']}.",
                "",
                ("Iteration kept: the best validation score on "
                 f"{val['per_class']} training images per class held out of distillation (never the test set)."
                 if val["per_class"] else "Iteration kept: the last (no validation split)."),
                "",
                f"Evaluation: {ev['epochs']} epochs, scheduler `{ev['scheduler']}`, seeds {ev['seeds']}"
                + (f"; whole set: {full['epochs']} epochs, seeds {full['seeds']}" if full else "") + ".", ""]
        if dataset_note(params, dataset):
            out += [dataset_note(params, dataset), ""]
        out.append("| method | " + " | ".join(f"IPC {k}" for k in ipcs) + " |")
        out.append("| --- |" + " --- |" * len(ipcs))
        labels = start_labels(dist["init"], dist.get("factor", 1))
        for m in list(params["experiment"]["methods"]) + [b for b in ("random", "selected") if b in params["experiment"]["baselines"]]:
            out.append(f"| {labels.get(m, LABELS[m])} | " + " | ".join(_cell(by.get((m, k)), dec) for k in ipcs) + " |")
        if full:
            out.append(f"| {LABELS['full']} ({full['n_train']} images) | "
                       + " | ".join(_cell(full, dec) for _ in ipcs) + " |")
        paper = s["paper"]
        if paper:
            out += ["", f"Paper reference ({paper.get('source', 'spec section 8')}):", ""]
            out.append("| method | " + " | ".join(f"IPC {k}" for k in paper["ipcs"]) + " |")
            out.append("| --- |" + " --- |" * len(paper["ipcs"]))
            for m, vals in paper["methods"].items():
                out.append(f"| {LABELS[m]} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
            if paper.get("full") is not None:
                out.append(f"| {LABELS['full']} | " + " | ".join(f"{paper['full']:.1f}" for _ in paper["ipcs"]) + " |")
        if s["checks"]:
            out += ["", "Checks:", ""]
            for c in s["checks"]:
                detail = (" > ".join(c["order"]) if "order" in c
                          else f"{c['values'][0]:.{dec}f} vs {c['values'][1]:.{dec}f}")
                out.append(f"- {c['check']}: {'yes' if c['passed'] else 'NO'} ({detail})")
        if s["distill"]:
            out += ["", "Distillation: " + ", ".join(
                f"{LABELS[d['method']]} IPC {d['ipc']} {d['iterations']} iterations on {d['device']}"
                + (f" (kept: {d['best_iteration']}{', its start' if d['best_iteration'] == 0 else ''})"
                   if d.get("best_iteration") is not None else "")
                for d in s["distill"]) + ".", ""]
        if s["field_metrics"]:
            out += ["", f"The field's metrics: {FIELD_METRICS}.", "",
                    "| set | IPC | accuracy | HLR | IOR |", "| --- | --- | --- | --- | --- |"]
            num = lambda v: "-" if v is None else f"{v:.{dec}f}"  # noqa: E731
            out += [f"| {labels.get(f['method'], LABELS[f['method']])} | {f['ipc']} | {num(f['accuracy'])} | "
                    f"{num(f['hlr'])} | {num(f['ior'])} |" for f in s["field_metrics"]]
        out += [""] + tables_markdown(s, {**LABELS, **labels}, dec)
    return "\n".join(out).rstrip() + "\n"


def table(params: dict, summary: dict) -> str:
    """The results table as CSV (dataset, method, ipc, mean, std, n): Snakemake's report shows it."""
    dec = params["report"]["decimals"]
    lines = ["dataset,method,ipc,mean,std,n"]
    for dataset, s in summary["datasets"].items():
        lines += [f"{dataset},{LABELS[r['method']]},{'all' if r['ipc'] is None else r['ipc']},"
                  f"{r['mean']:.{dec}f},{r['std']:.{dec}f},{r['n']}" for r in s["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=PARAMS, help="params file (default: params.yaml)")
    args = p.parse_args(argv)
    st = runner.Stage("report", args)
    st.remove_stale()
    from atom.io import write_json, write_text

    # no commit or time stamp: the same results give the same bytes (MLflow tags the commit)
    summary = {"datasets": {d: collect(st.params, d) for d in st.params["experiment"]["datasets"]}}
    write_json(summary, st.path("summary_json"))
    text = markdown(st.params, summary)
    write_text(text, st.path("summary_md"))
    write_text(table(st.params, summary), st.path("summary_csv"))
    write_json(metrics_json(summary), st.path("summary_metrics"))
    st.log.info("wrote %s (commit %s)\n%s", st.path("summary_md"), git_commit(), text)
    for dataset, s in summary["datasets"].items():
        with st.tracker(dataset).run("report", name=f"report/{dataset}") as run:
            run.log_metrics({f"{r['method']}_{'all' if r['ipc'] is None else 'ipc%d' % r['ipc']}_mean": r["mean"]
                             for r in s["rows"]})
            run.log_metrics({f"{f['method']}_ipc{f['ipc']}_{k}": f[k] for f in s["field_metrics"]
                             for k in ("hlr", "ior") if f[k] is not None})
            run.log_artifact(st.path("summary_md"))
            run.log_artifact(st.path("summary_json"))
            run.log_artifact(st.path("summary_csv"))


if __name__ == "__main__":
    sys.exit(runner.run(main))
