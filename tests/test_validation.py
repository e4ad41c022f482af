"""Honest iteration selection: the validation split, the best-snapshot bookkeeping, and the
distillation loop's use of them (schedule, clamp, resume)."""
import math

import pytest
import torch

import atom
from atom.distillation import DistillConfig, learning_rate, pixel_range
from atom.validation import BestSnapshot, validation_split

NET = dict(width=8, depth=2, act="relu", norm="instancenorm", pool="avg")
FAST = dict(iterations=6, batch_real=8, net=NET, progress=False, log_every=2, device="cpu")


@pytest.mark.parametrize("per_class", [1, 7])
def test_validation_split_is_stratified_disjoint_complete_and_seeded(digits, per_class):
    y = digits.train_labels
    tr, va = validation_split(y, per_class, seed=0)
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert len(tr) + len(va) == len(y) and set(tr.tolist()) | set(va.tolist()) == set(range(len(y)))
    assert torch.equal(torch.bincount(y[va], minlength=10), torch.full((10,), per_class))
    assert torch.equal(validation_split(y, per_class, seed=0)[1], va)
    assert not torch.equal(validation_split(y, per_class, seed=1)[1], va)


def test_validation_split_refuses_to_empty_a_class():
    with pytest.raises(ValueError, match="per_class"):
        validation_split(torch.tensor([0, 0, 1, 1]), 2, seed=0)


def test_best_snapshot_keeps_the_highest_score_and_the_earliest_tie():
    best = BestSnapshot()
    for it, score in [(0, 30.0), (50, 41.0), (100, 39.5), (150, 41.0), (200, 12.0)]:
        best.update(it, torch.full((1,), float(it)), score)
    assert (best.iteration, best.score, float(best.images)) == (50, 41.0, 50.0)
    assert [i for i, _ in best.curve] == [0, 50, 100, 150, 200]
    again = BestSnapshot.from_state(best.state_dict())
    assert (again.iteration, again.score, again.curve) == (best.iteration, best.score, best.curve)


def test_distill_returns_the_snapshot_with_the_highest_validation_score(digits):
    x, y = digits.train_images, digits.train_labels
    seen = {}

    def validator(images, labels):  # a score with a known peak: the 2nd call (iteration 2)
        seen[len(seen)] = images.clone()
        return [1.0, 5.0, 2.0, 3.0][len(seen) - 1]

    res = atom.distill(x, y, ipc=1, seed=0, validator=validator, validate_every=2, **FAST)
    assert [i for i, _ in res.val_curve] == [0, 2, 4, 6]
    assert res.best_iteration == 2 and res.best_score == 5.0
    assert torch.equal(res.best_images, seen[1])
    assert not torch.equal(res.best_images, res.images)


def test_validate_every_without_a_validator_is_refused(digits):
    with pytest.raises(ValueError, match="validate_every"):
        atom.distill(digits.train_images, digits.train_labels, ipc=1, validate_every=2, **FAST)


def test_resume_keeps_the_best_snapshot_and_curve(digits, tmp_path):
    x, y = digits.train_images, digits.train_labels
    score = lambda images, labels: float(-images.abs().mean())  # noqa: E731
    kw = dict(FAST, checkpoint_every=2, snapshot_every=2, validate_every=2)
    full = atom.distill(x, y, ipc=1, seed=1, validator=score, checkpoint_path=tmp_path / "a.pt", **kw)

    def crash(iteration, images):
        if iteration == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        atom.distill(x, y, ipc=1, seed=1, validator=score, checkpoint_path=ckpt, callback=crash, **kw)
    resumed = atom.distill(x, y, ipc=1, seed=1, validator=score, checkpoint_path=ckpt, resume=True, **kw)
    assert torch.equal(full.images, resumed.images) and full.losses == resumed.losses
    assert full.val_curve == resumed.val_curve and torch.equal(full.best_images, resumed.best_images)


def test_cosine_schedule_starts_at_lr_img_and_decays_monotonically_to_zero():
    cfg = DistillConfig(ipc=1, iterations=100, lr_img=2.0, lr_schedule="cosine")
    lrs = [learning_rate(cfg, it) for it in range(101)]
    assert lrs[0] == 2.0 and math.isclose(lrs[50], 1.0) and abs(lrs[100]) < 1e-12
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    step = DistillConfig(ipc=1, iterations=100, lr_img=1.0, lr_milestones=[0.5], lr_gamma=0.1)
    assert learning_rate(step, 49) == 1.0 and math.isclose(learning_rate(step, 50), 0.1)


def test_clamp_keeps_synthetic_pixels_inside_the_real_range(digits):
    x, y = digits.train_images, digits.train_labels
    lo, hi = pixel_range(x)
    free = atom.distill(x, y, ipc=1, seed=0, lr_img=100.0, **FAST)
    clamped = atom.distill(x, y, ipc=1, seed=0, lr_img=100.0, clamp=True, **FAST)
    assert ((free.images < lo) | (free.images > hi)).any()  # the setting is not vacuous here
    assert ((clamped.images >= lo) & (clamped.images <= hi)).all()


def test_pixel_range_matches_a_direct_reduction():
    x = torch.randn(37, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    lo, hi = pixel_range(x, chunk=5)
    assert torch.equal(lo.flatten(), x.amin((0, 2, 3))) and torch.equal(hi.flatten(), x.amax((0, 2, 3)))


@pytest.mark.parametrize("kwargs,name", [(dict(lr_schedule="linear"), "lr_schedule"),
                                         (dict(init="best"), "init"),
                                         (dict(init_options=dict(epochs=1)), "init_options"),
                                         (dict(validate_every=-1), "validate_every")])
def test_bad_new_settings_name_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DistillConfig(ipc=1, **kwargs)
