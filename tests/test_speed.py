"""Speed settings (atom.speed) and the fast paths behind them: "auto" resolves to fixed values
on the CPU; device-drawn randomness is seeded; the fast kernels give the exact path's values
(pooling, powers, dense augmentation) or stay within float32's own error (Winograd), and bf16
stays within its tolerance of float32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import atom
from atom.augment import DSA
from atom.distillation import DistillConfig, DistillStep, RealSampler
from atom.losses import _pow_abs, _pow_nonneg
from atom.networks import avg_pool_2x2
from atom.speed import AUTO, DISTILL_SETTINGS, resolve_batched, resolve_distill

CPU = torch.device("cpu")
ALL_AUTO = {k: AUTO for k in DISTILL_SETTINGS}


def test_auto_resolves_to_fixed_values_on_the_cpu():
    for _ in range(2):  # no timing, no state: the same answer every time
        got = resolve_distill(ALL_AUTO, CPU, (3, 32, 32), 8000)
        assert got == {"real_chunk": 32, "compile": False, "bf16": False, "channels_last": False,
                       "winograd": torch.backends.nnpack.is_available()}
    small = resolve_distill(ALL_AUTO, CPU, (1, 8, 8), 300)
    assert small["real_chunk"] == 512 and small["winograd"] is False  # Winograd loses on 8x8 maps
    assert resolve_distill(ALL_AUTO, CPU, (3, 64, 64), 300)["real_chunk"] == 8
    assert resolve_batched(AUTO, CPU) is False and resolve_batched(True, CPU) is True
    fixed = dict(real_chunk=7, compile=False, bf16=False, channels_last=True, winograd=False)
    assert resolve_distill(fixed, CPU, (3, 32, 32), 10) == fixed  # explicit values pass through
    # the default DistillConfig is all-auto, and a step reports what it resolved
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 4
    step = DistillStep(DistillConfig(ipc=2, batch_real=4, net=dict(width=8, depth=2)), x, y, 4, CPU, torch.float32)
    assert step.settings == resolve_distill(ALL_AUTO, CPU, (1, 8, 8), 8000)


def test_auto_on_cuda_picks_the_accelerator_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    got = resolve_distill(ALL_AUTO, torch.device("cuda"), (3, 32, 32), 8000)
    assert got == {"real_chunk": 0, "compile": True, "bf16": True, "channels_last": True, "winograd": False}
    assert resolve_distill(ALL_AUTO, torch.device("cuda"), (3, 32, 32), 200)["compile"] is False
    assert resolve_batched(AUTO, torch.device("cuda")) is True


@pytest.mark.parametrize("key,value", [("real_chunk", "fast"), ("real_chunk", -1), ("compile", "yes"),
                                       ("bf16", 1), ("winograd", None), ("compile_mode", "turbo")])
def test_bad_speed_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        DistillConfig(ipc=1, **{key: value})
    with pytest.raises(ValueError, match="batched"):
        resolve_batched("sometimes", CPU)


def test_real_sampler_is_seeded_and_draws_each_class_without_replacement():
    labels = torch.arange(300) % 7
    s = RealSampler(labels, 7, 12, CPU)
    a, la = s.sample(torch.Generator().manual_seed(3))
    b, lb = s.sample(torch.Generator().manual_seed(3))
    c, _ = s.sample(torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert a.shape == (84,) and torch.equal(labels[a], la) and torch.equal(la, torch.arange(7).repeat_interleave(12))
    for cls in range(7):
        assert len(set(a[la == cls].tolist())) == 12  # distinct images of that class
    # a class smaller than the batch gives all its images, and the labels say which rows
    labels = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(5, dtype=torch.long)])
    idx, lab = RealSampler(labels, 2, 10, CPU).sample(torch.Generator().manual_seed(0))
    assert torch.equal(labels[idx], lab) and (lab == 0).sum() == 10 and sorted(idx[lab == 1].tolist()) == list(range(20, 25))


def test_iteration_draws_come_from_the_given_generator():
    """Everything an iteration draws comes from the generator passed in, on its device: the same
    seed gives the same network, batch and augmentation, hence the same loss and gradient."""
    x, y = torch.randn(200, 3, 16, 16), torch.arange(200) % 10
    cfg = DistillConfig(ipc=2, batch_real=8, net=dict(width=16, depth=2))
    step = DistillStep(cfg, x, y, 10, CPU, torch.float32)
    syn = x[:20].clone().requires_grad_(True)
    syn_labels = torch.arange(10).repeat_interleave(2)
    out = []
    for seed in (5, 5, 6):
        syn.grad = None
        loss = step(syn, syn_labels, torch.Generator(device="cpu").manual_seed(seed))
        loss.backward()
        out.append((float(loss.detach()), syn.grad.clone()))
    assert out[0][0] == out[1][0] and torch.equal(out[0][1], out[1][1])
    assert out[0][0] != out[2][0]


def test_dense_augmentation_equals_the_gather_path():
    dsa = DSA()
    x = torch.randn(60, 3, 16, 16)
    slots = torch.arange(60) % 10
    draw = dsa.sample(10, torch.Generator().manual_seed(1))
    assert len(set(draw.family.tolist())) > 2  # several families in one call
    torch.testing.assert_close(dsa.apply(x, draw, slots, dense=True), dsa.apply(x, draw, slots, dense=False),
                               rtol=0, atol=1e-6)


def test_gemm_pooling_and_nonnegative_powers_equal_the_plain_ops():
    x = torch.randn(4, 5, 12, 10, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(avg_pool_2x2(x), F.avg_pool2d(x, 2))
    assert torch.autograd.gradcheck(avg_pool_2x2, (x,))
    f = torch.randn(3, 4, 6, 6).relu()
    for p in (1, 2, 3, 4):
        assert torch.equal(_pow_nonneg(f, p), _pow_abs(f, p))
        with torch.no_grad():  # the in-place variant of the real branch
            assert torch.equal(_pow_nonneg(f.clone(), p), _pow_abs(f, p))


def _loss_grad(step, syn, syn_labels, seed):
    syn = syn.clone().requires_grad_(True)
    loss = step(syn, syn_labels, torch.Generator().manual_seed(seed))
    loss.backward()
    return float(loss.detach()), syn.grad.double()


@pytest.mark.skipif(not torch.backends.nnpack.is_available(), reason="NNPACK not built into this torch")
def test_winograd_stays_within_float32_error():
    """The Winograd real branch vs the exact one, both against float64: the loss agrees to 1e-6
    and the gradient is no further from float64 than the exact float32 path's own error."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 3, 32, 32, generator=g), torch.arange(400) % 10
    syn, syn_labels = x[:20].clone(), torch.arange(10).repeat(2)
    net = dict(width=32, depth=3)
    mk = lambda dtype, **kw: DistillStep(DistillConfig(ipc=2, batch_real=32, net=net, **kw), x, y, 10, CPU, dtype)
    l64, g64 = _loss_grad(mk(torch.float64, winograd=False), syn.double(), syn_labels, 1)
    lex, gex = _loss_grad(mk(torch.float32, winograd=False), syn, syn_labels, 1)
    lw, gw = _loss_grad(mk(torch.float32, winograd=True), syn, syn_labels, 1)
    assert abs(lw - l64) <= 1e-6 * l64 and abs(lex - l64) <= 1e-6 * l64
    err = lambda gr: float((gr - g64).abs().max() / g64.abs().max())
    assert err(gw) <= 3 * err(gex) + 1e-6


