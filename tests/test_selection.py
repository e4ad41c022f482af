"""Initialisation by selection (atom.selection): seeded, class-correct, and the rules do what
they claim on features where the answer is known."""
import pytest
import torch

import atom
from atom.formation import decode, encode
from atom.selection import RULES, herding, kcenter, select, selected_set

NET = dict(width=8, depth=2, act="relu", norm="instancenorm", pool="avg")
FAST = dict(net=NET, encoder_epochs=1, encoder_per_class=20, device="cpu")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("ipc", [1, 3])
def test_selection_picks_ipc_distinct_images_of_each_class_in_class_order(digits, rule, ipc):
    x, y = digits.train_images, digits.train_labels
    idx = select(x, y, ipc, rule, seed=0, **FAST)
    assert idx.shape == (10 * ipc,) and len(set(idx.tolist())) == 10 * ipc
    assert torch.equal(y[idx], torch.arange(10).repeat_interleave(ipc))


@pytest.mark.parametrize("rule", ["herding", "kcenter"])
def test_selection_is_seeded(digits, rule):
    x, y = digits.train_images, digits.train_labels
    a = select(x, y, 2, rule, seed=3, **FAST)
    b = select(x, y, 2, rule, seed=3, **FAST)
    c = select(x, y, 2, rule, seed=4, **FAST)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # another encoder initialisation gives another embedding


def test_herding_with_one_image_is_the_point_nearest_the_mean():
    f = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    nearest = int((f - f.mean(0)).pow(2).sum(1).argmin())
    assert herding(f, 1).tolist() == [nearest]


def test_herding_mean_tracks_the_class_mean_better_than_random_subsets():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(400, 8, generator=g) * torch.linspace(0.5, 3, 8)
    err = lambda idx: float((f[idx].mean(0) - f.mean(0)).norm())  # noqa: E731
    random_err = sorted(err(torch.randperm(400, generator=g)[:10]) for _ in range(50))
    assert err(herding(f, 10)) < random_err[0]


def test_kcenter_covers_every_cluster():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    f = (centres[:, None] + torch.randn(4, 30, 2, generator=g)).reshape(-1, 2)
    picked = kcenter(f, 4)
    assert sorted((picked // 30).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("kwargs,name", [
    (dict(rule="best"), "rule"), (dict(ipc=0), "ipc"), (dict(ipc=10_000), "ipc"),
    (dict(encoder_epochs=-1), "encoder_epochs"), (dict(encoder_per_class=0), "encoder_per_class"),
])
def test_bad_selection_arguments_name_the_argument(digits, kwargs, name):
    args = dict(ipc=1, rule="herding", seed=0, **FAST) | kwargs
    with pytest.raises(ValueError, match=name):
        select(digits.train_images, digits.train_labels, **args)


@pytest.mark.parametrize("factor", [1, 2])
def test_distillation_starts_from_the_selected_set(digits, factor):
    x, y = digits.train_images, digits.train_labels
    res = atom.distill(x, y, ipc=2, seed=0, init="herding", iterations=1, lr_img=1e-30, batch_real=8, net=NET,
                       init_options=dict(encoder_epochs=1, encoder_per_class=20), progress=False, device="cpu",
                       factor=factor)
    start, labels = selected_set(x, y, 2, "herding", factor=factor, seed=0, **FAST)
    torch.testing.assert_close(res.images, start)
    assert torch.equal(res.labels, labels) and torch.equal(labels, torch.arange(10).repeat_interleave(2))
    if factor == 1:
        torch.testing.assert_close(start, x[select(x, y, 2, "herding", seed=0, **FAST)])


def test_selected_set_packs_ipc_times_factor_squared_images_of_one_class_per_mosaic(digits):
    x, y = digits.train_images, digits.train_labels
    idx = select(x, y, 3 * 4, "herding", seed=0, **FAST)
    stored, labels = selected_set(x, y, 3, "herding", factor=2, seed=0, **FAST)
    assert stored.shape == (30, *x.shape[1:]) and torch.equal(labels, torch.arange(10).repeat_interleave(3))
    tiles, tile_labels = decode(stored, labels, 2)
    assert tiles.shape[0] == 120 and torch.equal(tile_labels, y[idx])
    # tile i is selected image i at half resolution: the mosaic of four copies of that image alone
    # decodes to it, so the packing keeps the selection's order
    own = torch.stack([decode(encode(x[i].expand(4, *x.shape[1:]), 2), y[i:i + 1], 2)[0][0]
                       for i in idx.tolist()])
    torch.testing.assert_close(tiles, own)
    with pytest.raises(ValueError, match="factor"):
        selected_set(x, y, 1, "herding", factor=3, seed=0, **FAST)
