"""NAS proxy: the search space, Spearman and Kendall correlations (against scipy), seeded
samples, and one tiny end-to-end search."""
import pytest
import torch

import atom
from atom.nas import kendall, nas_proxy, rank_agreement, sample_space, search_space, spearman, train_candidate
from atom.networks import build_network


def test_paper_search_space_has_720_convnets():
    space = search_space()
    assert len(space) == 720
    assert len({tuple(sorted(c.items())) for c in space}) == 720
    # on 8x8 inputs a 4-block pooling net would shrink below one pixel
    assert all(not (c["depth"] == 4 and c["pool"] != "none") for c in search_space(im_size=8))


def test_a_sample_of_the_space_builds_and_runs_forward_at_32x32():
    space = search_space()
    idx = sample_space(len(space), 12, seed=3)
    assert len(set(idx)) == 12 and idx == sorted(idx) and idx == sample_space(len(space), 12, seed=3)
    assert idx != sample_space(len(space), 12, seed=4) and sample_space(5, None, 0) == list(range(5))
    configs = [space[i] for i in idx] + [dict(depth=4, width=32, act="sigmoid", norm="layernorm", pool="max")]
    x = torch.randn(2, 3, 32, 32)
    for cfg in configs:
        net = build_network(3, 10, 32, generator=torch.Generator().manual_seed(0), **cfg)
        out = net(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all(), cfg


# fixed inputs, ties in one or both lists (accuracies of weak candidates often tie at chance)
PAIRS = [
    ([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]),
    ([10, 10, 20, 30, 30, 30, 40], [1, 2, 2, 3, 5, 4, 4]),
    ([0.1, 0.1, 0.1, 0.5, 0.7], [9, 8, 8, 7, 7]),
    ([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8]),
    ([11.2, 11.2, 45.0, 61.5, 61.5, 73.0, 11.2, 80.1], [10.0, 10.0, 52.3, 66.0, 64.1, 70.7, 10.0, 81.9]),
]


@pytest.mark.parametrize("a,b", PAIRS)
def test_correlations_agree_with_scipy(a, b):
    stats = pytest.importorskip("scipy.stats")
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)  # tau-b
    r = rank_agreement(a, b)
    assert (r["spearman"], r["kendall"]) == (spearman(a, b), kendall(a, b))
    assert a[r["picked"]] == max(a) and b[r["best"]] == max(b)


def test_kendall_properties():
    a = [1.0, 2.0, 3.0, 4.0]
    assert kendall(a, [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall(a, [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall([1, 2, 3], [5, 5, 5]) == 0.0  # constant: undefined, reported as 0
    with pytest.raises(ValueError, match="kendall"):
        kendall([1.0, 2.0], [2.0])


def test_spearman_properties():
    a = [1.0, 2.0, 3.0, 4.0]
    assert spearman(a, [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman(a, [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman(a, [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone transforms keep ranks
    assert spearman([1, 1, 2, 3], [1, 1, 2, 3]) == pytest.approx(1.0)  # ties
    with pytest.raises(ValueError, match="spearman"):
        spearman([1.0], [2.0])


def test_tiny_search_end_to_end(digits):
    x, y = digits.train_images, digits.train_labels
    proxy_x, proxy_y = atom.baseline_set("random", x, y, ipc=5, seed=0)
    space = search_space(depths=(1, 2), widths=(8,), acts=("relu",), norms=("instancenorm",), pools=("avg",))
    res = nas_proxy(proxy_x, proxy_y, x[:300], y[:300], x[300:500], y[300:500], space=space, epochs_proxy=3,
                    epochs_full=1, progress=False, test_x=digits.test_images, test_y=digits.test_labels)
    assert len(res["candidates"]) == 2 and -1 <= res["spearman"] <= 1
    assert res["picked"]["config"] in space and "full_test_accuracy" in res["best"]


def test_train_candidate_scores_every_set_with_the_same_recipe(digits):
    x, y = digits.train_images, digits.train_labels
    px, py = atom.baseline_set("random", x, y, ipc=2, seed=0)
    cfg = dict(depth=1, width=8, act="relu", norm="instancenorm", pool="avg")
    sets = {"full": (x[:200], y[:200], 1), "random": (px, py, 2)}
    kw = dict(test_x=digits.test_images, test_y=digits.test_labels, seed=0, device="cpu", num_classes=10)
    a = train_candidate(cfg, sets, x[200:300], y[200:300], **kw)
    b = train_candidate(cfg, {"random": sets["random"]}, x[200:300], y[200:300], **kw)
    assert set(a) == {"full", "random"} and a["random"]["val_accuracy"] == b["random"]["val_accuracy"]
    assert all(0 <= r["val_accuracy"] <= 100 and 0 <= r["test_accuracy"] <= 100 and r["seconds"] > 0
               for r in a.values())
