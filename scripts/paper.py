"""The paper protocol on one machine (a GPU for paper scale): methods x IPCs plus baselines,
each with its validation-selected iteration, one Markdown table.

    make paper                                         # CIFAR-10 (JPEG content), IPC 10, all methods
    make paper IPCS="1 10" METHODS="atom dm" PROTOCOL=parent
    python scripts/paper.py --dataset cifar10-jpeg --ipcs 10 --methods atom datadam dm \\
        --baselines random selected --protocol spec --device cuda

Every cell runs :func:`ablation.run_cell` on the recipe the pipeline would use for the dataset
group under ``--protocol`` (``stages.params``): distillation on the training part of the
validation split, the best-scoring snapshot kept, then the evaluation protocol's seeds on the
test set. Each cell's JSON (per-seed values, validation curve, wall times) and
``table.md`` land in ``results/paper/<dataset>-<protocol>/``; cells already there are reused,
so an interrupted run continues. The prepared dataset comes from the pipeline's download and
zca stages (``make paper`` runs them first).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from ablation import recipe_for, run_cell  # noqa: E402
from atom.distill import resolve_device  # noqa: E402
from atom.io import load_tensors, write_json, write_text  # noqa: E402
from stages.layout import METHODS, path  # noqa: E402
from stages.params import load_params  # noqa: E402

BASELINES = ("random", "selected")
LABELS = {"atom": "ATOM", "datadam": "DataDAM", "dm": "DM", "random": "random real", "selected": "selected real"}


def table(cells: dict, methods: list[str], ipcs: list[int], paper: dict | None) -> str:
    head = "| set | " + " | ".join(f"IPC {k}" for k in ipcs) + " |"
    lines = [head, "|---|" + "---|" * len(ipcs)]
    for m in methods:
        row = []
        for k in ipcs:
            c = cells.get((m, k))
            row.append("-" if c is None else f"{c['mean']:.2f} ± {c['std']:.2f} (n={c['n']}, it {c['best_iteration']})")
        lines.append(f"| {LABELS[m]} | " + " | ".join(row) + " |")
    if paper:
        for m, vals in paper["methods"].items():
            ref = dict(zip(paper["ipcs"], vals))
            lines.append(f"| paper {LABELS[m]} | " + " | ".join("-" if ref.get(k) is None else f"{ref[k]:.1f}"
                                                                for k in ipcs) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10-jpeg")
    ap.add_argument("--protocol", default="spec", help="a key of params.yaml's protocols")
    ap.add_argument("--ipcs", type=int, nargs="+", default=[10])
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--baselines", nargs="*", default=list(BASELINES))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=None, help="default: results/paper/<dataset>-<protocol>")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = load_params(a.params)
    for name in a.methods:
        if name not in METHODS:
            raise SystemExit(f"--methods: unknown method {name!r}; choose from {METHODS}")
    for name in a.baselines:
        if name not in BASELINES:
            raise SystemExit(f"--baselines: unknown baseline {name!r}; choose from {BASELINES}")
    if a.protocol not in params["protocols"]:
        raise SystemExit(f"--protocol: {a.protocol!r} is not a key of protocols in {a.params}")
    prepared = path(params, "prepared", dataset=a.dataset)
    if not prepared.is_file():
        raise SystemExit(f"{prepared}: not found; run `python -m stages.download --dataset {a.dataset}` and "
                         f"`python -m stages.zca --dataset {a.dataset}` first (make paper does)")
    out = Path(a.out or ROOT / "results" / "paper" / f"{a.dataset}-{a.protocol}")
    device = str(resolve_device(a.device))
    data = load_tensors(prepared)
    cells, t0 = {}, time.perf_counter()
    for kind in a.methods + a.baselines:
        for ipc in a.ipcs:
            dest = out / f"{kind}-ipc{ipc}.json"
            if dest.is_file():
                cells[(kind, ipc)] = json.loads(dest.read_text())
                continue
            recipe = recipe_for(params, a.dataset, kind, a.protocol)
            # the speed settings are "auto" in params.yaml: on CUDA they resolve to real_chunk 0,
            # bf16, channels_last, compile and batched evaluation (atom.speed)
            cell = run_cell(data, recipe, kind, ipc, device=device)
            write_json(cell, dest)
            cells[(kind, ipc)] = cell
            logging.info("%s ipc %d: %.2f +- %.2f (n=%d), kept iteration %s, %.0fs", kind, ipc, cell["mean"],
                         cell["std"], cell["n"], cell["best_iteration"], cell["seconds"])
    text = (f"# {a.dataset}, protocol `{a.protocol}` on {device}\n\n{params['protocols'][a.protocol]['description']}.\n\n"
            "Test accuracy (%), mean ± std over n evaluation seeds; `it`: the distillation iteration kept by "
            "the validation split (0 = the initial set).\n\n"
            + table(cells, a.methods + a.baselines, a.ipcs, params["datasets"][a.dataset]["paper"])
            + f"\nWall time of this invocation: {time.perf_counter() - t0:.0f} s.\n")
    write_text(text, out / "table.md")
    print(text)


if __name__ == "__main__":
    main()
