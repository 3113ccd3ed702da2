"""The PolicyLoss contract, for every registered policy loss (a new one is checked without editing this
file, once its knobs have sample values in KNOB_VALUES): per-token losses + metrics from the function,
one aggregation by the entry, exactly its `uses` taken from the config, its `incompatible` keys refused,
and an on-policy gradient that no knob changes (what rlexp.config.knobs relies on)."""

import pytest
import torch

from rlexp.core import POLICY_LOSSES, PolicyLoss, aggregate, aggregation_denominator
from rlexp.core.losses import policy_loss

LENGTHS = [6, 3, 0, 1, 5, 2]
T = 6
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "prompt-mean"]
METRICS = {"clipfrac", "clipfrac_low", "clipfrac_high", "dual_clipfrac", "approx_kl", "is_ratio_mean"}
#: each algorithm key a loss may use -> (its default in conf/algorithm/ppo.yaml or a typical value, another value)
KNOB_VALUES = {"clip_eps": (0.2, 0.05), "clip_eps_high": (None, 0.5), "dual_clip": (None, 1.5),
               "sapo_tau_pos": (1.0, 6.0), "sapo_tau_neg": (1.05, 0.2)}
NAMES = POLICY_LOSSES.names()


def _batch(ref, seed=3):
    mask, (lp, old, adv) = ref.make_batch(LENGTHS, T, seed=seed, n=3)
    lp = torch.where(mask, -lp.abs() - 0.1, lp)  # valid log-probs (< 0)
    old = torch.where(mask, lp + 0.8 * old, old)
    return mask, lp, old, adv


def _knobs(entry, which=0):
    return {k: KNOB_VALUES[k][which] for k in entry.uses}


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_its_function_then_one_aggregation(ref, name):
    entry = POLICY_LOSSES.get(name)
    assert isinstance(entry, PolicyLoss) and entry.name == name and callable(entry.fn)
    assert set(entry.uses) <= set(KNOB_VALUES), f"add sample values for {name}'s knobs to KNOB_VALUES"
    mask, lp, old, adv = _batch(ref)
    per_token, metrics = entry.fn(lp, old, adv, mask, **_knobs(entry, 1))
    assert per_token.shape == lp.shape and (per_token[~mask] == 0).all()
    assert METRICS <= set(metrics) and all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    for agg in AGGS:
        den = aggregation_denominator(mask, agg, group_size=2) * 0.75  # another worker's share, say
        for denominator in (None, den):
            loss, again = entry(lp, old, adv, mask, agg=agg, group_size=2, max_len=9, denominator=denominator,
                                **_knobs(entry, 1))
            want = aggregate(per_token, mask, agg, group_size=2, max_len=9, denominator=denominator)
            assert torch.equal(loss, want), (agg, denominator)
            assert all(torch.equal(again[k], metrics[k]) for k in metrics)


@pytest.mark.parametrize("name", NAMES)
def test_config_hands_the_function_exactly_its_uses(ref, name):
    entry = POLICY_LOSSES.get(name)
    seen = []

    def spy(*args, **knobs):
        seen.append(knobs)
        return entry.fn(*args, **knobs)

    spied = PolicyLoss(name, spy, entry.uses, entry.incompatible)  # not registered
    config = {**{k: v for k, (_, v) in KNOB_VALUES.items()}, **{k: None for k in entry.incompatible},
              "loss_agg": "token-mean", "kl_coef": 0.5}  # and keys no loss reads
    mask, lp, old, adv = _batch(ref)
    via_config = spied(lp, old, adv, mask, config=config)
    assert seen == [_knobs(entry, 1)]
    by_keyword = entry(lp, old, adv, mask, **_knobs(entry, 1))
    by_position = entry(lp, old, adv, mask, *(_knobs(entry, 1)[k] for k in entry.uses))
    assert torch.equal(via_config[0], by_keyword[0]) and torch.equal(by_position[0], by_keyword[0])


