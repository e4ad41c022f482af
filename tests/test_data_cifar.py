"""CIFAR-10/100 through torchvision's file layout, offline.

The tests write small pickle batches in the official layout (``cifar-10-batches-py/
data_batch_1..5``, ``test_batch``, ``batches.meta``; ``cifar-100-python/train``, ``test``,
``meta``). torchvision verifies each file against md5 sums stored as class attributes
(``train_list``, ``test_list``, ``meta``, ``tgz_md5``), so the tests patch those attributes
with the md5 sums of the files they wrote: the real torchvision integrity checks and loaders
then run unchanged. ``download_url`` is replaced by a function that fails, which proves that
no network is touched when the folder or the archive is already there.
"""
from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100
import torchvision.datasets.utils as tv_utils

from atom import data


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _batch(rng, n: int, k: int, key: str) -> dict:
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: rng.integers(0, k, n).tolist(),
            "batch_label": "fake"}


def _write_cifar(root: Path, cls, n_per_batch: int = 3) -> dict:
    """Write the batches of ``cls`` under root/<base_folder>; return the written dicts."""
    rng = np.random.default_rng(0)
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    c100 = cls is CIFAR100
    key, k = ("fine_labels", 100) if c100 else ("labels", 10)
    batches = {}
    for name, _ in cls.train_list + cls.test_list:
        batches[name] = _batch(rng, n_per_batch, k, key)
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    names = [f"class{i}" for i in range(k)]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: names}))
    batches["classes"] = names
    return batches


@pytest.fixture
def fake_cifar(monkeypatch, tmp_path):
    """Build fake files for a CIFAR class, patch its md5 attributes to match, forbid downloads."""
    def no_network(*a, **k):
        raise AssertionError("download_url called: the network would have been touched")

    monkeypatch.setattr(tv_utils, "download_url", no_network)

    def make(cls, root: Path, archive: Path | None = None):
        batches = _write_cifar(root, cls)
        folder = root / cls.base_folder
        monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
        if archive is not None:  # the official .tar.gz holds the base folder at its top
            with tarfile.open(archive, "w:gz") as tf:
                tf.add(folder, arcname=cls.base_folder)
            monkeypatch.setattr(cls, "tgz_md5", _md5(archive))
        return batches

    return make


def _expected(batches: dict, names: list[str], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.concatenate([batches[n]["data"] for n in names]).reshape(-1, 3, 32, 32)
    y = sum((batches[n][key] for n in names), [])
    return torch.from_numpy(x).float() / 255, torch.tensor(y)


@pytest.mark.parametrize("name,cls,key", [("cifar10", CIFAR10, "labels"), ("cifar100", CIFAR100, "fine_labels")])
def test_extracted_folder_loads_without_network(tmp_path, fake_cifar, name, cls, key):
    raw = tmp_path / "raw"
    batches = fake_cifar(cls, raw)
    assert data.download(name, raw) == raw / cls.base_folder  # intact: nothing fetched
    d = data.load(name, raw)
    x, y = _expected(batches, [n for n, _ in cls.train_list], key)
    assert d.name == name and d.train_images.shape == (len(y), 3, 32, 32)
    assert torch.equal(d.train_images, x) and torch.equal(d.train_labels, y)  # channel-major rows -> NCHW
    xt, yt = _expected(batches, [n for n, _ in cls.test_list], key)
    assert torch.equal(d.test_images, xt) and torch.equal(d.test_labels, yt)
    assert d.classes == batches["classes"] and d.train_images.is_contiguous()


def test_archive_in_raw_dir_or_as_source_is_used_offline(tmp_path, fake_cifar):
    build = tmp_path / "build"
    archive = tmp_path / "cifar-10-python.tar.gz"
    batches = fake_cifar(CIFAR10, build, archive)
    # 1) the user copied the official archive into raw_dir
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / CIFAR10.filename).write_bytes(archive.read_bytes())
    data.download("cifar10", raw)
    d = data.load("cifar10", raw)
    assert torch.equal(d.test_labels, torch.tensor(batches["test_batch"]["labels"]))
    # 2) options.source points at a copy elsewhere (raw_dir may be wiped by the pipeline)
    raw2 = tmp_path / "raw2"
    data.download("cifar10", raw2, source=str(archive))
    assert torch.equal(data.load("cifar10", raw2, source=str(archive)).train_images, d.train_images)


def test_checksum_mismatch_and_corrupt_folder(tmp_path, fake_cifar):
    build = tmp_path / "build"
    archive = tmp_path / "cifar-10-python.tar.gz"
    fake_cifar(CIFAR10, build, archive)
    bad = tmp_path / "bad" / CIFAR10.filename
    bad.parent.mkdir()
    bad.write_bytes(archive.read_bytes()[:-100])  # truncated copy
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"cifar-10-python.tar.gz: md5 checksum mismatch"):
        data.download("cifar10", raw, source=str(bad))
    assert not (raw / CIFAR10.base_folder).exists()
    # A damaged batch in an extracted folder is caught by torchvision's checksums at load.
    data.download("cifar10", raw, source=str(archive))
    (raw / CIFAR10.base_folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cifar-10-batches-py: missing or corrupt"):
        data.load("cifar10", raw)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['mode'\]"):
        data.load("cifar10", raw, mode="rgb")


def test_download_failure_is_clear(tmp_path, monkeypatch):
    def fail(url, root, filename=None, md5=None):
        raise OSError("no route to host")

    monkeypatch.setattr(tv_utils, "download_url", fail)
    with pytest.raises(RuntimeError, match="download failed.*cifar-100-python.tar.gz"):
        data.download("cifar100", tmp_path / "raw")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []  # no partial download left
