"""sapo_policy_loss (Gao et al., 2025): a reference written from the paper's formula, a hand case,
its gradient, its metrics and its knobs."""

import math
import zlib

import pytest
import torch

from rlexp.core import POLICY_LOSSES, ppo_policy_loss, sapo_policy_loss

LENGTHS = [6, 3, 0, 1, 5, 2]
T = 6
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
        "seq-mean-token-sum-norm", "prompt-mean"]


def ref_sapo_token(lp, old, a, tau_pos, tau_neg, exp=math.exp):
    """The paper's per-token objective, negated: ρ = π_θ/π_old, τ = τ_pos if Â > 0 else τ_neg,
    f(ρ) = σ(τ(ρ - 1))·4/τ, loss = -f(ρ)·Â.  Works on floats or 0-dim tensors (exp=torch.exp)."""
    rho = exp(lp - old)
    tau = tau_pos if a > 0 else tau_neg
    gate = 1.0 / (1.0 + exp(-tau * (rho - 1.0)))
    return -gate * 4.0 / tau * a


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _batch(ref, seed, spread=1.0):
    mask, (lp, old, adv) = ref.make_batch(LENGTHS, T, seed=seed, n=3)
    old = torch.where(mask, lp + spread * old, old)  # ratios from ~0.1 to ~10, garbage off-mask
    return mask, lp, old, adv


def _seed(*key):
    return zlib.crc32(repr(key).encode()) % 1000


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("tau_pos,tau_neg", [(1.0, 1.05), (0.3, 2.0), (5.0, 0.5)])
def test_sapo_matches_the_papers_formula(ref, agg, tau_pos, tau_neg):
    mask, lp, old, adv = _batch(ref, _seed(agg, tau_pos, tau_neg))
    loss, _ = sapo_policy_loss(lp, old, adv, mask, sapo_tau_pos=tau_pos, sapo_tau_neg=tau_neg, agg=agg,
                               group_size=2)
    rows = [ref.rows(x, LENGTHS) for x in (lp, old, adv)]
    per = [[ref_sapo_token(lo, o, a, tau_pos, tau_neg) for lo, o, a in zip(*r)] for r in zip(*rows)]
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(ref.aggregate(per, agg, group_size=2, T=T), abs=1e-9)
    # the registered function itself returns the per-token losses, 0 off-mask
    per_token, _ = sapo_policy_loss.fn(lp, old, adv, mask, sapo_tau_pos=tau_pos, sapo_tau_neg=tau_neg)
    assert per_token.shape == (len(LENGTHS), T) and (per_token[~mask] == 0).all()
    got = [[float(v) for v in per_token[b, :L]] for b, L in enumerate(LENGTHS)]
    assert got == [pytest.approx(r, abs=1e-12) for r in per]


def _hand():
    # (ρ, Â): (1, 1), (1, -1), (3, 1), (0.5, -2); log π_old = -1, so log π_θ = -1 + ln ρ
    rho, adv = [1.0, 1.0, 3.0, 0.5], [1.0, -1.0, 1.0, -2.0]
    lp = torch.tensor([[-1.0 + math.log(r) for r in rho]], dtype=torch.float64, requires_grad=True)
    return lp, torch.full_like(lp, -1.0).detach(), torch.tensor([adv], dtype=torch.float64), torch.ones(1, 4)


def test_sapo_hand_computed():
    # τ_pos = 1, τ_neg = 2: x = τ(ρ-1) = [0, 0, 2, -1]
    lp, old, adv, mask = _hand()
    loss, m = sapo_policy_loss(lp, old, adv, mask, sapo_tau_pos=1.0, sapo_tau_neg=2.0, agg="seq-mean-token-sum")
    # f = σ(x)·4/τ: [0.5·4, 0.5·2, σ(2)·4, σ(-1)·2]; ℓ = -f·Â
    want = [-2.0, 1.0, -4 * _sigmoid(2.0), 4 * _sigmoid(-1.0)]
    assert loss.item() == pytest.approx(sum(want))
    loss.backward()  # token-sum over one row: ∂ℓ_t/∂lp_t = -Â_t · 4σ(x)(1-σ(x)) · ρ_t
    w2, w1 = 4 * _sigmoid(2.0) * _sigmoid(-2.0), 4 * _sigmoid(-1.0) * _sigmoid(1.0)
    assert lp.grad[0].tolist() == pytest.approx([-1.0, 1.0, -w2 * 3.0, 2.0 * w1 * 0.5])
    # gate weights [1, 1, w2 ≈ 0.42, w1 ≈ 0.79]: only ρ = 3 is below 1/2 (|x| = 2 > 1.763)
    assert m["clipfrac"].item() == pytest.approx(1 / 4)
    assert m["clipfrac_high"].item() == pytest.approx(1 / 4) and m["clipfrac_low"].item() == 0.0
    assert m["dual_clipfrac"].item() == 0.0
    assert m["gate_weight_mean"].item() == pytest.approx((2 + w2 + w1) / 4)
    assert m["is_ratio_mean"].item() == pytest.approx(5.5 / 4)
    assert m["approx_kl"].item() == pytest.approx((2 - math.log(3) - 0.5 + math.log(2)) / 4)


