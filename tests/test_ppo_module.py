"""The PPO LightningModule: GAE and the PPO loss wired inside training_step, and every knob live."""
from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fast_overrides import FAST
from rlexp import core
from rlexp.config.schema import OnlineAlgorithmConfig
from rlexp.modules import iteration_loader
from rlexp.train import build_module, compose, run
from rlexp.warmstart import prepare_model_dir

# partial credit so that every batch has a reward signal; larger learning rates so that ratios move away from 1 within one iteration (clipping becomes active)
KNOB_BASE = FAST + ["tracking=none", "trainer.eval_every=2", "algorithm.actor_lr=1e-3", "algorithm.critic_lr=1e-3",
                     "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"]  # a dense signal

# knob -> (extra base overrides, the flipped value). Two iterations run, so the KL to the reference
# is non-zero in the second (the actor equals the reference before its first update).
GRPO = ["algorithm=grpo", "algorithm.prompts_per_step=4", "algorithm.num_generations=2", "algorithm.minibatch_size=4"]
COIN = GRPO + ["task.reward._target_=rewards_for_tests.coin"]  # flat groups about half the time
DYN = COIN + ["algorithm.dynamic_sampling=true"]
LONG = GRPO + ["algorithm.overlong_penalty=1.0", "algorithm.overlong_buffer=4"]
NPR = COIN + ["algorithm.no_positive_resampling=true"]
SAPO = GRPO + ["algorithm.policy_loss=sapo"]  # two minibatches: the second is off-policy, where τ acts
KNOBS = {
    "advantage": (GRPO, "algorithm.advantage=rloo"),
    "gamma": ([], "algorithm.gamma=0.5"),
    "lam": ([], "algorithm.lam=0.0"),
    "whiten_advantages": ([], "algorithm.whiten_advantages=false"),
    "adv_scale": (GRPO, "algorithm.adv_scale=batch"),
    "adv_eps": (GRPO, "algorithm.adv_eps=1.0"),
    "policy_loss": (GRPO, "algorithm.policy_loss=cispo"),
    "clip_eps": ([], "algorithm.clip_eps=0.001"),
    "clip_eps_high": (["algorithm.clip_eps=0.001"], "algorithm.clip_eps_high=0.05"),
    "dual_clip": ([], "algorithm.dual_clip=1.001"),
    "sapo_tau_pos": (SAPO, "algorithm.sapo_tau_pos=4.0"),
    "sapo_tau_neg": (SAPO, "algorithm.sapo_tau_neg=4.0"),
    "loss_agg": ([], "algorithm.loss_agg=seq-mean-token-sum"),
    "entropy_coef": ([], "algorithm.entropy_coef=0.1"),
    "kl_coef": ([], "algorithm.kl_coef=0.5"),
    "kl_estimator": (["algorithm.kl_coef=0.5"], "algorithm.kl_estimator=k3"),
    "kl_placement": (["algorithm.kl_coef=0.5", "algorithm.kl_estimator=k3"], "algorithm.kl_placement=in_loss"),
    "value_clip_eps": ([], "algorithm.value_clip_eps=1e-5"),
    "critic_init": ([], "algorithm.critic_init=random"),
    "prompts_per_step": ([], "algorithm.prompts_per_step=16"),
    "num_generations": ([], "algorithm.num_generations=2"),
    "minibatch_size": ([], "algorithm.minibatch_size=8"),
    "ppo_epochs": ([], "algorithm.ppo_epochs=1"),
    "actor_lr": ([], "algorithm.actor_lr=1e-4"),
    "critic_lr": ([], "algorithm.critic_lr=1e-4"),
    "weight_decay": ([], "algorithm.weight_decay=0.5"),
    "max_grad_norm": ([], "algorithm.max_grad_norm=0.001"),
    "dynamic_sampling": (COIN, "algorithm.dynamic_sampling=true"),
    "max_gen_batches": (DYN, "algorithm.max_gen_batches=1"),
    "zero_variance_filter": (COIN, "algorithm.zero_variance_filter=true"),
    "overlong_penalty": (GRPO + ["algorithm.overlong_buffer=4"], "algorithm.overlong_penalty=1.0"),
    "overlong_max_len": (LONG, "algorithm.overlong_max_len=6"),
    "overlong_buffer": (LONG, "algorithm.overlong_buffer=2"),
    "overlong_filter": (GRPO + ["rollout.max_new_tokens=2"], "algorithm.overlong_filter=true"),
    "no_positive_resampling": (COIN + ["algorithm.pass_reward=0.0"], "algorithm.no_positive_resampling=true"),
    "pass_rate_threshold": (NPR, "algorithm.pass_rate_threshold=0.5"),
    "pass_reward": (NPR, "algorithm.pass_reward=0.0"),
    # the recipe's lag, rollout.off_policy_lag's default: the second iteration trains on the initial policy's batch
    "off_policy_lag": (GRPO, "algorithm.off_policy_lag=1"),
}


