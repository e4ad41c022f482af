"""What every pipeline stage shares: params loading and validation, paths, logging, MLflow.

A stage is a thin command (``python -m stages.<name> --dataset ... [--method ... --ipc ...]``)
that builds a :class:`Stage`, which

1. loads ``params.yaml`` and validates it against ``schemas/params.schema.yaml`` (plus the
   cross-key checks of :func:`check_params`) *before* importing torch or touching data, so a
   wrong type or an out-of-range value stops the run with an error naming the key;
2. logs to ``<paths.logs>/<stage>/<name>.log`` (and stderr);
3. configures the torch runtime (``atom.runtime.configure(runtime.threads)``);
4. offers a :class:`Tracker` that records runs in MLflow (one experiment per dataset; tags
   stage, dataset, method, ipc, git commit). MLflow only records: if it fails, the stage
   logs a warning and its outputs are still written.

This module imports neither torch nor MLflow at import time: the Snakefile imports it to
validate params and to build path patterns.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

__all__ = ["ParamsError", "load_params", "validate_params", "check_params", "section", "distill_kwargs",
           "evaluate_settings", "stage_params", "pattern", "path", "METHODS", "BASELINES", "Stage",
           "Tracker", "run", "experiment_name", "tracking_uri", "flatten"]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "params.schema.yaml"
PARAMS = "params.yaml"
METHODS = ("atom", "datadam", "dm")
BASELINES = ("random", "full")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Every file the pipeline writes, as patterns. `{raw}`, `{prepared}`, `{results}` and `{logs}`
# come from params.yaml's `paths`; `{dataset}`, `{method}`, `{ipc}` are the experiment's
# wildcards (the Snakefile keeps them as wildcards, the stages fill them in).
PATTERNS = {
    "raw": "{raw}/{dataset}",
    "download_metrics": "{results}/download/{dataset}.json",
    "prepared": "{prepared}/{dataset}.pt",
    "state": "{prepared}/{dataset}.state.pt",
    "zca_metrics": "{results}/zca/{dataset}.json",
    "distill_dir": "{results}/distill/{dataset}/{method}/ipc{ipc}",
    "synthetic": "{results}/distill/{dataset}/{method}/ipc{ipc}/synthetic.pt",
    "checkpoint": "{results}/distill/{dataset}/{method}/ipc{ipc}/checkpoint.pt",
    "loss_csv": "{results}/distill/{dataset}/{method}/ipc{ipc}/loss.csv",
    "distill_metrics": "{results}/distill/{dataset}/{method}/ipc{ipc}/metrics.json",
    "eval_metrics": "{results}/evaluate/{dataset}/{method}/ipc{ipc}/metrics.json",
    "eval_full": "{results}/evaluate/{dataset}/full/metrics.json",
    "grid": "{results}/visualize/{dataset}/{method}/ipc{ipc}/grid.png",
    "loss_png": "{results}/visualize/{dataset}/{method}/ipc{ipc}/loss.png",
    "images": "{results}/visualize/{dataset}/{method}/ipc{ipc}/images",
    "accuracy_png": "{results}/visualize/{dataset}/accuracy.png",
    "accuracy_csv": "{results}/visualize/{dataset}/accuracy.csv",
    "summary_md": "{results}/report/summary.md",
    "summary_json": "{results}/report/summary.json",
}


class ParamsError(ValueError):
    """A params.yaml value is missing, of the wrong type or out of range."""


# ----------------------------------------------------------------------------- params

def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc


def _key(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def validate_params(params: Any, source: str = PARAMS, schema_path: str | os.PathLike = SCHEMA) -> dict:
    """Check ``params`` against the schema, then the cross-key rules; raise :class:`ParamsError`
    listing every problem as ``<source>: <key>: <message>``."""
    import jsonschema

    schema = read_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = []
        for e in errors[:20]:
            lines.append(f"{source}: {_key(e.absolute_path)}: {e.message}")
        raise ParamsError("invalid parameters\n  " + "\n  ".join(dict.fromkeys(lines)))
    check_params(params, source)
    return params


def check_params(params: dict, source: str = PARAMS) -> None:
    """Rules the schema cannot express: the matrix names existing datasets and something runs."""
    exp = params["experiment"]
    for i, name in enumerate(exp["datasets"]):
        if name not in params["datasets"]:
            raise ParamsError(f"{source}: experiment.datasets.{i}: {name!r} is not a key of `datasets` "
                              f"(available: {sorted(params['datasets'])})")
    if not exp["methods"] and not exp["baselines"]:
        raise ParamsError(f"{source}: experiment.methods: no method and no baseline to run")
    for name in exp["datasets"]:
        ds = params["datasets"][name]
        for sec in ("distill", "evaluate"):
            merged = section(params, sec, name)
            if sec == "distill" and merged["lr_milestones"] != sorted(merged["lr_milestones"]):
                raise ParamsError(f"{source}: datasets.{name}.distill.lr_milestones: must be increasing")
        if ds["paper"] is not None:
            n = len(ds["paper"]["ipcs"])
            for m, vals in ds["paper"]["methods"].items():
                if len(vals) != n:
                    raise ParamsError(f"{source}: datasets.{name}.paper.methods.{m}: {len(vals)} values "
                                      f"for {n} ipcs")


def load_params(path: str | os.PathLike = PARAMS) -> dict:
    """Read and validate params.yaml (no torch, no data touched)."""
    params = read_yaml(path)
    return validate_params(params, str(path))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def section(params: dict, name: str, dataset: str | None = None) -> dict:
    """A top-level section with the dataset group's overrides merged in (``distill``, ``evaluate``)."""
    base = params[name]
    if dataset is None or name not in ("distill", "evaluate"):
        return copy.deepcopy(base)
    return _merge(base, params["datasets"][dataset].get(name) or {})


