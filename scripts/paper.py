"""The paper protocol on one machine (a GPU for paper scale): methods x IPCs plus baselines,
each with its validation-selected iteration, one Markdown table.

    make paper                                         # CIFAR-10 (JPEG content), IPC 10, all methods + ATOM+, spec-short
    make paper IPCS="1 10" METHODS="atom dm" PROTOCOL=parent
    python scripts/paper.py --dataset cifar10-jpeg --ipcs 10 1 --methods atom datadam dm \\
        --baselines random selected --protocol spec --device cuda      # the group's 8000 iterations
    python scripts/paper.py ... --set distill.iterations=4000 --set distill.validate_every=500

Every cell runs :func:`ablation.run_cell` on the recipe the pipeline would use for the dataset
group under ``--protocol`` (``stages.common.params``): distillation on the training part of the
validation split, the best-scoring snapshot kept, then the evaluation protocol's seeds on the
test set. Each cell's JSON (per-seed values, validation curve, wall times) and
``table.md`` land in ``results/paper/<dataset>-<protocol>/``; cells already there are reused,
so an interrupted run continues. The prepared dataset comes from the pipeline's download and
zca stages (``make paper`` runs them first).

``--set KEY=VALUE`` overrides the resolved recipe like ``scripts/ablation.py`` (a shorter
budget, say); the table names every override. ``--jobs N`` runs N cells at once, each in its
own process with its log in ``<out>/logs/``; a cell that fails is reported with its log and
marked in the table, the others go on. It is meant for a many-core CPU host (not measured);
on one GPU it does not pay: on an H100, five CIFAR-10 IPC 10 cells sharing the card distilled at 87 ms per
iteration against 31 ms alone, the same throughput as one after another (docs/history/notebook.md).
``--report-only`` writes the table from the cells already in ``--out``.

``--plus atom`` (``make paper`` passes it) adds ATOM+ cells: the same method distilling inside
a pool of trained ConvNets with the calibration term, under ``--plus-protocol`` (default
``<protocol>-atomplus``). That protocol may differ from ``--protocol`` only in
``distill.encoder``, ``encoder_lambda``, ``calibration`` and the ``pool`` section, so each
ATOM+ cell is comparable with its ATOM cell (a wider difference stops before any compute).
The pool is ``--pool PATH`` (the pool stage's ``pool.pt``) or, by default, trained here
first on the same training part (``atom.train_pool``, the plus protocol's ``pool`` settings,
resumable from ``<out>/pool-state/``) and kept as ``<out>/pool.pt``; its wall time goes in
the table beside the cells'.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from ablation import apply_overrides, recipe_for, run_cell  # noqa: E402
from atom.distillation import resolve_device  # noqa: E402
from atom.io import load_tensors, write_json, write_text  # noqa: E402
from stages.common.contract import LABELS, METHODS, path  # noqa: E402
from stages.common.params import load_params, section, uses_pool  # noqa: E402

BASELINES = ("random", "selected")
PLUS = "plus"  # a + cell's kind: the method's name and this suffix (atomplus-ipc10.json)
# what a + cell's recipe may change against its method's: where the features come from
ENCODER_KEYS = ("encoder", "encoder_lambda", "calibration")


def plus_kind(method: str) -> str:
    return method + PLUS


def method_of(kind: str) -> str:
    """The matching method a cell kind distils with (``atomplus`` -> ``atom``)."""
    return kind[:-len(PLUS)] if kind.endswith(PLUS) and kind[:-len(PLUS)] in METHODS else kind


def label(kind: str) -> str:
    m = method_of(kind)
    return LABELS[kind] if m == kind else f"{LABELS[m]}+ (trained encoders + calibration)"


def plus_recipe(params: dict, dataset: str, method: str, protocol: str, plus_protocol: str, sets: list) -> dict:
    """The + cell's recipe, refused unless it differs from the method's own only in the encoder
    keys (and uses a pool): otherwise the two cells would not measure the feature source alone."""
    base = apply_overrides(recipe_for(params, dataset, method, protocol), list(sets))
    plus = apply_overrides(recipe_for(params, dataset, method, plus_protocol), list(sets))
    diff = sorted({f"{sec}.{key}" for sec in base for key in set(base[sec]) | set(plus[sec])
                   if base[sec].get(key) != plus[sec].get(key) and not (sec == "distill" and key in ENCODER_KEYS)})
    if diff:
        raise SystemExit(f"--plus-protocol {plus_protocol}: differs from --protocol {protocol} in {', '.join(diff)}, "
                         f"not only in distill.{'/'.join(ENCODER_KEYS)}; the + cells would not be comparable "
                         f"(name a protocol with base: {protocol})")
    if not uses_pool(plus["distill"]):
        raise SystemExit(f"--plus-protocol {plus_protocol}: distills with random encoders and no calibration "
                         f"(distill.encoder: {plus['distill'].get('encoder')!r}); a + cell needs encoder: pool "
                         f"or calibration > 0")
    return plus


def table(cells: dict, methods: list[str], ipcs: list[int], paper: dict | None) -> str:
    """One row per cell kind (methods, + cells, baselines), one column per IPC, then the paper's rows."""
    head = "| set | " + " | ".join(f"IPC {k}" for k in ipcs) + " |"
    lines = [head, "|---|" + "---|" * len(ipcs)]
    for m in methods:
        row = []
        for k in ipcs:
            c = cells.get((m, k))
            row.append("failed (see logs/)" if c == "failed" else "-" if c is None else
                       f"{c['mean']:.2f} ± {c['std']:.2f} (n={c['n']}, it {c['best_iteration']})")
        lines.append(f"| {label(m)} | " + " | ".join(row) + " |")
    if paper:
        for m, vals in paper["methods"].items():
            ref = dict(zip(paper["ipcs"], vals))
            lines.append(f"| paper {LABELS[m]} | " + " | ".join("-" if ref.get(k) is None else f"{ref[k]:.1f}"
                                                                for k in ipcs) + " |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10-jpeg")
    ap.add_argument("--protocol", default="spec-short", help="a key of params.yaml's protocols")
    ap.add_argument("--ipcs", type=int, nargs="+", default=[10])
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--baselines", nargs="*", default=list(BASELINES))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=None, help="default: results/paper/<dataset>-<protocol>")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the resolved recipe (distill./evaluate./validation. dotted keys, YAML values)")
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process")
    ap.add_argument("--plus", nargs="*", default=[], metavar="METHOD",
                    help="methods also run inside a pool of trained encoders with calibration (atom: ATOM+)")
    ap.add_argument("--plus-protocol", default=None,
                    help="the + cells' protocol (default <protocol>-atomplus): --protocol plus pool settings only")
    ap.add_argument("--pool", metavar="PATH", default=None,
                    help="the pool for the + cells (the pool stage's pool.pt); default: <out>/pool.pt, trained "
                         "here when missing")
    ap.add_argument("--report-only", action="store_true",
                    help="write the table from the cells already in --out (an interrupted run); compute none")
    ap.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker: its cell only
    return ap