def _train(overrides, tmp_path):
    module = run(compose(overrides), launch_dir=str(tmp_path))
    params = [p.detach().flatten() for p in module.actor.parameters()]
    if module.critic is not None:
        params += [p.detach().flatten() for p in module.critic.parameters()]
    return torch.cat(params), module


# knobs that act only where the sampler and the trainer disagree, which the HF engine's do not (to ~1e-7): flipped
# on a fixed rollout with a real mismatch by tests/test_rollout_correction.py's own table
MISMATCH_KNOBS = ("rollout_correction", "rollout_is_cap")


def test_knob_table_covers_every_algorithm_key():
    from test_rollout_correction import KNOBS as MISMATCH_TABLE
    keys = {f.name for f in dataclasses.fields(OnlineAlgorithmConfig)} - {"name", "module"}
    assert set(MISMATCH_TABLE) == set(MISMATCH_KNOBS) and not set(KNOBS) & set(MISMATCH_KNOBS)
    assert keys == set(KNOBS) | set(MISMATCH_KNOBS)


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_every_knob_changes_the_update(knob, tmp_path, in_tmp):
    extra, flipped = KNOBS[knob]
    base, _ = _train(KNOB_BASE + extra, tmp_path)
    again, _ = _train(KNOB_BASE + extra, tmp_path)
    assert torch.equal(base, again), "the same config must give the same update (CPU determinism)"
    changed, module = _train(KNOB_BASE + extra + [flipped], tmp_path)
    assert base.shape != changed.shape or not torch.equal(base, changed), f"{flipped} changed nothing"
    from rlexp.config.knobs import inactive_knobs
    assert knob not in inactive_knobs(module.algo), f"{knob} is tested where it is declared inactive"


def test_rollout_sampling_knobs_change_the_update(tmp_path, in_tmp):
    base, _ = _train(KNOB_BASE, tmp_path)
    for flipped in ("rollout.temperature=0.5", "rollout.top_p=0.5", "seed=1"):
        changed, _ = _train(KNOB_BASE + [flipped], tmp_path)
        assert not torch.equal(base, changed), flipped


def test_kl_coef_zero_builds_no_reference(tmp_path, in_tmp):
    _, module = _train(KNOB_BASE + ["algorithm.kl_coef=0"], tmp_path)
    assert module.reference is None
    kls = [h["train/kl"] for h in module.history if "train/policy_loss" in h]  # every iteration logs it
    assert kls and all(kl == 0.0 for kl in kls), kls


def _module(overrides):
    cfg = compose(FAST + ["tracking=none"] + overrides)
    task = instantiate(cfg.task)
    model_dir, _ = prepare_model_dir(cfg.model, task, cfg.hardware)
    L.seed_everything(0, verbose=False)
    return cfg, build_module(cfg, task, model_dir)[0]


