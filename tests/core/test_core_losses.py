"""ppo_policy_loss and value_loss: references, hand cases, knobs, gradients, metrics."""

import math
import zlib

import pytest
import torch

from rlexp.core import ppo_policy_loss, value_loss

LENGTHS = [6, 3, 0, 1, 5, 2]
T = 6
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
        "seq-mean-token-sum-norm", "prompt-mean"]


def _policy_batch(ref, seed, adv_sign=None):
    mask, (lp, old, adv) = ref.make_batch(LENGTHS, T, seed=seed, n=3)
    old = torch.where(mask, lp + 0.4 * old, old)  # ratios spread around 1, garbage kept off-mask
    if adv_sign is not None:
        adv = torch.where(mask, adv.abs() * adv_sign, adv)
    return mask, lp, old, adv


def _ref_policy(ref, lp, old, adv, eps_low, eps_high, dual, agg, exp=math.exp, rows=None):
    rows = rows or (lambda x: ref.rows(x, LENGTHS))
    L, O, A = rows(lp), rows(old), rows(adv)
    per = [[ref.ppo_token(l, o, a, eps_low, eps_high, dual, exp=exp) for l, o, a in zip(*r)]
           for r in zip(L, O, A)]
    return ref.aggregate(per, agg, group_size=2, T=T)


# ------------------------------------------------------------------ policy: reference
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps_high,dual", [(None, None), (0.28, None), (None, 3.0), (0.3, 1.5)])
@pytest.mark.parametrize("adv_sign", [None, 1.0, -1.0])
def test_policy_matches_reference(ref, agg, eps_high, dual, adv_sign):
    seed = zlib.crc32(repr((agg, eps_high, dual, adv_sign)).encode()) % 1000
    mask, lp, old, adv = _policy_batch(ref, seed=seed, adv_sign=adv_sign)
    loss, metrics = ppo_policy_loss(lp, old, adv, mask, 0.2, eps_high, dual, agg, group_size=2)
    want = _ref_policy(ref, lp, old, adv, 0.2, eps_high or 0.2, dual, agg)
    assert loss.dim() == 0 and loss.item() == pytest.approx(want, abs=1e-9)


def test_policy_metrics_match_reference(ref):
    mask, lp, old, adv = _policy_batch(ref, seed=21)
    eps_l, eps_h, c = 0.1, 0.15, 1.3
    _, metrics = ppo_policy_loss(lp, old, adv, mask, eps_l, eps_h, c)
    assert set(metrics) == {"clipfrac", "clipfrac_low", "clipfrac_high", "dual_clipfrac",
                            "approx_kl", "is_ratio_mean"}
    toks = [(l, o, a) for r in zip(*(ref.rows(x, LENGTHS) for x in (lp, old, adv)))
            for l, o, a in zip(*r)]
    n = len(toks)
    rho = [math.exp(l - o) for l, o, _ in toks]
    unclip = [-a * p for p, (_, _, a) in zip(rho, toks)]
    clip = [-a * min(max(p, 1 - eps_l), 1 + eps_h) for p, (_, _, a) in zip(rho, toks)]
    want = {
        "clipfrac": sum(c_ > u for c_, u in zip(clip, unclip)) / n,
        "clipfrac_low": sum(a < 0 and p < 1 - eps_l for p, (_, _, a) in zip(rho, toks)) / n,
        "clipfrac_high": sum(a > 0 and p > 1 + eps_h for p, (_, _, a) in zip(rho, toks)) / n,
        "dual_clipfrac": sum(a < 0 and -c * a < max(u, c_)
                             for u, c_, (_, _, a) in zip(unclip, clip, toks)) / n,
        "approx_kl": sum(p - 1 - math.log(p) for p in rho) / n,
        "is_ratio_mean": sum(rho) / n,
    }
    assert 0 < want["clipfrac"] < 1 and 0 < want["dual_clipfrac"] < 1  # the batch exercises them
    for k, v in metrics.items():
        assert v.dim() == 0 and not v.requires_grad
        assert v.item() == pytest.approx(want[k], abs=1e-9), k


# ------------------------------------------------------------------ policy: hand cases
def _hand(rho, adv):
    lp = torch.tensor([[math.log(r) for r in rho]], dtype=torch.float64)
    return lp, torch.zeros_like(lp), torch.tensor([adv], dtype=torch.float64), torch.ones(1, 3)


