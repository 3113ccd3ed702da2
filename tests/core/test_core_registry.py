"""Registry behaviour and the built-in registries' contents."""

import dataclasses

import pytest
import torch

from rlexp.core import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    AdvantageEstimator,
    Registry,
    cispo_policy_loss,
    gae,
    gspo_policy_loss,
    kl_estimate,
    ppo_policy_loss,
    sapo_policy_loss,
)


def test_register_get_names_contains_iter():
    reg = Registry("widget")

    @reg.register("b")
    def fb():
        return "b"

    @reg.register("a")
    def fa():
        return "a"

    assert reg.get("a") is fa and reg.get("b") is fb
    assert fa() == "a"  # decorator returns the object unchanged
    assert reg.names() == ["a", "b"]
    assert list(reg) == ["a", "b"]
    assert "a" in reg and "c" not in reg


def test_duplicate_register_raises():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="'a'"):
        reg.register("a")(lambda: 2)
    assert reg.get("a")() == 1


def test_unknown_name_lists_valid_names():
    reg = Registry("widget")
    for name in ["zeta", "alpha", "mid"]:
        reg.register(name)(object())
    with pytest.raises(ValueError) as info:
        reg.get("nope")
    assert str(info.value) == "unknown widget 'nope'; valid: alpha, mid, zeta"


def test_builtin_registries():
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "gae", "grpo", "reinforce_pp", "rloo"]
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert AGGREGATIONS.names() == sorted(
        ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
         "seq-mean-token-sum-norm", "prompt-mean"]
    )
    assert POLICY_LOSSES.names() == ["cispo", "gspo", "ppo_clip", "sapo"]
    assert POLICY_LOSSES.get("ppo_clip") is ppo_policy_loss
    assert POLICY_LOSSES.get("gspo") is gspo_policy_loss
    assert POLICY_LOSSES.get("cispo") is cispo_policy_loss
    assert POLICY_LOSSES.get("sapo") is sapo_policy_loss
    with pytest.raises(ValueError, match="unknown kl estimator 'k4'; valid: k1, k2, k3"):
        kl_estimate(None, None, "k4")


def test_advantage_estimator_entries():
    want = {
        "gae": (True, {"gamma", "lam"}),
        "grpo": (False, {"adv_scale", "adv_eps"}),
        "dr_grpo": (False, set()),
        "rloo": (False, set()),
    }
    for name, (needs_critic, uses) in want.items():
        est = ADVANTAGE_ESTIMATORS.get(name)
        assert isinstance(est, AdvantageEstimator) and est.name == name
        assert est.needs_critic is needs_critic
        assert isinstance(est.uses, frozenset) and est.uses == uses
        assert callable(est.fn)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ADVANTAGE_ESTIMATORS.get("gae").needs_critic = False


def test_gae_entry_calls_gae():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g)
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [2], [0]])
    want = gae(r, v, mask, 0.9, 0.8)
    est = ADVANTAGE_ESTIMATORS.get("gae")
    kw = dict(gamma=0.9, lam=0.8, group_size=1, scale="group", eps=1e-6)
    for got in (est(r, v, mask, gamma=0.9, lam=0.8), est.fn(r, v, mask, **kw)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="values"):
        est(r, None, mask)
