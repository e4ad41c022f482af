"""Stage `download`: fetch one dataset into ``<paths.raw>/<dataset>/``.

    python -m stages.download --dataset digits

Calls ``atom.data.download(loader, raw_dir, **options)`` with the dataset group's ``loader``
and ``options`` from params.yaml (for digits this exports scikit-learn's bundled copy, so the
DAG is the same for every dataset), then writes ``<paths.results>/download/<dataset>.json``.
"""
from __future__ import annotations

import sys
import time

from . import runtime


def main(argv: list[str] | None = None) -> None:
    args = runtime.parser(__doc__.splitlines()[0], method=False).parse_args(argv)
    st = runtime.Stage("download", args)
    ds = st.params["datasets"][st.dataset]
    raw = st.path("raw")
    from atom import data
    from atom.io import write_json

    t0 = time.perf_counter()
    out = data.download(ds["loader"], raw, **ds["options"])
    seconds = time.perf_counter() - t0
    files = [p for p in raw.rglob("*") if p.is_file()]
    metrics = {"dataset": st.dataset, "loader": ds["loader"], "path": str(out), "files": len(files),
               "bytes": sum(p.stat().st_size for p in files), "seconds": seconds}
    write_json(metrics, st.path("download_metrics"))
    st.log.info("downloaded %s into %s: %d files, %d bytes", st.dataset, raw, metrics["files"], metrics["bytes"])
    with st.tracker().run("download") as run:
        run.log_params({"loader": ds["loader"], "options": ds["options"]})
        run.log_metrics({"files": metrics["files"], "bytes": metrics["bytes"], "seconds": seconds})


if __name__ == "__main__":
    sys.exit(runtime.run(main))
