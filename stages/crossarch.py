"""Stage `crossarch`: the same sets trained on other architectures (cross-architecture generalisation).

    python -m stages.crossarch --dataset digits --ipc 10

Every method's distilled set at ``--ipc`` and the random real subset of the same size (the
random baseline's draw: ``runtime.seed``, from the training part of the ``validation`` split)
are each trained on every architecture of ``crossarch.archs`` with the evaluate section's
protocol (``crossarch.epochs``, ``crossarch.seeds``; ConvNet takes ``evaluate.net``, the
others its ``norm``) and scored on the test set. An architecture whose instance norms would
see a 1x1 map on this data's image size (VGG-11 and ResNet-18 on 8x8 digits) cannot learn:
it is left out, and ``skipped`` says why (the report prints the reason, never chance-level
columns). Writes ``<paths.results>/crossarch/<dataset>/ipc<k>/metrics.json``: per set and
architecture, every per-seed accuracy, mean, std, n; and ``info.json``: the training seconds
per set and architecture.

MLflow: one run per set with ``<arch>_mean`` / ``<arch>_std`` metrics.
"""
from __future__ import annotations

import sys

from .common import runner
from .common.params import evaluate_settings
from .common.sets import proxy_sets


def usable_archs(archs: list[str], cfg: dict, shape, num_classes: int) -> tuple[list[str], dict[str, str]]:
    """(the architectures that can learn on images of ``shape``, {left out: why})."""
    from atom.networks import single_pixel_norms

    c, size = int(shape[0]), int(shape[-1])
    net = dict(cfg.get("net") or {})
    keep, skipped = [], {}
    for arch in archs:
        n = single_pixel_norms(c, num_classes, size, arch=arch, **net)
        if n:
            skipped[arch] = (f"on {size}x{size} inputs {n} of its instance-norm layers see a 1x1 map, which "
                             "normalises to a constant (chance accuracy); it needs larger images")
        else:
            keep.append(arch)
    return keep, skipped


def main(argv: list[str] | None = None) -> None:
    p = runner.parser(__doc__.splitlines()[0], method=False)
    p.add_argument("--ipc", type=int, required=True, help="images per class of the sets (in crossarch.ipcs)")
    args = p.parse_args(argv)
    st = runner.Stage("crossarch", args)
    st.remove_stale()
    ca = st.params["crossarch"]  # st checked --ipc against crossarch.ipcs (stages.common.preflight.check)
    _, cfg, batched = evaluate_settings(st.params, st.dataset, "method")
    cfg.update(epochs=ca["epochs"], batched=batched)
    from atom.evaluation import evaluate
    from atom.io import write_json

    prep = st.load("prepared")
    k = len(prep["classes"])
    device = st.resolved_device()
    sets = proxy_sets(st, prep, st.ipc, k)
    archs, skipped = usable_archs(ca["archs"], cfg, prep["train_images"].shape[1:], k)
    for arch, why in skipped.items():
        st.log.warning("crossarch: %s left out: %s", arch, why)
    results, seconds = {}, {}
    for name, (x, y) in sets.items():
        results[name] = {}
        for arch in archs:
            res = evaluate(x, y, prep["test_images"], prep["test_labels"], seeds=ca["seeds"], num_classes=k,
                           device=device, progress=False, **dict(cfg, arch=arch))
            results[name][arch] = {key: res[key] for key in ("mean", "std", "n", "per_seed", "seeds")}
            seconds.setdefault(name, {})[arch] = sum(r["seconds"] for r in res["runs"])
            st.log.info("%s ipc %d on %s: %.2f +- %.2f", name, st.ipc, arch, res["mean"], res["std"])
    metrics = {"dataset": st.dataset, "ipc": st.ipc, "archs": archs, "skipped": skipped, "sets": list(sets),
               "epochs": ca["epochs"], "seeds": list(ca["seeds"]), "device": device, "results": results}
    write_json(metrics, st.path("crossarch"))
    # wall clock to the info file: metrics.json is the same bytes for the same inputs
    write_json({"dataset": st.dataset, "ipc": st.ipc, "seconds": seconds}, st.path("crossarch_info"))

    tracker = st.tracker()
    for name, by_arch in results.items():
        with tracker.run("crossarch", name, st.ipc) as run:
            run.log_params({"archs": ca["archs"], "epochs": ca["epochs"], "seeds": ca["seeds"], "device": device})
            run.log_metrics({f"{a}_{s}": r[s] for a, r in by_arch.items() for s in ("mean", "std")})
            run.log_artifact(st.path("crossarch"))


if __name__ == "__main__":
    sys.exit(runner.run(main))
