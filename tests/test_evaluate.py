"""The evaluator: protocol, determinism, multi-seed summary, baselines."""
import statistics

import pytest
import torch

import atom
from atom.evaluation import EvalConfig

NET = dict(width=16, depth=2, act="relu", norm="instancenorm", pool="avg")


def test_train_evaluate_is_deterministic_per_seed_and_learns(digits):
    x, y = atom.baseline_set("random", digits.train_images, digits.train_labels, ipc=10, seed=0)
    kw = dict(epochs=30, net=NET)
    a = atom.train_evaluate(x, y, digits.test_images, digits.test_labels, seed=1, **kw)
    b = atom.train_evaluate(x, y, digits.test_images, digits.test_labels, seed=1, **kw)
    assert a["accuracy"] == b["accuracy"]
    assert 30 < a["accuracy"] <= 100  # chance is 10%


def test_multi_seed_summary(digits):
    x, y = atom.baseline_set("random", digits.train_images, digits.train_labels, ipc=2, seed=0)
    res = atom.evaluate(x, y, digits.test_images, digits.test_labels, seeds=[0, 1, 2], epochs=5, net=NET,
                        progress=False)
    assert res["seeds"] == [0, 1, 2] and len(res["per_seed"]) == 3 and res["n"] == 3
    assert res["mean"] == pytest.approx(statistics.fmean(res["per_seed"]))
    assert res["std"] == pytest.approx(statistics.pstdev(res["per_seed"]))


def test_schedulers():
    half = EvalConfig(epochs=10, lr=0.01, scheduler="halfway")
    assert [half.lr_at(e) for e in (0, 4, 5, 9)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    step = EvalConfig(epochs=100, lr=0.01, scheduler="step", step_size=15, step_gamma=0.5)
    assert [step.lr_at(e) for e in (0, 14, 15, 30)] == pytest.approx([0.01, 0.01, 0.005, 0.0025])


def test_baselines(digits):
    x, y = digits.train_images, digits.train_labels
    rx, ry = atom.baseline_set("random", x, y, ipc=4, seed=0)
    assert rx.shape == (40, 1, 8, 8) and torch.equal(torch.bincount(ry), torch.full((10,), 4))
    rx2, _ = atom.baseline_set("random", x, y, ipc=4, seed=0)
    assert torch.equal(rx, rx2)
    fx, fy = atom.baseline_set("full", x, y)
    assert fx is x and fy is y


@pytest.mark.parametrize("kwargs,name", [(dict(scheduler="cosine"), "scheduler"), (dict(epochs=0), "epochs"),
                                         (dict(lr=0), "lr"), (dict(momentum=1.5), "momentum")])
def test_bad_protocol_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EvalConfig(**kwargs)


def test_bad_baseline_and_tensors(digits):
    x, y = digits.train_images, digits.train_labels
    with pytest.raises(ValueError, match="baseline"):
        atom.baseline_set("herding", x, y, ipc=1)
    with pytest.raises(ValueError, match="ipc"):
        atom.baseline_set("random", x, y, ipc=100_000)
    with pytest.raises(ValueError, match="test images"):
        atom.train_evaluate(x, y, digits.test_images[:, :, :4], digits.test_labels, epochs=1, net=NET)


def test_cross_architecture_evaluation_runs(digits):
    x, y = atom.baseline_set("random", digits.train_images, digits.train_labels, ipc=1, seed=0)
    r = atom.train_evaluate(x, y, digits.test_images, digits.test_labels, epochs=1, arch="alexnet",
                            net=dict(norm="instancenorm"))
    assert 0 <= r["accuracy"] <= 100
    with pytest.raises(ValueError, match="arch"):
        EvalConfig(arch="vit")
