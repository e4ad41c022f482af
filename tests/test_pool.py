"""The pool of trained encoders (atom.pool) and distillation inside it (ATOM+): determinism,
resume, the interpolation's endpoints, the calibration term, and the errors a user meets."""
import pytest
import torch

import atom
from atom.distillation import CheckpointMismatchError, DistillConfig, DistillStep, random_subset
from atom.networks import ConvNet
from atom.pool import EncoderPool, PoolConfig, member_seed, train_pool

NET = dict(width=16, depth=2, act="relu", norm="instancenorm", pool="avg")
POOL = dict(models=2, epochs=2, net=NET, seed=0, batch_size=128, progress=False)
FAST = dict(iterations=4, batch_real=16, net=NET, progress=False, log_every=2)


@pytest.fixture(scope="module")
def small(digits):
    return digits.train_images, digits.train_labels


@pytest.fixture(scope="module")
def pool(small):
    return train_pool(*small, **POOL)


def _flat(state):
    return torch.cat([v.flatten().float() for _, v in sorted(state.items())])


def test_the_same_seed_gives_the_same_pool_and_members_differ(small, pool):
    again = train_pool(*small, **POOL)
    assert pool.fingerprint == again.fingerprint
    assert len(pool) == 2
    a, b = pool.members
    assert not torch.equal(_flat(a["init"]), _flat(b["init"]))
    for m in pool.members:  # training moved every member away from its start
        assert not torch.equal(_flat(m["init"]), _flat(m["trained"]))
    assert train_pool(*small, **dict(POOL, seed=1)).fingerprint != pool.fingerprint
    assert len({member_seed(s, i) for s in range(3) for i in range(5)}) == 15


