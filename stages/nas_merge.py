"""Stage `nas_merge`: join the NAS shards and measure how well each proxy ranks the candidates.

    python -m stages.nas_merge --dataset digits

Reads ``<paths.results>/nas/<dataset>/shard<i>.json`` for every shard, checks that together
they hold each candidate exactly once (and were made with these ``nas`` settings), and for
every proxy (each method's set and the random subset, per ipc of ``nas.ipcs``) computes:
Spearman and Kendall tau-b between the candidates' validation accuracies after proxy and
after whole-data training; the candidate the proxy picks and the best one on whole data
(both by validation accuracy) with their whole-data test accuracies; and the training spent on
the proxy vs on the whole set, as image-epochs (images x epochs summed over the candidates: the
same for the same inputs) in ``metrics.json`` and as wall-clock seconds (from the shards'
``info.json``) in ``info.json``. Writes ``<paths.results>/nas_merge/<dataset>/metrics.json``,
``candidates.csv`` (one row per candidate and set), ``scatter.png`` and ``info.json``.

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


def merge_shards(params: dict, dataset: str) -> tuple[list[dict], dict[str, int], dict[str, dict]]:
    """(the candidates' rows of every shard in space order, each set's images, each candidate's
    seconds per set); raise if a shard is missing or a candidate doubled."""
    rows, images, seconds, nas = [], {}, {}, params["nas"]
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
        images.update(shard["images"])
        info = path(params, "nas_shard_info", dataset=dataset, shard=i)
        seconds.update(json.loads(info.read_text())["seconds"] if info.is_file() else {})
    index = [r["index"] for r in rows]
    if len(set(index)) != len(index):
        raise ValueError(f"nas shards of {dataset}: candidates {sorted({i for i in index if index.count(i) > 1})} "
                         f"appear in two shards")
    return sorted(rows, key=lambda r: r["index"]), images, seconds


def summarize(rows: list[dict], proxies: list[str], images: dict[str, int], nas: dict) -> dict:
    """Per proxy: rank agreement with the whole-data ranking, the picks, and the training each
    search spends (image-epochs)."""
    from atom.nas import rank_agreement

    full_val = [r["sets"][FULL]["val_accuracy"] for r in rows]
    full_cost = len(rows) * images[FULL] * nas["full_epochs"]
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
                     "proxy_image_epochs": len(rows) * images[name] * nas["proxy_epochs"],
                     "full_image_epochs": full_cost}
    return out


def search_seconds(rows: list[dict], proxies: list[str], seconds: dict[str, dict]) -> dict:
    """Per proxy, the wall-clock seconds of its search and of the whole-data search."""
    total = lambda name: sum(seconds.get(str(r["index"]), {}).get(name, 0.0) for r in rows)  # noqa: E731
    return {name: {"proxy_seconds": total(name), "full_seconds": total(FULL)} for name in proxies}


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0], method=False).parse_args(argv)
    st = runner.Stage("nas_merge", args)
    st.remove_stale()
    nas = st.params["nas"]
    from atom.io import write_json, write_text
    from atom.viz import plot_proxy_scatter

    rows, images, seconds = merge_shards(st.params, st.dataset)
    if len(rows) < 2:
        raise ValueError(f"nas: {len(rows)} candidate(s) in the shards of {st.dataset}; need two")
    proxies = [set_name(m, k) for k in nas["ipcs"] for m in list(st.params["experiment"]["methods"]) + ["random"]]
    summary = summarize(rows, proxies, images, nas)
    timing = search_seconds(rows, proxies, seconds)
    metrics = {"dataset": st.dataset, "candidates": len(rows), "shards": nas["shards"], "sample": nas["sample"],
               "seed": nas["seed"], "proxy_epochs": nas["proxy_epochs"], "full_epochs": nas["full_epochs"],
               "proxies": summary}
    write_json(metrics, st.path("nas_json"))
    write_json({"dataset": st.dataset, "seconds": timing}, st.path("nas_info"))
    lines = ["index,depth,width,act,norm,pool,set,val_accuracy,test_accuracy"]
    for r in rows:
        c = r["config"]
        for name, s in r["sets"].items():
            lines.append(f"{r['index']},{c['depth']},{c['width']},{c['act']},{c['norm']},{c['pool']},{name},"
                         f"{s['val_accuracy']:.4f},{s['test_accuracy']:.4f}")
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
                             "proxy_image_epochs": v["proxy_image_epochs"], **timing[name]})
            for key in ("nas_json", "nas_csv", "nas_png", "nas_info"):
                run.log_artifact(st.path(key))


if __name__ == "__main__":
    sys.exit(runner.run(main))
