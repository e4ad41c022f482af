"""The command-line runtime of a stage: arguments, logging, torch threads, and exit codes.

A stage is a thin command (``python -m stages.<command> --dataset ... [--method ... --ipc ...]``)
that builds a :class:`Stage`, which

1. loads and validates ``params.yaml`` (:func:`stages.common.params.load_params`) before
   anything else, so bad params stop the run before any compute;
2. finds the rule its arguments run (:func:`stages.common.contract.rule_for`: ``evaluate
   --method random`` is ``evaluate_random``), and with it the job's files;
3. logs to ``<paths.logs>/<command>/<job>.log`` (and stderr;
   :func:`stages.common.contract.log_path`);
4. configures the torch runtime (``atom.runtime.configure(runtime.threads)``);
5. offers a :class:`stages.common.tracking.Tracker` for MLflow records;
6. copies tqdm progress bars (with their time estimates) into the log (:class:`ProgressLog`).

Before 3., :func:`stages.common.preflight.check` makes sure the job's inputs exist and that the
folders it writes are writable and have room, so nothing is computed (or written) in vain, and
:mod:`stages.common.locks` refuses the job while another pipeline run (of either tool) holds the
project or another process computes the same job.
Its :meth:`Stage.start_run` opens the stage's MLflow run before the compute, and
:meth:`Stage.remove_stale` removes the temp files that killed writes of the rule's outputs left.
:func:`run` turns bad params or arguments into one clear line and exit code 2, an unusable
tracking store into exit code 3, a missing input, an unusable or full folder, a busy project, a
write the file system refuses and a file refused for safety (or corrupt, or not the file
expected) into one line and exit code 4
(saying how to recover), SIGTERM/SIGINT into 143/130, and ends the stage's run FINISHED, or
FAILED with the error (:mod:`stages.common.signals`).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from .contract import (BASELINES, FILES, METHODS, PARAMS, RECORDS, RULES, command_line, job_name, log_path, match,
                       outputs, path, producer, rule_for, setting)
from .locks import ProjectBusy, claim_project, hold_job, release_jobs
from .params import ParamsError, load_params
from .preflight import PreflightError, check, refused_write
from .recovery import remove_stale
from .signals import Terminated, call, enter, register
from .tracking import Tracker, TrackingUnavailable

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
    """Validated params, the job's rule, logger and tracker, and the runtime, for one invocation
    of a command (``name``: ``stages/<name>.py``)."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.params = load_params(args.params)  # before anything else: bad params stop here
        self.dataset = getattr(args, "dataset", None)
        self.method = getattr(args, "method", None)
        self.ipc = getattr(args, "ipc", None)
        self.shard = getattr(args, "shard", None)
        if self.dataset is not None and self.dataset not in self.params["datasets"]:
            raise ParamsError(f"--dataset: {self.dataset!r} is not a key of `datasets` in {args.params} "
                              f"(available: {sorted(self.params['datasets'])})")
        if self.method is not None and self.method not in METHODS + BASELINES:
            raise ValueError(f"--method: unknown method {self.method!r}; choose from {METHODS + BASELINES}")
        if self.ipc is not None and self.ipc < 1:
            raise ValueError(f"--ipc: must be a positive integer, got {self.ipc}")
        given = {"dataset": self.dataset, "method": self.method, "ipc": self.ipc, "shard": self.shard}
        self.rule = rule_for(name, given)
        # the job's wildcards: the rule's own (a baseline's fixed method is the rule's, not the job's)
        self.wildcards = {w: v for w, v in given.items() if w in RULES[self.rule].over}
        self.log_path = log_path(self.params, self.rule, self.wildcards)
        # the log's earlier attempts back under its name at once (Snakemake deleted it), even if
        # this attempt is refused below
        _keep_attempts(self.log_path)
        # inputs, writable folders and free space, before anything is written (the log included)
        check(self.params, self.rule, self.wildcards, self.log_path)
        # one pipeline run per project, one process per job (stages.common.locks)
        logs = Path(self.params["paths"]["logs"])
        claim_project(logs)
        hold_job(logs, RULES[self.rule].cmd, job_name(self.rule, self.wildcards))
        self.log = _setup_logging(self.log_path, name, command_line(self.rule, self.wildcards))
        sys.stderr = ProgressLog(_stderr(), logging.getLogger("stages.progress"))  # tqdm bars -> the log too
        self.log.info("stage %s: %s", name, " ".join(f"{k}={v}" for k, v in given.items() if v is not None))
        _CURRENT[:] = [self.params]  # run() names the setting or stage behind a failed file
        from atom.runtime import configure

        configure(self.params["runtime"]["threads"])
        self.device = self.params["runtime"]["device"]
        self._tracker: Tracker | None = None
        self._runs = register(contextlib.ExitStack())

    def start_run(self, method: str | None = None, ipc: int | None = None, **kwargs):
        """Open the stage's MLflow run now (RUNNING, before the compute); :func:`run` ends it.
        RUNNING runs of the same job left by a killed attempt are marked FAILED first."""
        self.tracker().close_orphans(self.name, method, ipc)
        return enter(self._runs, self.tracker().run(self.name, method, ipc, **kwargs))

    def remove_stale(self) -> None:
        """Remove what killed writes of the rule's outputs (and its resumable state) left behind."""
        remove_stale([self.path(k) for k in outputs(self.rule, state=True)], self.log)

    def load(self, key: str, **wildcards):
        """A tensor file of the pipeline (``key`` of :data:`stages.common.contract.FILES`), checked:
        its checksum, its record and the fields that record must hold (one line naming the file
        otherwise: :func:`run` turns it into exit code 4 and how to rebuild it)."""
        from atom.io import load_tensors

        record = FILES[key].record
        return load_tensors(self.path(key, **wildcards), kind=record, fields=RECORDS.get(record))

    def save(self, key: str, obj, **wildcards) -> Path:
        """Write a tensor file of the pipeline, naming its record in it (atomically, checksummed)."""
        from atom.io import save_tensors

        return save_tensors(obj, self.path(key, **wildcards), kind=FILES[key].record)

    def path(self, key: str, **wildcards) -> Path:
        wc = {"dataset": self.dataset, "method": self.method, "ipc": self.ipc, "shard": self.shard}
        wc.update(wildcards)
        return path(self.params, key, **wc)

    def tracker(self, dataset: str | None = None) -> Tracker:
        if dataset is not None and dataset != self.dataset:
            return Tracker(self.params, dataset, self.log)
        if self._tracker is None:
            self._tracker = Tracker(self.params, self.dataset, self.log)
        return self._tracker

    def resolved_device(self) -> str:
        from atom.sets import resolve_device

        return str(resolve_device(self.device))


