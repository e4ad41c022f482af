"""Stage `nas_merge`: join the NAS shards and measure how well each proxy ranks the candidates.

    python -m stages.nas_merge --dataset digits

Reads ``<paths.results>/nas/<dataset>/shard<i>.json`` for every shard, checks that together
they hold each candidate exactly once (and were made with these ``nas`` settings), and for
every proxy (each method's set and the random subset, per ipc of ``nas.ipcs``) computes:
Spearman and Kendall tau-b between the candidates' validation accuracies after proxy and
after whole-data training; the candidate the proxy picks and the best one on whole data
(both by validation accuracy) with their whole-data test accuracies; and the training time
spent on the proxy vs on the whole set. Writes ``<paths.results>/nas_merge/<dataset>/
metrics.json``, ``candidates.csv`` (one row per candidate and set) and ``scatter.png``.

The result does not depend on ``nas.shards``: a candidate's numbers depend only on its
configuration, the sets and ``nas.seed``.

MLflow: one run per proxy (spearman, kendall, accuracies, seconds) with the files.
"""
from __future__ import annotations

import json
import sys

from .common import runner
from .common.contract import path
from .common.sets import FULL, set_name


def merge_shards(params: dict, dataset: str) -> list[dict]:
    """The candidates' rows of every shard, in space order; raise if one is missing or doubled."""
    rows, nas = [], params["nas"]
    for i in nas["shards"]:
        file = path(params, "nas_shard", dataset=dataset, shard=i)
        if not file.is_file():
            raise ValueError(f"{file}: missing NAS shard {i} of {nas['shards']}; run `python -m stages.nas "
                             f"--dataset {dataset} --shard {i}` first")
        shard = json.loads(file.read_text())
        for key in ("shards", "sample", "seed", "proxy_epochs", "full_epochs"):
            if shard[key] != nas[key]:
                raise ValueError(f"{file}: made with nas.{key} {shard[key]!r}, params say {nas[key]!r}; "
                                 f"rerun the nas stage")
        rows += shard["rows"]
    index = [r["index"] for r in rows]
    if len(set(index)) != len(index):
        raise ValueError(f"nas shards of {dataset}: candidates {sorted({i for i in index if index.count(i) > 1})} "
                         f"appear in two shards")
    return sorted(rows, key=lambda r: r["index"])


def summarize(rows: list[dict], proxies: list[str]) -> dict:
    """Per proxy: rank agreement with the whole-data ranking, the picks, and the times."""
    from atom.nas import rank_agreement

    full_val = [r["sets"][FULL]["val_accuracy"] for r in rows]
    full_seconds = sum(r["sets"][FULL]["seconds"] for r in rows)
    out = {}
    for name in proxies:
        proxy_val = [r["sets"][name]["val_accuracy"] for r in rows]
        agree = rank_agreement(proxy_val, full_val)
        picked, best = rows[agree["picked"]], rows[agree["best"]]
        out[name] = {"spearman": agree["spearman"], "kendall": agree["kendall"],
                     "picked": {"index": picked["index"], "config": picked["config"],
                                "full_val_accuracy": picked["sets"][FULL]["val_accuracy"],
                                "full_test_accuracy": picked["sets"][FULL]["test_accuracy"]},
                     "best": {"index": best["index"], "config": best["config"],
                              "full_val_accuracy": best["sets"][FULL]["val_accuracy"],
                              "full_test_accuracy": best["sets"][FULL]["test_accuracy"]},
                     "proxy_seconds": sum(r["sets"][name]["seconds"] for r in rows), "full_seconds": full_seconds}
    return out


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0], method=False).parse_args(argv)
    st = runner.Stage("nas_merge", args)
    st.remove_stale()
    nas = st.params["nas"]
    from atom.io import write_json, write_text
    from atom.viz import plot_proxy_scatter

    rows = merge_shards(st.params, st.dataset)
    if len(rows) < 2:
        raise ValueError(f"nas: {len(rows)} candidate(s) in the shards of {st.dataset}; need two")
    proxies = [set_name(m, k) for k in nas["ipcs"] for m in list(st.params["experiment"]["methods"]) + ["random"]]
    summary = summarize(rows, proxies)
    metrics = {"dataset": st.dataset, "candidates": len(rows), "shards": nas["shards"], "sample": nas["sample"],
               "seed": nas["seed"], "proxy_epochs": nas["proxy_epochs"], "full_epochs": nas["full_epochs"],
               "proxies": summary}
    write_json(metrics, st.path("nas_json"))
    lines = ["index,depth,width,act,norm,pool,set,val_accuracy,test_accuracy,seconds"]
    for r in rows:
        c = r["config"]
        for name, s in r["sets"].items():
            lines.append(f"{r['index']},{c['depth']},{c['width']},{c['act']},{c['norm']},{c['pool']},{name},"
                         f"{s['val_accuracy']:.4f},{s['test_accuracy']:.4f},{s['seconds']:.3f}")
    write_text("\n".join(lines) + "\n", st.path("nas_csv"))
    full = [r["sets"][FULL]["val_accuracy"] for r in rows]
    points = {f"{n}: rho {v['spearman']:.2f}, tau {v['kendall']:.2f}":
              ([r["sets"][n]["val_accuracy"] for r in rows], full) for n, v in summary.items()}
    plot_proxy_scatter(points, st.path("nas_png"), title=f"NAS proxy, {st.dataset}: {len(rows)} candidates "
                       "(validation accuracy)", dpi=st.params["visualize"]["dpi"])
    for name, v in summary.items():
        st.log.info("%s: spearman %.3f kendall %.3f; picks %d (test %.2f), best %d (test %.2f)", name, v["spearman"],
                    v["kendall"], v["picked"]["index"], v["picked"]["full_test_accuracy"], v["best"]["index"],
                    v["best"]["full_test_accuracy"])

    tracker = st.tracker()
    for name, v in summary.items():
        method, _, ipc = name.partition("/ipc")
        with tracker.run("nas_merge", method, int(ipc)) as run:
            run.log_params({"candidates": len(rows), "sample": nas["sample"], "seed": nas["seed"],
                            "proxy_epochs": nas["proxy_epochs"], "full_epochs": nas["full_epochs"]})
            run.log_metrics({"spearman": v["spearman"], "kendall": v["kendall"],
                             "picked_full_test_accuracy": v["picked"]["full_test_accuracy"],
                             "best_full_test_accuracy": v["best"]["full_test_accuracy"],
                             "proxy_seconds": v["proxy_seconds"], "full_seconds": v["full_seconds"]})
            for key in ("nas_json", "nas_csv", "nas_png"):
                run.log_artifact(st.path(key))


if __name__ == "__main__":
    sys.exit(runner.run(main))