def main(argv=None) -> None:
    a = parser().parse_args(argv)
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
    if a.jobs < 1:
        raise SystemExit(f"--jobs: must be >= 1, got {a.jobs}")
    for name in a.plus:
        if name not in METHODS:
            raise SystemExit(f"--plus: unknown method {name!r}; choose from {METHODS}")
    a.plus_protocol = a.plus_protocol or f"{a.protocol}-atomplus"
    if a.plus and a.plus_protocol not in params["protocols"]:
        raise SystemExit(f"--plus-protocol: {a.plus_protocol!r} is not a key of protocols in {a.params} (name one "
                         f"with base: {a.protocol}, or leave the + cells out: --plus with no methods, make paper PLUS=)")
    if a.pool is not None and not Path(a.pool).is_file():
        raise SystemExit(f"--pool: {a.pool}: not found (run `python -m stages.pool --dataset {a.dataset}`, or leave "
                         f"--pool out to train one here)")
    prepared = path(params, "prepared", dataset=a.dataset)
    if not prepared.is_file() and not a.report_only:
        raise SystemExit(f"{prepared}: not found; run `python -m stages.download --dataset {a.dataset}` and "
                         f"`python -m stages.zca --dataset {a.dataset}` first (make paper does)")
    out = Path(a.out or ROOT / "results" / "paper" / f"{a.dataset}-{a.protocol}")
    device = str(resolve_device(a.device))
    kinds = a.methods + [plus_kind(m) for m in a.plus] + a.baselines
    todo = [(kind, ipc) for ipc in a.ipcs for kind in kinds]
    # one recipe per kind (it does not depend on the IPC), built first: a bad --set stops before any compute
    recipes = {kind: apply_overrides(recipe_for(params, a.dataset, kind, a.protocol), a.set)
               for kind in a.methods + a.baselines}
    recipes.update({plus_kind(m): plus_recipe(params, a.dataset, m, a.protocol, a.plus_protocol, a.set)
                    for m in a.plus})
    cells, t0 = {}, time.perf_counter()
    pool, pool_line = None, ""
    missing = [(k, i) for k, i in todo if not (out / f"{k}-ipc{i}.json").is_file()]
    data = None
    if a.plus and not a.report_only and any(k.endswith(PLUS) for k, _ in missing):
        data = load_tensors(prepared)
        pool, pool_line = pool_for(a, params, data, recipes[plus_kind(a.plus[0])], out, device)
    elif a.plus:
        pool_line = pool_note(out)
    if a.report_only:
        pass
    elif a.jobs > 1:
        run_parallel(a, todo, out, device)
    else:
        for kind, ipc in todo:
            dest = out / f"{kind}-ipc{ipc}.json"
            if dest.is_file():
                continue
            data = data if data is not None else load_tensors(prepared)
            # the speed settings are "auto" in params.yaml: on CUDA they resolve to real_chunk 0,
            # bf16, channels_last, compile and batched evaluation (atom.speed); run_cell leaves the recipe as it is
            cell = dict(run_cell(data, recipes[kind], method_of(kind), ipc, device=device,
                                 pool=pool if kind.endswith(PLUS) else None), overrides=a.set)
            if kind.endswith(PLUS):
                cell["protocol"] = a.plus_protocol
            write_json(cell, dest)
            logging.info("%s ipc %d: %.2f +- %.2f (n=%d), kept iteration %s, %.0fs", kind, ipc, cell["mean"],
                         cell["std"], cell["n"], cell["best_iteration"], cell["seconds"])
    if a.no_table:
        return
    for kind, ipc in todo:
        dest = out / f"{kind}-ipc{ipc}.json"
        cells[(kind, ipc)] = json.loads(dest.read_text()) if dest.is_file() else None if a.report_only else "failed"
    failed = [f"{kind}-ipc{ipc}" for (kind, ipc), c in cells.items() if c == "failed"]
    overrides = overrides_line(cells)
    ran_on = ", ".join(sorted({c["device"] for c in cells.values() if isinstance(c, dict)})) or device
    plus_text = (f"\n{', '.join(label(plus_kind(m)) for m in a.plus)}: protocol `{a.plus_protocol}`: "
                 f"{params['protocols'][a.plus_protocol]['description']}.{pool_line}\n" if a.plus else "")
    text = (f"# {a.dataset}, protocol `{a.protocol}` on {ran_on}\n\n{params['protocols'][a.protocol]['description']}.\n"
            f"{plus_text}{overrides}\n\n"
            "Test accuracy (%), mean ± std over n evaluation seeds; `it`: the distillation iteration kept by "
            "the validation split (0 = the initial set).\n\n"
            + table(cells, kinds, a.ipcs, params["datasets"][a.dataset]["paper"])
            + "\n" + timing(cells, a.jobs)
            + ("" if a.report_only else
               f"\nWall time of this invocation: {time.perf_counter() - t0:.0f} s ({a.jobs} cell(s) at a time).\n"))
    write_text(text, out / "table.md")
    print(text)
    if failed:
        raise SystemExit(f"cells failed: {', '.join(failed)} (logs in {out / 'logs'})")


