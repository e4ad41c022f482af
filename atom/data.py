"""Datasets: the embedded digits set and the registry of downloadable datasets.

Every loader returns an :class:`ImageDataset`: float tensors in [0, 1] of shape
(N, C, H, W), integer labels ``0..K-1`` and the class names. The registry has two steps per
dataset, both taking the dataset group's ``options`` (the same dict for both; each step
ignores the keys that belong to the other, an unknown key is a ``ValueError``)::

    from atom import data
    data.download("imagefolder", "data/raw/mine", source="mine.tar.xz")   # fetch / extract
    d = data.load("imagefolder", "data/raw/mine", mode="rgb")            # decode

Registered datasets (options and defaults in :data:`OPTIONS`):

- ``digits``: scikit-learn's bundled UCI digits (1,797 real 8x8 grayscale images), no network.
- ``cifar10``, ``cifar100``: torchvision's ``CIFAR10``/``CIFAR100`` file layout and md5
  checksums. ``download`` touches no network when ``raw_dir`` already holds the intact
  ``cifar-10-batches-py`` folder or the official archive, or when ``source`` names a local
  copy of the archive; the archive's md5 is checked before it is extracted (safely).
- ``tinyimagenet``: the official ``tiny-imagenet-200.zip`` (md5-checked, downloaded with
  torchvision's ``download_url`` or given as ``source``), extracted with the validation images
  regrouped into class folders by ``val/val_annotations.txt``; 64x64 RGB, 200 classes in
  ``wnids.txt`` order; the validation set is the test set.
- ``imagefolder``: a user's dataset as a folder or ``.tar.gz``/``.tar.xz``/``.zip`` archive
  in ImageFolder layout, ``train/<class>/*`` + ``test/<class>/*`` (or ``val/``), or one
  ``<class>/*`` tree split by a seeded, stratified ``test_fraction``. Any format Pillow
  reads; sizes must agree unless ``resize`` is set; ``mode`` picks RGB, grayscale or
  ``auto`` (grayscale only when every image is grayscale). ``download`` copies or safely
  extracts the source into ``raw_dir/images`` (atomically; see :mod:`atom.archive`).

Image decoding, folder scanning and the stratified split live in :mod:`atom.imaging`. Every
bad input is a ``ValueError`` naming the file and the problem.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .archive import check_member_name, is_archive, safe_copytree, safe_extract
from .catalog import FACTS
from .imaging import (IMAGE_EXTENSIONS, MODES, channels, decode_images, decode_raw, imagefolder_layout,
                      list_images, scan_split, stratified_split, to_float)
from .io import digest

__all__ = ["ImageDataset", "load_digits", "DATASETS", "OPTIONS", "register", "download", "load",
           "decode_images", "IMAGE_EXTENSIONS", "TINYIMAGENET_URL", "TINYIMAGENET_MD5"]


@dataclass
class ImageDataset:
    """A labelled image set with a fixed train/test split."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, classes={self.num_classes})")


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's digits as (N, 1, 8, 8) floats in [0, 1]; a stratified split fixed by ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: must lie in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = stratified_split(y, 10, test_fraction, seed)
    return ImageDataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx],
                        [str(k) for k in range(10)])


@dataclass
class DatasetSpec:
    """How to fetch a dataset into ``raw_dir`` and how to load it from there."""

    download: Callable[..., Path]
    load: Callable[..., ImageDataset]
    description: str = ""
    options: dict[str, Any] | None = None  # accepted option keys and their defaults; None: any


# Accepted ``options`` per dataset and their defaults (params.yaml ``datasets.<name>.options``).
OPTIONS: dict[str, dict[str, Any]] = {}


DATASETS: dict[str, DatasetSpec] = {}


def register(name: str, spec: DatasetSpec) -> None:
    DATASETS[name] = spec
    if spec.options is not None:
        OPTIONS[name] = dict(spec.options)


def _check_name(name: str, options: dict) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {name!r}; available: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if spec.options is not None:
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            raise ValueError(f"options: unknown key(s) {unknown} for dataset {name!r}; "
                             f"accepted: {sorted(spec.options)}")
    return spec


def download(name: str, raw_dir: str | Path, *, check_counts: Callable[[dict[str, int]], None] | None = None,
             **options) -> Path:
    """Fetch ``name`` into ``raw_dir`` (no network when its files are already there).

    ``check_counts`` (imagefolder): called with ``{class: training images}`` (after the test
    split that loading makes) once the files are listed and before they are kept; an exception
    it raises leaves ``raw_dir`` as it was. The other datasets have fixed sizes, and ignore it."""
    spec = _check_name(name, options)
    if check_counts is not None and name == "imagefolder":
        return spec.download(Path(raw_dir), check_counts=check_counts, **options)
    return spec.download(Path(raw_dir), **options)