def test_winograd_distillation_matches_the_exact_path():
    x, y = torch.randn(300, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.arange(300) % 10
    kw = dict(ipc=2, iterations=15, batch_real=16, net=dict(width=16, depth=2), progress=False, seed=0)
    a = atom.distill(x, y, winograd=True, **kw)
    b = atom.distill(x, y, winograd=False, **kw)
    assert a.config["resolved"]["winograd"] is True and b.config["resolved"]["winograd"] is False
    torch.testing.assert_close(torch.tensor(a.losses), torch.tensor(b.losses), rtol=1e-4, atol=0)
    assert float((a.images - b.images).abs().max()) < 1e-3


def test_bf16_loss_and_gradient_within_tolerance_of_float32():
    """bf16 autocast (CPU autocast here; CUDA on GPUs): loss within 2 % and the gradient pointing
    the same way (cosine > 0.98) as float32."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 3, 32, 32, generator=g), torch.arange(400) % 10
    syn, syn_labels = x[:20].clone(), torch.arange(10).repeat(2)
    net = dict(width=32, depth=3)
    mk = lambda **kw: DistillStep(DistillConfig(ipc=2, batch_real=32, net=net, winograd=False, **kw), x, y, 10, CPU,
                                  torch.float32)
    l32, g32 = _loss_grad(mk(bf16=False), syn, syn_labels, 1)
    l16, g16 = _loss_grad(mk(bf16=True), syn, syn_labels, 1)
    assert abs(l16 - l32) <= 2e-2 * l32
    assert float(F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)) > 0.98


def test_default_cpu_settings_resume_bit_identical(tmp_path):
    """With the CPU's resolved fast paths on (Winograd real branch, GEMM pooling, in-place real
    branch) and multi-formation, the same seed gives the same set and a killed run resumes to
    the same bits."""
    x, y = torch.randn(240, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.arange(240) % 6
    kw = dict(ipc=1, iterations=6, batch_real=8, net=dict(width=8, depth=3), progress=False, checkpoint_every=3,
              snapshot_every=3, seed=4, factor=2)
    full = atom.distill(x, y, checkpoint_path=tmp_path / "a.pt", **kw)
    assert full.config["resolved"]["winograd"] is torch.backends.nnpack.is_available()
    again = atom.distill(x, y, **{k: v for k, v in kw.items() if k != "checkpoint_every"})
    assert torch.equal(full.images, again.images)

    def crash(iteration, images):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atom.distill(x, y, checkpoint_path=tmp_path / "b.pt", callback=crash, **kw)
    resumed = atom.distill(x, y, checkpoint_path=tmp_path / "b.pt", resume=True, **kw)
    assert torch.equal(full.images, resumed.images) and full.losses == resumed.losses
