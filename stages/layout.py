"""Where the pipeline reads and writes, what it runs, and which code each stage runs.

One source for the facts the Snakefile, dvc.yaml and the stages share:

- :data:`PATTERNS`: every file the pipeline writes, as patterns (:func:`pattern`, :func:`path`);
- :func:`log_path` / :func:`benchmark_path`: each job's log and Snakemake benchmark file;
- :func:`experiments` / :func:`evaluations`: the experiment matrix of params.yaml;
- :func:`match`: which pattern a path is, and its wildcards; :func:`check_job`: whether a
  job lies outside the matrix (the Snakefile refuses a target such as ``.../ipc7/...``);
- :data:`METHODS` / :data:`BASELINES`: a torch-free copy of ``atom.losses.METHODS`` (a test
  checks that it, the Snakefile's wildcard constraint and the schema's enums agree);
- :func:`code_deps`: the ``atom/`` and ``stages/`` files a stage imports, transitively (the
  Snakefile's code inputs; dvc.yaml spells the same lists out, and a test compares them).

Torch-free and jsonschema-free: the Snakefile imports it.
"""
from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

__all__ = ["ROOT", "PARAMS", "METHODS", "BASELINES", "LABELS", "PATTERNS", "STAGES", "pattern", "path", "experiments",
           "evaluations", "eval_path", "nas_shards", "match", "check_job", "log_path", "benchmark_path", "imports",
           "code_deps"]

ROOT = Path(__file__).resolve().parents[1]
PARAMS = "params.yaml"
METHODS = ("atom", "datadam", "dm")
BASELINES = ("random", "selected", "full")
# display names of METHODS + BASELINES (the report's and the pictures'; a test checks the keys)
LABELS = {"atom": "ATOM", "datadam": "DataDAM", "dm": "DM", "random": "random real",
          "selected": "selected real", "full": "whole training set"}

# Every file the pipeline writes, as patterns. `{raw}`, `{prepared}`, `{results}`, `{logs}` and
# `{state}` come from params.yaml's `paths`; `{dataset}`, `{method}`, `{ipc}` (and `{shard}`, a NAS shard)
# are the experiment's wildcards (the Snakefile keeps them as wildcards, the stages fill them in).
PATTERNS = {
    "raw": "{raw}/{dataset}",
    "download_metrics": "{results}/download/{dataset}.json",
    "download_info": "{results}/download/{dataset}.info.json",
    "prepared": "{prepared}/{dataset}.pt",
    "state": "{prepared}/{dataset}.state.pt",
    "zca_metrics": "{results}/zca/{dataset}.json",
    "zca_info": "{results}/zca/{dataset}.info.json",
    # the pool of trained encoders (atom.pool), one per dataset; its resumable state per member
    "pool": "{results}/pool/{dataset}/pool.pt",
    "pool_metrics": "{results}/pool/{dataset}/metrics.json",
    "pool_info": "{results}/pool/{dataset}/info.json",
    "pool_state": "{state}/pool/{dataset}",
    "distill_dir": "{results}/distill/{dataset}/{method}/ipc{ipc}",
    "synthetic": "{results}/distill/{dataset}/{method}/ipc{ipc}/synthetic.pt",
    # resumable state: under paths.state, never a declared output (Snakemake and DVC delete
    # outputs before a job runs), so a rerun after a kill resumes from it
    "checkpoint": "{state}/distill/{dataset}/{method}/ipc{ipc}/checkpoint.pt",
    "checkpoint_meta": "{state}/distill/{dataset}/{method}/ipc{ipc}/checkpoint.json",
    "last": "{results}/distill/{dataset}/{method}/ipc{ipc}/last.pt",
    "loss_csv": "{results}/distill/{dataset}/{method}/ipc{ipc}/loss.csv",
    "val_curve": "{results}/distill/{dataset}/{method}/ipc{ipc}/val_curve.csv",
    "distill_metrics": "{results}/distill/{dataset}/{method}/ipc{ipc}/metrics.json",
    "distill_info": "{results}/distill/{dataset}/{method}/ipc{ipc}/info.json",
    "eval_metrics": "{results}/evaluate/{dataset}/{method}/ipc{ipc}/metrics.json",
    "eval_info": "{results}/evaluate/{dataset}/{method}/ipc{ipc}/info.json",
    "eval_full": "{results}/evaluate/{dataset}/full/metrics.json",
    "eval_full_info": "{results}/evaluate/{dataset}/full/info.json",
    "grid": "{results}/visualize/{dataset}/{method}/ipc{ipc}/grid.png",
    "loss_png": "{results}/visualize/{dataset}/{method}/ipc{ipc}/loss.png",
    "images": "{results}/visualize/{dataset}/{method}/ipc{ipc}/images",
    "accuracy_png": "{results}/visualize/{dataset}/accuracy.png",
    "accuracy_csv": "{results}/visualize/{dataset}/accuracy.csv",
    "crossarch": "{results}/crossarch/{dataset}/ipc{ipc}/metrics.json",
    "nas_shard": "{results}/nas/{dataset}/shard{shard}.json",
    "nas_json": "{results}/nas_merge/{dataset}/metrics.json",
    "nas_csv": "{results}/nas_merge/{dataset}/candidates.csv",
    "nas_png": "{results}/nas_merge/{dataset}/scatter.png",
    "summary_md": "{results}/report/summary.md",
    "summary_json": "{results}/report/summary.json",
    "summary_csv": "{results}/report/summary.csv",
}

