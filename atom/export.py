"""Distilled sets that travel: an export folder another codebase can train on, and its loader.

An export (:func:`write_export`; the pipeline's export stage writes one per set, in
``results/export/<dataset>/<method>/ipc<k>/``) holds the images a network trains on, which
are not the stored ones when the set was distilled with multi-formation (``factor`` > 1: each
stored image is a mosaic of factor x factor tiles that train as factor**2 upsampled images):

- ``images/<class>/<n>.png``: the training images in pixel space (the exact inverse of the
  preprocessing, clamped to [0, 1], 8 bits), at their native size, class by class: what
  torchvision's ``ImageFolder`` reads;
- ``set.pt``: the same images in the training space (normalised, ZCA-whitened: what the
  project's own evaluation trains on, bit for bit), float32, ordered class by class with
  ``images_per_class`` each (the layout DD-Ranking's hard-label metric takes), the hard labels,
  the class names, the fitted preprocessing (``atom.preprocess`` state: mean, std, ZCA
  transform and inverse) and the manifest; safetensors, checksummed (:mod:`atom.io`);
- ``manifest.json``: what the set is (dataset, method, IPC, factor, images per class, shape,
  classes, protocol, distillation seed, the iteration kept) and the preprocessing to re-apply
  to other images (``normalize``, ``mean``, ``std``, ``zca``, ``zca_eps``; the ZCA transform
  itself is in ``set.pt``, and ``source`` names the file it came from);
- ``stored/<class>/<n>.png`` (only with ``factor`` > 1): the stored mosaics, for looking at;
  a network does not train on them.

:func:`load_set` reads any of these (the folder, the manifest, ``set.pt`` or ``images/``) and
returns a :class:`DistilledSet` in the training space; an export whose manifest is missing or
disagrees with its files is refused with one line naming the file. Example::

    s = atom.load_set("results/export/cifar10/atom/ipc10")
    s.images, s.labels, s.classes      # (400, 3, 32, 32) training space, class by class
    x = s.prepare(test_pixels)         # your images in [0, 1] -> the same training space
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .formation import decode
from .io import UnreadableFileError, atomic_dir, load_tensors, save_tensors, write_json
from .preprocess import apply, inverse

__all__ = ["FORMAT", "DistilledSet", "write_export", "load_set"]

FORMAT = "atom-set/1"
MANIFEST = "manifest.json"
TENSOR = "set.pt"
IMAGES = "images"
STORED = "stored"
# what set.pt holds (atom.io.check_fields) and what the manifest must say
SET_FIELDS = {"images": "float[4]", "labels": "int[1]", "classes": "list", "preprocess": "dict|none",
              "manifest": "dict"}
MANIFEST_FIELDS = ("format", "dataset", "method", "ipc", "factor", "images_per_class", "count", "shape", "classes",
                   "preprocess", "files")


@dataclass
class DistilledSet:
    """A distilled set as a network trains on it: ``images`` (N, C, H, W) in the training space
    (normalised and whitened as the set was learned), class by class; ``labels`` (N,) hard
    labels; ``classes`` the class names; ``preprocess`` the fitted preprocessing (an
    :mod:`atom.preprocess` state, None when there was none); ``manifest`` what the set is."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    preprocess: dict | None
    manifest: dict = field(default_factory=dict)
    source: Path | None = None

    def pixels(self) -> Tensor:
        """The images in pixel space: the exact inverse of the preprocessing, not clamped."""
        return self.images.clone() if self.preprocess is None else inverse(self.images, self.preprocess)

    def prepare(self, pixels: Tensor) -> Tensor:
        """Other images (N, C, H, W) in [0, 1] (your test set, say) -> the set's training space,
        by the same preprocessing (fitted on the training images it was distilled from)."""
        return pixels.float().clone() if self.preprocess is None else apply(pixels, self.preprocess)

    def __iter__(self):  # `x, y = atom.load_set(...)`
        yield self.images
        yield self.labels

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _preprocess_summary(state: dict | None, source: str | None) -> dict:
    if state is None:
        return {"normalize": False, "zca": False, "state": None, "source": source}
    return {"normalize": bool(state.get("normalize", False)), "mean": [float(v) for v in state["mean"]],
            "std": [float(v) for v in state["std"]], "zca": bool(state.get("zca", False)),
            "zca_eps": float(state.get("zca_eps", 0.0)), "state": f"{TENSOR} (key 'preprocess')", "source": source}


