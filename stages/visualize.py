"""Stage `visualize`: pictures of one synthetic set, or the accuracy plot of one dataset.

    python -m stages.visualize --dataset digits --method atom --ipc 10
        -> <paths.results>/visualize/digits/atom/ipc10/grid.png   (a row per class named at
           its left, real training images beside the distilled ones as a network trains on
           them (multi-formation tiles decoded), through the exact inverse preprocessing,
           upscaled to be legible), loss.png (with the validation curve and the
           iteration kept); the set's files for other code are the export stage's
    python -m stages.visualize --dataset digits
        -> <paths.results>/visualize/digits/accuracy.png, accuracy.csv (accuracy vs ipc for
           every method and baseline in the experiment matrix)

Settings: the ``visualize`` section. MLflow: the pictures as artifacts of a `visualize` run;
the grid also goes to the distill run that made the set (found by its ``synthetic_sha256`` tag).
"""
from __future__ import annotations

import csv
import io
import json
import sys

from .common import runner
from .common.contract import LABELS, METHODS, eval_path, evaluations



def grid_caption(params: dict, dataset: str, method: str, ipc: int, record: dict) -> tuple[str, str]:
    """The picture's title and the run that made it (protocol, seed, iteration kept)."""
    from .common.params import protocol, section

    d = section(params, "distill", dataset)
    factor = int((record.get("config") or {}).get("factor", 1))
    proto = protocol(params, dataset)
    title = f"{dataset}: {LABELS.get(method, method)}, {ipc} image{'s' if ipc > 1 else ''} per class"
    seed = d.get("seed", params["runtime"]["seed"])  # runtime.seed unless a script overrides distill.seed
    sub = (f"protocol {proto or 'params.yaml defaults'}, distillation seed {seed}, iteration "
           f"{record['iteration']} of {d['iterations']} kept"
           + (f"; each stored image is {factor}x{factor} tiles, shown as decoded" if factor > 1 else ""))
    return title, sub


def set_pictures(st: runner.Stage) -> None:
    """Rule ``visualize``: the grid, the loss curve and the ImageFolder export of one set."""
    from atom import viz
    from atom.formation import training_set
    from atom.io import sha256

    vz = st.params["visualize"]
    syn = st.load("synthetic")  # every input checked before anything is drawn
    prep = st.load("prepared")
    images, labels = training_set(syn)  # what a network trains on: the tiles of multi-formation
    title, sub = grid_caption(st.params, st.dataset, st.method, st.ipc, syn)
    grid = viz.plot_class_grid(images, labels, prep["state"], st.path("grid"), classes=prep["classes"],
                               real=(prep["train_images"], prep["train_labels"]),
                               max_per_class=vz["max_per_class"], min_cell=vz["grid_cell"], title=title,
                               subtitle=sub, dpi=vz["dpi"])
    del prep
    with open(st.path("loss_csv")) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{st.path('loss_csv')}: no loss values")
    with open(st.path("val_curve")) as f:
        val = [(int(r["iteration"]), float(r["accuracy"])) for r in csv.DictReader(f)]
    loss = viz.plot_loss([float(r["loss"]) for r in rows], st.path("loss_png"),
                         steps=[int(r["iteration"]) for r in rows], validation=val,
                         chosen=int(syn["iteration"]) if val else None,
                         title=f"{st.dataset} {st.method} ipc {st.ipc}", dpi=vz["dpi"])
    st.log.info("wrote %s and %s", grid, loss)
    tracker = st.tracker()
    with tracker.run("visualize", st.method, st.ipc) as run:
        run.log_params(vz)
        run.log_artifact(grid)
        run.log_artifact(loss)
    # the picture of the set beside the set in the distill run that made it (the newest such)
    made = tracker.find_runs("FINISHED", stage="distill", dataset=st.dataset, method=st.method, ipc=str(st.ipc),
                             synthetic_sha256=sha256(st.path("synthetic")))
    if made:
        tracker.attach(made[0].info.run_id, grid)


def accuracy_plot(st: runner.Stage) -> None:
    """Rule ``accuracy``: test accuracy by IPC of every method and baseline of the matrix."""
    from atom import viz
    from atom.io import write_text

    rows = []
    for kind, ipc in evaluations(st.params, st.dataset):
        p = eval_path(st.params, st.dataset, kind, ipc)
        m = json.loads(p.read_text())
        rows.append({"method": kind, "ipc": ipc, "mean": m["mean"], "std": m["std"], "n": m["n"]})
    if not rows:
        raise ValueError(f"experiment: nothing was evaluated for {st.dataset!r}")
    # long format, one row per (method, ipc), the whole-set baseline at every ipc: DVC's plot
    # (dvc.yaml, template plots/accuracy.json) draws one series per method
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "ipc", "mean", "std", "n"])
    for r in rows:
        for ipc in st.params["experiment"]["ipcs"] if r["ipc"] is None else [r["ipc"]]:
            w.writerow([r["method"], ipc, f"{r['mean']:.4f}", f"{r['std']:.4f}", r["n"]])
    write_text(buf.getvalue(), st.path("accuracy_csv"))
    png = viz.plot_accuracy(rows, st.path("accuracy_png"), title=f"{st.dataset}: test accuracy",
                            dpi=st.params["visualize"]["dpi"])
    st.log.info("wrote %s", png)
    with st.tracker().run("visualize", name=f"visualize/{st.dataset}/accuracy") as run:
        run.log_artifact(png)
        run.log_artifact(st.path("accuracy_csv"))


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0]).parse_args(argv)
    if (args.method is None) != (args.ipc is None):
        raise ValueError("--method/--ipc: give both (one synthetic set) or neither (the accuracy plot)")
    if args.method is not None and args.method not in METHODS:
        raise ValueError(f"--method: visualize draws synthetic sets of {METHODS}, got {args.method!r}")
    st = runner.Stage("visualize", args)
    st.remove_stale()  # what killed writes left
    if st.rule == "accuracy":
        accuracy_plot(st)
    else:
        set_pictures(st)


if __name__ == "__main__":
    sys.exit(runner.run(main))
