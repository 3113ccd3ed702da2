"""gspo_policy_loss and cispo_policy_loss: references, hand cases, gradients, knobs, metrics.

Also the shared contract of every registered policy loss (metric keys, clip_eps rules).
"""

import math
import zlib

import pytest
import torch

from rlexp.core import POLICY_LOSSES, cispo_policy_loss, gspo_policy_loss, ppo_policy_loss

LENGTHS = [6, 3, 0, 1, 5, 2]
T = 6
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
        "seq-mean-token-sum-norm", "prompt-mean"]
METRICS = {"clipfrac", "clipfrac_low", "clipfrac_high", "dual_clipfrac", "approx_kl",
           "is_ratio_mean"}


def _batch(ref, seed, per_seq_adv=False, spread=0.4):
    mask, (lp, old, adv) = ref.make_batch(LENGTHS, T, seed=seed, n=3)
    lp = torch.where(mask, -lp.abs() - 0.1, lp)  # valid log-probs (< 0) for cispo
    old = torch.where(mask, lp + spread * old, old)
    if per_seq_adv:  # one advantage per sequence, broadcast on its tokens
        adv = torch.where(mask, adv[:, :1].expand_as(adv), adv)
    return mask, lp, old, adv


def _rows(ref, *xs):
    return [ref.rows(x, LENGTHS) for x in xs]


def _seed(*key):
    return zlib.crc32(repr(key).encode()) % 1000


# ------------------------------------------------------------------ contract (all losses)
@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "cispo"])
def test_contract_metrics_and_clip_eps_rules(ref, name):
    fn = POLICY_LOSSES.get(name)
    mask, lp, old, adv = _batch(ref, seed=1)
    x = lp.clone().requires_grad_(True)
    loss, metrics = fn(x, old, adv, mask, 0.2, 0.3, None, "prompt-mean", group_size=2, max_len=9)
    assert loss.dim() == 0 and set(metrics) == METRICS
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    loss.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()
    for eps, high in [(1.0, None), (1.5, 0.2), (1.0, 4.0)]:  # lower bound <= 0 is allowed
        assert torch.isfinite(fn(lp, old, adv, mask, eps, high)[0])
    for eps, high in [(0.0, None), (-0.1, None), (0.2, 0.0), (0.2, -1.0)]:
        with pytest.raises(ValueError, match="clip_eps"):
            fn(lp, old, adv, mask, eps, high)


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "cispo"])
def test_garbage_off_mask_is_ignored(ref, name):
    fn = POLICY_LOSSES.get(name)
    mask, lp, old, adv = _batch(ref, seed=7)
    clean = [torch.where(mask, t, torch.zeros_like(t)) for t in (lp, old, adv)]
    a = fn(lp, old, adv, mask, 0.2, 0.25, agg="seq-mean-token-mean")
    b = fn(*clean, mask, 0.2, 0.25, agg="seq-mean-token-mean")
    assert a[0].item() == b[0].item()
    assert all(a[1][k].item() == b[1][k].item() for k in METRICS)


def test_clip_eps_at_least_one_removes_lower_bound():
    # ρ = 0.05 with Â < 0: ε_low = 0.2 clips at 0.8; ε_low = 1 (bound 0) leaves it unclipped
    lp = torch.tensor([[math.log(0.05)]], dtype=torch.float64)
    args = (lp, torch.zeros_like(lp), torch.tensor([[-1.0]], dtype=torch.float64), torch.ones(1, 1))
    for fn in (ppo_policy_loss, gspo_policy_loss):
        assert fn(*args, clip_eps=0.2)[0].item() == pytest.approx(0.8)
        loss, m = fn(*args, clip_eps=1.0)
        assert loss.item() == pytest.approx(0.05) and m["clipfrac"].item() == 0.0


# ------------------------------------------------------------------ GSPO
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps_high,dual", [(None, None), (0.28, None), (None, 1.5), (0.3, 2.0)])
@pytest.mark.parametrize("per_seq_adv", [False, True])
def test_gspo_matches_reference(ref, agg, eps_high, dual, per_seq_adv):
    mask, lp, old, adv = _batch(ref, _seed(agg, eps_high, dual, per_seq_adv), per_seq_adv)
    loss, _ = gspo_policy_loss(lp, old, adv, mask, 0.1, eps_high, dual, agg, group_size=2)
    per = ref.gspo_rows(*_rows(ref, lp, old, adv), 0.1, eps_high or 0.1, dual)
    assert loss.item() == pytest.approx(ref.aggregate(per, agg, group_size=2, T=T), abs=1e-9)