@pytest.mark.parametrize("name", NAMES)
def test_on_policy_the_gradient_is_the_policy_gradient_whatever_the_knobs(ref, name):
    """At ρ = 1 (one step from the sampling policy) ∂ℓ_t/∂logπ_t = -Â_t for every loss and knob value, so
    `inactive_knobs` may call every loss knob dead for one epoch over one minibatch."""
    entry = POLICY_LOSSES.get(name)
    mask, lp, _, adv = _batch(ref)
    want = torch.where(mask, -adv, torch.zeros_like(adv))
    for which in (0, 1):
        x = lp.clone().requires_grad_(True)
        loss, _ = entry(x, x.detach(), adv, mask, agg="seq-mean-token-sum", **_knobs(entry, which))
        loss.backward()
        rows = mask.sum(1).gt(0).sum()  # seq-mean-token-sum divides by the non-empty rows
        assert torch.allclose(x.grad * rows, want, atol=1e-12), (name, which)


@pytest.mark.parametrize("name", [n for n in NAMES if POLICY_LOSSES.get(n).incompatible])
def test_incompatible_keys_are_refused(ref, name):
    entry = POLICY_LOSSES.get(name)
    mask, lp, old, adv = _batch(ref)
    for key in entry.incompatible:
        assert key not in entry.uses
        with pytest.raises(ValueError, match=f"{key} does not apply to {name}"):
            entry(lp, old, adv, mask, **_knobs(entry), **{key: KNOB_VALUES[key][1]})
        with pytest.raises(ValueError, match=f"{key} does not apply to {name}"):
            entry(lp, old, adv, mask, config={**_knobs(entry), key: KNOB_VALUES[key][1]})
        entry(lp, old, adv, mask, **_knobs(entry), **{key: None})  # None is accepted


def test_cispo_refuses_dual_clip_and_the_others_have_no_incompatible_key():
    assert {n: set(POLICY_LOSSES.get(n).incompatible) for n in NAMES} == {
        "cispo": {"dual_clip"}, "gspo": set(), "ppo_clip": set(), "sapo": set()}


def test_bad_calls_are_type_errors(ref):
    mask, lp, old, adv = _batch(ref)
    ppo = POLICY_LOSSES.get("ppo_clip")
    with pytest.raises(TypeError, match="takes no knob sapo_tau_pos"):
        ppo(lp, old, adv, mask, clip_eps=0.2, sapo_tau_pos=1.0)
    with pytest.raises(TypeError, match="at most 4 positional"):
        ppo(lp, old, adv, mask, 0.2, None, None, "token-mean", 5)
    with pytest.raises(TypeError, match="clip_eps both by position and by keyword"):
        ppo(lp, old, adv, mask, 0.2, clip_eps=0.3)


def test_a_new_loss_is_one_decorated_function(ref, monkeypatch):
    """Registering returns the entry, callable with the usual signature; names must be unique."""
    monkeypatch.setattr(POLICY_LOSSES, "_items", dict(POLICY_LOSSES._items))  # leave the real registry alone

    @policy_loss("plain_pg", uses=("clip_eps",), incompatible={"dual_clip": "nothing to bound"})
    def plain_pg(logprobs, old_logprobs, advantages, mask, *, clip_eps):
        return -advantages * torch.exp(logprobs - old_logprobs) * mask, {}

    assert POLICY_LOSSES.get("plain_pg") is plain_pg and plain_pg.knobs == ("clip_eps", "dual_clip")
    mask, lp, old, adv = _batch(ref)
    loss, _ = plain_pg(lp, old, adv, mask, config={"clip_eps": 0.2, "dual_clip": None}, agg="token-mean")
    m = mask.to(lp.dtype)
    assert loss.item() == pytest.approx((-adv * torch.exp(lp - old) * m).where(mask, 0).sum().item() / m.sum().item())
    with pytest.raises(ValueError, match="duplicate policy loss 'plain_pg'"):
        policy_loss("plain_pg", uses=())(plain_pg.fn)
