"""Image files into tensors: decoding, ImageFolder scanning and the seeded stratified split.

Shared by the registry's loaders (:mod:`atom.data`): TinyImageNet and ImageFolder decode with
:func:`decode_images` / :func:`decode_raw`, ImageFolder finds its splits with
:func:`imagefolder_layout`, and digits and ImageFolder split one tree with
:func:`stratified_split`.

Decoding runs in a pool of ``workers`` processes (fork) when there are many images. Every bad
input is a ``ValueError`` naming the file and the problem.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["IMAGE_EXTENSIONS", "MODES", "decode_images", "decode_raw", "channels", "to_float",
           "list_images", "scan_split", "imagefolder_layout", "stratified_split"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MODES = ("rgb", "grayscale", "auto")
_CHUNK = 512  # images per worker task: large enough to amortise pickling, small enough to balance


def _to_gray(im):
    from PIL import Image

    if im.mode.startswith("I"):
        # 16-bit grayscale (PNG/TIFF): Pillow's convert("L") clips above 255; scale instead.
        a = np.asarray(im, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8), "L")
    return im.convert("L")


def _decode_chunk(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``paths`` to an (n, H, W, 3) uint8 array (grayscale replicated) plus a
    per-image "was grayscale" flag. Runs in worker processes: no torch here."""
    from PIL import Image

    paths, (h, w), resize, mode, first = task
    out = np.empty((len(paths), h, w, 3), np.uint8)
    gray = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.load()
                is_gray = im.mode in _GRAY_MODES
                if mode == "grayscale" or (mode == "auto" and is_gray):
                    im2 = _to_gray(im)
                else:
                    im2 = im.convert("RGB")
        except Exception as exc:  # Pillow raises OSError, SyntaxError, DecompressionBombError...
            raise ValueError(f"{p}: cannot decode image ({type(exc).__name__}: {exc})") from None
        if im2.size != (w, h):
            if resize is None:
                raise ValueError(f"{p}: image is {im2.size[1]}x{im2.size[0]} (HxW) but {first} is {h}x{w}; "
                                 "sizes differ and resizing is off (set options.resize to [H, W])")
            im2 = im2.resize((w, h), Image.Resampling.BILINEAR)
        a = np.asarray(im2)
        out[i] = a[..., None] if a.ndim == 2 else a
        gray[i] = im2.mode == "L"
    return out, gray


def _pool_context():
    # fork starts workers instantly (spawn would re-import torch in each); the workers only
    # use Pillow and numpy, so forking a process that has torch threads is safe here.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _worker_init() -> None:
    # a forked worker inherits its parent's Python signal handlers; a pipeline's raise on
    # SIGTERM, and one raised while the worker waits on the pool's queue lock (which the
    # parent holds while it winds the pool down) was seen to leave it waiting for ever
    # and the decode hung after its last image. Workers die on SIGTERM at once and leave
    # Ctrl-C to the parent, which stops them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode_raw(paths: list[str], mode: str, size: tuple[int, int] | None, resize: bool,
                workers: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    if mode not in MODES:
        raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers: must be an integer >= 1, got {workers!r}")
    if not paths:
        raise ValueError("decode_images: no image files given")
    if size is None:
        try:
            with Image.open(paths[0]) as im:
                size = (im.size[1], im.size[0])
        except Exception as exc:
            raise ValueError(f"{paths[0]}: cannot decode image ({type(exc).__name__}: {exc})") from None
    h, w = size
    starts = range(0, len(paths), _CHUNK)
    tasks = [(paths[i:i + _CHUNK], (h, w), resize or None, mode, paths[0]) for i in starts]
    raw = np.empty((len(paths), h, w, 3), np.uint8)
    gray = np.empty(len(paths), bool)
    # a progress bar with a time estimate when there is more than one chunk (TQDM_DISABLE=1 hides it)
    bar = tqdm(total=len(paths), desc="decode images", unit="img", disable=len(tasks) < 2, dynamic_ncols=True)
    with bar:
        if workers > 1 and len(tasks) > 1:
            with _pool_context().Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
                for i, (arr, g) in zip(starts, pool.imap(_decode_chunk, tasks)):
                    raw[i:i + len(arr)], gray[i:i + len(arr)] = arr, g
                    bar.update(len(arr))
                # let the workers exit on the pool's sentinel; the with block's terminate()
                # then only signals a worker when an error left the loop early
                pool.close()
                pool.join()
        else:
            for i, task in zip(starts, tasks):
                arr, g = _decode_chunk(task)
                raw[i:i + len(arr)], gray[i:i + len(arr)] = arr, g
                bar.update(len(arr))
    return raw, gray


def channels(mode: str, gray: np.ndarray) -> int:
    return 1 if mode == "grayscale" or (mode == "auto" and bool(gray.all())) else 3


