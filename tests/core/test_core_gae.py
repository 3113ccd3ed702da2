"""GAE against a per-row pure-Python loop, hand-computed numbers, and knob sensitivity."""

import pytest
import torch

from rlexp.core import gae

LENGTHS = [7, 4, 0, 1, 6, 2]
T = 7


def _check_against_ref(ref, gamma, lam, seed=0, dtype=torch.float64, tol=1e-9):
    mask, (r, v) = ref.make_batch(LENGTHS, T, seed=seed, dtype=dtype, n=2)
    adv, ret = gae(r, v, mask, gamma, lam)
    assert adv.shape == ret.shape == (len(LENGTHS), T)
    assert adv.dtype == ret.dtype == dtype
    rr, vv = ref.rows(r, LENGTHS), ref.rows(v, LENGTHS)
    for b, L in enumerate(LENGTHS):
        want_a, want_r = ref.gae(rr[b], vv[b], gamma, lam)
        assert adv[b, :L].tolist() == pytest.approx(want_a, abs=tol)
        assert ret[b, :L].tolist() == pytest.approx(want_r, abs=tol)
        assert (adv[b, L:] == 0).all() and (ret[b, L:] == 0).all()  # exactly 0 off-mask


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_matches_reference(ref, gamma, lam):
    _check_against_ref(ref, gamma, lam, seed=int(gamma * 100 + lam * 10))


def test_float32_and_mask_dtypes(ref):
    _check_against_ref(ref, 0.9, 0.95, dtype=torch.float32, tol=1e-4)
    mask, (r, v) = ref.make_batch(LENGTHS, T, seed=5, n=2)
    outs = [gae(r, v, mask.to(dt), 0.9, 0.8) for dt in (torch.bool, torch.int32, torch.float16)]
    for a, rt in outs[1:]:
        assert torch.equal(a, outs[0][0]) and torch.equal(rt, outs[0][1])


def test_hand_computed_three_tokens():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 0.9, λ = 0.8 (γλ = 0.72); two garbage pads.
    # δ2 = 1 + 0.9*0   - 0.7 = 0.3   Â2 = 0.3
    # δ1 = 0 + 0.9*0.7 - 0.6 = 0.03  Â1 = 0.03 + 0.72*0.3   = 0.246
    # δ0 = 0 + 0.9*0.6 - 0.5 = 0.04  Â0 = 0.04 + 0.72*0.246 = 0.21712
    # returns = Â + V = [0.71712, 0.846, 1.0]
    r = torch.tensor([[0.0, 0.0, 1.0, 1e6, -1e6]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.6, 0.7, 1e6, 1e6]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0.21712, 0.246, 0.3, 0.0, 0.0], abs=1e-12)
    assert ret.tolist()[0] == pytest.approx([0.71712, 0.846, 1.0, 0.0, 0.0], abs=1e-12)


def test_limits_td0_and_monte_carlo():
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.25, 1.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    adv, _ = gae(r, v, mask, gamma=0.0, lam=0.5)  # γ=0: Â = r - V
    assert adv.tolist()[0] == pytest.approx([0.5, 1.75, 2.0, 0.0])
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)  # Monte Carlo: R = reward-to-go
    assert ret.tolist()[0] == pytest.approx([6.0, 5.0, 3.0, 0.0])
    adv, _ = gae(r, v, mask, gamma=1.0, lam=0.0)  # TD(0) with γ=1
    assert adv.tolist()[0] == pytest.approx([1 + 0.25 - 0.5, 2 + 1.0 - 0.25, 3 - 1.0, 0.0])


def test_knobs_change_result(ref):
    mask, (r, v) = ref.make_batch(LENGTHS, T, seed=9, n=2)
    base, _ = gae(r, v, mask, 0.9, 0.9)
    assert not torch.allclose(base, gae(r, v, mask, 0.5, 0.9)[0])
    assert not torch.allclose(base, gae(r, v, mask, 0.9, 0.5)[0])


def test_no_grad_and_no_mutation(ref):
    mask, (r, v) = ref.make_batch(LENGTHS, T, seed=3, n=2)
    r0, v0 = r.clone(), v.clone()
    v.requires_grad_(True)
    adv, ret = gae(r, v, mask, 0.9, 0.95)
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.equal(r, r0) and torch.equal(v.detach(), v0)


@pytest.mark.parametrize("gamma,lam", [(-0.1, 0.5), (1.5, 0.5), (0.9, 1.2)])
def test_invalid_gamma_lam(gamma, lam):
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        gae(x, x, x, gamma, lam)