def test_a_pool_killed_mid_member_resumes_bit_identically(small, pool, tmp_path, monkeypatch):
    import atom.pool as mod

    real_save, saves = mod.save_tensors, []

    def save_then_die(obj, path, **kw):  # the kill lands right after member 1's first epoch is saved
        real_save(obj, path, **kw)
        saves.append((obj["index"], obj["done"]))
        if obj["index"] == 1 and not obj["done"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(mod, "save_tensors", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_pool(*small, **POOL, state_dir=tmp_path)
    assert saves == [(0, False), (0, True), (1, False)]
    monkeypatch.setattr(mod, "save_tensors", real_save)
    resumed = train_pool(*small, **POOL, state_dir=tmp_path)
    assert resumed.fingerprint == pool.fingerprint
    # another setting does not reuse the state: it retrains and gives that setting's pool
    other = train_pool(*small, **dict(POOL, lr=0.02), state_dir=tmp_path)
    assert other.fingerprint == train_pool(*small, **dict(POOL, lr=0.02)).fingerprint != pool.fingerprint


def test_the_pool_file_round_trips(pool, tmp_path):
    path = pool.save(tmp_path / "pool.pt")
    back = EncoderPool.load_file(path)
    assert back.fingerprint == pool.fingerprint and back.net == pool.net
    assert back.meta["config"]["models"] == 2


def test_the_interpolation_lies_between_the_endpoints(pool):
    net = ConvNet(1, 10, 8, **NET)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        i = pool.load(net, g, "pool", (0.25, 0.75))
        m = pool.members[i]
        w, a, b = _flat(net.state_dict()), _flat(m["init"]), _flat(m["trained"])
        # w = lam * init + (1 - lam) * trained for one lam in [0.25, 0.75]
        lam = float(((w - b) @ (a - b)) / ((a - b) @ (a - b)))
        assert 0.25 - 1e-5 <= lam <= 0.75 + 1e-5
        assert torch.allclose(w, lam * a + (1 - lam) * b, atol=1e-5)
    i = pool.load(net, g, "trained")
    assert torch.equal(_flat(net.state_dict()), _flat(pool.members[i]["trained"]))


@pytest.mark.parametrize("method", ["atom", "datadam", "dm"])
@pytest.mark.parametrize("encoder,calibration", [("pool", 0.0), ("trained", 0.0), ("random", 0.5), ("pool", 0.5)])
def test_every_method_distils_inside_the_pool_deterministically(small, pool, method, encoder, calibration):
    x, y = small
    kw = dict(FAST, method=method, encoder=encoder, calibration=calibration, pool=pool, seed=1)
    a, b = atom.distill(x, y, ipc=1, **kw), atom.distill(x, y, ipc=1, **kw)
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert a.config["pool"] == pool.fingerprint
    plain = atom.distill(x, y, ipc=1, **dict(FAST, method=method, seed=1))
    assert not torch.equal(plain.images, a.images)  # the features came from elsewhere


def test_the_calibration_term_adds_a_cross_entropy_with_a_gradient(small, pool):
    x, y = small
    syn = x[random_subset(y, 1, torch.Generator().manual_seed(0), 10)].clone().requires_grad_(True)
    labels = torch.arange(10)
    losses = {}
    for cal in (0.0, 1.0):
        cfg = DistillConfig(ipc=1, method="dm", batch_real=16, net=NET, encoder="trained", calibration=cal)
        step = DistillStep(cfg, x, y, 10, torch.device("cpu"), torch.float32, pool=pool)
        losses[cal] = step(syn, labels, torch.Generator().manual_seed(0))
    # the same draws: the difference is the calibration term, a positive cross-entropy
    assert losses[1.0].item() > losses[0.0].item()
    gap = losses[1.0] - losses[0.0]
    gap.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_a_checkpoint_of_another_pool_does_not_resume(small, pool, tmp_path):
    x, y = small
    ckpt = tmp_path / "ck.pt"
    atom.distill(x, y, ipc=1, encoder="pool", pool=pool, checkpoint_path=ckpt, checkpoint_every=2, **FAST)
    other = train_pool(x, y, **dict(POOL, seed=5))
    with pytest.raises(CheckpointMismatchError, match="pool"):
        atom.distill(x, y, ipc=1, encoder="pool", pool=other, checkpoint_path=ckpt, resume=True,
                     checkpoint_every=2, **FAST)


def test_errors_name_the_setting(small, pool):
    x, y = small
    with pytest.raises(ValueError, match="need a trained pool"):
        atom.distill(x, y, ipc=1, encoder="pool", **FAST)
    with pytest.raises(ValueError, match="calibration"):
        atom.distill(x, y, ipc=1, calibration=-1.0, pool=pool, **FAST)
    with pytest.raises(ValueError, match="encoder: must be one of"):
        atom.distill(x, y, ipc=1, encoder="pretrained", pool=pool, **FAST)
    with pytest.raises(ValueError, match="encoder_lambda"):
        atom.distill(x, y, ipc=1, encoder="pool", encoder_lambda=[0.8, 0.2], pool=pool, **FAST)
    with pytest.raises(ValueError, match="net.width=16.*net.width=32"):
        atom.distill(x, y, ipc=1, encoder="pool", pool=pool, **dict(FAST, net=dict(NET, width=32)))
    with pytest.raises(ValueError, match="pool.models"):
        PoolConfig(models=-1)
    with pytest.raises(ValueError, match="pool.epochs"):
        PoolConfig(epochs=0)
    empty = train_pool(x, y, **dict(POOL, models=0))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="need a trained pool"):
        atom.distill(x, y, ipc=1, encoder="pool", pool=empty, **FAST)


def test_bench_pool_quick_smoke(capsys):
    """benchmarks/bench_pool.py runs end to end: positive rates, whole-pool estimates that scale
    with members x epochs, and one finite time and ratio per encoder variant."""
    from benchmarks.bench_pool import PRESETS, VARIANTS, main, preset_sizes

    res = main(["--quick"])
    assert res["pool"]["images_per_s"] > 0
    est, sizes = res["pool"]["presets"], preset_sizes()
    assert set(est) == set(PRESETS) and all(m >= 1 and e >= 1 for m, e in sizes.values())
    p, q = PRESETS[0], PRESETS[-1]
    assert est[q] / est[p] == pytest.approx(sizes[q][0] * sizes[q][1] / (sizes[p][0] * sizes[p][1]))
    (row,) = res["iterations"]
    assert set(row["seconds"]) == set(VARIANTS) and all(s > 0 for s in row["seconds"].values())
    assert row["ratio"]["random encoders (paper)"] == 1.0
    assert all(torch.isfinite(torch.tensor(v)) for v in row["loss"].values())
    assert "pool + calibration / random" in capsys.readouterr().out
