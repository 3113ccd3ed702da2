"""The rollout correction's weights (tis, mis) on hand-computed ratios, and the ``weights=`` of every
registered policy loss: ``ℓ·sg(w)`` aggregated over the mask's own denominator; None changes nothing."""

import math

import pytest
import torch

from rlexp.core import POLICY_LOSSES, ROLLOUT_CORRECTIONS, aggregate, rollout_is_weights

# ρ = π_old/π_rollout per token; rows of lengths 3, 2, 0 (None: off the mask)
RATIOS = [[0.25, 1.0, 3.0], [1.5, 0.6, None], [None, None, None]]
#: mode -> (weights at C = 2, tokens cut): tis truncates 3.0 to 2; mis keeps [0.5, 2] and weights it by ρ
WANT = {"none": ([[1, 1, 1], [1, 1, 0], [0, 0, 0]], 0),
        "tis": ([[0.25, 1.0, 2.0], [1.5, 0.6, 0], [0, 0, 0]], 1),
        "mis": ([[0, 1.0, 0], [1.5, 0.6, 0], [0, 0, 0]], 2)}


def _logprobs(ratios=RATIOS):
    """``(old, rollout, mask)`` with ``old - rollout = log ρ``; garbage (NaN, ±inf) off the mask."""
    mask = torch.tensor([[r is not None for r in row] for row in ratios])
    rollout = torch.tensor([[-1.3, -0.2, -2.5][:len(row)] for row in ratios], dtype=torch.float64)
    log_ratio = torch.tensor([[math.log(r) if r is not None else 0.0 for r in row] for row in ratios],
                             dtype=torch.float64)
    old = torch.where(mask, rollout + log_ratio, torch.full_like(rollout, float("nan")))
    rollout = torch.where(mask, rollout, torch.full_like(rollout, -float("inf")))
    return old, rollout, mask


