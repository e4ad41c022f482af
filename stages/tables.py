"""The report's cross-architecture and NAS tables (read from the crossarch and nas_merge outputs).

:func:`collect` gathers one dataset's results, :func:`markdown` renders them; the report stage
adds both to ``summary.json`` and ``summary.md``.
"""
from __future__ import annotations

import json

from .layout import path

ARCH_LABELS = {"convnet": "ConvNet", "alexnet": "AlexNet", "vgg11": "VGG-11", "resnet18": "ResNet-18"}


def collect(params: dict, dataset: str) -> dict:
    """{"crossarch": [metrics per crossarch ipc], "nas": nas_merge's metrics}."""
    cross = [json.loads(path(params, "crossarch", dataset=dataset, ipc=k).read_text())
             for k in params["crossarch"]["ipcs"]]
    return {"crossarch": cross, "nas": json.loads(path(params, "nas_json", dataset=dataset).read_text())}


def _net(c: dict) -> str:
    return f"{c['depth']}x{c['width']} {c['act']}/{c['norm']}/{c['pool']}"


def markdown(data: dict, labels: dict, dec: int) -> list[str]:
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
            "ranked by validation accuracy; the pick's and the best candidate's whole-data test accuracy (%):", "",
            "| proxy | Spearman | Kendall | pick: whole-data test | best: whole-data test | proxy time (s) "
            "| whole-data time (s) | pick | best |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in nas["proxies"].items():
        method, _, ipc = name.partition("/ipc")
        out.append(f"| {labels.get(method, method)} IPC {ipc} | {v['spearman']:.3f} | {v['kendall']:.3f} | "
                   f"{v['picked']['full_test_accuracy']:.{dec}f} | {v['best']['full_test_accuracy']:.{dec}f} | "
                   f"{v['proxy_seconds']:.0f} | {v['full_seconds']:.0f} | {_net(v['picked']['config'])} | "
                   f"{_net(v['best']['config'])} |")
    return out + [""]
