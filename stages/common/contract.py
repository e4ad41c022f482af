"""The pipeline's one declaration: every file it writes (:data:`FILES`) and every rule that
writes them (:data:`RULES`). Everything else reads it:

- the Snakefile defines one rule per entry of :data:`RULES` (inputs, outputs, params, log,
  benchmark, code and resources all come from here);
- ``dvc.yaml`` is generated from it (``python -m stages.common.dvc_yaml``; a test fails when
  the committed file differs from what the generator writes);
- a running stage takes from it its log file, the inputs to check before any compute
  (:mod:`stages.common.preflight`), the outputs whose temp files a killed attempt left
  (:mod:`stages.common.recovery`) and the command that remakes a missing input;
- :mod:`stages.common.params` renders each rule's ``params`` refs (the Snakefile's ``params:``);
- :mod:`stages.common.codedeps` derives each rule's code from its command's imports.

A new stage is one :class:`Rule` here (and its files in :data:`FILES`) plus its command,
``stages/<command>.py``; then ``python -m stages.common.dvc_yaml`` rewrites dvc.yaml.

Names: a rule is a Snakemake rule and a DVC stage; its ``command`` is the module it runs,
``python -m stages.<command>``, which is also the folder of its outputs and logs. Rules that
share a command form a family (``evaluate`` with the baselines ``evaluate_random``,
``evaluate_selected``, ``evaluate_full``; ``visualize`` with ``accuracy``): the command's
arguments pick the rule.

Torch-free and jsonschema-free: the Snakefile imports it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Callable, Union

__all__ = ["ROOT", "PARAMS", "METHODS", "BASELINES", "LABELS", "WILDCARDS", "WILDCARD_PATTERNS", "File", "FILES", "RECORDS", "Input", "Gather",
           "Rule", "RULES", "pattern", "path", "experiments", "evaluations", "eval_path", "jobs", "job_wildcards",
           "inputs", "outputs", "rule_for", "arguments", "command_line", "producer", "setting", "job_name", "log_path",
           "benchmark_path", "match", "check_job", "uses_pool"]

ROOT = Path(__file__).resolve().parents[2]
PARAMS = "params.yaml"
METHODS = ("atom", "datadam", "dm")  # atom.losses.METHODS, torch-free (a test compares them)
BASELINES = ("random", "selected", "full")
# display names of METHODS + BASELINES (the report's and the pictures')
LABELS = {"atom": "ATOM", "datadam": "DataDAM", "dm": "DM", "random": "random real",
          "selected": "selected real", "full": "whole training set"}
# the experiment's wildcards, in the order job names and commands spell them, and what each matches
WILDCARDS = ("dataset", "method", "ipc", "shard")
WILDCARD_PATTERNS = {"dataset": "[A-Za-z0-9_-]+", "method": "|".join(METHODS), "ipc": "[0-9]+", "shard": "[0-9]+"}


# ------------------------------------------------------------------------------------- files

@dataclass(frozen=True)
class File:
    """A file (or folder) the pipeline writes. ``pattern``: ``{raw}``, ``{prepared}``,
    ``{results}``, ``{state}`` are params.yaml's ``paths``; ``{dataset}``, ``{method}``,
    ``{ipc}``, ``{shard}`` the job's wildcards. ``kind`` says how DVC tracks it:

    - ``data``: a cached output (``dvc push``/``pull``; git ignores it);
    - ``record``: ``cache: false``, git-tracked (small JSON/CSV records);
    - ``metrics`` / ``plot``: the same, listed as DVC metrics / plots (``plot``: ``dvc_plot``
      holds the plot's options);
    - ``state``: resumable state under ``paths.state``, never a declared output (both tools
      delete declared outputs before a job runs, and a rerun must find it);
    - ``group``: a folder of one job's outputs, named only to place a file found inside it.

    ``report``: Snakemake's ``report()`` annotation (caption file, category, ...) or None;
    ``record``: for a tensor file, what it holds (a key of :data:`RECORDS`): its writer stores
    that name in it, and its readers refuse a file of another record or one lacking a field."""

    pattern: str
    kind: str = "data"
    folder: bool = False
    dvc_plot: dict | None = None
    report: dict | None = None
    record: str | None = None


# What each tensor file the stages hand each other holds: field -> spec (atom.io.check_fields:
# float[4] / int[1] a floating / integer tensor of that many dimensions; dict, list, str, int, ...)
RECORDS = {
    "prepared": {"train_images": "float[4]", "train_labels": "int[1]", "test_images": "float[4]",
                 "test_labels": "int[1]", "classes": "list", "state": "dict"},
    "preprocess": {"state": "dict", "classes": "list", "shape": "list"},
    "synthetic": {"images": "float[4]", "labels": "int[1]", "classes": "list", "dataset": "str", "method": "str",
                  "ipc": "int", "config": "dict", "iteration": "int"},
}


_JOB_LABELS = {"dataset": "{dataset}", "method": "{method}", "ipc": "{ipc}"}
FILES = {
    "raw": File("{raw}/{dataset}", folder=True),
    "download_metrics": File("{results}/download/{dataset}.json", "metrics"),
    "download_info": File("{results}/download/{dataset}.info.json", "record"),
    "prepared": File("{prepared}/{dataset}.pt", record="prepared"),
    # the fitted preprocessing (normalisation, ZCA) alone, for mapping sets back to pixels
    "preprocess": File("{prepared}/{dataset}.preprocess.pt", record="preprocess"),
    "zca_metrics": File("{results}/zca/{dataset}.json", "metrics"),
    "zca_info": File("{results}/zca/{dataset}.info.json", "record"),
    "pool": File("{results}/pool/{dataset}/pool.pt"),
    "pool_metrics": File("{results}/pool/{dataset}/metrics.json", "metrics"),
    "pool_info": File("{results}/pool/{dataset}/info.json", "record"),
    "pool_state": File("{state}/pool/{dataset}", "state", folder=True),
    "distill_dir": File("{results}/distill/{dataset}/{method}/ipc{ipc}", "group", folder=True),
    "synthetic": File("{results}/distill/{dataset}/{method}/ipc{ipc}/synthetic.pt", record="synthetic"),
    "last": File("{results}/distill/{dataset}/{method}/ipc{ipc}/last.pt", record="synthetic"),
    "loss_csv": File("{results}/distill/{dataset}/{method}/ipc{ipc}/loss.csv", "plot",
                     dvc_plot={"x": "iteration", "y": "loss"}),
    "val_curve": File("{results}/distill/{dataset}/{method}/ipc{ipc}/val_curve.csv", "plot",
                      dvc_plot={"x": "iteration", "y": "accuracy"}),
    "distill_metrics": File("{results}/distill/{dataset}/{method}/ipc{ipc}/metrics.json", "metrics"),
    "distill_info": File("{results}/distill/{dataset}/{method}/ipc{ipc}/info.json", "record"),
    "checkpoint": File("{state}/distill/{dataset}/{method}/ipc{ipc}/checkpoint.pt", "state"),
    "checkpoint_meta": File("{state}/distill/{dataset}/{method}/ipc{ipc}/checkpoint.json", "state"),
    "eval_metrics": File("{results}/evaluate/{dataset}/{method}/ipc{ipc}/metrics.json", "metrics"),
    "eval_info": File("{results}/evaluate/{dataset}/{method}/ipc{ipc}/info.json", "record"),
    "eval_full": File("{results}/evaluate/{dataset}/full/metrics.json", "metrics"),
    "eval_full_info": File("{results}/evaluate/{dataset}/full/info.json", "record"),
    "grid": File("{results}/visualize/{dataset}/{method}/ipc{ipc}/grid.png",
                 report={"caption": "report/grid.rst", "category": "Synthetic sets", "subcategory": "{dataset}",
                         "labels": {**_JOB_LABELS, "figure": "grid"}}),
    "loss_png": File("{results}/visualize/{dataset}/{method}/ipc{ipc}/loss.png",
                     report={"caption": "report/loss.rst", "category": "Curves", "subcategory": "{dataset}",
                             "labels": {**_JOB_LABELS, "figure": "loss and validation"}}),
    # a set as a network trains on it, for other code (atom.export): images/, set.pt, manifest.json
    "export": File("{results}/export/{dataset}/{method}/ipc{ipc}", folder=True),
    "accuracy_png": File("{results}/visualize/{dataset}/accuracy.png",
                         report={"caption": "report/accuracy.rst", "category": "Results", "subcategory": "{dataset}",
                                 "labels": {"dataset": "{dataset}", "figure": "accuracy by IPC"}}),
    "accuracy_csv": File("{results}/visualize/{dataset}/accuracy.csv", "plot",
                         dvc_plot={"template": "plots/accuracy.json", "x": "ipc", "y": "mean",
                                   "title": "test accuracy by IPC, one line per method"}),
    # structured records (names, configs, seconds): git-tracked, not DVC metrics files
    "crossarch": File("{results}/crossarch/{dataset}/ipc{ipc}/metrics.json", "record"),
    "nas_shard": File("{results}/nas/{dataset}/shard{shard}.json", "record"),
    "nas_json": File("{results}/nas_merge/{dataset}/metrics.json", "record"),
    "nas_csv": File("{results}/nas_merge/{dataset}/candidates.csv", "record"),
    "nas_png": File("{results}/nas_merge/{dataset}/scatter.png"),
    # wall-clock seconds live only in these info files (and logs, MLflow, benchmark files): every
    # other output is the same bytes for the same inputs; no rule reads them but nas_merge
    "crossarch_info": File("{results}/crossarch/{dataset}/ipc{ipc}/info.json", "record"),
    "nas_shard_info": File("{results}/nas/{dataset}/shard{shard}.info.json", "record"),
    "nas_info": File("{results}/nas_merge/{dataset}/info.json", "record"),
    "summary_md": File("{results}/report/summary.md", "record"),
    "summary_json": File("{results}/report/summary.json", "record"),
    # numbers only, for `dvc metrics diff`: each set's accuracy, HLR and IOR
    "summary_metrics": File("{results}/report/metrics.json", "metrics"),
    "summary_csv": File("{results}/report/summary.csv", "record",
                        report={"caption": "report/summary.rst", "category": "Results",
                                "labels": {"table": "results"}}),
}
_PATHS = ("raw", "prepared", "results", "logs", "state")


def pattern(params: dict, key: str, **fixed) -> str:
    """A file's pattern with params.yaml's ``paths`` (and any ``fixed`` wildcards) filled in,
    the other wildcards left as ``{dataset}`` etc."""
    values = {p: params["paths"][p] for p in _PATHS}
    values.update({w: "{" + w + "}" for w in WILDCARDS})
    values.update({w: str(v) for w, v in fixed.items()})
    return FILES[key].pattern.format(**values)


def path(params: dict, key: str, **wildcards) -> Path:
    """A file's path for one job (wildcards given as None count as absent); KeyError when the
    pattern needs a wildcard that is not given."""
    missing = [w for w in wildcards_of(key) if wildcards.get(w) is None]
    if missing:
        raise KeyError(f"{key}: {FILES[key].pattern} needs {', '.join(missing)}")
    return Path(pattern(params, key, **{w: v for w, v in wildcards.items() if v is not None and w in WILDCARDS}))


def setting(key: str) -> str:
    """The params.yaml setting a file lives under (``paths.results``)."""
    return "paths." + FILES[key].pattern.split("}", 1)[0].lstrip("{")


def wildcards_of(key: str) -> list[str]:
    return [w for w in WILDCARDS if "{" + w + "}" in FILES[key].pattern]


# ------------------------------------------------------------------------- the experiment matrix

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


def eval_path(params: dict, dataset: str, kind: str, ipc: int | None, info: bool = False) -> Path:
    """An evaluation's metrics file (numbers only), or with ``info`` its descriptive fields."""
    if kind == "full":
        return path(params, "eval_full_info" if info else "eval_full", dataset=dataset)
    return path(params, "eval_info" if info else "eval_metrics", dataset=dataset, method=kind, ipc=ipc)


def uses_pool(distill: dict) -> bool:
    """Whether a (merged) distill section draws on the pool stage's trained encoders: an
    encoder other than ``random``, or the calibration term."""
    return distill.get("encoder", "random") != "random" or distill.get("calibration", 0.0) > 0


# ----------------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Input:
    """A file a job reads, with the job's own wildcards. ``needed_if``: (a section, a test of
    its merged value for the job's dataset): whether this job really reads the file (preflight
    checks only those; the workflow files always list it, so the DAG does not depend on params
    values)."""

    key: str
    needed_if: tuple[str, Callable[[dict], bool]] | None = None


@dataclass(frozen=True)
class Gather:
    """Many files a job reads: ``files(params, wildcards)`` lists them as (key, wildcards).
    ``keys`` are the keys it can name; DVC, which cannot expand lists in deps, gets the folder
    that holds them (each pattern cut at its first wildcard the rule does not bind)."""

    keys: tuple[str, ...]
    files: Callable[[dict, dict], list[tuple[str, dict]]]


@dataclass(frozen=True)
class Rule:
    """One Snakemake rule = one DVC stage.

    - ``over``: its wildcards, each with the params.yaml list it ranges over (a job per value);
    - ``fixed``: wildcards of its files fixed by the rule (``evaluate_random``: method random),
      passed to its command as arguments too;
    - ``inputs`` / ``outputs``: keys of :data:`FILES` (inputs also :class:`Input`/:class:`Gather`);
      ``keeps``: the resumable state it writes outside its declared outputs;
    - ``params``: what it reads of params.yaml, as refs (:func:`stages.common.params.stage_params`
      and the dvc.yaml generator render them): a section (``distill``; ``distill``,
      ``evaluate``, ``validation`` and ``pool`` are merged with the dataset group's and its
      protocol's overrides), a key in one (``distill.net``), a top-level key (``dsa``,
      ``runtime.seed``), a key of the dataset group (``dataset.loader``) or the name of its
      protocol (``protocol``);
    - ``branch``: for a family, the function of the command module that holds this rule's own
      code (its imports count for this rule only: :mod:`stages.common.codedeps`);
    - ``baseline``: the rule runs only when ``experiment.baselines`` lists it (Snakemake);
    - ``gpu``: the job can use a GPU (a ``gpu`` resource slot);
    - ``job``: the log's name when the rule has no wildcards."""

    name: str
    over: dict
    outputs: tuple[str, ...]
    inputs: tuple[Union[str, Input, Gather], ...] = ()
    params: tuple[str, ...] = ()
    command: str = ""
    fixed: dict = field(default_factory=dict)
    keeps: tuple[str, ...] = ()
    branch: str | None = None
    baseline: str | None = None
    gpu: bool = False
    job: str | None = None

    @property
    def module(self) -> str:
        return f"stages.{self.command or self.name}"

    @property
    def cmd(self) -> str:
        return self.command or self.name


D = {"dataset": "experiment.datasets"}
DMI = {"dataset": "experiment.datasets", "method": "experiment.methods", "ipc": "experiment.ipcs"}
DI = {"dataset": "experiment.datasets", "ipc": "experiment.ipcs"}


def _evaluation_files(params: dict, wc: dict) -> list[tuple[str, dict]]:
    datasets = [wc["dataset"]] if "dataset" in wc else params["experiment"]["datasets"]
    return [("eval_full", {"dataset": d}) if kind == "full" else ("eval_metrics", {"dataset": d, "method": kind, "ipc": k})
            for d in datasets for kind, k in evaluations(params, d)]


def _sets_at(ipcs: Callable[[dict, dict], list]) -> Callable[[dict, dict], list[tuple[str, dict]]]:
    """Every method's synthetic set of the job's dataset at the ipcs ``ipcs(params, wc)`` lists."""
    return lambda params, wc: [("synthetic", {"dataset": wc["dataset"], "method": m, "ipc": k})
                               for m in params["experiment"]["methods"] for k in ipcs(params, wc)]


EVALUATIONS = Gather(("eval_metrics", "eval_full"), _evaluation_files)
SETS = {"crossarch": Gather(("synthetic",), _sets_at(lambda p, wc: [wc["ipc"]])),
        "nas": Gather(("synthetic",), _sets_at(lambda p, wc: p["nas"]["ipcs"]))}
MERGED_SECTIONS = ("distill", "evaluate", "validation", "pool")
_EVAL = ("evaluate", "dsa", "protocol")

# In DAG order: the order of dvc.yaml and of the Snakefile's rules.
RULES = {r.name: r for r in (
    Rule("download", D, ("raw", "download_metrics", "download_info"), params=("dataset.loader", "dataset.options")),
    Rule("zca", D, ("prepared", "preprocess", "zca_metrics", "zca_info"), inputs=("raw",),
         params=("dataset.loader", "dataset.options", "dataset.preprocess")),
    # the distillation network, the training split and the augmentation; not lr_img etc.
    Rule("pool", D, ("pool", "pool_metrics", "pool_info"), inputs=("prepared",), keeps=("pool_state",),
         params=("pool", "distill.net", "validation.per_class", "validation.seed", "dsa", "protocol"), gpu=True),
    # the validation evaluator is the evaluate section with validation's epochs
    Rule("distill", DMI, ("synthetic", "last", "loss_csv", "val_curve", "distill_metrics", "distill_info"),
         inputs=("prepared", Input("pool", needed_if=("distill", uses_pool)),
                 Input("pool_info", needed_if=("distill", uses_pool))), keeps=("checkpoint", "checkpoint_meta"),
         params=("distill", "dsa", "runtime.seed", "evaluate", "validation", "protocol", "pool"), gpu=True),
    Rule("evaluate", DMI, ("eval_metrics", "eval_info"), inputs=("synthetic", "prepared"), params=_EVAL,
         branch="synthetic_set", gpu=True),
    # the baselines draw from the training part of the validation split, with distillation's seed
    Rule("evaluate_random", DI, ("eval_metrics", "eval_info"), inputs=("prepared",), command="evaluate",
         fixed={"method": "random"}, baseline="random", branch="random_set", gpu=True,
         params=_EVAL + ("runtime.seed", "validation")),
    Rule("evaluate_selected", DI, ("eval_metrics", "eval_info"), inputs=("prepared",), command="evaluate",
         fixed={"method": "selected"}, baseline="selected", branch="selected_set", gpu=True,
         params=_EVAL + ("runtime.seed", "validation", "distill")),
    Rule("evaluate_full", D, ("eval_full", "eval_full_info"), inputs=("prepared",), command="evaluate",
         fixed={"method": "full"}, baseline="full", branch="whole_set", gpu=True, params=_EVAL),
    Rule("visualize", DMI, ("grid", "loss_png"), branch="set_pictures",
         inputs=("synthetic", "loss_csv", "val_curve", "prepared"),
         params=("visualize", "distill", "runtime.seed", "protocol")),
    Rule("export", DMI, ("export",), inputs=("synthetic", "preprocess"), params=("distill", "runtime.seed", "protocol")),
    Rule("accuracy", D, ("accuracy_png", "accuracy_csv"), inputs=(EVALUATIONS,), command="visualize",
         branch="accuracy_plot", params=("visualize", "experiment")),
    Rule("crossarch", {"dataset": "experiment.datasets", "ipc": "crossarch.ipcs"}, ("crossarch", "crossarch_info"),
         inputs=(SETS["crossarch"], "prepared"), gpu=True,
         params=("crossarch", "evaluate", "validation", "dsa", "runtime.seed", "experiment.methods", "protocol")),
    Rule("nas", {"dataset": "experiment.datasets", "shard": "nas.shards"}, ("nas_shard", "nas_shard_info"),
         inputs=(SETS["nas"], "prepared"), gpu=True,
         params=("nas", "evaluate", "validation", "dsa", "runtime.seed", "experiment.methods", "protocol")),
    Rule("nas_merge", D, ("nas_json", "nas_csv", "nas_png", "nas_info"),
         inputs=(Gather(("nas_shard", "nas_shard_info"),
                        lambda p, wc: [(key, {"dataset": wc["dataset"], "shard": s}) for s in p["nas"]["shards"]
                                       for key in ("nas_shard", "nas_shard_info")]),),
         params=("nas", "experiment.methods", "visualize")),
    Rule("report", {}, ("summary_md", "summary_json", "summary_csv", "summary_metrics"), job="summary",
         inputs=(EVALUATIONS,
                 Gather(("distill_metrics",), lambda p, wc: [("distill_metrics", dict(zip(("dataset", "method", "ipc"), e)))
                                                             for e in experiments(p)]),
                 Gather(("crossarch",), lambda p, wc: [("crossarch", {"dataset": d, "ipc": k})
                                                       for d in p["experiment"]["datasets"] for k in p["crossarch"]["ipcs"]]),
                 Gather(("nas_json",), lambda p, wc: [("nas_json", {"dataset": d}) for d in p["experiment"]["datasets"]])),
         params=("experiment", "report", "protocols", "distill", "evaluate", "validation", "crossarch", "nas",
                 "dataset.loader", "dataset.paper", "protocol")),
)}


# ------------------------------------------------------------------------------------- jobs

def job_wildcards(params: dict, rule: str) -> list[dict]:
    """The wildcards of every job of ``rule`` in params.yaml's matrix (none: the rule does not run)."""
    r = RULES[rule]
    if r.baseline is not None and r.baseline not in params["experiment"]["baselines"]:
        return []
    lists = [_lookup(params, key) for key in r.over.values()]
    return [dict(zip(r.over, values)) for values in product(*lists)]


def jobs(params: dict) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job of the matrix, rules in DAG order."""
    return [(name, wc) for name in RULES for wc in job_wildcards(params, name)]


def _lookup(params: dict, dotted: str):
    value = params
    for part in dotted.split("."):
        value = value[part]
    return value


def inputs(params: dict, rule: str, wildcards: dict,
           section: Callable[[dict, str, str], dict] | None = None) -> list[tuple[str, dict]]:
    """(key, wildcards) of every file a job reads that another job writes; given ``section``
    (:func:`stages.common.params.section`), only those this job's params make it read."""
    wc = {**RULES[rule].fixed, **wildcards}
    out = []
    for item in RULES[rule].inputs:
        if isinstance(item, Gather):
            out += item.files(params, wc)
            continue
        inp = item if isinstance(item, Input) else Input(item)
        if section is not None and inp.needed_if is not None:
            name, test = inp.needed_if
            if not test(section(params, name, wc["dataset"])):
                continue
        out.append((inp.key, {w: wc[w] for w in wildcards_of(inp.key)}))
    return out


def outputs(rule: str, state: bool = False) -> list[str]:
    """Keys of the files a rule declares; with ``state`` also the resumable state it keeps."""
    r = RULES[rule]
    return list(r.outputs) + (list(r.keeps) if state else [])


def _fits(r: Rule, wildcards: dict) -> bool:
    """Whether these wildcards are a job of ``r``: its fixed ones (``method: random``) as it
    fixes them, and a ``method`` it ranges over one of :data:`METHODS` (a baseline's name is a
    method wildcard too, of the baseline's own rule)."""
    return (all(str(wildcards.get(w)) == str(v) for w, v in r.fixed.items())
            and ("method" not in r.over or wildcards.get("method") in METHODS))


def rule_for(command: str, wildcards: dict) -> str:
    """The rule a command runs with these arguments (``evaluate --method random`` is
    ``evaluate_random``); ValueError when no rule takes them."""
    given = {w for w, v in wildcards.items() if v is not None}
    for name, r in RULES.items():
        if r.cmd == command and given == set(r.over) | set(r.fixed) and _fits(r, wildcards):
            return name
    raise ValueError(f"no rule runs `python -m stages.{command}` with {_args(wildcards) or 'no arguments'}")


def _args(wildcards: dict) -> str:
    return " ".join(f"--{w} {wildcards[w]}" for w in WILDCARDS if wildcards.get(w) is not None)


def arguments(rule: str, wildcards: dict) -> str:
    """The command's arguments for one job: ``--dataset D --method M --ipc K`` (those it takes)."""
    return _args({**wildcards, **RULES[rule].fixed})


def command_line(rule: str, wildcards: dict, python: str = "python") -> str:
    """``python -m stages.<command> --dataset D ...`` of one job."""
    args = arguments(rule, wildcards)
    return f"{python} -m {RULES[rule].module}" + (f" {args}" if args else "")


def producer(params: dict, key: str, wildcards: dict) -> str | None:
    """'the zca stage (python -m stages.zca --dataset digits)' for a file of ``key``, else None."""
    for name, r in RULES.items():
        if key in r.outputs and _fits(r, wildcards):
            wc = {w: wildcards.get(w) for w in r.over}
            return f"the {name} stage ({command_line(name, wc)})"
    return None


def job_name(rule: str, wildcards: dict) -> str:
    """``digits-atom-ipc10``, ``digits-random-ipc1``, ``digits-shard0``; the rule's ``job`` when
    it has no wildcards."""
    r = RULES[rule]
    wc = {**wildcards, **r.fixed}
    parts = [str(wc[w]) if w in ("dataset", "method") else f"{w}{wc[w]}" for w in WILDCARDS if w in wc]
    return "-".join(parts) or r.job or rule


def log_path(params: dict, rule: str, wildcards: dict) -> Path:
    """``<paths.logs>/<command>/<job>.log`` (the Snakefile passes ``{"dataset": "{dataset}"}``
    etc. to get its ``log:`` patterns)."""
    return Path(params["paths"]["logs"]) / RULES[rule].cmd / f"{job_name(rule, wildcards)}.log"


def benchmark_path(params: dict, rule: str, wildcards: dict) -> Path:
    """Snakemake's ``benchmark:`` file of a job: ``<paths.logs>/benchmarks/<command>/<job>.tsv``."""
    return Path(params["paths"]["logs"]) / "benchmarks" / RULES[rule].cmd / f"{job_name(rule, wildcards)}.tsv"


def _regex(params: dict, key: str, inside: bool) -> re.Pattern:
    parts = re.split(r"\{(dataset|method|ipc|shard)\}", os.path.normpath(pattern(params, key)))
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{WILDCARD_PATTERNS[p]})" for i, p in enumerate(parts))
    return re.compile(rx + ("(?:/.+)?" if inside and FILES[key].folder else ""))