# Snakemake rule / dvc.yaml stage -> the module it runs (`python -m stages.<module>`).
STAGES = {"download": "download", "zca": "zca", "pool": "pool", "distill": "distill", "evaluate": "evaluate",
          "evaluate_random": "evaluate", "evaluate_selected": "evaluate", "evaluate_full": "evaluate", "visualize": "visualize",
          "accuracy": "visualize", "crossarch": "crossarch", "nas": "nas", "nas_merge": "nas_merge",
          "report": "report"}


def pattern(params: dict, key: str) -> str:
    """A path pattern with `paths` filled in and the wildcards left as ``{dataset}`` etc."""
    p = params["paths"]
    keep = {w: "{" + w + "}" for w in ("dataset", "method", "ipc", "shard")}
    return PATTERNS[key].format(raw=p["raw"], prepared=p["prepared"], results=p["results"], logs=p["logs"],
                                state=p["state"], **keep)


def path(params: dict, key: str, **wildcards) -> Path:
    return Path(pattern(params, key).format(**wildcards))


def experiments(params: dict) -> list[tuple[str, str, int]]:
    """(dataset, method, ipc) of every distillation in the matrix."""
    e = params["experiment"]
    return [(d, m, k) for d in e["datasets"] for m in e["methods"] for k in e["ipcs"]]


def evaluations(params: dict, dataset: str) -> list[tuple[str, int | None]]:
    """(kind, ipc) of every evaluation of ``dataset``: methods, random and selected per ipc, full once."""
    e = params["experiment"]
    out = [(m, k) for m in e["methods"] for k in e["ipcs"]]
    for kind in ("random", "selected"):
        if kind in e["baselines"]:
            out += [(kind, k) for k in e["ipcs"]]
    if "full" in e["baselines"]:
        out.append(("full", None))
    return out


def nas_shards(params: dict) -> list[int]:
    """Shard indices of the NAS stage (``nas.shards``: 0 .. S-1)."""
    return list(params["nas"]["shards"])


def eval_path(params: dict, dataset: str, kind: str, ipc: int | None, info: bool = False) -> Path:
    """An evaluation's metrics file (numbers only), or with ``info`` its descriptive fields."""
    if kind == "full":
        return path(params, "eval_full_info" if info else "eval_full", dataset=dataset)
    return path(params, "eval_info" if info else "eval_metrics", dataset=dataset, method=kind, ipc=ipc)


def _job_name(dataset, method, ipc, name: str | None) -> str:
    if name is not None:
        return name
    parts = [dataset, method] + ([f"ipc{ipc}"] if ipc is not None else [])
    return "-".join(str(p) for p in parts if p)


# patterns that name a folder: a path inside one matches it too (match(..., inside=True))
FOLDERS = ("raw", "pool_state", "distill_dir", "images")


def _regex(params: dict, key: str, inside: bool) -> re.Pattern:
    parts = re.split(r"\{(dataset|method|ipc|shard)\}", os.path.normpath(pattern(params, key)))
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(rx + ("(?:/.+)?" if inside and key in FOLDERS else ""))


