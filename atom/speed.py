"""Device-aware speed settings: what ``"auto"`` resolves to, per device and image shape.

Every setting here changes speed, not the method; ``winograd`` and ``bf16`` also change the
rounding (tested against the exact float32 path in ``tests/test_speed.py``). ``auto`` resolves
to the fastest choice measured for that device (``benchmarks/README.md``):

- ``real_chunk``: CPU 32 images per chunk at 32x32, scaled to keep a chunk's maps
  cache-sized (8..512 images); CUDA 0, the whole batch at once (4x faster than chunks of 32
  on an H100).
- ``compile``: CPU false (eager; ``true`` is ~1.7x faster after ~40 s of warm-up); CUDA true
  for runs of 1000+ iterations, where the warm-up pays for itself.
- ``bf16``: CPU false; CUDA true where the GPU supports bf16 (statistics stay float32).
- ``channels_last``: CPU false (slower here); CUDA true.
- ``winograd``: CPU true for images of 32x32 or more where NNPACK is built in: the real
  branch's wide 3x3 convolutions (no gradient flows through them) run as NNPACK Winograd,
  ~1.9x faster than oneDNN on 16x16 maps (a 1.25x faster iteration at CIFAR-10 IPC 10;
  0.75x on 8x8 digits, so off there); never off the CPU.
- evaluation ``batched``: CPU false (one seed's batch already fills the cores); CUDA true
  (vmap: all seeds in one forward).

On the CPU the resolved values are fixed (they depend on nothing but the device type, the
image size and whether NNPACK is compiled in), so the same seed still gives the same set.
"""
from __future__ import annotations

import torch

__all__ = ["AUTO", "DISTILL_SETTINGS", "resolve_distill", "resolve_batched", "check_setting"]

AUTO = "auto"
DISTILL_SETTINGS = ("real_chunk", "compile", "bf16", "channels_last", "winograd")
COMPILE_MIN_ITERATIONS = 1000


def check_setting(name: str, value, kind: type) -> None:
    """``value`` must be ``"auto"`` or of ``kind`` (int settings: >= 0)."""
    if value == AUTO:
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: must be true, false or 'auto', got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: must be an integer >= 0 or 'auto', got {value!r}")


def _cpu_chunk(height: int, width: int) -> int:
    # 32 images at 32x32 (16 MB first-block maps at width 128) measured fastest; keep the
    # pixels per chunk constant for other sizes
    return max(8, min(512, 32 * 32 * 32 // max(1, height * width)))


def resolve_distill(values: dict, device: torch.device, image_shape: tuple[int, ...], iterations: int) -> dict:
    """The concrete value of every :data:`DISTILL_SETTINGS` key of ``values`` (``"auto"``
    entries resolved for ``device`` and images of ``image_shape`` (C, H, W))."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    h, w = image_shape[-2], image_shape[-1]
    auto = {
        "real_chunk": _cpu_chunk(h, w) if dev.type == "cpu" else 0,
        "compile": cuda and iterations >= COMPILE_MIN_ITERATIONS,
        "bf16": cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "channels_last": cuda,
        # Winograd pays on the second block's 16x16 maps of 32x32 images (a 1.25x faster
        # iteration at CIFAR-10 IPC 10) and loses on small maps (0.75x on 8x8 digits)
        "winograd": dev.type == "cpu" and h * w >= 32 * 32 and torch.backends.nnpack.is_available(),
    }
    return {k: auto[k] if values[k] == AUTO else values[k] for k in DISTILL_SETTINGS}


def resolve_batched(value, device: torch.device) -> bool:
    """Evaluation batching: ``"auto"`` trains the seeds together on CUDA only."""
    check_setting("batched", value, bool)
    return torch.device(device).type == "cuda" if value == AUTO else value
