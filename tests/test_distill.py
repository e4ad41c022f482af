"""The distillation loop: gradients, determinism, checkpoint/resume, input validation."""
import pytest
import torch

import atom
from atom.distillation import CheckpointMismatchError, DistillConfig, DistillStep, random_subset

NET = dict(width=16, depth=2, act="relu", norm="instancenorm", pool="avg")
FAST = dict(iterations=4, batch_real=16, net=NET, progress=False, log_every=2)


@pytest.fixture(scope="module")
def small(digits):
    return digits.train_images, digits.train_labels


@pytest.mark.parametrize("method", ["atom", "datadam", "dm"])
def test_gradients_reach_synthetic_pixels_and_never_the_network(small, method):
    x, y = small
    cfg = DistillConfig(ipc=2, method=method, batch_real=16, net=NET)
    step = DistillStep(cfg, x, y, 10, torch.device("cpu"), torch.float32)
    syn = x[random_subset(y, 2, torch.Generator().manual_seed(0), 10)].clone().requires_grad_(True)
    loss = step(syn, torch.arange(10).repeat_interleave(2), torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0
    assert syn.grad is not None and torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in step.net.parameters())


def test_same_seed_gives_bit_identical_synthetic_set(small):
    x, y = small
    a = atom.distill(x, y, ipc=2, seed=3, **FAST)
    b = atom.distill(x, y, ipc=2, seed=3, **FAST)
    c = atom.distill(x, y, ipc=2, seed=4, **FAST)
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.equal(a.images, c.images)
    assert len(a.losses) == FAST["iterations"]
    assert torch.equal(a.labels, torch.arange(10).repeat_interleave(2))


def test_interrupted_run_resumes_bit_identical(small, tmp_path):
    x, y = small
    kw = dict(FAST, iterations=6, checkpoint_every=3, snapshot_every=3)
    full = atom.distill(x, y, ipc=2, seed=1, checkpoint_path=tmp_path / "a.pt", **kw)

    def crash(iteration, images):
        raise KeyboardInterrupt

    ckpt = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        atom.distill(x, y, ipc=2, seed=1, checkpoint_path=ckpt, callback=crash, **kw)
    assert atom.io.load_tensors(ckpt)["iteration"] == 3
    resumed = atom.distill(x, y, ipc=2, seed=1, checkpoint_path=ckpt, resume=True, **kw)
    assert torch.equal(full.images, resumed.images)
    assert full.losses == resumed.losses
    assert atom.io.load_tensors(ckpt)["iteration"] == 6


def test_resume_refuses_a_checkpoint_of_another_configuration(small, tmp_path):
    x, y = small
    ckpt = tmp_path / "c.pt"
    atom.distill(x, y, ipc=2, seed=1, checkpoint_path=ckpt, checkpoint_every=2, **FAST)
    with pytest.raises(CheckpointMismatchError, match="seed"):  # a ValueError naming the key
        atom.distill(x, y, ipc=2, seed=2, checkpoint_path=ckpt, resume=True, checkpoint_every=2, **FAST)


def test_real_init_is_the_random_baseline_draw(small):
    x, y = small
    res = atom.distill(x, y, ipc=3, seed=5, **dict(FAST, iterations=1), lr_img=1e-30)
    base_x, base_y = atom.baseline_set("random", x, y, ipc=3, seed=5)
    torch.testing.assert_close(res.images, base_x)
    assert torch.equal(res.labels, base_y)


def test_noise_init_and_loss_decreases_over_iterations(small):
    x, y = small
    res = atom.distill(x, y, ipc=1, seed=0, init="noise", **dict(FAST, iterations=30, log_every=10), lr_img=0.1)
    assert sum(res.losses[-5:]) < sum(res.losses[:5])


def test_real_chunking_does_not_change_the_result(small):
    x, y = small
    a = atom.distill(x, y, ipc=2, seed=0, real_chunk=0, **FAST)
    b = atom.distill(x, y, ipc=2, seed=0, real_chunk=7, **FAST)
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,name", [
    (dict(ipc=10_000), "ipc"),
    (dict(ipc=0), "ipc"),
    (dict(ipc=1, method="kip"), "method"),
    (dict(ipc=1, loss=dict(p_s=0.5)), "p_s"),
    (dict(ipc=1, loss=dict(p_c=0)), "p_c"),
    (dict(ipc=1, init="zeros"), "init"),
    (dict(ipc=1, iterations=0), "iterations"),
])
def test_bad_arguments_name_the_argument(small, kwargs, name):
    x, y = small
    with pytest.raises(ValueError, match=name):
        atom.distill(x, y, **{**FAST, **kwargs})


def test_bad_tensors_name_the_argument(small):
    x, y = small
    with pytest.raises(ValueError, match="images"):
        atom.distill(x[:, 0], y, ipc=1, **FAST)
    with pytest.raises(ValueError, match="labels"):
        atom.distill(x, y + 5, ipc=1, num_classes=10, **FAST)
    with pytest.raises(ValueError, match="labels"):
        atom.distill(x, y - 1, ipc=1, **FAST)


@pytest.mark.parametrize("setting", ["compile", "bf16"])
def test_a_setting_the_device_cannot_run_falls_back_to_eager_float32_with_a_warning(small, monkeypatch, caplog,
                                                                                   setting):
    # a device without a compiler (torch.compile fails at its first call) or without bf16: the
    # library warns naming the setting and goes on in eager float32; the generators go back to
    # the first iteration's start, so the set is the one an eager float32 run makes
    import atom.distillation as D

    x, y = small
    ref = atom.distill(x, y, ipc=1, seed=2, compile=False, bf16=False, **FAST)
    if setting == "compile":
        def broken(fn, **kw):
            def run(*a, **k):
                raise RuntimeError("no working C++ compiler found")
            return run
        monkeypatch.setattr(D.torch, "compile", broken)
        message = "compile failed on cpu (RuntimeError: no working C++ compiler found); continuing without it"
    else:
        real = torch.autocast

        def autocast(device_type, dtype=None, enabled=True, **kw):
            if enabled and dtype == torch.bfloat16:
                raise RuntimeError("bf16 is not supported on this device")
            return real(device_type, dtype=dtype, enabled=enabled, **kw)
        monkeypatch.setattr(D.torch, "autocast", autocast)
        message = "bf16 failed on cpu (RuntimeError: bf16 is not supported on this device); continuing without it"
    with caplog.at_level("WARNING", logger="atom.distillation"):
        got = atom.distill(x, y, ipc=1, seed=2, compile=setting == "compile", bf16=setting == "bf16", **FAST)
    assert message in caplog.text
    assert torch.equal(got.images, ref.images) and got.losses == ref.losses
    assert got.config["resolved"][setting] is False


def test_a_failure_with_neither_setting_on_is_raised_as_it_is(small, monkeypatch):
    import atom.distillation as D

    x, y = small

    def broken(self, *a, **k):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(D.DistillStep, "__call__", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        atom.distill(x, y, ipc=1, seed=2, compile=False, bf16=False, **FAST)