def _perturb(model, scale=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_experience_puts_kl_in_the_reward_and_runs_gae(estimator):
    cfg, module = _module(["algorithm.whiten_advantages=false", "algorithm.kl_coef=0.3",
                           f"algorithm.kl_estimator={estimator}", "algorithm.gamma=0.9", "algorithm.lam=0.7"])
    _perturb(module.reference)
    _perturb(module.critic.value_head, 0.5)
    from rlexp.rollout import generate_rollout

    batch = generate_rollout(module.actor, module.tokenizer, module.task, module.sample_prompts(0)[0],
                             num_generations=1, max_new_tokens=4)
    exp = module.make_experience(batch)
    mask = batch.mask
    kl = core.kl_estimate(exp.old_logprobs, exp.ref_logprobs, estimator) * mask
    assert kl.abs().sum() > 0
    torch.testing.assert_close(exp.rewards, batch.token_rewards - 0.3 * kl)
    adv, ret = core.gae(exp.rewards, exp.old_values, mask, 0.9, 0.7)
    torch.testing.assert_close(exp.advantages, adv)
    torch.testing.assert_close(exp.returns, ret)
    assert exp.old_values.abs().sum() > 0
    # whitening is a separate, optional step
    module.algo = OmegaConf.merge(module.algo, {"whiten_advantages": True})
    whitened = module.make_experience(batch).advantages
    torch.testing.assert_close(whitened, core.masked_whiten(adv, mask))


def test_kl_in_loss_leaves_the_reward_alone():
    _, module = _module(["algorithm.kl_coef=0.3", "algorithm.kl_estimator=k3", "algorithm.kl_placement=in_loss"])
    _perturb(module.reference)
    from rlexp.rollout import generate_rollout

    batch = generate_rollout(module.actor, module.tokenizer, module.task, module.sample_prompts(0)[0],
                             num_generations=1, max_new_tokens=4)
    exp = module.make_experience(batch)
    torch.testing.assert_close(exp.rewards, batch.token_rewards)
    loss_kl, metrics, _ = module._minibatch_loss(exp)
    assert metrics["kl_loss"] > 0


def test_metrics_are_averaged_over_the_whole_update():
    """train/policy_loss is the mean over all ppo_epochs × minibatches, not the last minibatch."""
    _, module = _module(["algorithm.ppo_epochs=2", "algorithm.minibatch_size=4", "trainer.max_steps=1"])
    seen = []
    inner = module.policy_loss_fn

    def recording(*args, **kwargs):
        loss, metrics = inner(*args, **kwargs)
        seen.append(loss.item())
        return loss, metrics
    module.policy_loss_fn = recording
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=iteration_loader(1))
    assert len(seen) == 4  # 2 epochs × (8 completions / 4)
    logged = next(h for h in module.history if "train/policy_loss" in h)
    assert logged["train/policy_loss"] == pytest.approx(sum(seen) / 4, rel=1e-5)
    assert logged["step"] == 1
    # Lightning's global_step counts optimizer steps: actor + critic per minibatch
    assert trainer.global_step == 8 and module.iteration == 0


def _one_iteration(overrides, *, single_pass: bool):
    """One real iteration; returns the module, its history and the number of actor scoring passes."""
    from rlexp.modules import online
    _, module = _module(overrides + ["trainer.max_steps=1"])
    if module.reference is not None:
        _perturb(module.reference)  # a KL to measure in the very first iteration
    if not single_pass:
        module.single_pass = lambda batch_size: False
    calls = []
    inner = online.response_logits

    def counting(model, *args, **kwargs):
        calls.append(model is module.actor)
        return inner(model, *args, **kwargs)
    online.response_logits = counting
    try:
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", devices=1)
        trainer.fit(module, train_dataloaders=iteration_loader(1))
    finally:
        online.response_logits = inner
    return module, next(h for h in module.history if "train/policy_loss" in h), sum(calls)


_EVERY_CASE = ("train/policy_loss", "train/kl", "train/rollout_entropy", "train/entropy", "train/clipfrac",
                "train/approx_kl", "train/is_ratio_mean", "train/grad_norm", "train/advantage_mean")


