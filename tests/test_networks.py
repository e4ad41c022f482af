"""ConvNet family: shapes for every configuration, features without hooks, seeded init."""
import itertools

import pytest
import torch
from torch import nn

from atom.networks import ACTIVATIONS, NORMS, POOLS, ConvNet, build_network, init_weights


@pytest.mark.parametrize("act,norm,pool", list(itertools.product(ACTIVATIONS, NORMS, POOLS)))
def test_every_configuration_gives_logits_features_and_embedding(act, norm, pool):
    net = ConvNet(3, 7, 16, width=8, depth=2, act=act, norm=norm, pool=pool)
    x = torch.rand(4, 3, 16, 16)
    logits = net(x)
    feats, emb = net.features(x)
    assert logits.shape == (4, 7)
    assert len(feats) == 2 and all(f.shape[:2] == (4, 8) for f in feats)
    side = 16 // 4 if pool != "none" else 16
    assert emb.shape == (4, 8 * side * side) == (4, net.embed_dim)
    assert [f.shape[-1] for f in feats] == net.feature_sizes
    torch.testing.assert_close(net.classifier(emb), logits)


@pytest.mark.parametrize("channels,size,depth", [(1, 8, 3), (3, 32, 3), (3, 64, 4), (4, 12, 1)])
def test_any_channel_count_and_square_size(channels, size, depth):
    net = ConvNet(channels, 10, size, width=16, depth=depth)
    assert net(torch.rand(2, channels, size, size)).shape == (2, 10)


def test_relu_features_are_post_activation():
    feats, _ = ConvNet(1, 2, 8, width=4, depth=2).features(torch.randn(3, 1, 8, 8))
    assert all((f >= 0).all() for f in feats)


def test_instancenorm_is_groupnorm_with_one_group_per_channel():
    net = ConvNet(3, 10, 32, width=16)
    gn = net.norms[0]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 16 and gn.affine


def test_init_is_seeded_and_leaves_global_rng_alone():
    a = build_network(3, 10, 16, width=8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    b = build_network(3, 10, 16, width=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())
    c = build_network(3, 10, 16, width=8, generator=torch.Generator().manual_seed(2))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.convs[0].weight, c.convs[0].weight)


def test_init_follows_pytorch_default_bounds():
    net = init_weights(ConvNet(3, 10, 16, width=32), torch.Generator().manual_seed(0))
    w = net.convs[1].weight
    fan_in = w[0].numel()
    bound = 1 / fan_in ** 0.5  # kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.equal(net.norms[0].weight, torch.ones(32)) and torch.equal(net.norms[0].bias, torch.zeros(32))


@pytest.mark.parametrize("kwargs,name", [(dict(act="gelu"), "act"), (dict(norm="rms"), "norm"),
                                         (dict(pool="lp"), "pool"), (dict(depth=0), "depth"),
                                         (dict(depth=4), "depth"), (dict(width=-1), "width")])
def test_bad_configuration_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ConvNet(1, 10, 8, **kwargs)


@pytest.mark.parametrize("arch", ["alexnet", "vgg11", "resnet18"])
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_cross_architecture_networks(arch, channels, size):
    net = build_network(channels, 10, size, arch=arch, generator=torch.Generator().manual_seed(0), norm="instancenorm")
    out = net(torch.rand(2, channels, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="arch"):
        build_network(channels, 10, size, arch="vit")