def test_gspo_metrics_match_reference(ref):
    mask, lp, old, adv = _batch(ref, seed=21)
    eps_l, eps_h, c = 0.05, 0.08, 1.2
    _, metrics = gspo_policy_loss(lp, old, adv, mask, eps_l, eps_h, c)
    toks = []  # (s_i, ρ_t, Â_t) over all masked tokens
    for L, O, A in zip(*_rows(ref, lp, old, adv)):
        s = math.exp(sum(a - b for a, b in zip(L, O)) / len(L)) if L else 1.0
        toks += [(s, math.exp(lo - o), a) for lo, o, a in zip(L, O, A)]
    n = len(toks)
    unclip = [-a * s for s, _, a in toks]
    clip = [-a * min(max(s, 1 - eps_l), 1 + eps_h) for s, _, a in toks]
    want = {
        "clipfrac": sum(c_ > u for c_, u in zip(clip, unclip)) / n,
        "clipfrac_low": sum(a < 0 and s < 1 - eps_l for s, _, a in toks) / n,
        "clipfrac_high": sum(a > 0 and s > 1 + eps_h for s, _, a in toks) / n,
        "dual_clipfrac": sum(a < 0 and -c * a < max(u, c_)
                             for u, c_, (_, _, a) in zip(unclip, clip, toks)) / n,
        "approx_kl": sum(p - 1 - math.log(p) for _, p, _ in toks) / n,
        "is_ratio_mean": sum(s for s, _, _ in toks) / n,
    }
    assert 0 < want["clipfrac"] < 1 and 0 < want["dual_clipfrac"] < 1  # the batch exercises them
    for k, v in metrics.items():
        assert v.item() == pytest.approx(want[k], abs=1e-9), k


