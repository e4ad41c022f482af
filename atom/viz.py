"""Pictures of synthetic sets and curves of runs.

Images always go back through the *exact* inverse of the preprocessing they were learned in
(``atom.preprocess.inverse``: un-whiten, then un-normalise), are clamped to [0, 1] and only
then quantised to 8 bits::

    from atom import viz
    viz.save_grid(res.images, res.labels, state, "grid.png", classes=d.classes)  # a row per class
    viz.plot_class_grid(images, labels, state, "grid.png", classes=d.classes,  # labelled, real beside
                        real=(d.train_images, d.train_labels), title="ATOM, IPC 10")
    viz.export_imagefolder(res.images, res.labels, state, "out/", classes=d.classes)  # <class>/<n>.png
    viz.plot_loss(res.losses, "loss.png")
    viz.plot_accuracy(rows, "accuracy.png")   # rows: method, ipc, mean, std

Every file is written atomically (``atom.io``); matplotlib runs on its non-interactive backend.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .io import atomic_dir, atomic_path
from .preprocess import inverse

__all__ = ["to_pixels", "class_grid", "save_grid", "plot_class_grid", "first_per_class", "export_imagefolder", "plot_loss", "plot_accuracy",
           "plot_proxy_scatter", "safe_name"]


def to_pixels(images: Tensor, state: dict | None) -> Tensor:
    """Preprocessed images -> floats in [0, 1] through the exact inverse preprocessing."""
    x = images.detach().cpu().float()
    if state is not None:
        x = inverse(x, state)
    return x.clamp(0.0, 1.0)


def _check(images: Tensor, labels: Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels: expected {images.shape[0]} class indices, got shape {tuple(labels.shape)}")


def class_grid(images: Tensor, labels: Tensor, state: dict | None = None, *, num_classes: int | None = None,
               max_per_class: int = 10, padding: int = 1) -> Tensor:
    """A (C, H', W') grid in [0, 1] with one row per class and up to ``max_per_class`` columns;
    missing cells stay white."""
    _check(images, labels)
    if max_per_class < 1:
        raise ValueError(f"max_per_class: must be >= 1, got {max_per_class}")
    x = to_pixels(images, state)
    labels = labels.cpu().long()
    k = num_classes if num_classes is not None else int(labels.max()) + 1
    c, h, w = x.shape[1:]
    cols = min(max_per_class, max(int((labels == i).sum()) for i in range(k)) or 1)
    grid = torch.ones(c, k * (h + padding) + padding, cols * (w + padding) + padding)
    for row in range(k):
        for col, idx in enumerate((labels == row).nonzero().squeeze(1)[:cols].tolist()):
            y0, x0 = padding + row * (h + padding), padding + col * (w + padding)
            grid[:, y0:y0 + h, x0:x0 + w] = x[idx]
    return grid


def _to_pil(img: Tensor, scale: int = 1):
    from PIL import Image

    arr = (img * 255.0).round().clamp(0, 255).to(torch.uint8)
    if scale > 1:
        arr = arr.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = arr.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode="L")
    return Image.fromarray(arr, mode="RGB")


def save_grid(images: Tensor, labels: Tensor, state: dict | None, path: str | os.PathLike, *,
              num_classes: int | None = None, max_per_class: int = 10, scale: int = 4) -> Path:
    """Write :func:`class_grid` as a PNG, upscaled ``scale`` times (nearest neighbour)."""
    if scale < 1:
        raise ValueError(f"scale: must be >= 1, got {scale}")
    grid = class_grid(images, labels, state, num_classes=num_classes, max_per_class=max_per_class)
    with atomic_path(path) as tmp:
        _to_pil(grid, scale).save(tmp, format="PNG")
    return Path(path)


def first_per_class(labels: Tensor, num_classes: int, n: int) -> Tensor:
    """Indices of the first ``n`` images of every class, class by class (a fixed, seed-free
    choice: the same data always shows the same real images)."""
    labels = labels.cpu().long()
    return torch.cat([(labels == c).nonzero().squeeze(1)[:n] for c in range(num_classes)])


def plot_class_grid(images: Tensor, labels: Tensor, state: dict | None, path: str | os.PathLike, *,
                    classes: Sequence[str] | None = None, real: tuple[Tensor, Tensor] | None = None,
                    max_per_class: int = 10, title: str = "", subtitle: str = "", min_cell: int = 48,
                    dpi: int = 120) -> Path:
    """A labelled picture of a set: one row per class, named at its left; with ``real``
    (images, labels in the same preprocessing) as many real images of each class on the left
    as distilled ones shown on the right, so the two read side by side. Images are upscaled
    (nearest neighbour) to at least ``min_cell`` pixels, so an 8x8 digit stays legible.
    ``images`` are what a network trains on: pass decoded multi-formation tiles
    (:func:`atom.formation.training_set`), not the stored mosaics."""
    _check(images, labels)
    if max_per_class < 1:
        raise ValueError(f"max_per_class: must be >= 1, got {max_per_class}")
    if min_cell < 1:
        raise ValueError(f"min_cell: must be >= 1, got {min_cell}")
    x, labels = to_pixels(images, state), labels.cpu().long()
    k = len(classes) if classes is not None else int(labels.max()) + 1
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    c, h, w = x.shape[1:]
    cols = min(max_per_class, max(int((labels == i).sum()) for i in range(k)) or 1)
    blocks = [("distilled", x, labels)]
    if real is not None:
        ri, rl = real
        _check(ri, rl)
        if tuple(ri.shape[1:]) != (c, h, w):
            raise ValueError(f"real: images of shape {tuple(ri.shape[1:])}, the set's are {(c, h, w)}")
        pick = first_per_class(rl, k, cols)
        blocks.insert(0, ("real", to_pixels(ri[pick], state), rl.cpu().long()[pick]))
    scale = max(1, -(-min_cell // h))
    pad, gap = max(1, h // 16), max(4, h // 2)
    grid_w = cols * (w + pad) + pad
    # a block is at least an inch wide, so its heading fits above a single column (IPC 1)
    block_w = max(grid_w, -(-dpi // scale))
    width = len(blocks) * block_w + (len(blocks) - 1) * gap
    height = k * (h + pad) + pad
    canvas = torch.ones(c, height, width)
    for b, (_, xb, lb) in enumerate(blocks):
        x0b = b * (block_w + gap) + (block_w - grid_w) // 2
        for row in range(k):
            for col, idx in enumerate((lb == row).nonzero().squeeze(1)[:cols].tolist()):
                y0, x0 = pad + row * (h + pad), x0b + pad + col * (w + pad)
                canvas[:, y0:y0 + h, x0:x0 + w] = xb[idx]
    plt = _figure()
    img_w, img_h = width * scale / dpi, height * scale / dpi
    label_in = 0.09 * max(len(n) for n in names) + 0.2
    head_in = 0.3 + 0.22 * bool(title) + 0.2 * bool(subtitle)
    fig_w = max(img_w + label_in + 0.15, 3.6 if subtitle or title else 0.0)
    fig_h = img_h + head_in + 0.05
    fig = plt.figure(figsize=(fig_w, fig_h))
    left = label_in + (fig_w - img_w - label_in - 0.15) / 2
    ax = fig.add_axes((left / fig_w, 0.05 / fig_h, img_w / fig_w, img_h / fig_h))
    arr = canvas.permute(1, 2, 0).numpy()
    if c == 1:
        ax.imshow(arr[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_axis_off()
    for row, name in enumerate(names):
        ax.text(-pad, pad + row * (h + pad) + h / 2, name, ha="right", va="center", fontsize=9)
    for b, (head, _, _) in enumerate(blocks):
        ax.text(b * (block_w + gap) + block_w / 2, -pad, head, ha="center", va="bottom", fontsize=9)
    if title:
        fig.text(0.5, 1 - 0.06 / fig_h, title, ha="center", va="top", fontsize=11)
    if subtitle:
        fig.text(0.5, 1 - (0.08 + 0.22 * bool(title)) / fig_h, subtitle, ha="center", va="top", fontsize=8,
                 color="0.3")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)


def safe_name(name: str) -> str:
    """A class name usable as a folder name on any filesystem."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return s or "class"