def load(name: str, raw_dir: str | Path, **options) -> ImageDataset:
    """Decode ``name`` from ``raw_dir`` into an :class:`ImageDataset`."""
    return _check_name(name, options).load(Path(raw_dir), **options)


def _digits_download(raw_dir: Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    # scikit-learn ships the data; "downloading" exports the split tensors so that the DAG is
    # the same for every dataset and DVC can track the raw folder.
    from .io import save_tensors

    d = load_digits(test_fraction=test_fraction, seed=seed)
    out = raw_dir / "digits.pt"
    save_tensors({"train_images": d.train_images, "train_labels": d.train_labels,
                  "test_images": d.test_images, "test_labels": d.test_labels,
                  "classes": d.classes}, out, kind="digits")
    return out


def _digits_load(raw_dir: Path, **_ignored) -> ImageDataset:
    from .io import load_tensors

    t = load_tensors(raw_dir / "digits.pt", kind="digits",
                     fields={"train_images": "float[4]", "train_labels": "int[1]", "test_images": "float[4]",
                             "test_labels": "int[1]", "classes": "list"})
    return ImageDataset("digits", t["train_images"], t["train_labels"], t["test_images"],
                        t["test_labels"], list(t["classes"]))


register("digits", DatasetSpec(_digits_download, _digits_load,
                               "scikit-learn's bundled UCI digits, 1,797 8x8 grayscale images",
                               {"test_fraction": 0.2, "seed": 0}))


def _check_md5(path: Path, expected: str, what: str) -> None:
    got = digest(path, "md5")
    if got != expected:
        raise ValueError(f"{path}: md5 checksum mismatch for {what}: expected {expected}, got {got} "
                         "(a truncated or different file; delete it or point options.source at a good copy)")


def _download_to(url: str, raw_dir: Path, filename: str, md5: str) -> Path:
    """torchvision's ``download_url`` into a temp folder, renamed into ``raw_dir`` only once
    its md5 matched, so an interrupted download leaves no partial file behind."""
    from torchvision.datasets.utils import download_url

    raw_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=raw_dir))
    try:
        try:
            download_url(url, str(tmp), filename, md5)
        except Exception as exc:
            raise RuntimeError(f"{url}: download failed ({type(exc).__name__}: {exc}); without network, copy "
                               f"{filename} (md5 {md5}) into {raw_dir} or set options.source to it") from exc
        os.replace(tmp / filename, raw_dir / filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return raw_dir / filename


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's file layout and checksums)
# ---------------------------------------------------------------------------------------------

def _cifar_class(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def _cifar_intact(cls, raw_dir: Path) -> bool:
    # The same md5 list torchvision's CIFAR10._check_integrity walks, plus the meta file.
    from torchvision.datasets.utils import check_integrity

    files = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    return all(check_integrity(str(raw_dir / cls.base_folder / f), md5) for f, md5 in files)


def _cifar_download(raw_dir: Path, *, name: str, source: str | None = None) -> Path:
    cls = _cifar_class(name)
    raw_dir.mkdir(parents=True, exist_ok=True)
    folder = raw_dir / cls.base_folder
    if source is None and _cifar_intact(cls, raw_dir):
        return folder  # already extracted and verified: no network
    if source is not None:
        archive = Path(source)
        if not archive.is_file():
            raise FileNotFoundError(f"{archive}: options.source not found (expected {cls.filename})")
    else:
        archive = raw_dir / cls.filename
        if not archive.is_file():
            archive = _download_to(cls.url, raw_dir, cls.filename, cls.tgz_md5)
    _check_md5(archive, cls.tgz_md5, f"the official {cls.filename}")
    safe_extract(archive, folder, root=cls.base_folder)
    if not _cifar_intact(cls, raw_dir):
        raise ValueError(f"{archive}: extracted files in {folder} fail torchvision's md5 checks")
    return folder


def _cifar_load(raw_dir: Path, *, name: str, source: str | None = None) -> ImageDataset:
    cls = _cifar_class(name)
    if not _cifar_intact(cls, raw_dir):
        raise ValueError(f"{raw_dir / cls.base_folder}: missing or corrupt (fails torchvision's md5 checks); "
                         f"run download for {name!r} first")
    # The batches are pickles; they are only read after their md5 matched the official files.
    parts = {}
    for split in ("train", "test"):
        ds = cls(str(raw_dir), train=split == "train", download=False)
        parts[split] = (to_float(np.ascontiguousarray(ds.data), 3), torch.tensor(ds.targets, dtype=torch.long))
        classes = list(ds.classes)
    return ImageDataset(name, *parts["train"], *parts["test"], classes)


for _name, _desc in (("cifar10", FACTS["cifar10"].describe("CIFAR-10") + " (torchvision files)"),
                     ("cifar100", FACTS["cifar100"].describe("CIFAR-100") + " (torchvision files)")):
    register(_name, DatasetSpec(
        lambda raw_dir, _n=_name, **o: _cifar_download(raw_dir, name=_n, **o),
        lambda raw_dir, _n=_name, **o: _cifar_load(raw_dir, name=_n, **o),
        _desc, {"source": None}))


# ---------------------------------------------------------------------------------------------
# TinyImageNet
# ---------------------------------------------------------------------------------------------

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
_TINY_DIR = "tiny-imagenet-200"


def _read_wnids(root: Path) -> list[str]:
    f = root / "wnids.txt"
    if not f.is_file():
        raise ValueError(f"{f}: missing (not a TinyImageNet folder)")
    wnids = [line.strip() for line in f.read_text().splitlines() if line.strip()]
    if not wnids:
        raise ValueError(f"{f}: lists no classes")
    for w in wnids:
        if "/" in w or "\\" in w or w in (".", ".."):
            raise ValueError(f"{f}: {w!r} is not a valid class id")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{f}: repeats a class id")
    return wnids


def _tiny_regroup(root: Path) -> None:
    """Move val/images/<file> to val/<wnid>/<file> as listed in val/val_annotations.txt."""
    wnids = set(_read_wnids(root))
    val = root / "val"
    ann = val / "val_annotations.txt"
    if not ann.is_file():
        raise ValueError(f"{ann}: missing (cannot group the validation images by class)")
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{ann}: line {n}: expected '<file>\\t<wnid>\\t...', got {line!r}")
        fname, wnid = fields[0].strip(), fields[1].strip()
        check_member_name(ann, fname)
        if "/" in fname or wnid not in wnids:
            raise ValueError(f"{ann}: line {n}: bad entry {fname!r} -> {wnid!r} (class not in wnids.txt?)")
        src = val / "images" / fname
        if not src.is_file():
            raise ValueError(f"{ann}: line {n}: {src} not found")
        (val / wnid).mkdir(exist_ok=True)
        os.replace(src, val / wnid / fname)
    left = list_images(val / "images") if (val / "images").is_dir() else []
    if left:
        raise ValueError(f"{val / 'images'}: {len(left)} image(s) have no line in {ann}, e.g. {left[0]}")
    if (val / "images").is_dir():
        shutil.rmtree(val / "images")


def _tiny_download(raw_dir: Path, *, source: str | None = None, workers: int = 2) -> Path:
    folder = raw_dir / _TINY_DIR
    # The folder only ever appears by an atomic rename after regrouping, so its presence
    # (without val/images) means it is complete.
    if source is None and (folder / "wnids.txt").is_file() and not (folder / "val" / "images").exists():
        return folder
    if source is not None:
        archive = Path(source)
        if not archive.is_file():
            raise FileNotFoundError(f"{archive}: options.source not found (expected tiny-imagenet-200.zip)")
    else:
        archive = raw_dir / "tiny-imagenet-200.zip"
        if not archive.is_file():
            archive = _download_to(TINYIMAGENET_URL, raw_dir, archive.name, TINYIMAGENET_MD5)
    _check_md5(archive, TINYIMAGENET_MD5, "the official tiny-imagenet-200.zip")
    return safe_extract(archive, folder, root=_TINY_DIR, prepare=_tiny_regroup)


def _tiny_load(raw_dir: Path, *, source: str | None = None, workers: int = 2) -> ImageDataset:
    root = raw_dir / _TINY_DIR
    if not root.is_dir():
        raise ValueError(f"{root}: not found; run download for 'tinyimagenet' first")
    if (root / "val" / "images").exists():
        raise ValueError(f"{root / 'val' / 'images'}: validation images are not grouped by class; "
                         "delete the folder and run download again")
    wnids = _read_wnids(root)
    tr_paths, tr_labels, _ = scan_split(root / "train", wnids, image_subdir="images")
    te_paths, te_labels, _ = scan_split(root / "val", wnids)
    opts = dict(mode="rgb", size=(64, 64), resize=False, workers=workers)
    return ImageDataset("tinyimagenet", decode_images(tr_paths, **opts), torch.tensor(tr_labels),
                        decode_images(te_paths, **opts), torch.tensor(te_labels), wnids)


register("tinyimagenet", DatasetSpec(_tiny_download, _tiny_load,
                                     FACTS["tinyimagenet"].describe("TinyImageNet"),
                                     {"source": None, "workers": 2}))


# ---------------------------------------------------------------------------------------------
# ImageFolder: a user's folder or archive
# ---------------------------------------------------------------------------------------------

_IMAGEFOLDER_OPTIONS = {"source": None, "sha256": None, "mode": "auto", "resize": None,
                        "test_fraction": 0.2, "seed": 0, "workers": 2}


def _train_counts(lay: dict, test_fraction: float) -> dict[str, int]:
    """{class: training images} of an :func:`imagefolder_layout`, after the split that
    :func:`_imagefolder_load` makes of a single tree (``round(n * test_fraction)`` to test)."""
    counts = [0] * len(lay["classes"])
    for k in lay["train"][1]:
        counts[k] += 1
    if lay["test"] is None:
        counts = [n - int(round(n * float(test_fraction))) for n in counts]
    return dict(zip(lay["classes"], counts))


def _imagefolder_download(raw_dir: Path, *, source: str | None = None, sha256: str | None = None,
                          check_counts: Callable[[dict[str, int]], None] | None = None, **load_options) -> Path:
    if source is None:
        raise ValueError("options.source: required for 'imagefolder' (a folder or a .tar.gz/.tar.xz/.zip "
                         "archive in ImageFolder layout)")
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src}: options.source not found")
    dest = raw_dir / "images"
    fraction = load_options.get("test_fraction", _IMAGEFOLDER_OPTIONS["test_fraction"])

    def validate(folder: Path) -> None:  # runs before the final rename: a bad tree never lands
        lay = imagefolder_layout(folder)
        if check_counts is not None:
            check_counts(_train_counts(lay, fraction))

    if src.is_dir():
        if sha256 is not None:
            raise ValueError(f"options.sha256: applies to an archive, but {src} is a folder")
        validate(src)  # a folder is read where it is: a bad one is refused before anything is copied
        return safe_copytree(src, dest, prepare=imagefolder_layout)
    if not is_archive(src):
        raise ValueError(f"{src}: options.source must be a folder or a .tar.gz/.tar.xz/.zip archive")
    if sha256 is not None:
        got = digest(src, "sha256")
        if got != str(sha256).lower():
            raise ValueError(f"{src}: sha256 checksum mismatch: expected {sha256}, got {got}")
    return safe_extract(src, dest, prepare=validate)


def _parse_resize(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    if isinstance(resize, int) and not isinstance(resize, bool):
        resize = [resize, resize]
    if (isinstance(resize, (list, tuple)) and len(resize) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resize)):
        return int(resize[0]), int(resize[1])
    raise ValueError(f"options.resize: must be null, a positive integer or [H, W], got {resize!r}")


def _imagefolder_load(raw_dir: Path, *, mode: str = "auto", resize=None, test_fraction: float = 0.2,
                      seed: int = 0, workers: int = 2, source: str | None = None,
                      sha256: str | None = None) -> ImageDataset:
    if mode not in MODES:
        raise ValueError(f"options.mode: must be one of {list(MODES)}, got {mode!r}")
    size = _parse_resize(resize)
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"options.test_fraction: must lie in (0, 1), got {test_fraction!r}")
    folder = raw_dir / "images"
    if not folder.is_dir():
        raise ValueError(f"{folder}: not found; run download for 'imagefolder' first")
    lay = imagefolder_layout(folder)
    classes = lay["classes"]
    paths, labels = lay["train"]
    if lay["test"] is None:  # one tree: a seeded, stratified split
        tr, te = stratified_split(labels, len(classes), float(test_fraction), int(seed), classes=classes,
                                  where=lay["root"])
        tr_paths, tr_labels = [paths[i] for i in tr], [labels[i] for i in tr]
        te_paths, te_labels = [paths[i] for i in te], [labels[i] for i in te]
    else:
        tr_paths, tr_labels = paths, labels
        te_paths, te_labels = lay["test"]
    # One decode over train + test so both share the size and (in auto mode) the channel count;
    # converted separately so that neither tensor is a view holding the other's storage.
    raw, gray = decode_raw(tr_paths + te_paths, mode, size, size is not None, workers)
    c, n = channels(mode, gray), len(tr_paths)
    train_x = to_float(raw[:n], c)
    test_x = to_float(raw[n:], c)
    del raw
    return ImageDataset("imagefolder", train_x, torch.tensor(tr_labels, dtype=torch.long),
                        test_x, torch.tensor(te_labels, dtype=torch.long), classes)


register("imagefolder", DatasetSpec(_imagefolder_download, _imagefolder_load,
                                    "a user's ImageFolder tree (folder or .tar.gz/.tar.xz/.zip archive)",
                                    dict(_IMAGEFOLDER_OPTIONS)))