class ProgressLog:
    """A stderr that also copies progress bars into the log: tqdm writes each update after a
    carriage return; the terminal gets every byte, the log a line per bar at most every
    ``every`` seconds (plus every finished bar and every complete line), so a long stage's
    log shows where it is and its time estimate without thousands of redraws."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    _BAR = re.compile(r"\d+%\||\[[0-9:]+<")  # a tqdm bar: "42%|" or "[00:03<00:05"

    def __init__(self, stream, logger: logging.Logger, every: float = 10.0):
        self.stream, self.logger, self.every = stream, logger, every
        self._last, self._said, self._pending = -float("inf"), "", ""

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        parts = re.split(r"([\r\n])", self._pending + self._ANSI.sub("", text))
        self._pending = parts.pop()  # not yet ended by \r or \n
        for seg, end in zip(parts[::2], parts[1::2]):
            seg = seg.strip()
            now = time.monotonic()
            bar = self._BAR.search(seg)
            key = seg.split("|")[0] if bar else seg  # description and percentage of a bar
            if seg and key != self._said and ((end == "\n" and not bar) or "100%|" in seg
                                              or now - self._last >= self.every):
                self.logger.info(seg)
                self._last, self._said = now, key
        return n

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _stderr():
    """The process's stderr without a :class:`ProgressLog` around it."""
    return sys.stderr.stream if isinstance(sys.stderr, ProgressLog) else sys.stderr


# the first line of each attempt in a job's log: a rerun appends, so a killed attempt's log stays
ATTEMPT = "===== attempt"


