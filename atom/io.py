"""Atomic file writes, safe tensor loading and checksums.

Everything the project writes goes through these helpers so that an interrupted run never
leaves a half-written artifact: data is written to a temporary file in the target folder,
flushed, then renamed over the target (``os.replace`` is atomic on POSIX).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["atomic_path", "save_tensors", "load_tensors", "write_json", "write_text", "sha256", "digest"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def save_tensors(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` atomically. Keep ``obj`` to tensors, numbers, strings, lists
    and dicts so that :func:`load_tensors` can read it with ``weights_only=True``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`save_tensors` without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a torch file
        raise ValueError(f"{path}: cannot be loaded as a tensor file ({exc})") from exc


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (``algorithm``: any name ``hashlib.new`` knows)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256(path: str | os.PathLike) -> str:
    return digest(path, "sha256")
