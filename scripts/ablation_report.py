"""Tables and learning curves of the ablation cells (scripts/ablation.py outputs).

    python scripts/ablation_report.py results/ablation --figure docs/figures/ablation_curves.png
    python scripts/ablation_report.py docs/paper/h100-spec-2000 --figure docs/figures/h100_spec_short_curves.png

(the second: scripts/paper.py's cells, which read the same way).

Prints one Markdown table row per cell (set, IPC, overrides, validation score at each scored
iteration, the iteration kept, test mean ± std (n) with the per-seed values, minutes) and draws
every distillation cell's validation curve (accuracy on the held-out training images against
iteration), one panel per IPC. A cell's recipe column lists its overrides of its own
protocol, led by ``protocol=<name>`` where that is not the protocol most cells ran.
``--pool`` adds a second table: the cells that differ only in their distillation seed
(``distill.seed``) as one row, with the test values of every
evaluation network of every seed pooled (mean ± population std, n), the spread a method's
number carries once the set itself is redrawn, and a third: method against method, the
per-seed differences of recipes that differ only in their loss, with a t-interval (how large
a gap the distillation seeds can rule out). Cells run with ``scripts/ablation.py
--crosscheck`` add a last table: the kept set scored by both protocols on both splits (the
validation scorer's networks and the evaluation's networks, on the validation split and on
the test set), which tells whether a disagreement between validation and test comes from
the split or from the evaluator.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(*folders: Path) -> list[dict]:
    """The cells (*.json) of every folder, read together and ordered by IPC, method, name."""
    cells = [json.loads(p.read_text()) for folder in folders for p in sorted(folder.glob("*.json"))]
    for c in cells:  # scripts/paper.py's cells carry no name: one recipe per folder
        c.setdefault("name", "paper")
    return sorted(cells, key=lambda c: (c["ipc"], c["method"], c["name"]))


def short_keys(overrides: list[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` overrides as (key, value) with each key cut to its last part, unless
    two keys of the cell share it (``distill.net.norm`` and ``evaluate.net.norm``): those stay
    whole, so a row never names two settings alike."""
    pairs = [tuple(o.split("=", 1)) for o in overrides]
    last = [k.split(".")[-1] for k, _ in pairs]
    return [(k if last.count(t) > 1 else t, v) for (k, v), t in zip(pairs, last)]


def spread(r: dict) -> str:
    """An evaluation's ``mean ± std (n)``."""
    return f"{r['mean']:.2f} ± {r['std']:.2f} ({r['n']})"


def described(overrides: list[str]) -> str:
    """A row's recipe column: the overrides with short keys, or ``-`` for none."""
    return ", ".join(f"{k}={v}" for k, v in short_keys(overrides)) or "-"


def usual_protocol(cells: list[dict]):
    """The protocol most of the cells ran (None: no cell records one, scripts/paper.py's)."""
    names = [c.get("protocol") for c in cells]
    return max(dict.fromkeys(names), key=names.count) if names else None


def label(cell: dict, usual, overrides: list[str] | None = None) -> str:
    """The recipe column of ``cell``: its overrides (``overrides`` where given), led by
    ``protocol=<name>`` when the cell ran another protocol than ``usual``: the overrides are
    relative to the cell's own protocol, so two cells with the same overrides under two
    protocols must not read alike."""
    text = described(cell["overrides"] if overrides is None else overrides)
    proto = cell.get("protocol")
    if proto == usual:
        return text
    return f"protocol={proto}" + ("" if text == "-" else f", {text}")