@pytest.mark.parametrize("overrides,present,absent", [
    (["algorithm=grpo", "algorithm.prompts_per_step=2", "algorithm.num_generations=4", "algorithm.minibatch_size=8",
      "algorithm.kl_coef=0.3", "algorithm.entropy_coef=0.01"],
     _EVERY_CASE + ("train/kl_loss",), ("train/value_loss", "train/critic_grad_norm")),
    (["algorithm.ppo_epochs=1", "algorithm.minibatch_size=8", "algorithm.kl_coef=0.0"],
     _EVERY_CASE + ("train/value_loss", "train/critic_grad_norm", "train/vf_clipfrac"), ("train/kl_loss",)),
], ids=["grpo-kl-in-loss", "ppo-critic"])
def test_single_pass_update_equals_the_two_pass_update(overrides, present, absent):
    """One epoch over one minibatch: the update's forward doubles as the old log-probs (ρ = 1 with its
    gradient). Same parameters after the step and the same logged diagnostics as with a separate
    no-grad scoring pass, with one actor pass fewer."""
    overrides = overrides + ["algorithm.actor_lr=1e-3", "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"]
    fused, m_fused, n_fused = _one_iteration(overrides, single_pass=True)
    plain, m_plain, n_plain = _one_iteration(overrides, single_pass=False)
    assert fused.single_pass(8) and (n_fused, n_plain) == (1, 2)
    for p, q in zip(fused.actor.parameters(), plain.actor.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert set(m_fused) == set(m_plain)
    assert not set(present) - set(m_plain), f"missing metrics: {sorted(set(present) - set(m_plain))}"
    assert not set(absent) & set(m_plain), f"unexpected metrics: {sorted(set(absent) & set(m_plain))}"
    for key in present:
        assert m_fused[key] == pytest.approx(m_plain[key], rel=1e-4, abs=1e-6), key
    assert (m_plain["train/kl"] > 0) == ("train/kl_loss" in present)


def test_the_single_pass_stores_the_old_logprobs_of_its_first_forward():
    """The single pass as one explicit path: `make_experience` leaves the old log-probs, the rollout entropy
    and the KL diagnostic None; the actor's loss leaves its minibatch as it is; the update stores what its
    first forward gave, the values a scoring pass at the start of the update gives."""
    from rlexp.models import response_logits
    _, module = _module(["algorithm=grpo", "algorithm.prompts_per_step=2", "algorithm.num_generations=4",
                         "algorithm.minibatch_size=8", "algorithm.kl_coef=0.3", "trainer.max_steps=1",
                         "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"])
    _perturb(module.reference)
    seen, make = {}, module.make_experience

    def making(batch):
        exp = make(batch)
        seen["exp"], seen["before"] = exp, (exp.old_logprobs, exp.rollout_entropy, exp.kl)
        with torch.no_grad():
            logits = response_logits(module.actor, **batch.tensors(), fp32=module.fp32_logits,
                                     temperature=module.temperature)
        seen["want"] = core.logprobs_from_logits(logits, batch.response_ids), core.entropy_from_logits(logits)
        mb = exp.take(torch.arange(exp.size))
        module._minibatch_loss(mb)
        seen["mb"] = mb.old_logprobs
        return exp
    module.make_experience = making
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=iteration_loader(1))
    exp, (logprobs, entropy) = seen["exp"], seen["want"]
    assert module.single_pass(8) and seen["before"] == (None, None, None) and seen["mb"] is None
    mask = exp.mask
    torch.testing.assert_close(exp.old_logprobs * mask, logprobs * mask, rtol=0, atol=1e-6)
    torch.testing.assert_close(exp.rollout_entropy * mask, entropy * mask, rtol=0, atol=1e-6)
    torch.testing.assert_close(exp.kl, core.kl_estimate(exp.old_logprobs, exp.ref_logprobs, "k3") * mask)
    assert exp.kl.abs().sum() > 0


@pytest.mark.parametrize("extra", [["algorithm.ppo_epochs=2"], ["algorithm.minibatch_size=4"],
                                   ["algorithm.kl_coef=0.1", "algorithm.kl_placement=in_reward"]])
def test_single_pass_only_where_the_update_starts_on_policy(extra):
    """Several epochs or minibatches (later ones are off-policy), or a KL in the reward (the advantages
    need logπ_old first), keep the separate scoring pass."""
    _, module = _module(["algorithm.ppo_epochs=1", "algorithm.minibatch_size=8", "algorithm.kl_coef=0.1",
                         "algorithm.kl_estimator=k3", "algorithm.kl_placement=in_loss"] + extra)
    assert not module.single_pass(8)


def test_same_seed_same_run_different_seed_different_run(tmp_path, in_tmp):
    """Two runs with the same seed log identical metrics (CPU); another seed differs."""
    def metrics(seed):
        _, module = _train(KNOB_BASE + [f"seed={seed}"], tmp_path)
        return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in module.history]
    first = metrics(0)
    assert metrics(0) == first
    assert metrics(1) != first
