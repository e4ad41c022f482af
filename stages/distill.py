"""Stage `distill`: learn one synthetic set (one dataset x method x ipc; spec section 2).

    python -m stages.distill --dataset digits --method atom --ipc 10

Reads ``<paths.prepared>/<dataset>.pt`` and the ``distill`` section (merged with the dataset
group's overrides; the loss constants of ``distill.loss.<method>``; seed ``runtime.seed``;
augmentation ``dsa``), calls ``atom.distill.distill`` and writes, under
``<paths.results>/distill/<dataset>/<method>/ipc<k>/``:

- ``synthetic.pt``  {images, labels, classes, dataset, method, ipc, config, iteration} (preprocessed
                    space): the set with the best validation score (``validation``), else the last
- ``last.pt``       the set of the last iteration, in the same format
- ``val_curve.csv`` iteration,accuracy of the validation scores (header only without a split)
- ``checkpoint.pt`` the resumable state (a rerun of this command resumes from it when its
                    configuration matches, and starts afresh when it does not)
- ``loss.csv``      iteration,loss
- ``metrics.json``  final loss, seconds, ...

The validation split (``validation.per_class`` images per class, seed ``validation.seed``) is
carved from the training images before distillation, which never samples it; the test images
are never read here.

MLflow: params, the loss curve (metric ``loss`` by step), the validation curve (metric
``val_accuracy`` by step), the class grid and synthetic.pt.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from . import runtime
from .layout import METHODS
from .params import distill_kwargs, evaluate_settings, section


def main(argv: list[str] | None = None) -> None:
    args = runtime.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.method not in METHODS or args.ipc is None:
        raise ValueError(f"--method/--ipc: distill needs a method in {METHODS} and an ipc, "
                         f"got {args.method!r}, {args.ipc!r}")
    st = runtime.Stage("distill", args)
    kwargs = distill_kwargs(st.params, st.dataset, st.method)
    from atom import viz
    from atom.distill import CheckpointMismatchError, distill
    from atom.evaluate import evaluate
    from atom.io import load_tensors, save_tensors, write_json, write_text
    from atom.validation import carve

    prep = load_tensors(st.path("prepared"))  # only the training images are read below
    k = len(prep["classes"])
    ckpt = st.path("checkpoint")
    device = st.resolved_device()
    val = section(st.params, "validation", st.dataset)
    train_x, train_y, val_x, val_y = carve(prep["train_images"], prep["train_labels"], val["per_class"],
                                           val["seed"], k)
    validator = None
    if val_x is not None:
        _, eval_cfg, _ = evaluate_settings(st.params, st.dataset, st.method)
        eval_cfg["epochs"] = val["epochs"]

        def validator(images, labels):
            return evaluate(images, labels, val_x, val_y, seeds=val["seeds"], num_classes=k, device=device,
                            progress=False, **eval_cfg)["mean"]
    else:
        kwargs["validate_every"] = 0
    st.log.info("distilling %s/%s ipc %d on %s with %s; %d training images, %s validation images",
                st.dataset, st.method, st.ipc, device, kwargs, train_x.shape[0],
                0 if val_x is None else val_x.shape[0])

    def attempt():
        return distill(train_x, train_y, ipc=st.ipc, method=st.method, num_classes=k, device=device,
                       checkpoint_path=ckpt, resume=True, progress=False, validator=validator, **kwargs)

    try:
        res = attempt()
    except CheckpointMismatchError as exc:
        # a checkpoint left by a run with other settings: start afresh rather than fail
        st.log.warning("%s; discarding the checkpoint", exc)
        ckpt.unlink()
        res = attempt()
    if not ckpt.exists():  # checkpoint_every >= 1 saves the last iteration; keep the output contract
        raise RuntimeError(f"{ckpt}: the distillation did not write its checkpoint")

    best_it = res.best_iteration if res.best_iteration is not None else len(res.losses)
    for key, images, it in (("synthetic", res.best_images, best_it), ("last", res.images, len(res.losses))):
        save_tensors({"images": images, "labels": res.labels, "classes": list(prep["classes"]),
                      "dataset": st.dataset, "method": st.method, "ipc": st.ipc, "config": res.config,
                      "iteration": it}, st.path(key))
    write_text("iteration,accuracy\n" + "".join(f"{i},{a:.6g}\n" for i, a in res.val_curve), st.path("val_curve"))
    steps = list(range(1, len(res.losses) + 1))
    write_text("iteration,loss\n" + "".join(f"{s},{v:.9g}\n" for s, v in zip(steps, res.losses)),
               st.path("loss_csv"))
    tail = res.losses[-max(1, len(res.losses) // 10):]
    metrics = {"dataset": st.dataset, "method": st.method, "ipc": st.ipc, "iterations": len(res.losses),
               "final_loss": res.losses[-1], "tail_mean_loss": sum(tail) / len(tail), "first_loss": res.losses[0],
               "seconds": res.seconds, "seconds_per_iteration": res.seconds / max(1, len(res.losses)),
               "device": device, "images": int(res.images.shape[0]), "best_iteration": best_it,
               "best_val_accuracy": res.best_score}
    write_json(metrics, st.path("distill_metrics"))
    st.log.info("done: final loss %.6g in %.1fs", metrics["final_loss"], res.seconds)

    with st.tracker().run("distill", st.method, st.ipc) as run:
        run.log_params({"dataset": st.dataset, "method": st.method, "ipc": st.ipc, "device": device, **kwargs})
        run.log_history("loss", res.losses, steps)
        if res.val_curve:
            run.log_history("val_accuracy", [a for _, a in res.val_curve], [i for i, _ in res.val_curve])
        run.log_metrics({k: metrics[k] for k in ("final_loss", "tail_mean_loss", "seconds", "seconds_per_iteration",
                                                 "best_iteration", "best_val_accuracy") if metrics[k] is not None})
        if run.run_id:
            with tempfile.TemporaryDirectory() as tmp:
                grid = viz.save_grid(res.best_images, res.labels, prep["state"], Path(tmp) / "grid.png",
                                     num_classes=len(prep["classes"]),
                                     max_per_class=st.params["visualize"]["max_per_class"],
                                     scale=st.params["visualize"]["grid_scale"])
                run.log_artifact(grid)
            run.log_artifact(st.path("loss_csv"))
            if st.params["mlflow"]["log_synthetic"]:
                run.log_artifact(st.path("synthetic"))


if __name__ == "__main__":
    sys.exit(runtime.run(main))
