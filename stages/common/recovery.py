"""What a stage needs to recover from a kill: the temp files that killed writes left.

:func:`remove_stale`: an atomic write (:mod:`atom.io`, :mod:`atom.archive`, :mod:`atom.viz`)
  goes through ``.<name>.<random>.tmp`` beside its target (``.<name>.old...`` while a folder is
  swapped; ``.download.<random>`` inside a raw folder); a kill leaves them behind. A stage
  removes those of its own outputs when it starts (never another job's: names are matched
  per output; the outputs are its rule's in :mod:`stages.common.contract`).

Torch-free.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

__all__ = ["stale_entries", "remove_stale"]


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
