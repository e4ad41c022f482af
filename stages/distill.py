"""Stage `distill`: learn one synthetic set (one dataset x method x ipc; spec section 2).

    python -m stages.distill --dataset digits --method atom --ipc 10 [--keep-checkpoint]

Reads ``<paths.prepared>/<dataset>.pt`` (and, when ``distill.encoder`` is not ``random`` or
``distill.calibration`` > 0, the pool stage's ``<paths.results>/pool/<dataset>/pool.pt``) and
the ``distill`` section (merged with the dataset group's and its protocol's overrides; the loss
constants of ``distill.loss.<method>``; seed ``runtime.seed``; augmentation ``dsa``), calls
:func:`atom.distill` and writes, under ``<paths.results>/distill/<dataset>/<method>/ipc<k>/``:

- ``synthetic.pt``  {images, labels, classes, dataset, method, ipc, config, iteration}
                    (preprocessed space): the set with the best validation score
                    (``validation``), else the last
- ``last.pt``       the set of the last iteration, in the same format
- ``loss.csv``      iteration,loss
- ``val_curve.csv`` iteration,accuracy of the validation scores (header only without a split)
- ``metrics.json``  numbers only: final loss, iterations, best iteration, ... (`dvc metrics`)
- ``info.json``     dataset, method, ipc, device

and, under ``<paths.state>/distill/<dataset>/<method>/ipc<k>/`` (never a declared output, so
neither Snakemake nor DVC deletes it before a rerun):

- ``checkpoint.pt``   the resumable state: a rerun (after a kill) resumes from it when its
                      settings match and it was made by the same distillation code (this
                      command and the ``atom/`` files it runs: :func:`stages.common.codedeps.
                      library_deps`), logging "resumed from <path> at iteration N"; otherwise it
                      starts afresh (``--keep-checkpoint`` resumes across a code edit)
- ``checkpoint.json`` that code's digest and the run's seconds at each checkpoint (timings
                      count the whole run across resumes)

The validation split (``validation.per_class`` images per class, seed ``validation.seed``) is
carved from the training images before distillation, which never samples it; the test images
are never read here.

MLflow: a run opened before the compute, with the params; the loss (metric ``loss``, every
``log_every`` iterations as they happen, the other steps at the end) and validation scores
(``val_accuracy``) streamed live from the library's events (:mod:`atom.events`); at the end
the timings, loss.csv and synthetic.pt, and the tag ``synthetic_sha256`` by which the
visualize stage finds this run to add the picture of its set (``grid.png``).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from .common import runner
from .common.codedeps import code_digest
from .common.contract import METHODS
from .common.params import distill_kwargs, evaluate_settings, section, uses_pool
from .common.tracking import MetricStream


class RunClock:
    """Wall-clock seconds of one distillation across kills and resumes, kept in
    ``checkpoint.json`` beside the checkpoint: the seconds at every checkpoint (from the
    library's :class:`atom.events.Checkpointed` and :class:`atom.events.Resumed` events) and
    ``code``, the digest of the code that made the checkpoint (a checkpoint made by other code
    is not resumed). Called with each event; :attr:`seconds` is the whole run's time."""

    def __init__(self, meta_path: Path, code: str):
        self.meta_path, self.code = Path(meta_path), code
        self.at: dict[str, float] = {}
        self.resumed_from = 0
        self.prior = 0.0
        self.t0 = time.perf_counter()

    def stored_code(self) -> str | None:
        """The code digest stored beside the checkpoint (None: no record)."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None
        self.at = {str(k): float(v) for k, v in meta.get("seconds_at", {}).items()}
        return meta.get("code")

    @property
    def seconds(self) -> float:
        return self.prior + time.perf_counter() - self.t0

    def start(self) -> None:
        """An attempt starts now (the clock counts from here, plus what a resume restores)."""
        self.t0 = time.perf_counter()

    def __call__(self, event) -> None:
        from atom.events import Checkpointed, Resumed

        if isinstance(event, Resumed):
            self.resumed_from = event.iteration
            done = [int(k) for k in self.at if int(k) <= event.iteration]
            self.prior = self.at[str(max(done))] if done else 0.0
        elif isinstance(event, Checkpointed):
            self.at = {k: v for k, v in self.at.items() if int(k) < event.iteration}
            self.at[str(event.iteration)] = self.seconds
            try:
                self.save()
            except OSError as exc:
                logging.getLogger("stages").warning("%s: cannot record the run's time (%s)", self.meta_path, exc)

    def save(self) -> None:
        """Write the code digest and the seconds at each checkpoint so far."""
        from atom.io import write_json

        write_json({"code": self.code, "seconds_at": self.at}, self.meta_path)

    def forget(self) -> None:
        """The checkpoint was discarded: start the clock afresh."""
        self.at, self.prior, self.resumed_from = {}, 0.0, 0
        self.meta_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__.splitlines()[0])
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="resume from a checkpoint that other distillation code made (after an edit you know does "
                        "not change the computation); its settings must still match")
    args = p.parse_args(argv)
    if args.method not in METHODS or args.ipc is None:
        raise ValueError(f"--method/--ipc: distill needs a method in {METHODS} and an ipc, "
                         f"got {args.method!r}, {args.ipc!r}")
    st = runner.Stage("distill", args)
    st.remove_stale()
    kwargs = distill_kwargs(st.params, st.dataset, st.method)
    run = st.start_run(st.method, st.ipc)  # RUNNING from here on; FAILED if anything below raises
    run.log_params({"dataset": st.dataset, "method": st.method, "ipc": st.ipc, **kwargs})
    from atom.distillation import CheckpointMismatchError, distill
    from atom.events import Progress, Validated
    from atom.io import sha256, write_json, write_text
    from atom.validation import carve, make_validator

    prep = st.load("prepared")  # only the training images are read below
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

    # the checkpoint is kept only for the code distillation runs (stages.common.codedeps)
    clock = RunClock(st.path("checkpoint_meta"), code_digest("distill"))
    if not ckpt.exists():
        st.log.info("no checkpoint at %s: starting at iteration 0", ckpt)
    elif clock.stored_code() not in (None, clock.code):
        if args.keep_checkpoint:
            st.log.warning("%s: made by other code (the distillation code changed since); kept, as "
                           "--keep-checkpoint asks", ckpt)
            clock.save()  # the checkpoint now counts as this code's
        else:
            st.log.warning("%s: made by other code (the distillation code changed since); discarding it (rerun "
                           "with --keep-checkpoint to resume from it)", ckpt)
            ckpt.unlink()
            clock.forget()
    stream = MetricStream(run, {Progress: lambda e: ("loss", e.loss, e.iteration),
                                Validated: lambda e: ("val_accuracy", e.score, e.iteration)})

    def on_event(event) -> None:  # the library's reports: the clock and the live metrics
        clock(event)
        stream(event)

    pool = None
    if uses_pool(kwargs):  # the pool stage's trained encoders
        from atom.io import UnreadableFileError
        from atom.pool import EncoderPool

        pool = EncoderPool.load_file(st.path("pool"))
        recorded = json.loads(st.path("pool_info").read_text()).get("fingerprint")
        if pool.fingerprint != recorded:  # the weights are not those the pool stage trained and recorded
            raise UnreadableFileError(st.path("pool"), f"holds a pool with fingerprint {pool.fingerprint[:16]}, not "
                                                       f"{str(recorded)[:16]} that the pool stage recorded in "
                                                       f"{st.path('pool_info')}")
        st.log.info("distilling inside the pool %s (%d members), encoder %s, calibration %s", st.path("pool"),
                    len(pool), kwargs["encoder"], kwargs["calibration"])
        run.log_params({"pool_fingerprint": pool.fingerprint})

    def attempt():
        clock.start()
        return distill(train_x, train_y, ipc=st.ipc, method=st.method, num_classes=k, device=device,
                       checkpoint_path=ckpt, resume=True, progress=True, validator=validator, pool=pool,
                       on_event=on_event, **kwargs)

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
        st.save(key, {"images": images, "labels": res.labels, "classes": list(prep["classes"]),
                      "dataset": st.dataset, "method": st.method, "ipc": st.ipc, "config": res.config,
                      "iteration": it})
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
    # the visualize stage finds this run by its set's bytes and adds the set's picture to it
    run.set_tag("synthetic_sha256", sha256(st.path("synthetic")))
    if run.run_id:
        run.log_artifact(st.path("loss_csv"))
        if st.params["mlflow"]["log_synthetic"]:
            run.log_artifact(st.path("synthetic"))


if __name__ == "__main__":
    sys.exit(runner.run(main))
