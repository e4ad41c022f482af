"""Accuracy margin on the embedded digits set (slow: `make test-slow`, about 5 minutes on 2 cores).

ATOM at IPC 10 must beat the `random` baseline of the same size (the same real images
distillation starts from), both trained by the same evaluator with the same seeds, by more
than the standard deviation of either. Hyperparameters are read from params.yaml's digits
group, the very values `make run` uses.
"""
from pathlib import Path

import pytest

import atom
from atom import preprocess
from stages.common.params import distill_kwargs, evaluate_settings, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["atom"])
def test_distilled_digits_beat_random_subset_at_ipc10(method):
    params = load_params(ROOT / "params.yaml")
    group = params["datasets"]["digits"]
    d = atom.load_digits(**group["options"])
    state = preprocess.fit(d.train_images, **group["preprocess"])
    x, y = preprocess.apply(d.train_images, state), d.train_labels
    xt, yt = preprocess.apply(d.test_images, state), d.test_labels

    res = atom.distill(x, y, ipc=10, method=method, device="cpu", progress=False,
                       **distill_kwargs(params, "digits", method))
    seeds, cfg, _ = evaluate_settings(params, "digits", method)
    distilled = atom.evaluate(res.images, res.labels, xt, yt, seeds=seeds, device="cpu", progress=False, **cfg)
    rx, ry = atom.baseline_set("random", x, y, ipc=10, seed=params["runtime"]["seed"])
    random = atom.evaluate(rx, ry, xt, yt, seeds=seeds, device="cpu", progress=False, **cfg)

    margin = distilled["mean"] - random["mean"]
    print(f"\n{method} ipc10: {distilled['mean']:.2f} +- {distilled['std']:.2f} {distilled['per_seed']}"
          f"\nrandom ipc10: {random['mean']:.2f} +- {random['std']:.2f} {random['per_seed']}"
          f"\nmargin {margin:.2f} over {len(seeds)} seeds")
    assert margin > max(distilled["std"], random["std"])
