"""Stage `zca`: preprocess one dataset (normalisation, optional ZCA whitening; spec section 4).

    python -m stages.zca --dataset digits

Loads ``<paths.raw>/<dataset>/`` with ``atom.data.load``, fits ``atom.preprocess.fit`` on the
training images once (``datasets.<dataset>.preprocess``), applies the same transform to train
and test, and writes ``<paths.prepared>/<dataset>.pt`` = {train_images, train_labels,
test_images, test_labels, classes, state} (``state``: the fitted preprocessing), the small
``<dataset>.preprocess.pt`` = {state, classes, shape} that maps sets back to pixels for the
pictures, and ``<paths.results>/zca/<dataset>.json``.
"""
from __future__ import annotations

import sys
import time

from .common import runner


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0], method=False).parse_args(argv)
    st = runner.Stage("zca", args)
    st.remove_stale()
    ds = st.params["datasets"][st.dataset]
    run = st.start_run()  # RUNNING from here on; FAILED if anything below raises
    run.log_params({"preprocess": ds["preprocess"]})
    from atom import data, preprocess
    from atom.io import write_json

    t0 = time.perf_counter()
    d = data.load(ds["loader"], st.path("raw"), **ds["options"])
    st.log.info("loaded %r", d)
    # fit and whiten in place: at most two copies of the training matrix (CIFAR-10: 50,000 x 3,072)
    state, train = preprocess.fit_apply(d.train_images, inplace=True, **ds["preprocess"])
    test = preprocess.apply(d.test_images, state, inplace=True)
    classes = [str(c) for c in d.classes]
    st.save("prepared", {"train_images": train, "train_labels": d.train_labels, "test_images": test,
                         "test_labels": d.test_labels, "classes": classes, "state": state})
    st.save("preprocess", {"state": state, "classes": classes, "shape": list(train.shape[1:])})
    seconds = time.perf_counter() - t0
    c, h, w = (list(train.shape[1:]) + [1, 1])[:3]
    metrics = {"n_train": int(train.shape[0]), "n_test": int(test.shape[0]), "classes": len(classes),
               "channels": int(c), "height": int(h), "width": int(w)}  # numbers only; no timing (same bytes)
    write_json(metrics, st.path("zca_metrics"))
    write_json({"dataset": st.dataset, "shape": list(train.shape[1:]), "zca": bool(ds["preprocess"]["zca"]),
                "normalize": bool(ds["preprocess"]["normalize"])}, st.path("zca_info"))
    metrics["seconds"] = seconds
    st.log.info("prepared %s in %.1fs: %s", st.dataset, seconds, metrics)
    run.log_metrics({k: metrics[k] for k in ("n_train", "n_test", "classes", "seconds")})


if __name__ == "__main__":
    sys.exit(runner.run(main))