def write_export(record: dict, state: dict | None, out_dir: str | os.PathLike, *, dataset: str,
                 protocol: str | None = None, seed: int | None = None, source: str | None = None) -> Path:
    """Write the export of a distilled set (a distill record: ``images`` as stored, ``labels``,
    ``classes``, ``method``, ``ipc``, ``config`` with its ``factor``, ``iteration``) into
    ``out_dir``, atomically (built beside it, then renamed over it). ``state``: the preprocessing
    the set was learned in; ``source``: where that state came from (named in the manifest)."""
    from .viz import export_imagefolder

    stored, stored_labels = record["images"].detach().cpu().float(), record["labels"].detach().cpu().long()
    config = record.get("config") or {}
    factor = int(config.get("factor", 1))
    images, labels = decode(stored, stored_labels, factor)  # what a network trains on
    order = torch.argsort(labels, stable=True)  # class by class (decode keeps it; made sure of)
    images, labels = images[order].contiguous(), labels[order].contiguous()
    classes = [str(c) for c in record["classes"]]
    counts = torch.bincount(labels, minlength=len(classes))
    if int(counts.min()) != int(counts.max()):
        raise ValueError(f"record: the classes hold different numbers of images ({counts.tolist()})")
    manifest = {
        "format": FORMAT, "dataset": dataset, "method": record["method"], "ipc": int(record["ipc"]), "factor": factor,
        "images_per_class": int(counts[0]), "count": int(images.shape[0]), "shape": list(images.shape[1:]),
        "classes": classes, "labels": "hard, one class index per image, classes in this order",
        "order": "class by class, images_per_class images each",
        "space": {TENSOR: "training space: the preprocessing below applied (what a network trained on)",
                  IMAGES: "pixels in [0, 1] through the exact inverse preprocessing, clamped, 8-bit PNG"},
        "protocol": protocol, "seed": seed, "iteration": record.get("iteration"),
        "iterations": config.get("iterations"), "preprocess": _preprocess_summary(state, source),
        "files": {"tensor": TENSOR, "images": IMAGES, "stored": STORED if factor > 1 else None},
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_tensors({"images": images, "labels": labels, "classes": classes, "preprocess": state,
                      "manifest": manifest}, tmp / TENSOR, kind="set")
        export_imagefolder(images, labels, state, tmp / IMAGES, classes=classes)
        if factor > 1:
            export_imagefolder(stored, stored_labels, state, tmp / STORED, classes=classes)
        write_json(manifest, tmp / MANIFEST)
    return out_dir


# ------------------------------------------------------------------------------------ loading

def _folder_of(path: Path) -> tuple[Path, str]:
    """(the export folder, which file the user named)."""
    if path.is_dir():
        if (path / MANIFEST).is_file() or not (path.parent / MANIFEST).is_file():
            return path, "folder"
        return path.parent, IMAGES  # the images/ folder inside an export
    if path.name == MANIFEST:
        return path.parent, "manifest"
    return path.parent, TENSOR


def _manifest(folder: Path, named: Path) -> dict:
    file = folder / MANIFEST
    if not file.is_file():
        raise UnreadableFileError(named, f"no {MANIFEST} beside it: not a set exported by this project "
                                         "(python -m stages.export writes one)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UnreadableFileError(file, f"not a set manifest: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UnreadableFileError(file, f"not a set manifest of format {FORMAT!r} (found {found!r})")
    missing = [k for k in MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise UnreadableFileError(file, f"not a usable set manifest: it lacks {', '.join(map(repr, missing))}")
    return manifest


def _agree(manifest: dict, file: Path, images: Tensor, labels: Tensor, classes: list[str], what: Path) -> None:
    """Refuse (one line naming the manifest) an export whose manifest disagrees with a file of it."""
    said = (manifest["count"], list(manifest["shape"]), list(manifest["classes"]))
    holds = (int(images.shape[0]), list(images.shape[1:]), list(classes))
    if said != holds:
        raise UnreadableFileError(file, f"disagrees with {what.name}: it says {said[0]} images of shape "
                                        f"{said[1]} in classes {said[2]}, {what.name} holds {holds[0]} of "
                                        f"{holds[1]} in {holds[2]}")
    per = manifest["images_per_class"]
    if labels.numel() and (torch.bincount(labels, minlength=len(classes)) != per).any():
        raise UnreadableFileError(file, f"disagrees with {what.name}: it says {per} images per class")
    if per != manifest["ipc"] * manifest["factor"] ** 2:
        raise UnreadableFileError(file, f"inconsistent: {per} images per class, but ipc {manifest['ipc']} x "
                                        f"factor**2 {manifest['factor'] ** 2}")


def _from_tensor(folder: Path, manifest: dict) -> DistilledSet:
    file = folder / manifest["files"]["tensor"]
    rec = load_tensors(file, kind="set", fields=SET_FIELDS)
    _agree(manifest, folder / MANIFEST, rec["images"], rec["labels"], rec["classes"], file)
    inner = {k: rec["manifest"].get(k) for k in ("dataset", "method", "ipc", "factor", "count")}
    outer = {k: manifest.get(k) for k in inner}
    if inner != outer:
        raise UnreadableFileError(folder / MANIFEST, f"disagrees with {file.name}, written with it: {outer} vs {inner}")
    return DistilledSet(rec["images"], rec["labels"].long(), list(rec["classes"]), rec["preprocess"], manifest, file)


def _from_pngs(folder: Path, manifest: dict) -> DistilledSet:
    """The PNGs, in the manifest's class order, mapped to the training space by the
    preprocessing in set.pt (8-bit pixels: within quantisation of the tensor export)."""
    import numpy as np
    from PIL import Image

    from .viz import safe_name

    images_dir = folder / manifest["files"]["images"]
    c, h, w = manifest["shape"]
    xs, ys = [], []
    for k, name in enumerate(manifest["classes"]):
        sub = images_dir / safe_name(name)
        files = sorted(sub.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem) \
            if sub.is_dir() else []
        if len(files) != manifest["images_per_class"]:
            raise UnreadableFileError(sub, f"holds {len(files)} PNG files; {MANIFEST} says "
                                           f"{manifest['images_per_class']} per class")
        for f in files:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L" if c == 1 else "RGB"), dtype=np.float32) / 255.0
            if arr.shape[:2] != (h, w):
                raise UnreadableFileError(f, f"is {arr.shape[1]}x{arr.shape[0]}; {MANIFEST} says {w}x{h}")
            xs.append(torch.from_numpy(arr.reshape(h, w, c)).permute(2, 0, 1))
            ys.append(k)
    pixels = torch.stack(xs) if xs else torch.zeros(0, c, h, w)
    labels = torch.tensor(ys, dtype=torch.long)
    state = None
    if manifest["preprocess"].get("normalize") or manifest["preprocess"].get("zca"):
        tensor = folder / manifest["files"]["tensor"]
        if not tensor.is_file():
            raise UnreadableFileError(images_dir, f"needs {tensor.name} beside it (the fitted preprocessing) to "
                                                  "map its pixels to the training space")
        state = load_tensors(tensor, kind="set", fields=SET_FIELDS)["preprocess"]
    _agree(manifest, folder / MANIFEST, pixels, labels, manifest["classes"], images_dir)
    images = pixels if state is None else apply(pixels, state)
    return DistilledSet(images, labels, list(manifest["classes"]), state, manifest, images_dir)


def load_set(path: str | os.PathLike) -> DistilledSet:
    """A distilled set exported by :func:`write_export`, from its folder, its ``manifest.json``
    or ``set.pt`` (the training-space tensors, bit for bit), or its ``images/`` folder (the
    PNGs, mapped to the training space by the export's preprocessing: within 8-bit
    quantisation). Raises :class:`atom.io.UnreadableFileError` (one line naming the file) for
    an export whose manifest is missing or disagrees with its files, and ``FileNotFoundError``
    for a path that does not exist."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    folder, named = _folder_of(path)
    manifest = _manifest(folder, path)
    if named == IMAGES:
        return _from_pngs(folder, manifest)
    return _from_tensor(folder, manifest)

