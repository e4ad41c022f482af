"""Stage `distill`: learn one synthetic set (one dataset x method x ipc; spec section 2).

    python -m stages.distill --dataset digits --method atom --ipc 10

Reads ``<paths.prepared>/<dataset>.pt`` and the ``distill`` section (merged with the dataset
group's overrides; the loss constants of ``distill.loss.<method>``; seed ``runtime.seed``;
augmentation ``dsa``), calls ``atom.distill.distill`` and writes, under
``<paths.results>/distill/<dataset>/<method>/ipc<k>/``:

- ``synthetic.pt``  {images, labels, classes, dataset, method, ipc, config} (preprocessed space)
- ``checkpoint.pt`` the resumable state (a rerun of this command resumes from it when its
                    configuration matches, and starts afresh when it does not)
- ``loss.csv``      iteration,loss
- ``metrics.json``  final loss, seconds, ...

MLflow: params, the loss curve (metric ``loss`` by step), the class grid and synthetic.pt.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from . import runtime
from .layout import METHODS
from .params import distill_kwargs


def main(argv: list[str] | None = None) -> None:
    args = runtime.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.method not in METHODS or args.ipc is None:
        raise ValueError(f"--method/--ipc: distill needs a method in {METHODS} and an ipc, "
                         f"got {args.method!r}, {args.ipc!r}")
    st = runtime.Stage("distill", args)
    kwargs = distill_kwargs(st.params, st.dataset, st.method)
    from atom import viz
    from atom.distill import CheckpointMismatchError, distill
    from atom.io import load_tensors, save_tensors, write_json, write_text

    prep = load_tensors(st.path("prepared"))
    ckpt = st.path("checkpoint")
    device = st.resolved_device()
    st.log.info("distilling %s/%s ipc %d on %s with %s", st.dataset, st.method, st.ipc, device, kwargs)

    def attempt():
        return distill(prep["train_images"], prep["train_labels"], ipc=st.ipc, method=st.method,
                       num_classes=len(prep["classes"]), device=device, checkpoint_path=ckpt, resume=True,
                       progress=False, **kwargs)

    try:
        res = attempt()
    except CheckpointMismatchError as exc:
        # a checkpoint left by a run with other settings: start afresh rather than fail
        st.log.warning("%s; discarding the checkpoint", exc)
        ckpt.unlink()
        res = attempt()
    if not ckpt.exists():  # checkpoint_every >= 1 saves the last iteration; keep the output contract
        raise RuntimeError(f"{ckpt}: the distillation did not write its checkpoint")

    save_tensors({"images": res.images, "labels": res.labels, "classes": list(prep["classes"]),
                  "dataset": st.dataset, "method": st.method, "ipc": st.ipc, "config": res.config},
                 st.path("synthetic"))
    steps = list(range(1, len(res.losses) + 1))
    write_text("iteration,loss\n" + "".join(f"{s},{v:.9g}\n" for s, v in zip(steps, res.losses)),
               st.path("loss_csv"))
    tail = res.losses[-max(1, len(res.losses) // 10):]
    metrics = {"dataset": st.dataset, "method": st.method, "ipc": st.ipc, "iterations": len(res.losses),
               "final_loss": res.losses[-1], "tail_mean_loss": sum(tail) / len(tail), "first_loss": res.losses[0],
               "seconds": res.seconds, "seconds_per_iteration": res.seconds / max(1, len(res.losses)),
               "device": device, "images": int(res.images.shape[0])}
    write_json(metrics, st.path("distill_metrics"))
    st.log.info("done: final loss %.6g in %.1fs", metrics["final_loss"], res.seconds)

    with st.tracker().run("distill", st.method, st.ipc) as run:
        run.log_params({"dataset": st.dataset, "method": st.method, "ipc": st.ipc, "device": device, **kwargs})
        run.log_history("loss", res.losses, steps)
        run.log_metrics({k: metrics[k] for k in ("final_loss", "tail_mean_loss", "seconds", "seconds_per_iteration")})
        if run.run_id:
            with tempfile.TemporaryDirectory() as tmp:
                grid = viz.save_grid(res.images, res.labels, prep["state"], Path(tmp) / "grid.png",
                                     num_classes=len(prep["classes"]),
                                     max_per_class=st.params["visualize"]["max_per_class"],
                                     scale=st.params["visualize"]["grid_scale"])
                run.log_artifact(grid)
            run.log_artifact(st.path("loss_csv"))
            if st.params["mlflow"]["log_synthetic"]:
                run.log_artifact(st.path("synthetic"))


if __name__ == "__main__":
    sys.exit(runtime.run(main))
