"""Stage `download`: fetch one dataset into ``<paths.raw>/<dataset>/``.

    python -m stages.download --dataset digits

Calls ``atom.data.download(loader, raw_dir, **options)`` with the dataset group's ``loader``
and ``options`` from params.yaml (for digits this exports scikit-learn's bundled copy, so the
DAG is the same for every dataset), then writes ``<paths.results>/download/<dataset>.json``
(numbers: files, bytes) and ``<dataset>.info.json`` (dataset, loader, path).

An ImageFolder's class sizes are known only once its files are listed: they are checked
against ``experiment.ipcs`` and ``validation.per_class`` then, before the files are kept
(the same check and message as params.yaml's for the datasets whose sizes are fixed), and a
failed download leaves no folder it created behind.
"""
from __future__ import annotations

import sys
import time

from .common import runner
from .common.params import ParamsError, class_size_problem


def main(argv: list[str] | None = None) -> None:
    args = runner.parser(__doc__.splitlines()[0], method=False).parse_args(argv)
    st = runner.Stage("download", args)
    st.remove_stale()  # a killed extraction's temp folders
    ds = st.params["datasets"][st.dataset]
    run = st.start_run()  # RUNNING from here on; FAILED if anything below raises
    run.log_params({"loader": ds["loader"], "options": ds["options"]})
    raw = st.path("raw")
    from atom import data
    from atom.io import write_json

    def check_counts(counts: dict[str, int]) -> None:
        if (problem := class_size_problem(st.params, st.dataset, counts, f"{args.params} (class sizes of "
                                          f"{ds['options'].get('source')})")):
            raise ParamsError(problem)

    created = [p for p in (raw, *raw.parents) if not p.exists()]
    t0 = time.perf_counter()
    try:
        out = data.download(ds["loader"], raw, check_counts=check_counts, **ds["options"])
    except BaseException:
        for p in created:  # deepest first: the empty folders this attempt made
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    seconds = time.perf_counter() - t0
    files = [p for p in raw.rglob("*") if p.is_file()]
    metrics = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}  # numbers only, no timing
    write_json(metrics, st.path("download_metrics"))
    write_json({"dataset": st.dataset, "loader": ds["loader"], "path": str(out)}, st.path("download_info"))
    st.log.info("downloaded %s into %s in %.1fs: %d files, %d bytes", st.dataset, raw, seconds, metrics["files"],
                metrics["bytes"])
    run.log_metrics({"files": metrics["files"], "bytes": metrics["bytes"], "seconds": seconds})


if __name__ == "__main__":
    sys.exit(runner.run(main))