def pool_for(a, params: dict, data: dict, recipe: dict, out: Path, device: str):
    """The + cells' pool: ``--pool``, else ``<out>/pool.pt``, else trained here now on the
    training part the cells distil from (the validation split carved the same way) with the
    plus protocol's ``pool`` settings; returns it and the sentence the table prints."""
    from atom.pool import EncoderPool, train_pool
    from atom.validation import carve
    if a.pool is not None:
        pool = EncoderPool.load_file(a.pool)
        return pool, f" Pool: {a.pool} ({len(pool)} members, fingerprint {pool.fingerprint})."
    dest = out / "pool.pt"
    if dest.is_file():
        return EncoderPool.load_file(dest), pool_note(out)
    cfg = merge_pool(params, a.dataset, a.plus_protocol)
    if cfg["models"] < 1:
        raise SystemExit(f"--plus-protocol {a.plus_protocol}: pool.models is {cfg['models']}; the + cells need a "
                         f"pool of >= 1 members (or pass --pool)")
    val = recipe["validation"]
    k = len(data["classes"])
    xt, yt, _, _ = carve(data["train_images"], data["train_labels"], val["per_class"], val["seed"], k)
    logging.info("training the pool: %d members x %d epochs on %d images (%s)", cfg["models"], cfg["epochs"],
                 xt.shape[0], device)
    t = time.perf_counter()
    pool = train_pool(xt, yt, num_classes=k, device=device, state_dir=out / "pool-state", progress=True,
                      net=recipe["distill"]["net"], dsa_params=dict(params["dsa"]), **cfg)
    wall = time.perf_counter() - t
    pool.meta["wall_seconds"] = wall
    out.mkdir(parents=True, exist_ok=True)
    pool.save(dest)
    return pool, pool_note(out)