def match(params: dict, file: str | os.PathLike, inside: bool = False) -> tuple[str, dict[str, str]] | None:
    """(key of :data:`PATTERNS`, its wildcards) of a path the pipeline writes, or None. With
    ``inside``, a path inside a folder output (``data/raw/digits/digits.pt``) matches the folder."""
    f = os.path.normpath(str(file))
    for key in sorted(PATTERNS, key=lambda k: k in FOLDERS):  # files before the folders holding them
        m = _regex(params, key, inside).fullmatch(f)
        if m:
            return key, m.groupdict()
    return None


def check_job(params: dict, stage: str, wildcards: dict[str, str]) -> None:
    """Raise ``ValueError`` if a job of ``stage`` (a rule of the Snakefile) lies outside
    params.yaml's experiment matrix: a wildcard value (dataset, method, ipc, shard) that its
    key does not list, or a baseline that ``experiment.baselines`` leaves out. The message
    names the value and the key."""
    exp = params["experiment"]
    keys = {"dataset": ("experiment.datasets", exp["datasets"]),
            "method": ("experiment.methods", exp["methods"]),
            "ipc": ("crossarch.ipcs", params["crossarch"]["ipcs"]) if stage == "crossarch"
            else ("experiment.ipcs", exp["ipcs"]),
            "shard": ("nas.shards", params["nas"]["shards"])}
    found = [(name, str(wildcards[name])) + keys[name] for name in keys if name in wildcards]
    if stage.startswith("evaluate_"):  # the baselines' rules: evaluate_random, _selected, _full
        found.append(("baseline", stage[len("evaluate_"):], "experiment.baselines", exp["baselines"]))
    for what, value, setting, allowed in found:
        if value not in [str(a) for a in allowed]:
            shown = value if value.isdigit() else repr(value)
            tail = (f"; the methods are {list(METHODS)}" if what == "method" and value not in METHODS
                    else "; add it there to make this file")
            raise ValueError(f"{what} {shown} is not in {setting} {allowed} (params.yaml){tail}")


def log_path(params: dict, stage: str, dataset=None, method=None, ipc=None, name: str | None = None) -> Path:
    """``<logs>/<stage>/<dataset>-<method>-ipc<ipc>.log`` (the parts given), or ``<name>.log``.
    The Snakefile passes ``"{dataset}"`` etc. to get its ``log:`` patterns."""
    return Path(params["paths"]["logs"]) / stage / f"{_job_name(dataset, method, ipc, name)}.log"


def benchmark_path(params: dict, stage: str, dataset=None, method=None, ipc=None, name: str | None = None) -> Path:
    """Snakemake's ``benchmark:`` file of a job: ``<logs>/benchmarks/<stage>/<job>.tsv``."""
    return Path(params["paths"]["logs"]) / "benchmarks" / stage / f"{_job_name(dataset, method, ipc, name)}.tsv"


# ----------------------------------------------------------------------------- code dependencies

_PACKAGES = ("atom", "stages")


def _module_file(module: str) -> Path:
    parts = module.split(".")
    return ROOT.joinpath(*parts, "__init__.py") if len(parts) == 1 else ROOT.joinpath(*parts).with_suffix(".py")


def _is_module(module: str) -> bool:
    return module.split(".")[0] in _PACKAGES and _module_file(module).is_file()


@functools.lru_cache(maxsize=None)
def imports(module: str) -> frozenset[str]:
    """The project modules ``module`` imports anywhere in its file (function bodies included)."""
    package = module.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(_module_file(module).read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package + ("." + node.module if node.module else "") if node.level else node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from atom import viz`
    return frozenset(m for m in found if _is_module(m))


def code_deps(stage: str) -> list[str]:
    """The ``atom/`` and ``stages/`` files that ``python -m stages.<module>`` of ``stage``
    imports, transitively, as sorted paths relative to the project root. Importing ``atom.x``
    runs ``atom/__init__.py`` (and everything it imports) too."""
    todo, seen = [f"stages.{STAGES[stage]}"], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [p for p in (m.split(".")[0],) if p != m]
        todo += imports(m)
    return sorted(str(_module_file(m).relative_to(ROOT)) for m in seen)
