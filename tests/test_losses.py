"""Properties of the attention maps and the matching losses (spec section 3)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atom.losses import (METHODS, LossConfig, MatchingLoss, channel_attention, class_means,
                         matching_loss, spatial_attention)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5),
       p=st.sampled_from([1, 2, 3, 4, 1.5, 6]), seed=st.integers(0, 2**16))
def test_attention_vectors_have_unit_norm_and_right_length(n, c, h, w, p, seed):
    f = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed)) + 0.1
    a_s, a_c = spatial_attention(f, p), channel_attention(f, p)
    assert a_s.shape == (n, h * w) and a_c.shape == (n, c)
    torch.testing.assert_close(a_s.norm(dim=1), torch.ones(n))
    torch.testing.assert_close(a_c.norm(dim=1), torch.ones(n))


def test_attention_matches_the_definition():
    f = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    raw_s = (f.abs() ** 3).sum(1).flatten(1)
    raw_c = (f.abs() ** 3).sum((2, 3))
    torch.testing.assert_close(spatial_attention(f, 3), raw_s / raw_s.norm(dim=1, keepdim=True))
    torch.testing.assert_close(channel_attention(f, 3), raw_c / raw_c.norm(dim=1, keepdim=True))


def test_attention_is_scale_invariant_per_image():
    f = torch.rand(2, 3, 4, 4) + 0.1
    torch.testing.assert_close(spatial_attention(7.0 * f, 4), spatial_attention(f, 4))


@pytest.mark.parametrize("power", [0, 0.5, -1])
def test_power_below_one_is_rejected(power):
    with pytest.raises(ValueError, match="power"):
        spatial_attention(torch.rand(1, 2, 3, 3), power)
    with pytest.raises(ValueError, match="power"):
        channel_attention(torch.rand(1, 2, 3, 3), power)
    with pytest.raises(ValueError, match="p_s"):
        LossConfig.for_method("atom", p_s=power)
    with pytest.raises(ValueError, match="p_c"):
        LossConfig.for_method("atom", p_c=power)


def test_non_4d_features_rejected():
    with pytest.raises(ValueError, match="features"):
        spatial_attention(torch.rand(3, 4), 4)


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="method"):
        LossConfig.for_method("mtt")
    with pytest.raises(ValueError, match="mixing"):
        LossConfig.for_method("atom", mixing="product")


def _features(seed, n=12, k=3):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.rand(n, 5, 8, 8, generator=g), torch.rand(n, 5, 4, 4, generator=g), torch.rand(n, 5, 2, 2, generator=g)]
    return feats, torch.rand(n, 20, generator=g), torch.arange(k).repeat_interleave(n // k)


CONFIGS = [LossConfig.for_method(m) for m in METHODS] + [LossConfig.for_method("atom", mixing="concat"),
                                                         LossConfig.for_method("atom", p_s=2, p_c=6, w_c=0.5)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.method}-{c.mixing}-{c.p_s}-{c.p_c}")
def test_loss_is_zero_for_identical_batches_and_positive_otherwise(cfg):
    feats, emb, labels = _features(0)
    loss = matching_loss(feats, emb, labels, feats, emb, labels, 3, cfg)
    assert loss.item() == 0.0
    feats2, emb2, _ = _features(1)
    assert matching_loss(feats, emb, labels, feats2, emb2, labels, 3, cfg).item() > 0


def test_loss_depends_only_on_class_means():
    """Real batch of 8 per class vs a synthetic batch of 2 per class: same class means, zero loss."""
    feats, emb, labels = _features(0, n=12, k=3)  # 4 per class
    cfg = LossConfig.for_method("dm")
    # the synthetic "images" are the class means of the embedding, 2 copies each
    means = class_means(emb, labels, 3)
    syn_emb = means.repeat_interleave(2, 0)
    syn_labels = torch.arange(3).repeat_interleave(2)
    loss = matching_loss(feats, emb, labels, feats, syn_emb, syn_labels, 3, cfg)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_loss_value_matches_the_spec_table():
    feats, emb, labels = _features(0)
    feats2, emb2, _ = _features(5)
    k = 3

    def mean_dist(a, b):
        return (class_means(a, labels, k) - class_means(b, labels, k)).pow(2).sum()

    mmd = mean_dist(emb, emb2)
    spatial = sum(mean_dist(spatial_attention(a, 4), spatial_attention(b, 4)) for a, b in zip(feats[:-1], feats2[:-1]))
    channel = sum(mean_dist(channel_attention(a, 4), channel_attention(b, 4)) for a, b in zip(feats[:-1], feats2[:-1]))
    got = {m: matching_loss(feats, emb, labels, feats2, emb2, labels, k, LossConfig.for_method(m)) for m in METHODS}
    torch.testing.assert_close(got["dm"], mmd)
    torch.testing.assert_close(got["datadam"], 100 * (spatial + 0.01 * mmd))
    torch.testing.assert_close(got["atom"], 100 * (spatial + channel + 0.01 * mmd))
    w = LossConfig.for_method("atom", w_c=0.25, lam=0.5, scale=3.0)
    torch.testing.assert_close(matching_loss(feats, emb, labels, feats2, emb2, labels, k, w),
                               3.0 * (spatial + 0.25 * channel + 0.5 * mmd))


def test_chunked_class_sums_equal_whole_batch_statistics():
    feats, emb, labels = _features(0, n=12)
    loss = MatchingLoss(LossConfig.for_method("atom"), 3)
    whole = loss.statistics(feats, emb, labels)
    parts = [loss.class_sums([f[i:i + 5] for f in feats], emb[i:i + 5], labels[i:i + 5]) for i in (0, 5, 10)]
    counts = torch.bincount(labels, minlength=3).float()[:, None]
    chunked = [sum(p[j] for p in parts) / counts for j in range(len(whole))]
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_labels_out_of_range_rejected():
    feats, emb, labels = _features(0)
    with pytest.raises(ValueError, match="labels"):
        MatchingLoss(LossConfig(), 2).statistics(feats, emb, labels)