def test_gspo_hand_computed():
    # row 0: lp - old = [ln 2, 0], Â = [1, 1] -> ℓ = ln2/2, s = √2; row 1: [ln 0.5], Â = [-1]
    lp = torch.tensor([[math.log(2.0), 0.0], [math.log(0.5), 7.0]], dtype=torch.float64)
    old = torch.zeros_like(lp)
    adv = torch.tensor([[1.0, 1.0], [-1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    # ε = 0.2: row 0 -min(√2, 1.2) = -1.2 per token; row 1 -min(-0.5, -0.8) = 0.8
    loss, m = gspo_policy_loss(lp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 - 1.2 + 0.8) / 3)
    seq = gspo_policy_loss(lp, old, adv, mask, 0.2, agg="seq-mean-token-mean")[0]
    assert seq.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert m["clipfrac"].item() == pytest.approx(1.0)
    assert m["clipfrac_high"].item() == pytest.approx(2 / 3)
    assert m["clipfrac_low"].item() == pytest.approx(1 / 3)
    assert m["is_ratio_mean"].item() == pytest.approx((2 * math.sqrt(2) + 0.5) / 3)
    # per-token ρ = [2, 1, 0.5]: (1 - ln2) + 0 + (-0.5 + ln2) = 0.5
    assert m["approx_kl"].item() == pytest.approx(0.5 / 3)
    # ε = 0.6: nothing clipped: (-2√2 + 0.5) / 3; PPO on the same data differs (t0 clipped)
    loss = gspo_policy_loss(lp, old, adv, mask, clip_eps=0.6)[0]
    assert loss.item() == pytest.approx((-2 * math.sqrt(2) + 0.5) / 3)
    assert ppo_policy_loss(lp, old, adv, mask, 0.6)[0].item() == pytest.approx((-1.6 - 1 + 0.5) / 3)


@pytest.mark.parametrize("eps_high,dual", [(None, None), (0.15, None), (0.15, 1.3)])
def test_gspo_gradient_equals_sequence_level_objective(ref, eps_high, dual):
    mask, lp, old, adv = _batch(ref, seed=13, per_seq_adv=True)  # clips low, high and dual
    eps_l, eps_h = 0.1, eps_high or 0.1
    x = lp.clone().requires_grad_(True)
    loss, m = gspo_policy_loss(x, old, adv, mask, eps_l, eps_high, dual, "seq-mean-token-mean")
    loss.backward()
    # -mean_{i: n_i>0} min(s_i A_i, clip(s_i) A_i) [dual-clipped], s_i = exp(mean_t(lp - old))
    y = lp.clone().requires_grad_(True)
    terms = []
    for b, L in enumerate(LENGTHS):
        if L:
            s = torch.exp((y[b, :L] - old[b, :L]).mean())
            terms.append(ref.ppo_token(torch.log(s), 0.0, adv[b, 0].item(), eps_l, eps_h, dual,
                                       exp=torch.exp))
    want = sum(terms) / len(terms)
    want.backward()
    assert 0 < m["clipfrac"].item() < 1  # both clipped and unclipped sequences
    assert (m["dual_clipfrac"].item() > 0) == (dual is not None)
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert torch.allclose(x.grad, y.grad, atol=1e-12) and (x.grad[~mask] == 0).all()


def test_gspo_gradient_per_token_advantages(ref):
    # token-mean: ∂/∂lp_{i,t} = -Â_t s_i / N where the unclipped term is taken, else 0
    mask, lp, old, adv = _batch(ref, seed=33)
    x = lp.clone().requires_grad_(True)
    gspo_policy_loss(x, old, adv, mask, 0.05, 0.08)[0].backward()
    N = sum(LENGTHS)
    saw_zero = saw_nonzero = False
    for b, (L, O, A) in enumerate(zip(*_rows(ref, lp, old, adv))):
        if not L:
            continue
        s = math.exp(sum(a - o for a, o in zip(L, O)) / len(L))
        for t, a in enumerate(A):
            clipped = -a * min(max(s, 0.95), 1.08) > -a * s
            want = 0.0 if clipped else -a * s / N
            saw_zero, saw_nonzero = saw_zero or clipped, saw_nonzero or not clipped
            assert x.grad[b, t].item() == pytest.approx(want, abs=1e-12)
    assert saw_zero and saw_nonzero


def test_gspo_equals_ppo_on_single_token_sequences(ref):
    lengths = [1, 1, 0, 1]
    mask, (lp, old, adv) = ref.make_batch(lengths, 3, seed=4, n=3)
    old = torch.where(mask, lp + 0.5 * old, old)
    outs = []
    for fn in (gspo_policy_loss, ppo_policy_loss):
        x = lp.clone().requires_grad_(True)
        loss, m = fn(x, old, adv, mask, 0.1, 0.2, 1.5)
        loss.backward()
        outs.append((loss, m, x.grad))
    (l1, m1, g1), (l2, m2, g2) = outs
    assert l1.item() == pytest.approx(l2.item(), abs=1e-12)
    assert torch.allclose(g1, g2, atol=1e-12)
    assert all(m1[k].item() == pytest.approx(m2[k].item(), abs=1e-12) for k in METRICS)


def test_gspo_knobs_change_loss(ref):
    mask, lp, old, adv = _batch(ref, seed=6, spread=1.0)  # has s_i > 1.05 with Â < 0
    base = dict(clip_eps=0.05, clip_eps_high=None, dual_clip=None, agg="token-mean")
    loss0 = gspo_policy_loss(lp, old, adv, mask, **base)[0]
    for v in [dict(clip_eps=0.3), dict(clip_eps_high=0.3), dict(dual_clip=1.05),
              dict(agg="seq-mean-token-mean")]:
        assert not torch.isclose(gspo_policy_loss(lp, old, adv, mask, **{**base, **v})[0],
                                 loss0), v
    norm = [gspo_policy_loss(lp, old, adv, mask, 0.05, agg="seq-mean-token-sum-norm",
                             max_len=L)[0].item() for L in (T, 2 * T)]
    assert norm[0] == pytest.approx(2 * norm[1])
    with pytest.raises(ValueError, match="dual_clip"):
        gspo_policy_loss(lp, old, adv, mask, 0.2, dual_clip=1.0)


# ------------------------------------------------------------------ CISPO
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps_low,eps_high", [(0.2, None), (0.2, 0.28), (1.0, 4.0), (1.5, 0.1)])
def test_cispo_matches_reference(ref, agg, eps_low, eps_high):
    mask, lp, old, adv = _batch(ref, _seed("cispo", agg, eps_low, eps_high), spread=1.0)
    loss, _ = cispo_policy_loss(lp, old, adv, mask, eps_low, eps_high, None, agg, group_size=2)
    per = [[ref.cispo_token(lo, o, a, eps_low, eps_high or eps_low) for lo, o, a in zip(*r)]
           for r in zip(*_rows(ref, lp, old, adv))]
    assert loss.item() == pytest.approx(ref.aggregate(per, agg, group_size=2, T=T), abs=1e-9)


def test_cispo_metrics_match_reference(ref):
    mask, lp, old, adv = _batch(ref, seed=22, spread=1.0)
    _, metrics = cispo_policy_loss(lp, old, adv, mask, 0.3, 0.5)
    rho = [math.exp(lo - o) for L, O in zip(*_rows(ref, lp, old)) for lo, o in zip(L, O)]
    n = len(rho)
    want = {
        "clipfrac": sum(p < 0.7 or p > 1.5 for p in rho) / n,
        "clipfrac_low": sum(p < 0.7 for p in rho) / n,
        "clipfrac_high": sum(p > 1.5 for p in rho) / n,
        "dual_clipfrac": 0.0,
        "approx_kl": sum(p - 1 - math.log(p) for p in rho) / n,
        "is_ratio_mean": sum(rho) / n,
    }
    assert 0 < want["clipfrac_low"] < 1 and 0 < want["clipfrac_high"] < 1
    for k, v in metrics.items():
        assert v.item() == pytest.approx(want[k], abs=1e-9), k


def _cispo_hand(rho, adv, old=-1.0):
    lp = torch.tensor([[old + math.log(r) for r in rho]], dtype=torch.float64, requires_grad=True)
    return lp, torch.full_like(lp, old).detach(), torch.tensor([adv], dtype=torch.float64), \
        torch.ones(1, len(rho))


def test_cispo_hand_computed():
    # ρ = [2, 0.5, 1, 6], Â = [1, -1, 2, 0.5], log π_old = -1 (lp = -1 + ln ρ), ε = 0.2:
    # weights [1.2, 0.8, 1, 1.2]; ℓ_t = -w Â lp
    rho, adv = [2.0, 0.5, 1.0, 6.0], [1.0, -1.0, 2.0, 0.5]
    lp, old, a, mask = _cispo_hand(rho, adv)
    loss, m = cispo_policy_loss(lp, old, a, mask, clip_eps=0.2, agg="seq-mean-token-sum")
    lps = [-1 + math.log(r) for r in rho]
    w = [1.2, 0.8, 1.0, 1.2]
    assert loss.item() == pytest.approx(-sum(wi * ai * li for wi, ai, li in zip(w, adv, lps)))
    loss.backward()  # token-sum, one row: ∂loss/∂lp_t = -w_t Â_t, clipped tokens included
    assert lp.grad[0].tolist() == pytest.approx([-1.2, 0.8, -2.0, -0.6])
    assert m["clipfrac"].item() == pytest.approx(3 / 4)
    assert m["clipfrac_low"].item() == pytest.approx(1 / 4)
    assert m["clipfrac_high"].item() == pytest.approx(2 / 4)
    assert m["dual_clipfrac"].item() == 0.0
    assert m["is_ratio_mean"].item() == pytest.approx(9.5 / 4)
    # ScaleRL setting ε_low = 1, ε_high = 4: no lower bound, cap at 5 -> weights [2, .5, 1, 5]
    lp, old, a, mask = _cispo_hand(rho, adv)
    loss, m = cispo_policy_loss(lp, old, a, mask, 1.0, 4.0, agg="seq-mean-token-sum")
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-2.0, 0.5, -2.0, -2.5])
    assert m["clipfrac"].item() == pytest.approx(1 / 4) and m["clipfrac_low"].item() == 0.0


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_cispo_gradient_is_clamped_weight_times_advantage(ref, agg):
    mask, lp, old, adv = _batch(ref, seed=_seed("cispo-grad", agg), spread=1.0)
    x = lp.clone().requires_grad_(True)
    loss, m = cispo_policy_loss(x, old, adv, mask, 0.2, 0.3, agg=agg)
    loss.backward()
    # token-mean: / N tokens; seq-mean-token-sum: / number of nonempty rows
    denom = sum(LENGTHS) if agg == "token-mean" else sum(L > 0 for L in LENGTHS)
    for b, L in enumerate(LENGTHS):
        for t in range(L):
            rho = math.exp(lp[b, t].item() - old[b, t].item())
            want = -min(max(rho, 0.8), 1.3) * adv[b, t].item() / denom
            assert x.grad[b, t].item() == pytest.approx(want, abs=1e-12)
    assert (x.grad[~mask] == 0).all()
    assert (x.grad[mask] != 0).all()  # clipped tokens keep their gradient
    assert m["clipfrac"].item() > 0.2


def test_cispo_knobs_change_loss_and_grad(ref):
    mask, lp, old, adv = _batch(ref, seed=6, spread=1.0)

    def run(**kw):
        x = lp.clone().requires_grad_(True)
        loss = cispo_policy_loss(x, old, adv, mask, **{**base, **kw})[0]
        loss.backward()
        return loss, x.grad

    base = dict(clip_eps=0.2, clip_eps_high=None, agg="token-mean")
    loss0, grad0 = run()
    for v in [dict(clip_eps=0.5), dict(clip_eps_high=0.5), dict(agg="seq-mean-token-mean")]:
        loss, grad = run(**v)
        assert not torch.isclose(loss, loss0) and not torch.allclose(grad, grad0), v
    norm = [run(agg="seq-mean-token-sum-norm", max_len=L)[0].item() for L in (T, 3 * T)]
    assert norm[0] == pytest.approx(3 * norm[1])
    for bad in (1.5, 2.0):
        with pytest.raises(ValueError, match="dual_clip does not apply to cispo"):
            cispo_policy_loss(lp, old, adv, mask, 0.2, dual_clip=bad)
