"""What a stage needs to recover from a kill: stale temp files, and the distillation's clock.

- :func:`remove_stale`: an atomic write (:mod:`atom.io`, :mod:`atom.archive`, :mod:`atom.viz`)
  goes through ``.<name>.<random>.tmp`` beside its target (``.<name>.old...`` while a folder is
  swapped; ``.download.<random>`` inside a raw folder); a kill leaves them behind. A stage
  removes those of its own outputs when it starts (never another job's: names are matched
  per output).
- :class:`RunClock`: wall-clock seconds of one distillation across kills and resumes, kept in
  ``checkpoint.json`` beside the checkpoint (seconds at every checkpointed iteration, read
  from the library's ``"iteration %d/%d loss ..."`` log records, and a digest of the code that
  made the checkpoint: a checkpoint made by other code is not resumed).

Torch-free.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Iterator

from .layout import ROOT, code_deps

__all__ = ["stale_entries", "remove_stale", "code_digest", "RunClock", "LOSS_RECORD", "RESUME_RECORD",
           "VALIDATION_RECORDS"]

# the library's log formats (atom.distill) that the stages read (tests/test_resume.py checks
# that atom/distill.py still logs them)
LOSS_RECORD = "iteration %d/%d loss %.6g"
RESUME_RECORD = "resumed from %s at iteration %d"
VALIDATION_RECORDS = ("iteration %d: validation %.4g (new best)", "iteration %d: validation %.4g (best %.4g at %d)")


def _is_temp(name: str, prefix: str = ".") -> bool:
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix):]
    return name.endswith(".tmp") or rest.startswith("old") or ".old." in name


def stale_entries(target: Path) -> list[Path]:
    """Temp files/folders an interrupted atomic write of ``target`` can leave: ``.<name>.*.tmp``
    and ``.<name>.old*`` beside it; for a folder also ``.*.tmp``, ``.*.old.*`` and
    ``.download.*`` at its top level."""
    target = Path(target)
    found = []
    if target.parent.is_dir():
        prefix = f".{target.name}."
        found += [p for p in target.parent.iterdir() if _is_temp(p.name, prefix)]
    if target.is_dir():
        found += [p for p in target.iterdir()
                  if p.name.startswith(".") and (_is_temp(p.name) or p.name.startswith(".download."))]
    return sorted(found)


def remove_stale(targets, log: logging.Logger | None = None) -> list[Path]:
    """Remove :func:`stale_entries` of every target; return what was removed."""
    removed = []
    for target in targets:
        for p in stale_entries(Path(target)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
            if log is not None:
                log.warning("removed %s, left by an interrupted write", p)
    return removed


def code_digest(stage: str) -> str:
    """sha256 of the atom/ and stages/ files ``stage`` runs (stages.layout.code_deps)."""
    h = hashlib.sha256()
    for rel in code_deps(stage):
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()


class RunClock(logging.Handler):
    """Seconds of a distillation across resumes. Attach it to the ``atom.distill`` logger around
    the call (:meth:`attach`); :attr:`seconds` is the whole run's time when the call returns."""

    def __init__(self, meta_path: Path, checkpoint_every: int, code: str):
        super().__init__(logging.INFO)
        self.meta_path, self.every, self.code = Path(meta_path), checkpoint_every, code
        self.at: dict[str, float] = {}
        self.resumed_from = 0
        self.prior = 0.0
        self.t0 = time.perf_counter()

    def stored_code(self) -> str | None:
        """The code digest stored beside the checkpoint (None: no record)."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None
        self.at = {str(k): float(v) for k, v in meta.get("seconds_at", {}).items()}
        return meta.get("code")

    @property
    def seconds(self) -> float:
        return self.prior + time.perf_counter() - self.t0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.msg == RESUME_RECORD:
                self.resumed_from = int(record.args[1])
                done = [int(k) for k in self.at if int(k) <= self.resumed_from]
                self.prior = self.at[str(max(done))] if done else 0.0
            elif record.msg == LOSS_RECORD:
                done, total = int(record.args[0]), int(record.args[1])
                if done % self.every == 0 or done == total:  # the checkpoint saved right after
                    self.at = {k: v for k, v in self.at.items() if int(k) < done}
                    self.at[str(done)] = self.seconds
                    self._save()
        except (TypeError, ValueError, IndexError, OSError) as exc:
            logging.getLogger("stages").warning("%s: cannot record the run's time (%s)", self.meta_path, exc)

    def _save(self) -> None:
        from atom.io import write_json

        write_json({"code": self.code, "seconds_at": self.at}, self.meta_path)

    def forget(self) -> None:
        """The checkpoint was discarded: start the clock afresh."""
        self.at, self.prior, self.resumed_from = {}, 0.0, 0
        self.meta_path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def attach(self, logger: str = "atom.distill") -> Iterator["RunClock"]:
        """Listen to ``logger`` for one attempt (the clock restarts at the attempt's start)."""
        self.t0 = time.perf_counter()
        logging.getLogger(logger).addHandler(self)
        try:
            yield self
        finally:
            logging.getLogger(logger).removeHandler(self)