def rows(cells: list[dict]) -> str:
    usual = usual_protocol(cells)
    out = ["| set | IPC | recipe (overrides of the cell's protocol) | validation curve (iteration: %) | kept | "
           "test % mean ± std (n) | per seed | min |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        curve = ", ".join(f"{int(i)}: {a:.1f}" for i, a in c["val_curve"])
        out.append(f"| {c['method']} | {c['ipc']} | {label(c, usual)} | {curve} | {c['best_iteration']} | "
                   f"{spread(c)} | {', '.join(f'{v:.2f}' for v in c['test'])} | "
                   f"{c['seconds'] / 60:.1f} |")
    return "\n".join(out) + "\n"


SEED = "distill.seed="


def distillation_seed(cell: dict):
    """The cell's distillation seed: its ``distill.seed`` override, else its recipe's."""
    for o in cell["overrides"]:
        if o.startswith(SEED):
            return o.removeprefix(SEED)
    return str(cell.get("recipe", {}).get("distill", {}).get("seed", "-"))


def seed_order(seed: str) -> tuple:
    """Sort key of a distillation seed: numbers by value (2 before 10), then anything else."""
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def seedless(overrides: list[str]) -> list[str]:
    """``overrides`` without the distillation seed."""
    return [o for o in overrides if not o.startswith(SEED)]


def recipe_key(cell: dict, *drop: str) -> str:
    """The cell's resolved recipe without ``distill.seed`` and the ``distill`` keys in ``drop``,
    as a key; by the resolved recipe where the cell has one: once params.yaml's defaults move,
    the same overrides name another recipe, and other overrides may name the same one (cells
    without one, scripts/paper.py's, go by their other overrides)."""
    recipe = copy.deepcopy(cell.get("recipe"))
    if recipe is None:
        return json.dumps([o for o in seedless(cell["overrides"])
                           if not any(o.startswith(f"distill.{k}.") or o.startswith(f"distill.{k}=") for k in drop)])
    d = recipe.get("distill", {})
    for k, default in ENCODER_DEFAULTS.items():  # cells from before the encoder keys read as random
        if d.get(k, default) == default:
            d.pop(k, None)
    for k in ("seed", *drop):
        d.pop(k, None)
    return json.dumps(recipe, sort_keys=True)


# where the features come from (atom.pool); the paper's random encoders are the defaults
ENCODER_DEFAULTS = {"encoder": "random", "encoder_lambda": [0.0, 1.0], "calibration": 0.0}
ENCODER_KEYS = tuple(ENCODER_DEFAULTS)


def uses_pool(cell: dict) -> bool:
    d = (cell.get("recipe") or {}).get("distill", {})
    return d.get("encoder", "random") != "random" or d.get("calibration", 0.0) > 0


def encoder_of(cell: dict) -> str:
    """The cell's encoder settings (defaults filled in), comparable between cells."""
    d = (cell.get("recipe") or {}).get("distill", {})
    return json.dumps({k: d.get(k, v) for k, v in ENCODER_DEFAULTS.items()}, sort_keys=True)


def by_seed(group: list[dict]) -> dict[str, dict]:
    """The cells of one recipe keyed by distillation seed, in seed order; a second cell with a
    seed stops the report (a rerun of one set would count its networks twice)."""
    out: dict[str, dict] = {}
    for c in sorted(group, key=lambda c: seed_order(distillation_seed(c))):
        s = distillation_seed(c)
        if s in out:
            raise SystemExit(f"--pool: cells {out[s]['method']}-ipc{c['ipc']}-{out[s]['name']} and {c['method']}-"
                             f"ipc{c['ipc']}-{c['name']} ran one recipe with distillation seed {s}; "
                             "pool a folder holding one of them")
        out[s] = c
    return out


def recipes(cells: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(IPC, method, recipe without ``distill.seed``) -> its cells by distillation seed."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["ipc"], c["method"], recipe_key(c)), []).append(c)
    return {k: by_seed(g) for k, g in groups.items()}


def pooled(cells: list[dict]) -> str:
    """One row per (method, IPC, recipe other than ``distill.seed``): the cells of a recipe
    distilled from several seeds, their per-seed means, and all their test values pooled."""
    usual = usual_protocol(cells)
    out = ["| set | IPC | recipe (overrides of the first seed's cell) | distillation seed: test % mean | "
           "pooled test % mean ± std (n) |", "|---|---|---|---|---|"]
    for (ipc, method, _), group in sorted(recipes(cells).items(), key=lambda kv: kv[0][:2]):
        values = [v for c in group.values() for v in c["test"]]
        seeds = ", ".join(f"{s}: {c['mean']:.2f}" for s, c in group.items())
        first = next(iter(group.values()))
        out.append(f"| {method} | {ipc} | {label(first, usual, seedless(first['overrides']))} | {seeds} | "
                   f"{statistics.fmean(values):.2f} ± "
                   f"{statistics.pstdev(values):.2f} ({len(values)}) |")
    return "\n".join(out) + "\n"


ORDER = ("atom", "datadam", "dm")  # the paper's ranking: a comparison reads "first minus second"


def paired(cells: list[dict], level: float = 0.95) -> str:
    """Method against method, paired by distillation seed: at one seed every method starts
    from the same set, so the per-seed difference of test means removes what the start does
    to both. One row per two recipes that differ only in the loss (``distill.loss``, each
    method's own) and in where the features come from (``distill.encoder``,
    ``encoder_lambda``, ``calibration``: the same method with and without a trained pool, or
    with and without calibration, compares too, the pool's and the calibrated recipe first) and share two or more distillation seeds: the
    differences, their mean ± sample std (n seeds) and a two-sided t-interval, which says how
    large a gap the seeds can rule out."""
    from scipy.stats import t

    usual = usual_protocol(cells)

    def name(c: dict) -> str:
        return f"{c['method']} ({label(c, usual, seedless(c['overrides']))})"

    rank = {m: i for i, m in enumerate(ORDER)}

    def first(group: dict) -> dict:
        return next(iter(group.values()))

    def calibration(c: dict) -> float:
        return float((c.get("recipe") or {}).get("distill", {}).get("calibration", 0.0))
    # (IPC, method, recipe without its loss, cells by seed): two recipes compare when the first
    # three agree but the method; the loss-free key is made once per recipe, not once per pair
    groups = [(ipc, method, recipe_key(next(iter(g.values())), "loss", *ENCODER_KEYS), g)
              for (ipc, method, _), g in sorted(recipes(cells).items(),
                                                key=lambda kv: (kv[0][0], not uses_pool(first(kv[1])),
                                                                rank.get(kv[0][1], len(ORDER)), kv[0][1],
                                                                -calibration(first(kv[1]))))]
    out = [f"| IPC | first | second | distillation seed: first − second | mean ± std (n seeds) | "
           f"{level:.0%} t-interval |", "|---|---|---|---|---|---|"]
    for i, (ipc, ma, ka, a) in enumerate(groups):
        for ipc_b, mb, kb, b in groups[i + 1:]:
            common = sorted(set(a) & set(b), key=seed_order)
            # the same method compares with itself only across encoder settings
            same = mb == ma and encoder_of(first(a)) == encoder_of(first(b))
            if ipc_b != ipc or same or kb != ka or len(common) < 2:
                continue
            d = [a[s]["mean"] - b[s]["mean"] for s in common]
            m, sd = statistics.fmean(d), statistics.stdev(d)
            half = t.ppf(0.5 + level / 2, len(d) - 1) * sd / len(d) ** 0.5
            out.append(f"| {ipc} | {name(next(iter(a.values())))} | {name(next(iter(b.values())))} | "
                       f"{', '.join(f'{s}: {x:+.2f}' for s, x in zip(common, d))} | {m:+.2f} ± {sd:.2f} ({len(d)}) | "
                       f"[{m - half:+.2f}, {m + half:+.2f}] |")
    return "\n".join(out) + "\n"


def crosschecked(cells: list[dict]) -> str:
    """One row per cell run with ``--crosscheck``: the kept set's validation score while
    distilling (the scorer's networks), its validation accuracy with the evaluation's networks,
    its test accuracy with the scorer's networks and its reported test result."""
    out = ["| set | IPC | recipe (overrides) | validation: scorer, kept | validation: evaluation nets | "
           "test: scorer nets | test: evaluation nets (reported) |", "|---|---|---|---|---|---|---|"]
    usual = usual_protocol(cells)
    for c in cells:
        if "crosscheck" not in c:
            continue
        kept = dict((int(i), a) for i, a in c["val_curve"])[int(c["best_iteration"])]
        x = c["crosscheck"]
        out.append(f"| {c['method']} | {c['ipc']} | {label(c, usual)} | {kept:.2f} | "
                   f"{spread(x['validation_by_evaluation'])} | {spread(x['test_by_scorer'])} | {spread(c)} |")
    return "\n".join(out) + "\n"


def figure(cells: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from atom.io import atomic_path

    ipcs = sorted({c["ipc"] for c in cells if len(c["val_curve"]) > 1})
    fig, axes = plt.subplots(1, len(ipcs), figsize=(7.5 * len(ipcs), 4.2), squeeze=False)
    # colour = method, line style + marker = recipe: a dozen curves stay tellable apart
    colours = {"atom": "tab:blue", "datadam": "tab:orange", "dm": "tab:green"}
    names = sorted({c["name"] for c in cells})
    styles = [(ls, mk) for mk in "os^vDx" for ls in ("-", "--", ":")]
    for ax, ipc in zip(axes[0], ipcs):
        for c in cells:
            if c["ipc"] == ipc and len(c["val_curve"]) > 1:
                its, accs = zip(*c["val_curve"])
                ls, mk = styles[names.index(c["name"]) % len(styles)]
                ax.plot(its, accs, ls=ls, marker=mk, ms=3, lw=1, color=colours.get(c["method"]),
                        label=f"{c['method']} {c['name']}")
        ax.set_title(f"IPC {ipc}: validation accuracy while distilling")
        ax.set_xlabel("iteration")
        ax.set_ylabel("accuracy on held-out training images (%)")
        ax.grid(alpha=0.3)
        # beside the axes: with two dozen cells a legend inside hides the curves
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, nargs="+", help="folders of cells (*.json), read together")
    ap.add_argument("--figure", type=Path)
    ap.add_argument("--pool", action="store_true", help="also print the recipes pooled over distillation seeds and the methods paired by seed")
    a = ap.parse_args(argv)
    cells = load(*a.folder)
    if not cells:
        raise SystemExit(f"{', '.join(map(str, a.folder))}: no ablation cells (*.json)")
    print(rows(cells))
    if a.pool:
        print(pooled(cells))
        print(paired(cells))
    if any("crosscheck" in c for c in cells):
        print(crosschecked(cells))
    if a.figure:
        figure(cells, a.figure)


if __name__ == "__main__":
    main()
