"""The `imagefolder` dataset: folders and archives the tests build themselves, every layout,
colour mode and bad input (each a ValueError naming the file, with nothing left in raw_dir)."""
from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atom import data

CLASSES = ["cat", "dog", "emu"]


def _img(path: Path, value: int, size=(6, 5), mode="RGB", fmt=None) -> None:
    """An image whose pixels all equal ``value`` (R) / value+1 (G) / value+2 (B): the value
    encodes class and index so decoded tensors can be traced back to their files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if mode == "L":
        im = Image.fromarray(np.full((h, w), value, np.uint8), "L")
    else:
        a = np.empty((h, w, 3), np.uint8)
        a[..., 0], a[..., 1], a[..., 2] = value, value + 1, value + 2
        im = Image.fromarray(a, "RGB")
    im.save(path, format=fmt)


def _value(k: int, i: int) -> int:
    return 10 + 60 * k + 3 * i


def _tree(root: Path, n_train=4, n_test=2, split=True, mode="RGB", size=(6, 5), ext=".png") -> Path:
    for k, c in enumerate(CLASSES):
        for i in range(n_train):
            _img(root / ("train" if split else "") / c / f"{i:03d}{ext}", _value(k, i), size, mode)
        if split:
            for i in range(n_test):
                _img(root / "test" / c / f"{i:03d}{ext}", _value(k, 10 + i), size, mode)
    return root


def _pack(src: Path, out: Path) -> Path:
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w") as zf:
            for p in sorted(src.rglob("*")):
                zf.write(p, p.relative_to(src.parent).as_posix())
    else:
        with tarfile.open(out, "w:xz" if out.name.endswith(".xz") else "w:gz") as tf:
            tf.add(src, arcname=src.name)
    return out


def _check_values(x: torch.Tensor, y: torch.Tensor, offset: int = 0) -> None:
    # Files are sorted by name inside each class, so image i of class k has _value(k, offset + i).
    for k in range(len(CLASSES)):
        xs = x[y == k]
        for i in range(len(xs)):
            assert torch.allclose(xs[i, 0], torch.full_like(xs[i, 0], _value(k, offset + i) / 255))


@pytest.mark.parametrize("form", ["dir", "tar.xz", "tar.gz", "zip"])
def test_split_layout_every_form(tmp_path, form):
    src = _tree(tmp_path / "mydata")
    source = src if form == "dir" else _pack(src, tmp_path / f"mydata.{form}")
    raw = tmp_path / "raw"
    out = data.download("imagefolder", raw, source=str(source))
    assert out == raw / "images" and out.is_dir()
    d = data.load("imagefolder", raw, source=str(source), mode="rgb", workers=1)
    assert d.classes == CLASSES
    assert d.train_images.shape == (12, 3, 6, 5) and d.test_images.shape == (6, 3, 6, 5)
    assert d.train_images.dtype == torch.float32 and d.train_images.is_contiguous()
    assert torch.equal(torch.bincount(d.train_labels), torch.tensor([4, 4, 4]))
    assert torch.equal(torch.bincount(d.test_labels), torch.tensor([2, 2, 2]))
    _check_values(d.train_images, d.train_labels)
    _check_values(d.test_images, d.test_labels, offset=10)
    # Channels G and B keep their own values: no channel mix-up in the HWC -> CHW conversion.
    assert torch.allclose(d.train_images[0, 2] - d.train_images[0, 0], torch.full((6, 5), 2 / 255))
    assert d.train_images.untyped_storage().data_ptr() != d.test_images.untyped_storage().data_ptr()


def test_one_tree_seeded_stratified_split(tmp_path):
    src = _tree(tmp_path / "flat", n_train=10, split=False)
    raw = tmp_path / "raw"
    data.download("imagefolder", raw, source=str(src))
    a = data.load("imagefolder", raw, test_fraction=0.3, seed=1, workers=1)
    b = data.load("imagefolder", raw, test_fraction=0.3, seed=1, workers=1)
    c = data.load("imagefolder", raw, test_fraction=0.3, seed=2, workers=1)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.test_images, c.test_images)
    assert torch.equal(torch.bincount(a.test_labels), torch.tensor([3, 3, 3]))
    assert torch.equal(torch.bincount(a.train_labels), torch.tensor([7, 7, 7]))
    # Train and test are disjoint and together hold every image once.
    vals = lambda d: {round(float(v) * 255) for v in d[:, 0, 0, 0]}  # noqa: E731
    assert vals(a.train_images) | vals(a.test_images) == {_value(k, i) for k in range(3) for i in range(10)}
    assert not vals(a.train_images) & vals(a.test_images)
    with pytest.raises(ValueError, match="too few to split"):
        data.load("imagefolder", raw, test_fraction=0.01, workers=1)


def test_nested_top_folder_and_hidden_junk(tmp_path):
    src = _tree(tmp_path / "wrap" / "inner")
    (src / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (src / "train" / ".DS_Store").write_bytes(b"junk")
    (src / "__MACOSX").mkdir()
    raw = tmp_path / "raw"
    data.download("imagefolder", raw, source=str(_pack(tmp_path / "wrap", tmp_path / "w.zip")))
    d = data.load("imagefolder", raw, workers=1)
    assert d.classes == CLASSES and len(d.train_labels) == 12


def test_modes_and_formats(tmp_path):
    gray = _tree(tmp_path / "gray", mode="L", ext=".bmp")
    raw = tmp_path / "raw"
    data.download("imagefolder", raw, source=str(gray))
    auto = data.load("imagefolder", raw, mode="auto", workers=1)
    assert auto.train_images.shape[1] == 1
    _check_values(auto.train_images, auto.train_labels)
    rgb = data.load("imagefolder", raw, mode="rgb", workers=1)
    assert rgb.train_images.shape[1] == 3
    assert torch.equal(rgb.train_images[:, 1], rgb.train_images[:, 0])  # gray replicated
    # A colour set with one grayscale image: auto keeps 3 channels; grayscale gives luma.
    mixed = _tree(tmp_path / "mixed", ext=".png")
    _img(mixed / "train" / "cat" / "zz.png", 100, mode="L")
    for fmt, ext in (("GIF", ".gif"), ("TIFF", ".tif"), ("WEBP", ".webp"), ("PPM", ".ppm"), ("JPEG", ".jpg")):
        _img(mixed / "train" / "dog" / f"zz{ext}", 120, fmt=fmt)
    raw2 = tmp_path / "raw2"
    data.download("imagefolder", raw2, source=str(mixed))
    m = data.load("imagefolder", raw2, mode="auto", workers=1)
    assert m.train_images.shape == (18, 3, 6, 5)
    g = data.load("imagefolder", raw2, mode="grayscale", workers=1)
    assert g.train_images.shape == (18, 1, 6, 5)
    assert 0 <= float(g.train_images.min()) and float(g.train_images.max()) <= 1
    with pytest.raises(ValueError, match="mode"):
        data.load("imagefolder", raw2, mode="cmyk")


def test_resize_and_mixed_sizes(tmp_path):
    src = _tree(tmp_path / "sizes")
    _img(src / "train" / "dog" / "big.png", 50, size=(12, 10))
    raw = tmp_path / "raw"
    data.download("imagefolder", raw, source=str(src))
    with pytest.raises(ValueError, match="big.png.*12x10.*sizes differ"):
        data.load("imagefolder", raw, workers=1)
    d = data.load("imagefolder", raw, resize=[8, 4], workers=1)
    assert d.train_images.shape == (13, 3, 8, 4) and d.test_images.shape == (6, 3, 8, 4)
    sq = data.load("imagefolder", raw, resize=7, workers=1)
    assert sq.train_images.shape[2:] == (7, 7)
    with pytest.raises(ValueError, match="options.resize"):
        data.load("imagefolder", raw, resize=[0, 3])


def test_worker_pool_matches_single_process(tmp_path):
    src = tmp_path / "many"
    for k, c in enumerate(CLASSES[:2]):
        for i in range(300):  # > one 512-image chunk in total, so the pool really splits work
            _img(src / c / f"{i:04d}.png", (k * 100 + i) % 250, size=(3, 3))
    raw = tmp_path / "raw"
    data.download("imagefolder", raw, source=str(src))
    one = data.load("imagefolder", raw, workers=1)
    two = data.load("imagefolder", raw, workers=2)
    assert torch.equal(one.train_images, two.train_images) and torch.equal(one.test_images, two.test_images)
    assert torch.equal(one.train_labels, two.train_labels)


def _dispositions(_):
    import signal
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_decode_workers_drop_the_parents_signal_handlers_and_exit_with_the_pool(tmp_path, monkeypatch):
    # a pipeline stage raises on SIGTERM (stages.common.signals); forked workers inherited that
    # handler, and one raised while waiting on the pool's queue lock hung the decode at 100 %
    import multiprocessing
    import signal

    from atom import imaging

    def raising(signum, frame):
        raise RuntimeError("the parent's handler ran in a worker")

    previous = signal.signal(signal.SIGTERM, raising)
    try:
        with imaging._pool_context().Pool(2, initializer=imaging._worker_init) as pool:
            assert all(all(d) for d in pool.map(_dispositions, range(4)))
        src = tmp_path / "many"
        for i in range(1100):  # three chunks
            _img(src / CLASSES[i % 2] / f"{i:04d}.png", i % 250, size=(3, 3))
        raw = tmp_path / "raw"
        data.download("imagefolder", raw, source=str(src))
        for _ in range(3):
            data.load("imagefolder", raw, workers=2)
            assert multiprocessing.active_children() == []  # joined on the sentinel, none left
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- bad inputs: each a ValueError naming the file, nothing left behind ----------------------

def _assert_clean(raw: Path) -> None:
    assert not raw.exists() or [p.name for p in raw.iterdir()] == []


def test_no_class_folders(tmp_path):
    src = tmp_path / "loose"
    _img(src / "a.png", 1)
    _img(src / "b.png", 2)
    with pytest.raises(ValueError, match="no class folders"):
        data.download("imagefolder", tmp_path / "raw", source=str(src))
    _assert_clean(tmp_path / "raw")


def test_class_without_images(tmp_path):
    src = _tree(tmp_path / "d")
    for p in (src / "test" / "dog").iterdir():
        p.unlink()
    (src / "test" / "dog" / "readme.txt").write_text("no images here")
    arc = _pack(src, tmp_path / "d.tar.gz")
    with pytest.raises(ValueError, match=r"test/dog: class 'dog' has no images"):
        data.download("imagefolder", tmp_path / "raw", source=str(arc))
    _assert_clean(tmp_path / "raw")
    shutil.rmtree(src / "test" / "dog")  # a class missing from test/ altogether
    with pytest.raises(ValueError, match="class 'dog' has no folder"):
        data.download("imagefolder", tmp_path / "raw", source=str(src))


def test_undecodable_image(tmp_path):
    src = _tree(tmp_path / "d")
    (src / "train" / "emu" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    raw = tmp_path / "raw"
    data.download("imagefolder", raw, source=str(src))  # download checks layout, not pixels
    for workers in (1, 2):
        with pytest.raises(ValueError, match=r"emu/001.png: cannot decode image"):
            data.load("imagefolder", raw, workers=workers)
    truncated = src / "train" / "emu" / "001.jpg"
    _img(truncated, 5, size=(64, 64), fmt="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:200])
    (src / "train" / "emu" / "001.png").unlink()
    data.download("imagefolder", raw, source=str(src))
    with pytest.raises(ValueError, match=r"001.jpg: cannot decode image"):
        data.load("imagefolder", raw, workers=1, resize=4)


def test_checksum_truncation_and_traversal(tmp_path):
    src = _tree(tmp_path / "d")
    arc = _pack(src, tmp_path / "d.tar.xz")
    raw = tmp_path / "raw"
    from atom.io import sha256

    with pytest.raises(ValueError, match=r"d.tar.xz: sha256 checksum mismatch"):
        data.download("imagefolder", raw, source=str(arc), sha256="0" * 64)
    _assert_clean(raw)
    data.download("imagefolder", raw, source=str(arc), sha256=sha256(arc))  # the right one passes
    cut = tmp_path / "cut.tar.xz"
    cut.write_bytes(arc.read_bytes()[:-300])
    shutil.rmtree(raw)
    with pytest.raises(ValueError, match=r"cut.tar.xz: truncated or corrupt"):
        data.download("imagefolder", raw, source=str(cut))
    _assert_clean(raw)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.write(src / "train" / "cat" / "000.png", "train/cat/000.png")
        zf.writestr("../../escape.png", b"x")
    with pytest.raises(ValueError, match=r"evil.zip: member '../../escape.png' contains '..'"):
        data.download("imagefolder", raw, source=str(evil))
    _assert_clean(raw)


def test_option_errors(tmp_path):
    with pytest.raises(ValueError, match="options.source: required"):
        data.download("imagefolder", tmp_path / "raw")
    with pytest.raises(FileNotFoundError, match="nowhere.tar.xz"):
        data.download("imagefolder", tmp_path / "raw", source=str(tmp_path / "nowhere.tar.xz"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        data.load("imagefolder", tmp_path / "raw", colour="rgb")
    with pytest.raises(ValueError, match="run download"):
        data.load("imagefolder", tmp_path / "raw")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("mnist", tmp_path / "raw")
    assert set(data.OPTIONS["imagefolder"]) == {"source", "sha256", "mode", "resize", "test_fraction",
                                                "seed", "workers"}