def test_sapo_gradient_is_the_gate_weight_times_the_policy_gradient(ref):
    mask, lp, old, adv = _batch(ref, seed=5)
    x = lp.clone().requires_grad_(True)
    loss, m = sapo_policy_loss(x, old, adv, mask, sapo_tau_pos=1.0, sapo_tau_neg=1.05)  # token-mean
    loss.backward()
    # autograd through the paper's formula, token by token
    y = lp.clone().requires_grad_(True)
    terms = [ref_sapo_token(y[b, t], old[b, t].item(), adv[b, t].item(), 1.0, 1.05, exp=torch.exp)
             for b, L in enumerate(LENGTHS) for t in range(L)]
    (sum(terms) / len(terms)).backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-12) and (x.grad[~mask] == 0).all()
    N, seen = sum(LENGTHS), set()
    for b, L in enumerate(LENGTHS):
        for t in range(L):
            rho, a = math.exp(lp[b, t].item() - old[b, t].item()), adv[b, t].item()
            xt = (1.0 if a > 0 else 1.05) * (rho - 1.0)
            w = 4 * _sigmoid(xt) * (1 - _sigmoid(xt))
            assert x.grad[b, t].item() == pytest.approx(-a * w * rho / N, abs=1e-12)
            seen.add(w < 0.5)
    assert seen == {True, False}  # the batch has open and mostly closed gates
    assert 0 < m["clipfrac"].item() < 1


def test_on_policy_sapo_is_the_policy_gradient_whatever_tau(ref):
    # ρ = 1: w = 4σ(0)(1-σ(0)) = 1, so ∂loss/∂lp = -Â/N for every τ (the loss value, -2Â/τ, does depend on τ)
    mask, lp, _, adv = _batch(ref, seed=8)
    grads, values = [], []
    for taus in [(1.0, 1.05), (0.2, 7.0)]:
        x = lp.clone().requires_grad_(True)
        loss, m = sapo_policy_loss(x, lp.detach(), adv, mask, *taus)
        loss.backward()
        grads.append(x.grad)
        values.append(loss.item())
        assert m["clipfrac"].item() == 0.0 and m["gate_weight_mean"].item() == pytest.approx(1.0)
    want = torch.where(mask, -adv / sum(LENGTHS), torch.zeros_like(adv))
    assert torch.allclose(grads[0], want, atol=1e-12) and torch.allclose(grads[1], want, atol=1e-12)
    assert values[0] != pytest.approx(values[1])


def test_sapo_is_soft_where_ppo_is_hard_and_a_small_tau_is_the_unclipped_gradient():
    # ρ = 3, Â = 1: PPO (ε = 0.2) clips, gradient 0; SAPO keeps a damped gradient -w·ρ·Â
    lp, old, adv, mask = _hand()
    lp, old, adv, mask = lp[:, 2:3].detach(), old[:, 2:3], adv[:, 2:3], mask[:, 2:3]
    grads = {}
    for name, call in {"ppo": lambda x: ppo_policy_loss(x, old, adv, mask, clip_eps=0.2),
                       "sapo": lambda x: sapo_policy_loss(x, old, adv, mask, 1.0, 1.05),
                       "sapo_small_tau": lambda x: sapo_policy_loss(x, old, adv, mask, 1e-6, 1e-6)}.items():
        x = lp.clone().requires_grad_(True)
        call(x)[0].backward()
        grads[name] = x.grad.item()
    assert grads["ppo"] == 0.0
    assert grads["sapo"] == pytest.approx(-4 * _sigmoid(2.0) * _sigmoid(-2.0) * 3.0)
    assert grads["sapo_small_tau"] == pytest.approx(-3.0, rel=1e-6)  # τ → 0: f(ρ) ≈ 2/τ + ρ - 1


