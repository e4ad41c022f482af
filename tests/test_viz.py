"""atom.viz: the pictures people look at (properties, not snapshots)."""
from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image

from atom import viz
from atom.formation import decode, encode


def _set(n_per_class: int, k: int = 3, c: int = 1, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_per_class * k, c, size, size, generator=g)
    y = torch.arange(k).repeat_interleave(n_per_class)
    return x, y


def test_first_per_class_takes_the_first_images_of_each_class_in_class_order():
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2])
    idx = viz.first_per_class(y, 3, 2)
    assert idx.tolist() == [1, 3, 2, 5, 0, 4]
    assert viz.first_per_class(y, 3, 5).tolist() == [1, 3, 6, 2, 5, 0, 4, 7]  # fewer than n: all of them


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_upscales_small_images_to_the_minimum_cell(tmp_path, channels):
    x, y = _set(1, k=10, c=channels)
    out = viz.plot_class_grid(x, y, None, tmp_path / "g.png", classes=[f"class {i}" for i in range(10)],
                              min_cell=48, dpi=100)
    w, h = Image.open(out).size
    # ten rows of 8x8 images at >= 48 pixels each: the picture is at least 480 pixels high
    assert h >= 10 * 48 and w >= 48


def test_real_images_widen_the_picture_and_a_labelled_title_fits(tmp_path):
    x, y = _set(4)
    real = _set(20, seed=1)
    alone = Image.open(viz.plot_class_grid(x, y, None, tmp_path / "a.png", classes=["a", "b", "c"])).size
    beside = Image.open(viz.plot_class_grid(x, y, None, tmp_path / "b.png", classes=["a", "b", "c"], real=real,
                                            title="t", subtitle="s")).size
    assert beside[0] > alone[0] and beside[1] > alone[1]  # a second block; two lines of title


def test_grid_is_byte_identical_for_the_same_set(tmp_path):
    x, y = _set(2, c=3, size=16)
    digests = {hashlib.sha256(viz.plot_class_grid(x, y, None, tmp_path / f"{i}.png", real=(x, y),
                                                  title="same").read_bytes()).hexdigest() for i in range(2)}
    assert len(digests) == 1


def test_grid_shows_every_class_row_even_one_without_images(tmp_path):
    x, y = _set(2, k=2)
    out = viz.plot_class_grid(x, y, None, tmp_path / "g.png", classes=["a", "b", "no images"], min_cell=40)
    assert Image.open(out).size[1] >= 3 * 40


def test_decoded_multi_formation_tiles_are_what_the_grid_draws():
    # a factor-2 mosaic decodes to four images per stored image: the grid gets those
    x, y = _set(4, size=16)
    mosaics = encode(x, 2)
    tiles, labels = decode(mosaics, y[::4], 2)
    assert tiles.shape == x.shape and labels.tolist() == y.tolist()


def test_grid_errors_name_the_argument(tmp_path):
    x, y = _set(1)
    with pytest.raises(ValueError, match="real: images of shape"):
        viz.plot_class_grid(x, y, None, tmp_path / "g.png", real=_set(1, c=3))
    with pytest.raises(ValueError, match="min_cell"):
        viz.plot_class_grid(x, y, None, tmp_path / "g.png", min_cell=0)
    with pytest.raises(ValueError, match="max_per_class"):
        viz.plot_class_grid(x, y, None, tmp_path / "g.png", max_per_class=0)
    with pytest.raises(ValueError, match="labels"):
        viz.plot_class_grid(x, y[:-1], None, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()  # nothing half-written


def test_class_grid_has_one_row_per_class_and_at_most_max_per_class_columns():
    x, y = _set(5, k=4, size=6)
    g = viz.class_grid(x, y, max_per_class=3, padding=1)
    assert g.shape == (1, 4 * 7 + 1, 3 * 7 + 1)
    assert g.min() >= 0 and g.max() <= 1