def export_imagefolder(images: Tensor, labels: Tensor, state: dict | None, out_dir: str | os.PathLike, *,
                       classes: Sequence[str] | None = None, scale: int = 1) -> Path:
    """Write every image as ``<out_dir>/<class>/<n>.png`` (n counts from 0 within a class), the
    layout torchvision's ``ImageFolder`` reads. The folder is built beside ``out_dir`` and
    renamed over it at the end, so a reader never sees half an export."""
    _check(images, labels)
    out_dir = Path(out_dir)
    labels = labels.cpu().long()
    k = int(labels.max()) + 1
    names = [safe_name(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    if len(names) < k:
        raise ValueError(f"classes: {len(names)} names for {k} classes")
    if len(set(names)) != len(names):
        raise ValueError("classes: two class names map to the same folder name")
    x = to_pixels(images, state)
    with atomic_dir(out_dir) as tmp:
        counts = [0] * k
        for img, y in zip(x, labels.tolist()):
            folder = tmp / names[y]
            folder.mkdir(exist_ok=True)
            _to_pil(img, scale).save(folder / f"{counts[y]}.png", format="PNG")
            counts[y] += 1
    return out_dir


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_loss(losses: Sequence[float], path: str | os.PathLike, *, steps: Sequence[int] | None = None,
              title: str = "distillation loss", dpi: int = 120,
              validation: Sequence[tuple[int, float]] = (), chosen: int | None = None) -> Path:
    """Loss against iteration, on a log scale when every value is positive; with
    ``validation`` [(iteration, accuracy %)], the validation curve on a second axis and the
    ``chosen`` iteration marked."""
    if len(losses) == 0:
        raise ValueError("losses: empty loss curve")
    plt = _figure()
    steps = list(steps) if steps is not None else list(range(1, len(losses) + 1))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, list(losses), lw=1)
    if min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if validation:
        its, accs = zip(*validation)
        ax2 = ax.twinx()
        ax2.plot(its, accs, "o-", color="tab:orange", ms=3, lw=1, label="validation accuracy")
        ax2.set_ylabel("validation accuracy (%)", color="tab:orange")
        if chosen is not None:
            ax2.axvline(chosen, color="tab:orange", ls=":", lw=1)
            ax2.annotate(f"kept: {chosen}", (chosen, max(accs)), fontsize=7, color="tab:orange",
                         textcoords="offset points", xytext=(3, -10))
    return _save(plt, fig, path, dpi)


def _save(plt, fig, path: str | os.PathLike, dpi: int) -> Path:
    """Lay out, write atomically as PNG, close."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)


def plot_accuracy(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "test accuracy",
                  dpi: int = 120) -> Path:
    """Accuracy (mean +- std) against IPC, one line per method; rows with ``ipc`` None (the
    whole-training-set baseline) are drawn as a horizontal line."""
    if not rows:
        raise ValueError("rows: nothing to plot")
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        pts = sorted((r["ipc"], r["mean"], r["std"]) for r in rows if r["method"] == m and r["ipc"] is not None)
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m,
                        ls="--" if m == "random" else "-")
        for r in rows:
            if r["method"] == m and r["ipc"] is None:
                ax.axhline(r["mean"], color="gray", ls=":", label=f"{m} ({r['mean']:.1f})")
    ax.set_xscale("log")
    ipcs = sorted({r["ipc"] for r in rows if r["ipc"] is not None})
    if ipcs:
        ax.set_xticks(ipcs)
        ax.set_xticklabels([str(i) for i in ipcs])
    ax.set_xlabel("images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path, dpi)


def plot_proxy_scatter(points: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                       title: str = "NAS proxy", dpi: int = 120) -> Path:
    """One panel per proxy: each candidate's accuracy after training on the proxy (x) against
    after training on the whole set (y); ``points`` maps a label (with its correlations) to
    (proxy accuracies, whole-data accuracies)."""
    if not points:
        raise ValueError("points: nothing to plot")
    plt = _figure()
    n = len(points)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (label, (xs, ys)) in zip(axes.flat, points.items()):
        ax.scatter(list(xs), list(ys), s=12, alpha=0.7)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("proxy accuracy (%)", fontsize=8)
        ax.set_ylabel("whole-data accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path, dpi)