def test_sapo_metrics_match_reference(ref):
    mask, lp, old, adv = _batch(ref, seed=22, spread=1.5)
    tau_pos, tau_neg = 2.0, 3.0
    _, metrics = sapo_policy_loss(lp, old, adv, mask, tau_pos, tau_neg)
    toks = [(math.exp(lo - o), a) for r in zip(*(ref.rows(x, LENGTHS) for x in (lp, old, adv)))
            for lo, o, a in zip(*r)]
    n = len(toks)
    xs = [(tau_pos if a > 0 else tau_neg) * (p - 1) for p, a in toks]
    w = [4 * _sigmoid(x) * (1 - _sigmoid(x)) for x in xs]
    want = {
        "clipfrac": sum(wi < 0.5 for wi in w) / n,
        "clipfrac_low": sum(wi < 0.5 and p < 1 for wi, (p, _) in zip(w, toks)) / n,
        "clipfrac_high": sum(wi < 0.5 and p > 1 for wi, (p, _) in zip(w, toks)) / n,
        "dual_clipfrac": 0.0,
        "gate_weight_mean": sum(w) / n,
        "approx_kl": sum(p - 1 - math.log(p) for p, _ in toks) / n,
        "is_ratio_mean": sum(p for p, _ in toks) / n,
    }
    assert 0 < want["clipfrac_low"] < want["clipfrac"] and 0 < want["clipfrac_high"]  # the batch exercises them
    assert set(metrics) == set(want)
    for k, v in metrics.items():
        assert v.dim() == 0 and not v.requires_grad
        assert v.item() == pytest.approx(want[k], abs=1e-9), k


def test_sapo_knobs_change_loss_and_grad_and_bad_values_are_refused(ref):
    mask, lp, old, adv = _batch(ref, seed=6)

    def run(**kw):
        x = lp.clone().requires_grad_(True)
        loss = sapo_policy_loss(x, old, adv, mask, **{"sapo_tau_pos": 1.0, "sapo_tau_neg": 1.05, **kw})[0]
        loss.backward()
        return loss, x.grad

    loss0, grad0 = run()
    for change in [dict(sapo_tau_pos=3.0), dict(sapo_tau_neg=3.0), dict(agg="seq-mean-token-mean")]:
        loss, grad = run(**change)
        assert not torch.isclose(loss, loss0) and not torch.allclose(grad, grad0), change
    # τ_pos acts on Â > 0 tokens only, τ_neg on the others
    _, g_pos = run(sapo_tau_pos=3.0)
    assert torch.equal(g_pos[adv <= 0], grad0[adv <= 0]) and not torch.equal(g_pos[adv > 0], grad0[adv > 0])
    for bad in [dict(sapo_tau_pos=0.0), dict(sapo_tau_neg=-1.0)]:
        with pytest.raises(ValueError, match="sapo_tau"):
            run(**bad)
    with pytest.raises(TypeError, match="clip_eps"):  # not a knob of SAPO
        sapo_policy_loss(lp, old, adv, mask, clip_eps=0.2)


def test_sapo_ignores_garbage_off_mask(ref):
    mask, lp, old, adv = _batch(ref, seed=7)
    clean = [torch.where(mask, t, torch.zeros_like(t)) for t in (lp, old, adv)]
    a = sapo_policy_loss(lp, old, adv, mask, 0.5, 2.0, agg="seq-mean-token-mean")
    b = sapo_policy_loss(*clean, mask, 0.5, 2.0, agg="seq-mean-token-mean")
    assert a[0].item() == b[0].item() and all(a[1][k].item() == b[1][k].item() for k in a[1])


def test_sapo_is_registered_with_its_knobs():
    entry = POLICY_LOSSES.get("sapo")
    assert entry is sapo_policy_loss and entry.uses == ("sapo_tau_pos", "sapo_tau_neg")
    assert dict(entry.incompatible) == {}
