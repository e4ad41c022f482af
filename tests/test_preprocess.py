"""Normalisation + Kornia ZCA (atom.preprocess): exact inverse, in-place path equal to the
copying path, and the whitened covariance the theory predicts for eps > 0."""
from __future__ import annotations

import pytest
import torch

from atom import preprocess
from atom.io import load_tensors, save_tensors


def _images(n=400, c=3, h=4, w=4, seed=0) -> torch.Tensor:
    # Correlated pixels (a smooth random field plus noise) so that ZCA has work to do.
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, c, 1, 1, generator=g)
    x = base + 0.3 * torch.rand(n, c, h, w, generator=g) + 0.1 * torch.arange(h * w).view(1, 1, h, w) / (h * w)
    return (x / x.max()).contiguous()


def test_normalise_only_gives_zero_mean_unit_std():
    x = _images()
    state, out = preprocess.fit_apply(x, normalize=True, zca=False)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.allclose(preprocess.inverse(out, state), x, atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.01])
def test_zca_round_trip_and_theory(eps):
    x = _images()
    before = x.clone()
    state = preprocess.fit(x, zca=True, zca_eps=eps)
    assert torch.equal(x, before)  # fit leaves its input alone
    w = preprocess.apply(x, state)
    assert torch.equal(x, before)
    assert torch.allclose(preprocess.inverse(w, state), x, atol=1e-5)
    # Kornia's unbiased covariance of the normalised data: C = U diag(l) U^T; with
    # T = U diag((l + eps)^-1/2) U^T the whitened covariance is U diag(l / (l + eps)) U^T.
    z = ((x - state["mean"].view(1, -1, 1, 1)) / state["std"].view(1, -1, 1, 1)).flatten(1).double()
    zc = z - z.mean(0)
    lam, u = torch.linalg.eigh(zc.T @ zc / (len(z) - 1))
    wf = w.flatten(1).double()
    cov_w = (wf - wf.mean(0)).T @ (wf - wf.mean(0)) / (len(wf) - 1)
    theory = u @ torch.diag(lam / (lam + eps)) @ u.T
    assert (cov_w - theory).abs().max() < 1e-4
    ev = torch.linalg.eigvalsh(cov_w)
    assert torch.allclose(ev, (lam / (lam + eps)).sort().values, atol=1e-4)
    assert float(ev.max()) < 1.0  # eps > 0: every direction is shrunk a little below unit variance
    # The same identity the real-data test uses: cov_w = I - eps T^2.
    t = state["zca_matrix"].double()
    assert (cov_w - (torch.eye(len(t), dtype=torch.float64) - eps * t @ t)).abs().max() < 1e-4
    assert torch.allclose(wf.mean(0), torch.zeros(wf.shape[1], dtype=torch.float64), atol=1e-5)
    # Symmetric whitening matrix and an exact inverse.
    assert torch.allclose(t, t.T, atol=1e-5)
    assert torch.allclose(state["zca_inverse"].double() @ t, torch.eye(len(t), dtype=torch.float64), atol=1e-4)


def test_fit_apply_inplace_matches_fit_then_apply():
    x = _images(seed=3)
    ref_state = preprocess.fit(x, zca=True)
    ref = preprocess.apply(x, ref_state)
    buf = x.clone()
    ptr = buf.data_ptr()
    state, out = preprocess.fit_apply(buf, zca=True, inplace=True)
    assert out.data_ptr() == ptr  # written into the caller's buffer
    assert torch.allclose(out, ref, atol=1e-5)
    for k in ("mean", "std", "zca_mean", "zca_matrix", "zca_inverse"):
        assert torch.allclose(state[k], ref_state[k], atol=1e-6), k
    test = _images(n=50, seed=4)
    t2 = test.clone()
    assert torch.allclose(preprocess.apply(t2, state, inplace=True), preprocess.apply(test, state), atol=1e-6)
    _, out_copy = preprocess.fit_apply(x, zca=True)  # not in place: input untouched
    assert torch.equal(x, _images(seed=3)) and torch.allclose(out_copy, ref, atol=1e-5)


def test_state_round_trips_through_weights_only_file(tmp_path):
    x = _images()
    state = preprocess.fit(x, zca=True)
    save_tensors({"state": state}, tmp_path / "s.pt")
    back = load_tensors(tmp_path / "s.pt")["state"]  # torch.load(weights_only=True)
    assert back["zca"] is True and back["shape"] == [3, 4, 4]
    assert torch.equal(preprocess.apply(x, back), preprocess.apply(x, state))


def test_bad_inputs():
    x = _images()
    with pytest.raises(ValueError, match="zca_eps"):
        preprocess.fit(x, zca=True, zca_eps=0)
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\)"):
        preprocess.fit(x.flatten(1))
    with pytest.raises(ValueError, match="zero variance"):
        preprocess.fit(torch.zeros(5, 1, 2, 2))
    with pytest.raises(ValueError, match="at least 2"):
        preprocess.fit(x[:1], zca=True)
    state = preprocess.fit(x, zca=True)
    with pytest.raises(ValueError, match=r"expected \(N, 3, 4, 4\)"):
        preprocess.apply(torch.zeros(2, 3, 5, 5), state)
    with pytest.raises(ValueError, match="contiguous"):
        preprocess.fit_apply(x.transpose(2, 3), inplace=True)
    with pytest.raises(ValueError, match="contiguous float"):
        preprocess.apply(x.transpose(2, 3), state, inplace=True)
