"""Start-up validation and dead-knob detection read the registered pieces' metadata (a policy loss's
`uses`/`incompatible`, an estimator's `needs_groups`), so a piece registered elsewhere — a user's own —
is checked without editing rlexp/config; the SAPO and REINFORCE++ recipes; REINFORCE++'s experience."""
from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from fast_overrides import FAST
from rlexp import core
from rlexp.config import ConfigError, validate
from rlexp.config.knobs import dead_overrides, inactive_knobs
from rlexp.core import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, AdvantageEstimator
from rlexp.core.losses import policy_loss
from rlexp.train import build_module, compose

CONFIG_CODE = Path(core.__file__).parents[1] / "config"


def test_no_policy_loss_is_named_in_the_config_code():
    for path in (CONFIG_CODE / "knobs.py", CONFIG_CODE / "validate.py"):
        text = path.read_text()
        for name in POLICY_LOSSES.names():
            assert not re.search(rf"\b{name}\b", text), f"{path.name} names the policy loss {name!r}"


@pytest.fixture
def own_registries(monkeypatch):
    """Register test pieces in copies of the registries, as a user's module would register its own."""
    monkeypatch.setattr(POLICY_LOSSES, "_items", dict(POLICY_LOSSES._items))
    monkeypatch.setattr(ADVANTAGE_ESTIMATORS, "_items", dict(ADVANTAGE_ESTIMATORS._items))


def test_a_users_policy_loss_is_validated_and_its_dead_knobs_found(own_registries):
    @policy_loss("mine", uses=("clip_eps",), incompatible={"clip_eps_high": "it has one symmetric bound"})
    def mine(logprobs, old_logprobs, advantages, mask, *, clip_eps):
        return -advantages * torch.exp(logprobs - old_logprobs).clamp(1 - clip_eps, 1 + clip_eps), {}

    base = ["algorithm=grpo", "algorithm.policy_loss=mine"]
    validate(compose(base))
    with pytest.raises(ConfigError) as e:
        validate(compose(base + ["algorithm.clip_eps_high=0.3"]))
    assert str(e.value) == ("algorithm.clip_eps_high=0.3 does not apply to algorithm.policy_loss=mine (it has one "
                            "symmetric bound); set it to null")
    dead = inactive_knobs(compose(base).algorithm)
    for key in ("clip_eps_high", "dual_clip", "sapo_tau_pos", "sapo_tau_neg"):
        assert dead[key] == "policy_loss=mine does not use it", key
    assert "clip_eps" not in dead  # grpo: two minibatches, so the second is off-policy


def test_an_estimator_without_groups_needs_no_groups(own_registries):
    def fn(rewards, values, mask, **_):
        return rewards * mask, rewards * mask

    for name, needs_groups in (("solo", False), ("grouped", True)):
        ADVANTAGE_ESTIMATORS.register(name)(AdvantageEstimator(name, fn, False, frozenset(), needs_groups))
    one = ["algorithm=grpo", "algorithm.num_generations=1", "algorithm.minibatch_size=8"]
    validate(compose(one + ["algorithm.advantage=solo"]))
    with pytest.raises(ConfigError, match=r"algorithm\.num_generations=1 must be >= 2 .*advantage=grouped"):
        validate(compose(one + ["algorithm.advantage=grouped"]))


def test_the_recipes_are_what_their_papers_say():
    sapo, rpp = (compose([f"algorithm={n}"]).algorithm for n in ("sapo", "reinforce_pp"))
    validate(compose(["algorithm=sapo"]))
    validate(compose(["algorithm=reinforce_pp"]))
    assert (sapo.policy_loss, sapo.sapo_tau_pos, sapo.sapo_tau_neg, sapo.advantage) == ("sapo", 1.0, 1.05, "grpo")
    assert (rpp.advantage, rpp.num_generations, rpp.whiten_advantages, rpp.gamma) == ("reinforce_pp", 1, True, 1.0)
    assert (rpp.kl_estimator, rpp.kl_placement, rpp.policy_loss) == ("k1", "in_reward", "ppo_clip") and rpp.kl_coef > 0
    with pytest.raises(ConfigError, match=r"algorithm\.sapo_tau_neg=0\.0 is out of range"):
        validate(compose(["algorithm=sapo", "algorithm.sapo_tau_neg=0"]))
    with pytest.raises(ConfigError, match=r"algorithm\.dynamic_sampling=true needs groups"):
        validate(compose(["algorithm=reinforce_pp", "algorithm.dynamic_sampling=true"]))


def test_dead_knobs_follow_the_loss_and_the_estimator():
    sapo = compose(["algorithm=sapo"]).algorithm
    dead = inactive_knobs(sapo)
    assert {k: dead[k] for k in ("clip_eps", "clip_eps_high", "dual_clip")} == dict.fromkeys(
        ("clip_eps", "clip_eps_high", "dual_clip"), "policy_loss=sapo does not use it")
    assert not {"sapo_tau_pos", "sapo_tau_neg"} & set(dead)
    assert dead_overrides(sapo, ["algorithm.clip_eps=0.1", "algorithm.sapo_tau_pos=2"]) == {
        "algorithm.clip_eps": "policy_loss=sapo does not use it"}
    ppo = inactive_knobs(compose(["algorithm=ppo"]).algorithm)
    assert ppo["sapo_tau_pos"] == ppo["sapo_tau_neg"] == "policy_loss=ppo_clip does not use it"
    # one epoch over one minibatch: ρ = 1, so SAPO's temperatures do nothing either
    one = inactive_knobs(compose(["algorithm=sapo", "algorithm.minibatch_size=64"]).algorithm)
    assert one["sapo_tau_pos"].startswith("one epoch over one minibatch") and "sapo_tau_neg" in one
    rpp = inactive_knobs(compose(["algorithm=reinforce_pp"]).algorithm)
    assert {k: rpp[k] for k in ("lam", "adv_scale", "adv_eps")} == dict.fromkeys(
        ("lam", "adv_scale", "adv_eps"), "advantage=reinforce_pp does not use it")
    assert "gamma" not in rpp and rpp["critic_lr"] == "advantage=reinforce_pp builds no critic"


def test_reinforce_pp_advantages_are_the_whitened_returns_of_the_kl_penalized_rewards():
    cfg = compose(FAST + ["tracking=none", "algorithm=reinforce_pp", "algorithm.kl_coef=0.3"])
    task = instantiate(cfg.task)
    from rlexp.rollout import generate_rollout
    from rlexp.warmstart import prepare_model_dir

    model_dir, _ = prepare_model_dir(cfg.model, task, cfg.hardware)
    L.seed_everything(0, verbose=False)
    module = build_module(cfg, task, model_dir)[0]
    assert module.critic is None and module.reference is not None
    with torch.no_grad():
        for p in module.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a KL to measure before the first update
    batch = generate_rollout(module.actor, module.tokenizer, module.task, module.sample_prompts(0)[0],
                             num_generations=1, max_new_tokens=4)
    exp = module.make_experience(batch)
    mask = batch.mask
    kl = core.kl_estimate(exp.old_logprobs, exp.ref_logprobs, "k1") * mask
    assert kl.abs().sum() > 0
    torch.testing.assert_close(exp.rewards, batch.token_rewards - 0.3 * kl)
    returns = core.discounted_returns(exp.rewards, mask, 1.0)
    torch.testing.assert_close(exp.raw_advantages, returns)
    torch.testing.assert_close(exp.advantages, core.masked_whiten(returns, mask))
    assert exp.zero_std_rows is None  # one completion per prompt: no groups
