"""TinyImageNet from a small zip in the official layout, offline (md5 patched to the test zip's).

Layout written: tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/<wnid>_<i>.JPEG,
train/<wnid>/<wnid>_boxes.txt, val/images/val_<i>.JPEG, val/val_annotations.txt,
test/images/test_<i>.JPEG}.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
import torchvision.datasets.utils as tv_utils

from atom import data

WNIDS = ["n09999999", "n01443537", "n05555555"]  # deliberately unsorted: wnids.txt order rules


def _jpeg(value: int, gray: bool = False, size: int = 64) -> bytes:
    buf = io.BytesIO()
    if gray:
        Image.fromarray(np.full((size, size), value, np.uint8), "L").save(buf, "JPEG", quality=95)
    else:
        Image.fromarray(np.full((size, size, 3), value, np.uint8), "RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _zip(path: Path, *, val_rows=None, extra=()) -> Path:
    top = "tiny-imagenet-200/"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(top + "wnids.txt", "\n".join(WNIDS) + "\n")
        zf.writestr(top + "words.txt", "".join(f"{w}\tthing {w}\n" for w in WNIDS))
        for k, w in enumerate(WNIDS):
            for i in range(3):
                # class k -> pixel value 40 + 80 k; the middle class has one grayscale image
                zf.writestr(f"{top}train/{w}/images/{w}_{i}.JPEG", _jpeg(40 + 80 * k, gray=(k == 1 and i == 0)))
            zf.writestr(f"{top}train/{w}/{w}_boxes.txt", "")
        rows = val_rows if val_rows is not None else [(f"val_{j}.JPEG", WNIDS[j % 3]) for j in range(6)]
        for fname, w in rows:
            zf.writestr(f"{top}val/images/{fname}", _jpeg(40 + 80 * WNIDS.index(w) if w in WNIDS else 0))
        zf.writestr(top + "val/val_annotations.txt", "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in rows))
        zf.writestr(top + "test/images/test_0.JPEG", _jpeg(7))
        for name, blob in extra:
            zf.writestr(top + name, blob)
    return path


@pytest.fixture
def offline(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("download_url called: the network would have been touched")

    monkeypatch.setattr(tv_utils, "download_url", no_network)

    def trust(zip_path: Path):
        monkeypatch.setattr(data, "TINYIMAGENET_MD5", hashlib.md5(zip_path.read_bytes()).hexdigest())

    return trust


def test_zip_regrouped_and_loaded(tmp_path, offline):
    z = _zip(tmp_path / "tiny-imagenet-200.zip")
    offline(z)
    raw = tmp_path / "raw"
    root = data.download("tinyimagenet", raw, source=str(z))
    assert not (root / "val" / "images").exists()
    assert sorted(p.name for p in (root / "val").iterdir() if p.is_dir()) == sorted(WNIDS)
    assert len(list((root / "val" / WNIDS[0]).iterdir())) == 2
    d = data.load("tinyimagenet", raw, workers=1)
    assert d.classes == WNIDS  # wnids.txt order, not sorted
    assert d.train_images.shape == (9, 3, 64, 64) and d.test_images.shape == (6, 3, 64, 64)
    assert torch.equal(torch.bincount(d.train_labels), torch.tensor([3, 3, 3]))
    assert torch.equal(torch.bincount(d.test_labels), torch.tensor([2, 2, 2]))
    # Labels follow the annotation file: each image's pixel value encodes its class.
    for x, y in ((d.train_images, d.train_labels), (d.test_images, d.test_labels)):
        expect = (40 + 80 * y.float()) / 255
        assert torch.allclose(x.mean((1, 2, 3)), expect, atol=3 / 255)
    # The grayscale JPEG became 3 equal channels.
    g = d.train_images[3]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    # Second download: the prepared folder is reused, nothing re-extracted.
    stamp = (root / "wnids.txt").stat().st_mtime_ns
    data.download("tinyimagenet", raw)
    assert (root / "wnids.txt").stat().st_mtime_ns == stamp


def test_archive_in_raw_dir_is_found(tmp_path, offline):
    raw = tmp_path / "raw"
    raw.mkdir()
    z = _zip(raw / "tiny-imagenet-200.zip")
    offline(z)
    data.download("tinyimagenet", raw)
    assert (raw / "tiny-imagenet-200" / "val" / WNIDS[2]).is_dir()


def test_checksum_mismatch(tmp_path, offline):
    z = _zip(tmp_path / "tiny-imagenet-200.zip")
    offline(tmp_path / "tiny-imagenet-200.zip")
    z.write_bytes(z.read_bytes()[:-50])
    with pytest.raises(ValueError, match=r"tiny-imagenet-200.zip: md5 checksum mismatch"):
        data.download("tinyimagenet", tmp_path / "raw", source=str(z))
    assert not (tmp_path / "raw" / "tiny-imagenet-200").exists()


@pytest.mark.parametrize("rows,extra,msg", [
    ([("val_0.JPEG", WNIDS[0]), ("val_1.JPEG", "n00000000")], (), "class not in wnids.txt"),
    ([("val_0.JPEG", WNIDS[0])], (("val/images/val_9.JPEG", _jpeg(1)),), "have no line in"),
])
def test_bad_annotations_leave_nothing(tmp_path, offline, rows, extra, msg):
    z = _zip(tmp_path / "t.zip", val_rows=rows, extra=extra)
    offline(z)
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=msg):
        data.download("tinyimagenet", raw, source=str(z))
    assert [p.name for p in raw.iterdir()] == []


def test_wrong_size_rejected(tmp_path, offline):
    z = _zip(tmp_path / "t.zip", extra=(("train/n01443537/images/odd.JPEG", _jpeg(3, size=32)),))
    offline(z)
    raw = tmp_path / "raw"
    data.download("tinyimagenet", raw, source=str(z))
    with pytest.raises(ValueError, match=r"odd.JPEG: image is 32x32.*64x64"):
        data.load("tinyimagenet", raw, workers=1)