def distill_kwargs(params: dict, dataset: str, method: str) -> dict:
    """Keyword arguments of ``atom.distill.distill`` for one experiment (besides data/ipc/method)."""
    cfg = section(params, "distill", dataset)
    losses = cfg.pop("loss")
    cfg["loss"] = dict(losses[method])
    cfg["seed"] = params["runtime"]["seed"]
    cfg["dsa_params"] = dict(params["dsa"])
    return cfg


def evaluate_settings(params: dict, dataset: str, kind: str) -> tuple[list[int], dict, bool]:
    """(seeds, EvalConfig keyword arguments, batched) for a method or baseline ``kind``."""
    cfg = section(params, "evaluate", dataset)
    full = cfg.pop("full")
    if kind == "full":
        cfg.update(full)
    seeds = list(cfg.pop("seeds"))
    batched = bool(cfg.pop("batched"))
    cfg["dsa_params"] = dict(params["dsa"])
    return seeds, cfg, batched


def stage_params(params: dict, stage: str, dataset: str | None = None) -> dict:
    """The values a stage depends on: a change in any reruns it. Mirrors ``params:`` in dvc.yaml
    (the Snakefile passes this as the rule's ``params:``)."""
    ds = params["datasets"].get(dataset, {}) if dataset else {}
    if stage == "download":
        return {"loader": ds["loader"], "options": ds["options"]}
    if stage == "zca":
        return {"loader": ds["loader"], "options": ds["options"], "preprocess": ds["preprocess"]}
    if stage == "distill":
        return {"distill": params["distill"], "dsa": params["dsa"], "seed": params["runtime"]["seed"],
                "override": ds.get("distill")}
    if stage in ("evaluate", "evaluate_full"):
        return {"evaluate": params["evaluate"], "dsa": params["dsa"], "override": ds.get("evaluate")}
    if stage == "evaluate_random":
        return {"evaluate": params["evaluate"], "dsa": params["dsa"], "seed": params["runtime"]["seed"],
                "override": ds.get("evaluate")}
    if stage == "visualize":
        return {"visualize": params["visualize"]}
    if stage == "accuracy":
        return {"visualize": params["visualize"], "experiment": params["experiment"]}
    if stage == "report":
        return {"experiment": params["experiment"], "report": params["report"],
                "paper": {d: params["datasets"][d]["paper"] for d in params["experiment"]["datasets"]}}
    raise ValueError(f"stage: unknown stage {stage!r}")


def pattern(params: dict, key: str) -> str:
    """A path pattern with `paths` filled in and the wildcards left as ``{dataset}`` etc."""
    p = params["paths"]
    keep = {w: "{" + w + "}" for w in ("dataset", "method", "ipc")}
    return PATTERNS[key].format(raw=p["raw"], prepared=p["prepared"], results=p["results"], logs=p["logs"], **keep)


