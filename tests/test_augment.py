"""DSA: Siamese identity of transforms, differentiability, explicit randomness (spec section 5)."""
import pytest
import torch

from atom.augment import DSA, FAMILIES, DSAParams


def _images(n=6, c=3, s=16, seed=0):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_applies_identical_transform_to_both_batches(family, device):
    dsa = DSA(DSAParams(strategy=family))
    x = _images().to(device)
    for seed in range(5):
        a, b = dsa.siamese(x, x.clone(), torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_siamese_per_class_slots_match_separate_calls():
    """Batched Siamese (one slot per class, index = labels) equals per-class application."""
    dsa = DSA()
    x = _images(12)
    labels = torch.arange(3).repeat_interleave(4)
    draw = dsa.sample(3, torch.Generator().manual_seed(1))
    batched = dsa.apply(x, draw, labels)
    for k in range(3):
        rows = labels == k
        torch.testing.assert_close(batched[rows], dsa.apply(x[rows], draw.select(slice(k, k + 1)),
                                                            torch.zeros(int(rows.sum()), dtype=torch.long)))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_differentiable(family):
    dsa = DSA(DSAParams(strategy=family))
    x = _images().requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    out = dsa.apply(x, dsa.sample(x.shape[0], g))
    weights = torch.rand(out.shape, generator=g)
    (out * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_same_generator_seed_same_result_and_global_rng_unused():
    dsa = DSA()
    x = _images()
    torch.manual_seed(0)
    a = dsa(x, torch.Generator().manual_seed(7))
    torch.manual_seed(12345)
    b = dsa(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, dsa(x, torch.Generator().manual_seed(8)))


def test_per_image_mode_draws_parameters_per_image():
    dsa = DSA(DSAParams(strategy="color"))
    x = _images(1).repeat(8, 1, 1, 1)
    out = dsa(x, torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten()[:5].tolist()) for o in out}) == 8


def test_family_groups_share_one_family():
    dsa = DSA()
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    for seed in range(10):
        d = dsa.sample(6, torch.Generator().manual_seed(seed), family_groups=groups)
        for gid in range(3):
            assert d.family[groups == gid].unique().numel() == 1


def test_ops_behave_as_specified():
    x = _images(4, s=8)
    p = DSAParams()
    dsa = DSA(p)
    n = x.shape[0]
    # flip: probability 0.5 -> a uniform of 0.0 flips, 0.99 does not
    u = torch.zeros(n, 11)
    torch.testing.assert_close(dsa._flip(x, u), x.flip(3))
    torch.testing.assert_close(dsa._flip(x, u + 0.99), x)
    # crop with the middle uniform is the identity; the others shift with zero padding
    torch.testing.assert_close(dsa._crop(x, u + 0.5), x)
    shifted = dsa._crop(x, u)  # most negative shift: 1 pixel for size 8 (int(0.125*8+0.5) = 1)
    assert torch.equal(shifted[..., 0, :], torch.zeros_like(shifted[..., 0, :]))
    torch.testing.assert_close(shifted[..., 1:, 1:], x[..., :-1, :-1])
    # cutout zeroes exactly a (size/2)^2 square when it fits
    out = dsa._cutout(torch.ones(1, 1, 8, 8), torch.full((1, 11), 0.5))
    assert int((out == 0).sum()) == 16
    # scale and rotate with the neutral uniform (scale factor 1, angle 0) are the identity
    mid = torch.full((n, 11), 0.5)
    s = p.scale
    mid[:, 8:10] = (1 - 1 / s) / (s - 1 / s)
    torch.testing.assert_close(dsa._scale(x, mid), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(dsa._rotate(x, mid), x, atol=1e-5, rtol=0)
    # brightness shifts by (u - 0.5) * 1.0 before saturation/contrast: with factors 1 (u_s=0.5, u_c=0.5) only the shift remains
    u = torch.full((n, 11), 0.5)
    u[:, 0] = 0.75
    torch.testing.assert_close(dsa._color(x, u), x + 0.25)


def test_bad_inputs():
    with pytest.raises(ValueError, match="strategy"):
        DSAParams(strategy="color_warp")
    with pytest.raises(ValueError, match="x"):
        DSA().apply(torch.rand(3, 8, 8), DSA().sample(3, torch.Generator()))
    with pytest.raises(ValueError, match="index"):
        DSA().apply(torch.rand(3, 1, 8, 8), DSA().sample(2, torch.Generator()), torch.tensor([0, 1, 2]))
