"""Every job of params.yaml's matrix, one after the other in DAG order, without a workflow tool.

    python scripts/run_jobs.py [--params params.yaml] [--rules distill evaluate ...] [--out timings.json]

For a machine that has the library's dependencies but not Snakemake or DVC (a lent GPU host):
the jobs come from the pipeline's one declaration (:func:`stages.common.contract.jobs`), each
runs as its own ``python -m stages.<command>`` (with ``--params``), and the run stops at the
first job that fails, naming it and its log. ``--rules`` keeps only those rules (their inputs
must exist). ``--out`` writes each job's command, exit code and seconds as JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.contract import command_line, jobs, log_path  # noqa: E402
from stages.common.params import load_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rules", nargs="*", help="only these rules (default: all)")
    ap.add_argument("--out", help="write the timings here (JSON)")
    a = ap.parse_args(argv)
    params = load_params(a.params)
    rows, code = [], 0
    for rule, wc in jobs(params):
        if a.rules and rule not in a.rules:
            continue
        cmd = command_line(rule, wc, python=sys.executable).split() + ["--params", a.params]
        t0 = time.perf_counter()
        res = subprocess.run(cmd)
        rows.append({"rule": rule, "command": " ".join(cmd[1:]), "returncode": res.returncode,
                     "seconds": round(time.perf_counter() - t0, 2)})
        print(f"run_jobs: {rule} {' '.join(f'{k}={v}' for k, v in wc.items())}: exit {res.returncode} in "
              f"{rows[-1]['seconds']:.1f} s", flush=True)
        if res.returncode != 0:
            print(f"run_jobs: stopped at {rule}; its log: {log_path(params, rule, wc)}", file=sys.stderr)
            code = res.returncode
            break
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