def path(params: dict, key: str, **wildcards) -> Path:
    return Path(pattern(params, key).format(**wildcards))


def experiments(params: dict) -> list[tuple[str, str, int]]:
    """(dataset, method, ipc) of every distillation in the matrix."""
    e = params["experiment"]
    return [(d, m, k) for d in e["datasets"] for m in e["methods"] for k in e["ipcs"]]


def evaluations(params: dict, dataset: str) -> list[tuple[str, int | None]]:
    """(kind, ipc) of every evaluation of ``dataset``: methods and random per ipc, full once."""
    e = params["experiment"]
    out = [(m, k) for m in e["methods"] for k in e["ipcs"]]
    if "random" in e["baselines"]:
        out += [("random", k) for k in e["ipcs"]]
    if "full" in e["baselines"]:
        out.append(("full", None))
    return out


def eval_path(params: dict, dataset: str, kind: str, ipc: int | None) -> Path:
    if kind == "full":
        return path(params, "eval_full", dataset=dataset)
    return path(params, "eval_metrics", dataset=dataset, method=kind, ipc=ipc)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'net': {'width': 128}} -> {'net.width': 128} (MLflow params are flat)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit(cwd: str | os.PathLike = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------- MLflow

def tracking_uri(params: dict) -> str:
    """$MLFLOW_TRACKING_URI wins, then ``mlflow.tracking_uri``, then ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"] or DEFAULT_TRACKING_URI


def experiment_name(params: dict, dataset: str) -> str:
    return f"{params['mlflow']['experiment_prefix']}{dataset}"


class _Run:
    """One MLflow run; every call is serialised by the tracker's lock and never raises."""

    def __init__(self, tracker: "Tracker", run_id: str | None):
        self.tracker, self.run_id = tracker, run_id

    def _call(self, what: str, fn: Callable[..., Any], *args, **kwargs):
        if self.run_id is None:
            return None
        return self.tracker._guard(what, fn, self.run_id, *args, **kwargs)

    def log_params(self, params: dict) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                 for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self._call("log params", self.tracker.client.log_batch, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self._call("log metrics", self.tracker.client.log_batch, metrics=items)

    def log_history(self, key: str, values: list[float], steps: list[int]) -> None:
        """A metric with one value per step (e.g. the loss curve)."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(v), now, int(s)) for s, v in zip(steps, values)]
        for i in range(0, len(items), 1000):  # MLflow accepts at most 1000 metrics per batch
            self._call("log metric history", self.tracker.client.log_batch, metrics=items[i:i + 1000])

    def log_artifact(self, local: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.run_id is None:
            return
        self._call("log artifact", self.tracker.client.log_artifact, str(local), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id is None:
            return
        self._call("set tag", self.tracker.client.set_tag, key, value)


class Tracker:
    """MLflow recording for one dataset's experiment. Disabled (all no-ops) when
    ``mlflow.enabled`` is false. Writes are serialised across processes by a file lock, so two
    jobs never race on the SQLite store (its first creation included)."""

    def __init__(self, params: dict, dataset: str, log: logging.Logger):
        self.params, self.dataset, self.log = params, dataset, log
        self.enabled = bool(params["mlflow"]["enabled"])
        self.client = None
        self.experiment_id = None
        self.lock_path = Path(params["paths"]["logs"]) / ".mlflow.lock"
        self.commit = git_commit()
        if self.enabled:
            self._guard("connect", self._connect)
            if self.client is None:
                self.enabled = False

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            yield
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _guard(self, what: str, fn: Callable[..., Any], *args, **kwargs):
        for attempt in range(3):
            try:
                with self._lock():
                    return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - recording must never break a stage
                if attempt == 2 or "locked" not in str(exc).lower():
                    self.log.warning("mlflow: %s failed: %s", what, exc)
                    return None
                time.sleep(1.0 + attempt)
        return None

    def _connect(self) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(self.params)
        client = MlflowClient(tracking_uri=uri)
        name = experiment_name(self.params, self.dataset)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            root = self.params["mlflow"]["artifact_root"]
            location = root if "://" in root else Path(root).resolve().joinpath(name).as_uri()
            self.experiment_id = client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.client = client
        self.log.info("mlflow: %s, experiment %r", uri, name)

    @contextlib.contextmanager
    def run(self, stage: str, method: str | None = None, ipc: int | None = None,
            parent: _Run | None = None, name: str | None = None, extra_tags: dict | None = None) -> Iterator[_Run]:
        """Start a run tagged with stage/dataset/method/ipc/git commit; end it FINISHED, or
        FAILED if the block raises."""
        if not self.enabled:
            yield _Run(self, None)
            return
        tags = {"stage": stage, "dataset": self.dataset, "method": method or "", "ipc": "" if ipc is None else str(ipc),
                "git_commit": self.commit, "mlflow.source.git.commit": self.commit,
                "mlflow.runName": name or "/".join(str(x) for x in (stage, self.dataset, method,
                                                                     None if ipc is None else f"ipc{ipc}") if x)}
        if parent is not None and parent.run_id:
            tags["mlflow.parentRunId"] = parent.run_id
        tags.update(extra_tags or {})
        info = self._guard("create run", self.client.create_run, self.experiment_id, tags=tags)
        handle = _Run(self, info.info.run_id if info is not None else None)
        status = "FAILED"
        try:
            yield handle
            status = "FINISHED"
        finally:
            handle._call("end run", self.client.set_terminated, status)


# ----------------------------------------------------------------------------- stages

def parser(description: str, method: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default=PARAMS, help="params file (default: params.yaml)")
    p.add_argument("--dataset", required=True, help="a key of `datasets` in params.yaml")
    if method:
        p.add_argument("--method", help="atom | datadam | dm | random | full")
        p.add_argument("--ipc", type=int, help="images per class")
    return p


class Stage:
    """Validated params, the stage's logger and tracker, and the runtime, for one invocation."""

    def __init__(self, name: str, args: argparse.Namespace, log_name: str | None = None):
        self.name = name
        self.params = load_params(args.params)  # before anything else: bad params stop here
        self.dataset = getattr(args, "dataset", None)
        self.method = getattr(args, "method", None)
        self.ipc = getattr(args, "ipc", None)
        if self.dataset is not None and self.dataset not in self.params["datasets"]:
            raise ParamsError(f"--dataset: {self.dataset!r} is not a key of `datasets` in {args.params} "
                              f"(available: {sorted(self.params['datasets'])})")
        if self.method is not None and self.method not in METHODS + BASELINES:
            raise ValueError(f"--method: unknown method {self.method!r}; choose from {METHODS + BASELINES}")
        if self.ipc is not None and self.ipc < 1:
            raise ValueError(f"--ipc: must be a positive integer, got {self.ipc}")
        if log_name is None:
            parts = [self.dataset, self.method] + ([f"ipc{self.ipc}"] if self.ipc is not None else [])
            log_name = "-".join(p for p in parts if p)
        self.log_path = Path(self.params["paths"]["logs"]) / name / f"{log_name}.log"
        self.log = _setup_logging(self.log_path, name)
        self.log.info("stage %s: dataset=%s method=%s ipc=%s", name, self.dataset, self.method, self.ipc)
        from atom.runtime import configure

        configure(self.params["runtime"]["threads"])
        self.device = self.params["runtime"]["device"]
        self._tracker: Tracker | None = None

    def path(self, key: str, **wildcards) -> Path:
        wc = {"dataset": self.dataset, "method": self.method, "ipc": self.ipc}
        wc.update(wildcards)
        return path(self.params, key, **wc)

    def tracker(self, dataset: str | None = None) -> Tracker:
        if dataset is not None and dataset != self.dataset:
            return Tracker(self.params, dataset, self.log)
        if self._tracker is None:
            self._tracker = Tracker(self.params, self.dataset, self.log)
        return self._tracker

    def resolved_device(self) -> str:
        from atom.distill import resolve_device

        return str(resolve_device(self.device))


def _setup_logging(log_path: Path, stage: str) -> logging.Logger:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    fh = logging.FileHandler(log_path, mode="w")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    root.addHandler(fh)
    root.addHandler(sh)
    for noisy in ("alembic", "urllib3", "matplotlib", "PIL", "mlflow.store.db.utils", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"stages.{stage}")


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; turn bad params/arguments into one clear line and exit code 2."""
    try:
        main(argv)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        logging.getLogger("stages").exception("stage failed")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger("stages").exception("stage failed")
        raise
    return 0
