"""Stage `pool`: train the pool of ConvNets that distillation can draw its encoders from (ATOM+).

    python -m stages.pool --dataset cifar10-jpeg

Reads ``<paths.prepared>/<dataset>.pt`` and the ``pool`` section (merged with the dataset
group's and its protocol's overrides), carves the validation split exactly as the distill
stage does (``validation.per_class``, ``validation.seed``) and trains ``pool.models``
ConvNets of ``distill.net`` on the rest with ``atom.pool.train_pool``; the test images are
never read. Writes, under ``<paths.results>/pool/<dataset>/``:

- ``pool.pt``       every member's initial and trained weights (safetensors, checksummed, no
                    pickle), the settings and per-member training accuracy and losses: what
                    distill reads when ``distill.encoder`` is not ``random`` or
                    ``distill.calibration`` > 0. The same inputs give the same bytes.
- ``metrics.json``  numbers only: members, epochs, training images, mean training accuracy
- ``info.json``     dataset, device, the pool's fingerprint (distill checks the pool it loads
                    against it)

and keeps its resumable state under ``<paths.state>/pool/<dataset>/`` (one file per member,
saved after every epoch; never a declared output, so a rerun after a kill resumes from it,
and a rerun after an unrelated change, which DVC makes, reloads finished members at once).
A member's state made with other settings, or by other training code (this command and the
``atom/`` files it runs: :func:`stages.common.codedeps.code_digest`), is trained afresh, and
the log says why. ``pool.models: 0`` writes an empty pool immediately.

MLflow: a run with the pool settings; each member's training accuracy and seconds as it ends
(the seconds also go to the log; no declared output holds a wall-clock time).
"""
from __future__ import annotations

import sys

from .common import runner
from .common.codedeps import code_digest
from .common.params import section


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0], method=False).parse_args(argv)
    st = runner.Stage("pool", args)
    st.remove_stale()
    cfg = section(st.params, "pool", st.dataset)
    net = section(st.params, "distill", st.dataset)["net"]
    val = section(st.params, "validation", st.dataset)
    run = st.start_run()  # RUNNING from here on; FAILED if anything below raises
    run.log_params({"dataset": st.dataset, **{f"pool.{k}": v for k, v in cfg.items()}, "net": net})
    from atom.events import MemberTrained
    from atom.io import write_json
    from atom.pool import train_pool
    from atom.validation import carve

    prep = st.load("prepared")  # only the training images are read below
    k = len(prep["classes"])
    train_x, train_y, _, _ = carve(prep["train_images"], prep["train_labels"], val["per_class"], val["seed"], k)
    device = st.resolved_device()
    st.log.info("pool for %s: %d members x %d epochs of %s on %d training images (%s)", st.dataset, cfg["models"],
                cfg["epochs"], net, train_x.shape[0], device)

    def ended(event: MemberTrained) -> None:  # each member's numbers as it ends
        run.log_metrics({"train_accuracy": event.train_accuracy, "seconds": event.seconds}, step=event.index)

    # member states are kept only for the code that trains them (stages.common.codedeps)
    pool = train_pool(train_x, train_y, num_classes=k, device=device, state_dir=st.path("pool_state"),
                      progress=True, on_event=ended, state_key=code_digest("pool"), net=net,
                      dsa_params=dict(st.params["dsa"]), **cfg)
    # wall clock goes to the log and MLflow, never into pool.pt or info.json (distill reads them):
    # the same inputs give the same bytes, so DVC reruns nothing downstream of an unchanged pool
    seconds = pool.meta.pop("seconds")
    pool.save(st.path("pool"))
    acc = pool.meta["train_accuracy"]
    write_json({"members": len(pool), "epochs": cfg["epochs"], "images": int(train_x.shape[0]),
                **({"mean_train_accuracy": sum(acc) / len(acc)} if acc else {})}, st.path("pool_metrics"))
    fingerprint = pool.fingerprint if len(pool) else None
    write_json({"dataset": st.dataset, "device": device, "fingerprint": fingerprint}, st.path("pool_info"))
    st.log.info("done: %d members, %.1fs of training in all, fingerprint %s", len(pool), sum(seconds), fingerprint)


if __name__ == "__main__":
    sys.exit(runner.run(main))
