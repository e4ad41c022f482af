"""Process-level runtime settings: threads and the CPU memory allocator.

On the CPU, PyTorch allocates activations with glibc ``malloc``. Blocks above glibc's
thresholds are returned to the kernel on ``free`` and page-faulted back on the next
allocation, which made one 8 MB elementwise product 10x slower than its arithmetic
(measured: 12.5 ms vs 1.8 ms for (f*f)*(f*f) on a 256x128x8x8 map). :func:`tune_allocator`
raises the trim and mmap thresholds once per process so freed activation memory is reused.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import torch

__all__ = ["tune_allocator", "configure"]

log = logging.getLogger(__name__)
_TUNED = False
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep freed heap memory in the process (glibc only; a no-op elsewhere). Idempotent."""
    global _TUNED
    if _TUNED or not sys.platform.startswith("linux"):
        return _TUNED
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _TUNED = bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, min(threshold, 1 << 25)))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        _TUNED = False
    log.debug("allocator tuned: %s", _TUNED)
    return _TUNED


def configure(threads: int | None = None, allocator: bool = True) -> None:
    """Set the intra-op thread count (``None``/0: leave PyTorch's default) and tune malloc."""
    if threads:
        torch.set_num_threads(int(threads))
    if allocator:
        tune_allocator()