def decode_images(paths: Sequence[str | os.PathLike], *, mode: str = "rgb",
                  size: tuple[int, int] | None = None, resize: bool = False,
                  workers: int = 2) -> Tensor:
    """Decode image files into one float (N, C, H, W) tensor in [0, 1].

    ``size`` (H, W): the required size; ``None`` takes the first image's. Images of another
    size are resized (bilinear, antialiased) when ``resize`` is true, otherwise rejected.
    ``mode``: ``"rgb"`` (C=3), ``"grayscale"`` (C=1, luma), ``"auto"`` (C=1 when every image
    is stored as grayscale, else C=3 with grayscale images replicated). ``workers`` > 1
    decodes in that many processes.
    """
    raw, gray = decode_raw([str(p) for p in paths], mode, size, resize, workers)
    return to_float(raw, channels(mode, gray))


def to_float(raw: np.ndarray, channels: int, chunk: int = 4096) -> Tensor:
    """(N, H, W, 3) uint8 -> contiguous (N, C, H, W) float32 / 255, chunk by chunk so that no
    second full-size float copy exists (a permuted ``.float()`` would also be non-contiguous)."""
    n, h, w, _ = raw.shape
    out = torch.empty((n, channels, h, w), dtype=torch.float32)
    src = torch.from_numpy(raw)
    for i in range(0, n, chunk):
        out[i:i + chunk].copy_(src[i:i + chunk, :, :, :channels].permute(0, 3, 1, 2)).div_(255.0)
    return out


# ----------------------------------------------------------------------------- folder layout

def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name != "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def list_images(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(Path(d))]
        found += [os.path.join(dirpath, f) for f in filenames
                  if _visible(Path(f)) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def scan_split(split_dir: Path, classes: list[str] | None = None, image_subdir: str | None = None
                ) -> tuple[list[str], list[int], list[str]]:
    """Image paths and labels under ``split_dir/<class>/`` (recursively); classes default to
    the sorted sub-folder names. A missing or empty class folder is an error naming it."""
    if classes is None:
        classes = [p.name for p in _subdirs(split_dir)]
        if not classes:
            raise ValueError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image files>)")
    paths: list[str] = []
    labels: list[int] = []
    for k, c in enumerate(classes):
        d = split_dir / c if image_subdir is None else split_dir / c / image_subdir
        if not d.is_dir():
            raise ValueError(f"{d}: class {c!r} has no folder here")
        imgs = list_images(d)
        if not imgs:
            raise ValueError(f"{d}: class {c!r} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        paths += imgs
        labels += [k] * len(imgs)
    return paths, labels, classes


def _find_root(folder: Path) -> Path:
    # Archives often wrap everything in one top folder ("mydata/train/..."): descend through
    # single folders that hold only folders until a train/ folder or the class folders appear.
    root = folder
    while not (root / "train").is_dir():
        entries = [p for p in root.iterdir() if _visible(p)]
        if len(entries) == 1 and entries[0].is_dir() and _subdirs(entries[0]) \
                and not _list_images_shallow(entries[0]):
            root = entries[0]
        else:
            break
    return root


def _list_images_shallow(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)]


def imagefolder_layout(folder: Path) -> dict:
    """Find the splits of an ImageFolder tree: {"train": (paths, labels), "test": ... or None,
    "classes": [...]}; checks class folders and that none is empty (no decoding)."""
    root = _find_root(folder)
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = None
    if train_dir != root:
        test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    paths, labels, classes = scan_split(train_dir)
    out = {"root": root, "classes": classes, "train": (paths, labels), "test": None}
    if test_dir is not None:
        extra = sorted({p.name for p in _subdirs(test_dir)} - set(classes))
        if extra:
            raise ValueError(f"{test_dir}: class folder(s) {extra} have no counterpart in {train_dir}")
        tp, tl, _ = scan_split(test_dir, classes)
        out["test"] = (tp, tl)
    return out


def stratified_split(labels: Tensor | Sequence[int], num_classes: int, fraction: float, seed: int, *,
                     classes: Sequence[str] | None = None, where: str | os.PathLike | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Seeded, stratified (train indices, test indices), both sorted: per class in label order,
    a ``randperm`` from one generator seeded with ``seed``, the first ``round(n * fraction)``
    to test. With ``where`` set, every class must land on both sides (else a ``ValueError``
    naming ``where`` and the class)."""
    y = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for k in range(num_classes):
        idx = (y == k).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * fraction))
        if where is not None and (n_test < 1 or n_test >= len(idx)):
            name = classes[k] if classes is not None else k
            raise ValueError(f"{where}: class {name!r} has {len(idx)} image(s), too few to split with "
                             f"test_fraction={fraction} (each side needs at least one)")
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