def test_policy_hand_symmetric_clip():
    # ρ = [1.5, 0.5, 1.0], Â = [1, -1, 2], ε = 0.2
    # t0: -min(1.5, 1.2)      = -1.2 (clipped high)
    # t1: -min(-0.5, -0.8)    =  0.8 (clipped low)
    # t2: -min(2, 2)          = -2.0
    # token-mean = (-1.2 + 0.8 - 2) / 3 = -0.8
    loss, m = ppo_policy_loss(*_hand([1.5, 0.5, 1.0], [1.0, -1.0, 2.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.8)
    assert m["clipfrac"].item() == pytest.approx(2 / 3)
    assert m["clipfrac_low"].item() == pytest.approx(1 / 3)
    assert m["clipfrac_high"].item() == pytest.approx(1 / 3)
    assert m["dual_clipfrac"].item() == 0.0
    # approx_kl = [(0.5 - ln 1.5) + (-0.5 - ln 0.5) + 0] / 3
    assert m["approx_kl"].item() == pytest.approx((0.5 - math.log(1.5) - 0.5 - math.log(0.5)) / 3)
    assert m["is_ratio_mean"].item() == pytest.approx(1.0)


def test_policy_hand_no_clip_and_asymmetric():
    args = _hand([1.5, 0.5, 1.0], [1.0, -1.0, 2.0])
    # ε = 10 never binds: (-1.5 + 0.5 - 2) / 3 = -1.0
    loss, m = ppo_policy_loss(*args, clip_eps=10.0)
    assert loss.item() == pytest.approx(-1.0) and m["clipfrac"].item() == 0.0
    # ε_low = 0.2, ε_high = 0.6: t0 no longer clipped: (-1.5 + 0.8 - 2) / 3 = -0.9
    loss, m = ppo_policy_loss(*args, clip_eps=0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx(-0.9)
    assert m["clipfrac_high"].item() == 0.0 and m["clipfrac_low"].item() == pytest.approx(1 / 3)


def test_policy_hand_dual_clip():
    # ρ = [3.0, 0.5, 1.0], Â = [-1, -1, 2], ε = 0.2, c = 2
    # t0: max(3.0, 1.2) = 3.0, bounded by -cÂ = 2 -> 2 ; t1: 0.8 (bound 2 not taken) ; t2: -2
    # with dual: (2 + 0.8 - 2) / 3 = 0.8/3 ; without: (3 + 0.8 - 2) / 3 = 0.6
    args = _hand([3.0, 0.5, 1.0], [-1.0, -1.0, 2.0])
    loss, m = ppo_policy_loss(*args, clip_eps=0.2, dual_clip=2.0)
    assert loss.item() == pytest.approx(0.8 / 3)
    assert m["dual_clipfrac"].item() == pytest.approx(1 / 3)
    assert m["clipfrac"].item() == pytest.approx(1 / 3)
    assert ppo_policy_loss(*args, clip_eps=0.2)[0].item() == pytest.approx(0.6)
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match="dual_clip"):
            ppo_policy_loss(*args, clip_eps=0.2, dual_clip=bad)


# ------------------------------------------------------------------ policy: knobs, grads
def test_policy_knobs_change_loss(ref):
    mask, lp, old, adv = _policy_batch(ref, seed=5)
    base = dict(clip_eps=0.1, clip_eps_high=None, dual_clip=None, agg="token-mean")
    variants = [dict(clip_eps=0.3), dict(clip_eps_high=0.3), dict(dual_clip=1.2),
                dict(agg="seq-mean-token-sum")]
    loss0 = ppo_policy_loss(lp, old, adv, mask, **base)[0]
    for v in variants:
        loss = ppo_policy_loss(lp, old, adv, mask, **{**base, **v})[0]
        assert not torch.isclose(loss, loss0), v
    agg_max_len = [ppo_policy_loss(lp, old, adv, mask, 0.1, agg="seq-mean-token-sum-norm",
                                   max_len=L)[0].item() for L in (T, 2 * T)]
    assert agg_max_len[0] == pytest.approx(2 * agg_max_len[1])


def test_policy_gradient_zero_exactly_on_clipped_tokens():
    # tokens: (ρ, Â) = clipped-high, clipped-low, inside, above-but-neg-adv, below-but-pos-adv
    rho = [1.5, 0.5, 1.05, 1.5, 0.5]
    adv = [1.0, -1.0, 1.0, -1.0, 1.0]
    lp = torch.tensor([[math.log(r) for r in rho]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 5, dtype=torch.float64)
    loss, _ = ppo_policy_loss(lp, old, torch.tensor([adv], dtype=torch.float64),
                              torch.ones(1, 5), clip_eps=0.2)
    loss.backward()
    g = lp.grad[0]
    assert g[0] == 0 and g[1] == 0
    assert (g[2:] != 0).all()
    # d(-Âρ)/d logπ = -Âρ / n
    assert g[2:].tolist() == pytest.approx([-1.05 / 5, 1.5 / 5, -0.5 / 5])


@pytest.mark.parametrize("agg", ["token-mean", "prompt-mean"])
@pytest.mark.parametrize("dual", [None, 1.5])
def test_policy_gradient_matches_autograd_of_reference(ref, agg, dual):
    mask, lp, old, adv = _policy_batch(ref, seed=31)
    x = lp.clone().requires_grad_(True)
    loss, _ = ppo_policy_loss(x, old, adv, mask, 0.1, 0.2, dual, agg, group_size=2)
    loss.backward()
    y = lp.clone().requires_grad_(True)

    def trows(t):
        return [[t[b, i] for i in range(L)] for b, L in enumerate(LENGTHS)]

    want = _ref_policy(ref, y, old, adv, 0.1, 0.2, dual, agg, exp=torch.exp, rows=trows)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), abs=1e-9)
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()
    assert torch.allclose(x.grad, y.grad, atol=1e-12)


def test_policy_garbage_off_mask_is_ignored(ref):
    mask, lp, old, adv = _policy_batch(ref, seed=7)
    clean = [torch.where(mask, t, torch.zeros_like(t)) for t in (lp, old, adv)]
    a = ppo_policy_loss(*(t for t in (lp, old, adv)), mask, 0.2, dual_clip=2.0)
    b = ppo_policy_loss(*clean, mask, 0.2, dual_clip=2.0)
    assert a[0].item() == b[0].item()
    assert all(a[1][k].item() == b[1][k].item() for k in a[1])


# ------------------------------------------------------------------ value loss
def _value_batch(ref, seed):
    mask, (v, old, ret) = ref.make_batch(LENGTHS, T, seed=seed, n=3)
    old = torch.where(mask, v + 0.3 * old, old)
    return mask, v, old, ret


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps", [None, 0.0, 0.1, 0.5])
def test_value_matches_reference(ref, agg, eps):
    mask, v, old, ret = _value_batch(ref, seed=41)
    x = v.clone().requires_grad_(True)
    loss, m = value_loss(x, old, ret, mask, eps, agg, group_size=2)
    V, O, R = (ref.rows(t, LENGTHS) for t in (v, old, ret))
    per = [[ref.value_token(a, o, r, eps) for a, o, r in zip(*row)] for row in zip(V, O, R)]
    assert loss.item() == pytest.approx(ref.aggregate(per, agg, group_size=2, T=T), abs=1e-9)
    flat = [t for row in zip(V, O, R) for t in zip(*row)]
    if eps is None:
        want_cf = 0.0
    else:
        want_cf = sum((o + min(max(a - o, -eps), eps) - r) ** 2 > (a - r) ** 2
                      for a, o, r in flat) / len(flat)
    assert m["vf_clipfrac"].item() == pytest.approx(want_cf, abs=1e-12)
    assert m["value_mean"].item() == pytest.approx(sum(a for a, _, _ in flat) / len(flat))
    assert all(t.dim() == 0 and not t.requires_grad for t in m.values())
    loss.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()


def test_value_hand_computed():
    # V = [1, 2, 0], V_old = [0.5, 2.1, 0.5], R = [2, 3, 1], ε = 0.2
    # unclipped (V-R)² = [1, 1, 1]                 -> loss ½·3/3 = 0.5
    # V_clip = [0.7, 2.0, 0.3]; (V_clip-R)² = [1.69, 1, 0.49]
    # max = [1.69, 1, 1] (only t0 clipped term strictly larger) -> ½·3.69/3 = 0.615
    v = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[0.5, 2.1, 0.5]], dtype=torch.float64)
    ret = torch.tensor([[2.0, 3.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    loss, m = value_loss(v, old, ret, mask)
    assert loss.item() == pytest.approx(0.5)
    assert m["vf_clipfrac"].item() == 0.0 and m["value_mean"].item() == pytest.approx(1.0)
    loss, m = value_loss(v, old, ret, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.615)
    assert m["vf_clipfrac"].item() == pytest.approx(1 / 3)


def test_value_knobs_change_loss_or_grad(ref):
    mask, v, old, ret = _value_batch(ref, seed=43)
    base = value_loss(v, old, ret, mask)[0]
    assert not torch.isclose(base, value_loss(v, old, ret, mask, clip_eps=0.05)[0])
    assert not torch.isclose(base, value_loss(v, old, ret, mask, agg="seq-mean-token-sum")[0])
    with pytest.raises(ValueError):
        value_loss(v, old, ret, mask, clip_eps=-0.1)