def _keep_attempts(file: Path) -> None:
    """Make ``file`` a hard link to ``.<name>.attempts`` beside it, which holds every attempt.
    Snakemake deletes a rule's ``log:`` file before it reruns the job; the other name keeps the
    lines (a killed attempt's included), and the next attempt appends to them. Where the file
    system has no hard links, the attempts are appended to ``file`` itself."""
    keep = file.with_name(f".{file.name}.attempts")
    try:
        keep.touch(exist_ok=True)
        if file.exists() and os.path.samefile(file, keep):
            return
        if file.exists():  # written without the link (an older version): keep its lines first
            with open(keep, "a") as out:
                out.write(file.read_text(errors="replace"))
            file.unlink()
        os.link(keep, file)
    except OSError:
        pass


def _setup_logging(file: Path, stage: str, command: str) -> logging.Logger:
    """Log to ``file`` (appended to, after a header line naming this attempt) and stderr; return
    the stage's logger."""
    file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    _keep_attempts(file)
    with open(file, "a") as f:
        f.write(f"{ATTEMPT} {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()} on {socket.gethostname()}): "
                f"{command} =====\n")
    fh = logging.FileHandler(file, mode="a")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(_stderr())
    sh.setFormatter(fmt)
    root.addHandler(fh)
    root.addHandler(sh)
    progress = logging.getLogger("stages.progress")  # ProgressLog's lines: the file only (the terminal has the bars)
    progress.propagate = False
    for h in list(progress.handlers):
        progress.removeHandler(h)
    progress.addHandler(fh)
    for noisy in ("alembic", "urllib3", "matplotlib", "PIL", "mlflow.store.db.utils", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"stages.{stage}")


_CURRENT: list[dict] = []  # the running stage's params (one stage per process)


def recovery(file: Path) -> str:
    """How to get past a file that cannot be loaded: delete it, and which stage rewrites it."""
    rm = f"delete it (rm -r {file})" if file.is_dir() else f"delete it (rm {file})"
    found = match(_CURRENT[0], file, inside=True) if _CURRENT else None
    if found is None:
        return f"{rm}, or replace it with a trusted copy"
    key, wc = found
    if key in ("checkpoint", "checkpoint_meta"):
        return f"{rm}; the distillation then starts afresh at iteration 0"
    if key == "pool_state":
        return f"{rm}; the pool stage then trains that member afresh"
    made = producer(_CURRENT[0], key, wc)
    return f"{rm} and rerun {made}, which writes it again" if made else f"{rm} and rerun the stage that writes it"


def _refused_write(exc: OSError) -> str:
    where = exc.filename
    found = match(_CURRENT[0], where, inside=True) if _CURRENT and where else None
    hint = f" (under {setting(found[0])} in params.yaml)" if found else ""
    return f"{where or 'a write'}: {exc.strerror or exc}{hint}; the file was not written; free space or fix the folder, then rerun"


def _to_log_file(line: str) -> None:
    """An error line for the log file only (the terminal gets it once, as ``error: ...``)."""
    record = logging.LogRecord("stages", logging.ERROR, __file__, 0, "%s", (line,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; turn the errors a user meets into one line and an exit code:
    2 bad params/arguments, 3 an unusable tracking store, 4 a missing input, an unusable or
    full folder, a busy project, or a file refused for safety or unreadable (with how to
    recover)."""
    try:
        return _run(main, argv)
    finally:
        release_jobs()  # the job's lock (a process that exits releases it anyway)


def _run(main: Callable[[list[str] | None], None], argv: list[str] | None) -> int:
    log = logging.getLogger("stages")
    try:
        call(main, argv)
    except (Terminated, KeyboardInterrupt) as exc:
        log.error("stage stopped: %s", str(exc) or "interrupted (SIGINT)")  # KeyboardInterrupt() has no text
        return 143 if isinstance(exc, Terminated) else 130
    except TrackingUnavailable as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PreflightError, ProjectBusy) as exc:  # raised before anything was written, the log included
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except ValueError as exc:
        io = sys.modules.get("atom.io")  # only a stage that loaded tensors can meet a bad tensor file
        if io is not None and isinstance(exc, io.UnreadableFileError):
            line = f"{exc}; to recover, {recovery(exc.path)}"
            _to_log_file(line)
            print(f"error: {line}", file=_stderr())  # once: not copied into the log again
            return 4
        log.exception("stage failed")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not refused_write(exc):
            log.exception("stage failed")
            raise
        line = _refused_write(exc)
        _to_log_file(line)
        print(f"error: {line}", file=_stderr())  # once: not copied into the log again
        return 4
    except Exception:
        log.exception("stage failed")
        raise
    return 0