@pytest.mark.parametrize("mode", sorted(WANT))
def test_weights_and_metrics_by_hand(mode):
    old, rollout, mask = _logprobs()
    weights, metrics = rollout_is_weights(old, rollout, mask, mode, 2.0)
    want, cut = WANT[mode]
    torch.testing.assert_close(weights, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    assert (weights[~mask] == 0).all() and not weights.requires_grad
    n = 5  # tokens on the mask
    assert metrics["rollout_is_weight_mean"].item() == pytest.approx(sum(map(sum, want)) / n, rel=1e-12)
    assert metrics["rollout_is_clipfrac"].item() == pytest.approx(cut / n, rel=1e-12)
    assert set(metrics) == {"rollout_is_weight_mean", "rollout_is_clipfrac"}
    assert all(v.dim() == 0 for v in metrics.values())


def test_the_cap_moves_the_band():
    """C = 4: tis truncates nothing here; mis keeps [0.25, 4], i.e. every token, each weighted by its ρ."""
    old, rollout, mask = _logprobs()
    ratios = torch.tensor([[0.25, 1.0, 3.0], [1.5, 0.6, 0], [0, 0, 0]], dtype=torch.float64)
    for mode in ("tis", "mis"):
        weights, metrics = rollout_is_weights(old, rollout, mask, mode, 4.0)
        torch.testing.assert_close(weights, ratios, rtol=1e-12, atol=0)
        assert metrics["rollout_is_clipfrac"].item() == 0.0
    weights, metrics = rollout_is_weights(old, rollout, mask, "mis", 1.5)  # band [2/3, 1.5]: 1.0 and 1.5 stay
    torch.testing.assert_close(weights, torch.tensor([[0, 1.0, 0], [1.5, 0, 0], [0, 0, 0]], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    assert metrics["rollout_is_clipfrac"].item() == pytest.approx(3 / 5)


def test_extreme_ratios_are_truncated_or_masked_never_nan():
    old, rollout, mask = _logprobs([[1.0, 1.0]])
    old = old + torch.tensor([[800.0, -800.0]], dtype=torch.float64)  # ρ = e^800 (inf) and e^-800 (0)
    tis, _ = rollout_is_weights(old, rollout, mask, "tis", 2.0)
    mis, metrics = rollout_is_weights(old, rollout, mask, "mis", 2.0)
    assert tis.tolist() == [[2.0, 0.0]] and mis.tolist() == [[0.0, 0.0]]
    assert metrics["rollout_is_clipfrac"].item() == 1.0


def test_an_empty_mask_gives_zero_weights_and_no_metric_rather_than_zero():
    """A minibatch with no token in the loss (every group zero-variance filtered) must not pull the update's
    average weight towards 0: its metrics are NaN, which the update's nanmean leaves out."""
    old, rollout, mask = _logprobs()
    w, metrics = rollout_is_weights(old, rollout, torch.zeros_like(mask), "tis", 2.0)
    assert torch.equal(w, torch.zeros_like(w))
    assert all(math.isnan(float(v)) for v in metrics.values()) and set(metrics) == {
        "rollout_is_weight_mean", "rollout_is_clipfrac"}


def test_a_cap_of_at_most_one_and_an_unknown_mode_are_refused():
    old, rollout, mask = _logprobs()
    for cap in (1.0, 0.5):
        with pytest.raises(ValueError, match=f"cap must be > 1, got {cap}"):
            rollout_is_weights(old, rollout, mask, "tis", cap)
    with pytest.raises(ValueError, match="unknown rollout correction 'is'; valid: mis, none, tis"):
        rollout_is_weights(old, rollout, mask, "is", 2.0)
    assert ROLLOUT_CORRECTIONS.names() == ["mis", "none", "tis"]


# ------------------------------------------------------------------ the weights= of the policy losses
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "prompt-mean"]
KNOBS = {"clip_eps": 0.2, "clip_eps_high": 0.3, "dual_clip": 3.0, "sapo_tau_pos": 1.0, "sapo_tau_neg": 1.05}


def _batch(ref):
    mask, (lp, old, adv, w) = ref.make_batch([6, 3, 0, 1, 5, 2], 6, seed=4, n=4)
    lp = torch.where(mask, -lp.abs() - 0.1, lp)
    old = torch.where(mask, lp + 0.5 * old, old)
    w = torch.where(mask, w.abs(), torch.full_like(w, float("nan")))  # NaN off the mask must not matter
    return mask, lp, old, adv, w


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_weights_multiply_the_per_token_loss_before_one_aggregation(ref, name):
    entry = POLICY_LOSSES.get(name)
    knobs = {k: KNOBS[k] for k in entry.uses}
    mask, lp, old, adv, w = _batch(ref)
    per_token, metrics = entry.fn(lp, old, adv, mask, **knobs)
    for agg in AGGS:
        plain, _ = entry(lp, old, adv, mask, agg=agg, group_size=2, **knobs)
        none, _ = entry(lp, old, adv, mask, agg=agg, group_size=2, weights=None, **knobs)
        assert torch.equal(plain, none), agg  # bit-identical without weights
        loss, again = entry(lp, old, adv, mask, agg=agg, group_size=2, weights=w, **knobs)
        want = aggregate(per_token * torch.where(mask, w, 0.0), mask, agg, group_size=2)
        assert torch.equal(loss, want) and torch.isfinite(loss), agg
        assert all(torch.equal(again[k], metrics[k]) for k in metrics)  # the loss's own metrics: unweighted
        half, _ = entry(lp, old, adv, mask, agg=agg, group_size=2, weights=torch.full_like(w, 0.5), **knobs)
        assert half.item() == pytest.approx(0.5 * plain.item(), rel=1e-12, abs=1e-15), agg  # same denominator


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_weights_scale_each_tokens_gradient_and_get_none(ref, name):
    """∂loss/∂logπ_t with weights is w_t × the one without (every loss's ℓ_t has a gradient through its own
    logπ_t only, GSPO's sequence ratio included); w is detached."""
    entry = POLICY_LOSSES.get(name)
    knobs = {k: KNOBS[k] for k in entry.uses}
    mask, lp, old, adv, w = _batch(ref)
    grads = []
    for weights in (None, w.clone().requires_grad_(True)):
        x = lp.clone().requires_grad_(True)
        loss, _ = entry(x, old, adv, mask, agg="seq-mean-token-sum", weights=weights, **knobs)
        loss.backward()
        grads.append(x.grad)
        if weights is not None:
            assert weights.grad is None
    torch.testing.assert_close(grads[1], torch.where(mask, w, 0.0) * grads[0], rtol=1e-12, atol=1e-15)
