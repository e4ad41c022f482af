"""Stage `distill`: learn one synthetic set (one dataset x method x ipc; spec section 2).

    python -m stages.distill --dataset digits --method atom --ipc 10

Reads ``<paths.prepared>/<dataset>.pt`` (and, when ``distill.encoder`` is not ``random`` or
``distill.calibration`` > 0, the pool stage's ``<paths.results>/pool/<dataset>/pool.pt``) and the ``distill`` section (merged with the dataset
group's overrides; the loss constants of ``distill.loss.<method>``; seed ``runtime.seed``;
augmentation ``dsa``), calls ``atom.distill.distill`` and writes, under
``<paths.results>/distill/<dataset>/<method>/ipc<k>/``:

- ``synthetic.pt``  {images, labels, classes, dataset, method, ipc, config, iteration} (preprocessed
                    space): the set with the best validation score (``validation``), else the last
- ``last.pt``       the set of the last iteration, in the same format
- ``val_curve.csv`` iteration,accuracy of the validation scores (header only without a split)
and, under ``<paths.state>/distill/<dataset>/<method>/ipc<k>/`` (never a declared output, so
neither Snakemake nor DVC deletes it before a rerun):

- ``checkpoint.pt`` the resumable state: a rerun (after a kill) resumes from it when its
                    configuration and code match, logging "resumed from <path> at iteration N",
                    and starts afresh when they do not
- ``checkpoint.json`` the code digest and the run's seconds at each checkpoint (timings count
                    the whole run across resumes)
- ``loss.csv``      iteration,loss
- ``metrics.json``  numbers only: final loss, iterations, best iteration, ... (`dvc metrics`)
- ``info.json``     dataset, method, ipc, device

The validation split (``validation.per_class`` images per class, seed ``validation.seed``) is
carved from the training images before distillation, which never samples it; the test images
are never read here.

MLflow: a run opened before the compute, with the params; the loss (metric ``loss``, every
``log_every`` iterations as they happen, the other steps at the end) and validation scores
(``val_accuracy``) streamed live; at the end the timings, the class grid and synthetic.pt.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from . import runtime
from .layout import METHODS
from .params import distill_kwargs, evaluate_settings, section, uses_pool
from .recovery import LOSS_RECORD, VALIDATION_RECORDS, RunClock, code_digest
from .stream import MetricStream


def main(argv: list[str] | None = None) -> None:
    args = runtime.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.method not in METHODS or args.ipc is None:
        raise ValueError(f"--method/--ipc: distill needs a method in {METHODS} and an ipc, "
                         f"got {args.method!r}, {args.ipc!r}")
    st = runtime.Stage("distill", args)
    st.remove_stale("synthetic", "last", "loss_csv", "val_curve", "distill_metrics", "distill_info", "checkpoint",
                    "checkpoint_meta")
    kwargs = distill_kwargs(st.params, st.dataset, st.method)
    run = st.start_run(st.method, st.ipc)  # RUNNING from here on; FAILED if anything below raises
    run.log_params({"dataset": st.dataset, "method": st.method, "ipc": st.ipc, **kwargs})
    from atom import viz
    from atom.distill import CheckpointMismatchError, distill
    from atom.formation import decode
    from atom.io import load_tensors, save_tensors, write_json, write_text
    from atom.validation import carve, make_validator

    prep = load_tensors(st.path("prepared"))  # only the training images are read below
    k = len(prep["classes"])
    ckpt = st.path("checkpoint")
    device = st.resolved_device()
    val = section(st.params, "validation", st.dataset)
    train_x, train_y, val_x, val_y = carve(prep["train_images"], prep["train_labels"], val["per_class"],
                                           val["seed"], k)
    validator = None
    if val_x is not None:
        _, eval_cfg, batched = evaluate_settings(st.params, st.dataset, st.method)
        validator = make_validator(val_x, val_y, seeds=val["seeds"], num_classes=k, device=device,
                                   **dict(eval_cfg, epochs=val["epochs"], batched=batched))
    else:
        kwargs["validate_every"] = 0
    st.log.info("distilling %s/%s ipc %d on %s with %s; %d training images, %s validation images",
                st.dataset, st.method, st.ipc, device, kwargs, train_x.shape[0],
                0 if val_x is None else val_x.shape[0])

    clock = RunClock(st.path("checkpoint_meta"), kwargs["checkpoint_every"], code_digest("distill"))
    if not ckpt.exists():
        st.log.info("no checkpoint at %s: starting at iteration 0", ckpt)
    elif clock.stored_code() not in (None, clock.code):
        st.log.warning("%s: made by other code (atom/ or stages/ changed since); discarding it", ckpt)
        ckpt.unlink()
        clock.forget()
    stream = MetricStream(run, {LOSS_RECORD: lambda a: ("loss", a[2], a[0]),
                                **{f: (lambda a: ("val_accuracy", a[1], a[0])) for f in VALIDATION_RECORDS}})

    pool = None
    if uses_pool(kwargs):  # the pool stage's trained encoders
        from atom.pool import EncoderPool

        pool = EncoderPool.load_file(st.path("pool"))
        st.log.info("distilling inside the pool %s (%d members), encoder %s, calibration %s", st.path("pool"),
                    len(pool), kwargs["encoder"], kwargs["calibration"])
        run.log_params({"pool_fingerprint": pool.fingerprint})

    def attempt():
        with clock.attach(), stream.attach("atom.distill"):
            return distill(train_x, train_y, ipc=st.ipc, method=st.method, num_classes=k, device=device,
                           checkpoint_path=ckpt, resume=True, progress=True, validator=validator, pool=pool,
                           **kwargs)

    try:
        res = attempt()
    except CheckpointMismatchError as exc:
        # a checkpoint left by a run with other settings: start afresh rather than fail
        st.log.warning("%s; discarding the checkpoint", exc)
        ckpt.unlink()
        clock.forget()
        res = attempt()
    seconds = clock.seconds  # the whole run, across resumes
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
    # numbers only, and no wall-clock times: the same inputs give the same bytes (timings: the
    # log, MLflow and Snakemake's benchmark files)
    metrics = {"iterations": len(res.losses), "final_loss": res.losses[-1], "tail_mean_loss": sum(tail) / len(tail),
               "first_loss": res.losses[0], "images": int(res.images.shape[0]), "best_iteration": best_it,
               "best_val_accuracy": res.best_score}
    write_json({k: v for k, v in metrics.items() if v is not None}, st.path("distill_metrics"))
    write_json({"dataset": st.dataset, "method": st.method, "ipc": st.ipc, "device": device}, st.path("distill_info"))
    metrics.update(seconds=seconds, seconds_per_iteration=seconds / max(1, len(res.losses)),
                   resumed_from=clock.resumed_from)
    st.log.info("done: final loss %.6g in %.1fs (%.3fs per iteration; the whole run, resumed from iteration %d)",
                metrics["final_loss"], seconds, metrics["seconds_per_iteration"], clock.resumed_from)

    # the history's steps that were not streamed (between log_every, or before a resume)
    for key, curve in (("loss", list(zip(steps, res.losses))), ("val_accuracy", res.val_curve)):
        rest = [(s, v) for s, v in curve if s not in stream.steps.get(key, ())]
        run.log_history(key, [v for _, v in rest], [s for s, _ in rest])
    run.log_params({"device": device})
    run.log_metrics({k: metrics[k] for k in ("final_loss", "tail_mean_loss", "seconds", "seconds_per_iteration",
                                             "best_iteration", "best_val_accuracy", "resumed_from")
                     if metrics[k] is not None})
    if run.run_id:
        with tempfile.TemporaryDirectory() as tmp:
            vz = st.params["visualize"]
            grid = viz.plot_class_grid(*decode(res.best_images, res.labels, int(res.config.get("factor", 1))),
                                       prep["state"], Path(tmp) / "grid.png", classes=prep["classes"],
                                       real=(prep["train_images"], prep["train_labels"]),
                                       max_per_class=vz["max_per_class"], min_cell=vz["grid_cell"],
                                       title=f"{st.dataset}: {st.method}, IPC {st.ipc}",
                                       subtitle=f"iteration {best_it} kept", dpi=vz["dpi"])
            run.log_artifact(grid)
        run.log_artifact(st.path("loss_csv"))
        if st.params["mlflow"]["log_synthetic"]:
            run.log_artifact(st.path("synthetic"))


if __name__ == "__main__":
    sys.exit(runtime.run(main))
