"""The command-line runtime of a stage: arguments, logging, torch threads, and exit codes.

A stage is a thin command (``python -m stages.<name> --dataset ... [--method ... --ipc ...]``)
that builds a :class:`Stage`, which

1. loads and validates ``params.yaml`` (:func:`stages.params.load_params`) before anything
   else, so bad params stop the run before any compute;
2. logs to ``<paths.logs>/<stage>/<name>.log`` (and stderr; :func:`stages.layout.log_path`);
3. configures the torch runtime (``atom.runtime.configure(runtime.threads)``);
4. offers a :class:`stages.tracking.Tracker` for MLflow records.

:func:`run` turns bad params or arguments into one clear line and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from .layout import BASELINES, METHODS, PARAMS, log_path, path
from .params import ParamsError, load_params
from .tracking import Tracker

__all__ = ["parser", "Stage", "run"]


def parser(description: str, method: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default=PARAMS, help="params file (default: params.yaml)")
    p.add_argument("--dataset", required=True, help="a key of `datasets` in params.yaml")
    if method:
        p.add_argument("--method", help=" | ".join(METHODS + BASELINES))
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
        self.log_path = log_path(self.params, name, self.dataset, self.method, self.ipc, name=log_name)
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


def _setup_logging(file: Path, stage: str) -> logging.Logger:
    file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    fh = logging.FileHandler(file, mode="w")
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