def merge_pool(params: dict, dataset: str, proto: str) -> dict:
    """The ``pool`` section as the pool stage would resolve it under protocol ``proto``."""
    import copy
    params = copy.deepcopy(params)
    params["datasets"][dataset]["protocol"] = proto
    return section(params, "pool", dataset)


def pool_note(out: Path) -> str:
    """One sentence on ``<out>/pool.pt``: members, epochs, images, training wall time."""
    from atom.pool import EncoderPool
    dest = out / "pool.pt"
    if not dest.is_file():
        return ""
    pool = EncoderPool.load_file(dest)
    m = pool.meta
    wall = m.get("wall_seconds", sum(m.get("seconds", [])))
    return (f" Pool ({dest.name}): {len(pool)} ConvNets x {m.get('config', {}).get('epochs', '?')} epochs on "
            f"{m.get('images', '?')} training images, {wall:.0f} s of training, fingerprint {pool.fingerprint}.")


def overrides_line(cells: dict) -> str:
    """The ``--set`` overrides the finished cells ran with: one line when they agree."""
    done = {key: tuple(c.get("overrides", ())) for key, c in cells.items() if isinstance(c, dict)}
    def fmt(sets: tuple) -> str:
        return "".join(f" `{kv}`" for kv in sets) or " none"
    if len(set(done.values())) <= 1:
        return f"Overrides:{fmt(next(iter(done.values()), ()))}."
    return "Overrides per cell: " + "; ".join(f"{kind} IPC {ipc}:{fmt(sets)}"
                                             for (kind, ipc), sets in done.items()) + "."


def timing(cells: dict, jobs: int) -> str:
    """Per-cell wall times (shared with the other cells running beside it when jobs > 1)."""
    lines = ["| cell | iterations | distillation s | s / iteration | total s | speed settings |",
             "|---|---|---|---|---|---|"]
    for (kind, ipc), c in cells.items():
        if not isinstance(c, dict):
            continue
        its = c["recipe"]["distill"]["iterations"] if "distill_seconds" in c else 0
        per = f"{c['distill_seconds'] / its:.4f}" if its else "-"
        dist = f"{c['distill_seconds']:.0f}" if its else "-"
        # real_chunk is a number (0: the whole batch); the other settings are flags, named when on
        speed = ", ".join(f"{k} {v}" if k == "real_chunk" else k
                          for k, v in (c.get("speed") or {}).items() if v or k == "real_chunk") or "-"
        lines.append(f"| {kind} IPC {ipc} | {its or '-'} | {dist} | {per} | {c['seconds']:.0f} | {speed} |")
    shared = f" ({jobs} cells shared the device)" if jobs > 1 else ""
    return f"Wall times per cell{shared}; distillation time includes the validation scores:\n\n" + "\n".join(lines) + "\n"


def run_parallel(a, todo: list, out: Path, device: str) -> None:
    """Each missing cell in its own process (this script with ``--jobs 1``), ``a.jobs`` at a time."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.jobs)))
    queue = [(k, i) for k, i in todo if not (out / f"{k}-ipc{i}.json").is_file()]
    running: dict = {}
    while queue or running:
        while queue and len(running) < a.jobs:
            kind, ipc = queue.pop(0)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--dataset", a.dataset, "--protocol", a.protocol,
                   "--ipcs", str(ipc), "--params", a.params, "--out", str(out), "--device", device,
                   "--jobs", "1", "--no-table",
                   *(["--methods", kind, "--baselines", "--plus"] if kind in METHODS else
                     ["--methods", "--baselines", "--plus", method_of(kind), "--plus-protocol", a.plus_protocol,
                      "--pool", a.pool or str(out / "pool.pt")] if kind.endswith(PLUS) else
                     ["--methods", "--baselines", kind, "--plus"]),
                   *[x for kv in a.set for x in ("--set", kv)]]
            log_file = open(logs / f"{kind}-ipc{ipc}.log", "w")
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            running[(kind, ipc)] = (proc, log_file)
            logging.info("started %s ipc %d (%d running, %d queued)", kind, ipc, len(running), len(queue))
        time.sleep(1)
        for key, (proc, log_file) in list(running.items()):
            if proc.poll() is None:
                continue
            log_file.close()
            del running[key]
            if proc.returncode == 0:
                logging.info("%s ipc %d finished", *key)
            else:
                tail = (logs / f"{key[0]}-ipc{key[1]}.log").read_text().splitlines()[-15:]
                logging.error("%s ipc %d failed (exit %d):\n%s", *key, proc.returncode, "\n".join(tail))

if __name__ == "__main__":
    main()
