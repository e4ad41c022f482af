"""Multi-formation (atom.formation, distill.factor): mosaics decode into factor**2 full-size
images per stored image, the initial mosaics hold the chosen real images, gradients flow, and
the distill loop trains and validates on the decoded set while storing the mosaics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import atom
from atom.formation import decode, encode, training_set


def test_decode_cuts_tiles_and_upsamples_them():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).view(2, 1, 4, 4)
    y = torch.tensor([3, 5])
    d, dy = decode(x, y, 2)
    assert d.shape == (8, 1, 4, 4) and dy.tolist() == [3, 3, 3, 3, 5, 5, 5, 5]
    # tile (row 0, col 1) of mosaic 0 is the top-right 2x2 block, upsampled
    expect = F.interpolate(x[:1, :, :2, 2:], size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(d[1:2], expect)
    assert torch.autograd.gradcheck(lambda t: decode(t, y, 2)[0], (x.clone().requires_grad_(True),))
    same, same_y = decode(x, y, 1)
    assert same is x and same_y is y


def test_encode_puts_each_image_in_its_tile():
    imgs = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    mosaics = encode(imgs, 2)
    assert mosaics.shape == (2, 3, 8, 8)
    small = F.interpolate(imgs, size=(4, 4), mode="area")
    torch.testing.assert_close(mosaics[1, :, 4:, :4], small[6])  # image 6 = mosaic 1, tile (1, 0)
    decoded, _ = decode(mosaics, torch.zeros(2, dtype=torch.long), 2)
    torch.testing.assert_close(decoded, F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("factor,msg", [(0, "integer >= 1"), (3, "does not divide"), (True, "integer >= 1")])
def test_bad_factors_are_named(factor, msg):
    with pytest.raises(ValueError, match=msg):
        decode(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), factor)


def test_distill_with_factor_stores_mosaics_and_trains_on_tiles():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 1, 8, 8, generator=g), torch.arange(200) % 4
    seen = []

    def validator(images, labels):
        seen.append((images.shape[0], torch.bincount(labels, minlength=4).tolist()))
        return 1.0

    res = atom.distill(x, y, ipc=2, iterations=4, batch_real=8, factor=2, net=dict(width=8, depth=2), seed=0,
                       progress=False, validator=validator, validate_every=2)
    assert res.images.shape == (8, 1, 8, 8) and res.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    tx, ty = res.training_set()
    assert tx.shape == (32, 1, 8, 8) and torch.bincount(ty).tolist() == [8, 8, 8, 8]
    assert seen and all(s == (32, [8, 8, 8, 8]) for s in seen)  # validation scores the decoded set
    rec = {"images": res.best_images, "labels": res.labels, "config": res.config}
    assert torch.equal(training_set(rec)[0], tx)
    with pytest.raises(ValueError, match="factor"):
        atom.distill(x, y, ipc=20, iterations=1, factor=2, progress=False)  # 80 real images per class > 50
