"""Batched multi-seed evaluation (atom/batched.py) reproduces sequential evaluation seed by seed."""
import importlib

import pytest
import torch

from atom.batched import evaluate_batched, train_batched
from atom.evaluation import EvalConfig, evaluate, train_evaluate

NET = dict(width=16, depth=2, act="relu", norm="instancenorm", pool="avg")
SEEDS = [0, 1, 2]
ev = importlib.import_module("atom.eval_protocol")  # where train_evaluate builds its network


@pytest.fixture(scope="module")
def small(digits):
    # 12 images per class: two SGD steps per epoch at batch 64 (a full and a partial batch)
    idx = torch.cat([(digits.train_labels == k).nonzero().squeeze(1)[:12] for k in range(10)])
    return digits.train_images[idx], digits.train_labels[idx], digits.test_images, digits.test_labels


def _sequential_weights(monkeypatch, x, y, tx, ty, cfg, seed):
    """Train with atom.eval_protocol.train_evaluate itself and catch the network it builds."""
    built = []
    real_build = ev.build_network

    def spy(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(ev, "build_network", spy)
    train_evaluate(x, y, tx[:10], ty[:10], num_classes=10, seed=seed, device="cpu", config=cfg)
    monkeypatch.setattr(ev, "build_network", real_build)
    return built[0].state_dict()


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_each_seed_weights_after_one_epoch_match_sequential(small, monkeypatch, mode):
    x, y, tx, ty = small
    cfg = EvalConfig(epochs=1, batch_size=64, net=NET)
    model = train_batched(x, y, seeds=SEEDS, num_classes=10, device=torch.device("cpu"), config=cfg, mode=mode)
    for i, seed in enumerate(SEEDS):
        want = _sequential_weights(monkeypatch, x, y, tx, ty, cfg, seed)
        got = model.unstack(i)
        assert set(got) == set(want)
        for name, w in want.items():
            assert float((got[name] - w).norm()) <= 1e-4 * float(w.norm()) + 1e-7, (seed, name)
    # different seeds: different networks
    assert not torch.allclose(model.unstack(0)["classifier.weight"], model.unstack(1)["classifier.weight"])


def test_batched_protocol_mean_within_one_std_of_sequential(small):
    x, y, tx, ty = small
    kw = dict(seeds=SEEDS, num_classes=10, device="cpu", progress=False, epochs=30, batch_size=64, net=NET)
    seq = evaluate(x, y, tx, ty, **kw)
    bat = evaluate(x, y, tx, ty, batched=True, **kw)
    assert bat["batched"] is True and bat["seeds"] == SEEDS and len(bat["per_seed"]) == 3
    assert abs(bat["mean"] - seq["mean"]) <= max(seq["std"], 1e-9)
    assert bat["mean"] > 20  # it learned something (chance is 10%)
    assert all(set(r) >= {"accuracy", "train_accuracy", "seconds", "seed"} for r in bat["runs"])


def test_batchnorm_falls_back_to_sequential(small):
    x, y, tx, ty = small
    net = dict(NET, norm="batchnorm")
    kw = dict(seeds=[0, 1], num_classes=10, device="cpu", progress=False, epochs=2, batch_size=64, net=net)
    bat = evaluate_batched(x, y, tx[:50], ty[:50], **kw)
    seq = evaluate(x, y, tx[:50], ty[:50], **kw)
    assert bat["batched"] is False and bat["per_seed"] == seq["per_seed"]
    with pytest.raises(ValueError, match="batchnorm"):
        train_batched(x, y, seeds=[0], num_classes=10, device=torch.device("cpu"),
                      config=EvalConfig(epochs=1, net=net))


def test_bad_arguments_raise(small):
    x, y, tx, ty = small
    with pytest.raises(ValueError, match="mode"):
        evaluate_batched(x, y, tx, ty, seeds=[0], mode="grouped", epochs=1, net=NET, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        evaluate_batched(x, y, tx, ty, seeds=[1, 1], epochs=1, net=NET, progress=False)
    with pytest.raises(ValueError, match="seeds"):
        evaluate_batched(x, y, tx, ty, seeds=[], epochs=1, net=NET, progress=False)


def test_bench_evaluate_quick_smoke(capsys):
    from benchmarks.bench_evaluate import main

    res = main(["--quick"])
    assert res["accuracy_diff"] == 0 and res["batched"] > 0
    assert "batched" in capsys.readouterr().out
