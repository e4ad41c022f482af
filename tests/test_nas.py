"""NAS proxy: the search space, Spearman correlation, and one tiny end-to-end search."""
import pytest
import torch

import atom
from atom.nas import nas_proxy, search_space, spearman


def test_paper_search_space_has_720_convnets():
    space = search_space()
    assert len(space) == 720
    assert len({tuple(sorted(c.items())) for c in space}) == 720
    # on 8x8 inputs a 4-block pooling net would shrink below one pixel
    assert all(not (c["depth"] == 4 and c["pool"] != "none") for c in search_space(im_size=8))


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
