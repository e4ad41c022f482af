"""Stage `export`: one distilled set as a network trains on it, for any other code to use.

    python -m stages.export --dataset digits --method atom --ipc 10

Reads the distill stage's ``synthetic.pt`` (the set kept: the best validation score) and the
zca stage's ``<dataset>.preprocess.pt``, and writes, atomically, the folder
``<paths.results>/export/<dataset>/<method>/ipc<k>/`` (:func:`atom.export.write_export`):

- ``images/<class>/<n>.png``  the training images (decoded tiles when ``distill.factor`` > 1)
                              in pixel space, native size: torchvision's ImageFolder layout
- ``set.pt``                  the same images in the training space (normalised, whitened),
                              class by class, with hard labels, class names, the fitted
                              preprocessing and the manifest: what the evaluate stage trains on,
                              bit for bit; ``atom.load_set`` reads it anywhere
- ``manifest.json``           dataset, method, IPC, factor, images per class, shape, classes,
                              protocol, distillation seed, the iteration kept, and the
                              preprocessing to re-apply to other images
- ``stored/<class>/<n>.png``  (factor > 1 only) the stored mosaics, for looking at

docs/pipeline.md says how to train on it elsewhere or hand it to DD-Ranking.
"""
from __future__ import annotations

import sys

from .common import runner
from .common.contract import METHODS
from .common.params import protocol


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.method not in METHODS or args.ipc is None:
        raise ValueError(f"--method/--ipc: export needs a method in {METHODS} and an ipc, "
                         f"got {args.method!r}, {args.ipc!r}")
    st = runner.Stage("export", args)
    st.remove_stale()
    from atom.export import write_export

    record = st.load("synthetic")
    pre = st.load("preprocess")
    out = write_export(record, pre["state"], st.path("export"), dataset=st.dataset,
                       protocol=protocol(st.params, st.dataset), seed=st.params["runtime"]["seed"],
                       source=str(st.path("preprocess")))
    st.log.info("exported %s/%s ipc %d to %s", st.dataset, st.method, st.ipc, out)
    with st.tracker().run("export", st.method, st.ipc) as run:
        run.log_artifact(out / "manifest.json")


if __name__ == "__main__":
    sys.exit(runner.run(main))