def match(params: dict, file: str | os.PathLike, inside: bool = False) -> tuple[str, dict[str, str]] | None:
    """(key of :data:`FILES`, its wildcards) of a path the pipeline writes, or None. With
    ``inside``, a path inside a folder (``data/raw/digits/digits.pt``) matches the folder."""
    f = os.path.normpath(str(file))
    for key in sorted(FILES, key=lambda k: FILES[k].folder):  # files before the folders holding them
        m = _regex(params, key, inside).fullmatch(f)
        if m:
            return key, m.groupdict()
    return None


def check_job(params: dict, rule: str, wildcards: dict[str, str]) -> None:
    """Raise ``ValueError`` if a job of ``rule`` lies outside params.yaml's experiment matrix:
    a wildcard value that its list does not hold, or a baseline that ``experiment.baselines``
    leaves out. The message names the value and the key."""
    r = RULES[rule]
    found = [(w, str(wildcards[w]), r.over[w], _lookup(params, r.over[w])) for w in r.over if w in wildcards]
    if r.baseline is not None:
        found.append(("baseline", r.baseline, "experiment.baselines", params["experiment"]["baselines"]))
    for what, value, setting_, allowed in found:
        if value not in [str(a) for a in allowed]:
            shown = value if value.isdigit() else repr(value)
            tail = (f"; the methods are {list(METHODS)}" if what == "method" and value not in METHODS
                    else "; add it there to make this file")
            raise ValueError(f"{what} {shown} is not in {setting_} {allowed} (params.yaml){tail}")
