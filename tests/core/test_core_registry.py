"""Registry behaviour and the built-in registries' contents."""

import pytest

from rlexp.core import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Registry,
    gae,
    kl_estimate,
    ppo_policy_loss,
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
    assert ADVANTAGE_ESTIMATORS.names() == ["gae"]
    assert ADVANTAGE_ESTIMATORS.get("gae") is gae
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert AGGREGATIONS.names() == sorted(
        ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
         "seq-mean-token-sum-norm", "prompt-mean"]
    )
    assert POLICY_LOSSES.names() == ["ppo_clip"]
    assert POLICY_LOSSES.get("ppo_clip") is ppo_policy_loss
    with pytest.raises(ValueError, match="unknown kl estimator 'k4'; valid: k1, k2, k3"):
        kl_estimate(None, None, "k4")
