"""The trainer scores what the sampler sampled: temperature on the training side, the sampler's own
log-probs and the mismatch metric, unscorable completions out of every statistic, the task's verdict
(not the shaped score) deciding what has signal, and knobs that cannot act flagged or refused."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import GenerationConfig
from transformers.generation.logits_process import TopPLogitsWarper

from fast_overrides import FAST
from one_iteration import build, one_iteration
from rlexp import core
from rlexp.cli import main
from rlexp.config import ConfigError, validate
from rlexp.config.knobs import inactive_knobs
from rlexp.models import response_logits
from rlexp.modules.online_metrics import mismatch_metrics
from rlexp.rollout import collect_groups, generate_rollout
from rlexp.rollout.batch import RolloutBatch, encode_prompts
from rlexp.rollout.generate import sample

GROUPS = ["algorithm=grpo", "algorithm.prompts_per_step=2", "algorithm.num_generations=4", "algorithm.minibatch_size=4"]


def _rollout(module, *, temperature=1.0, top_p=1.0, seed=0):
    torch.manual_seed(seed)
    examples, idx = module.sample_prompts(0)
    return generate_rollout(module.actor, module.tokenizer, module.task, examples,
                            num_generations=module.algo.num_generations, max_new_tokens=module.max_new_tokens,
                            temperature=temperature, top_p=top_p, prompt_index=idx)


def _picked(logits, ids, mask):
    return torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1) * mask


# ------------------------------------------------------------------ the sampler's log-probs
def test_sampler_logprobs_are_those_of_the_tempered_distribution_it_drew_from():
    _, module = build(GROUPS)
    batch = _rollout(module, temperature=0.7)
    logits = response_logits(module.actor, **batch.tensors())
    want = _picked(logits / 0.7, batch.response_ids, batch.mask)
    torch.testing.assert_close(batch.rollout_logprobs, want, atol=1e-5, rtol=0)
    assert (batch.rollout_logprobs - _picked(logits, batch.response_ids, batch.mask)).abs().max() > 1e-2


def test_with_top_p_the_sampler_logprob_is_renormalized_over_the_nucleus():
    """top_p truncates what the sampler can draw and renormalizes; the trainer does not truncate, so the
    two differ by exactly the log of the nucleus' tempered mass."""
    _, module = build(GROUPS)
    batch = _rollout(module, temperature=0.7, top_p=0.6)
    tempered = response_logits(module.actor, **batch.tensors()) / 0.7
    B, T, V = tempered.shape
    kept = TopPLogitsWarper(top_p=0.6)(None, tempered.reshape(B * T, V).clone()).reshape(B, T, V)
    mass = torch.softmax(tempered, -1).masked_fill(torch.isinf(kept), 0).sum(-1)
    gap = (batch.rollout_logprobs - _picked(tempered, batch.response_ids, batch.mask)) * batch.mask
    on = batch.mask.bool()
    torch.testing.assert_close(gap[on], -mass.log()[on], atol=1e-5, rtol=0)
    assert gap.max() > 1e-2 and torch.isfinite(batch.rollout_logprobs).all()


def test_sampling_draws_the_same_tokens_as_generates_own_warpers():
    """The warpers are passed explicitly (so that the recorder runs after them): the draws must be those
    of generate's own temperature / top-p processing."""
    _, module = build(GROUPS)
    prompts = [e.prompt for e in module.task.train_examples[:16]]
    torch.manual_seed(5)
    mine = sample(module.actor, module.tokenizer, prompts, max_new_tokens=4, do_sample=True, temperature=0.7,
                  top_p=0.9, return_logprobs=True)
    ids, pm = encode_prompts(module.tokenizer, prompts)
    torch.manual_seed(5)
    out = module.actor.generate(input_ids=ids, attention_mask=pm, generation_config=GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=4, pad_token_id=module.tokenizer.pad_token_id,
        eos_token_id=module.tokenizer.eos_token_id))
    theirs = out[:, ids.shape[1]:]
    mask = mine[3].bool()
    assert torch.equal(mine[2][mask], theirs[:, :mine[2].shape[1]][mask])


# ------------------------------------------------------------------ the training side at temperature T
def test_old_reference_logprobs_and_entropies_score_softmax_of_logits_over_t():
    _, module = build(GROUPS + ["rollout.temperature=0.7", "algorithm.kl_coef=0.1"])
    with torch.no_grad():
        for p in module.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _rollout(module, temperature=0.7)
    assert not module.single_pass(batch.size)  # minibatch 4 < 8 rows: the separate scoring pass
    exp = module.make_experience(batch)
    mask, ids = batch.mask, batch.response_ids
    actor = response_logits(module.actor, **batch.tensors()) / 0.7
    ref = response_logits(module.reference, **batch.tensors()) / 0.7
    torch.testing.assert_close(exp.old_logprobs * mask, _picked(actor, ids, mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(exp.old_logprobs * mask, batch.rollout_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(exp.ref_logprobs * mask, _picked(ref, ids, mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(exp.rollout_entropy * mask, core.entropy_from_logits(actor) * mask, atol=1e-5,
                               rtol=0)
    _, metrics, _ = module._minibatch_loss(exp.take(torch.arange(4)))
    want = core.masked_mean(core.entropy_from_logits(actor[:4]), mask[:4])
    assert metrics["entropy"] == pytest.approx(want.item(), abs=1e-5)
    mismatch = mismatch_metrics(exp)
    assert mismatch["train/rollout_mismatch_kl"] < 1e-6
    # the metric sees the old bug: log-probs scored at T = 1 for completions sampled at T = 0.7
    module.temperature = 1.0
    assert mismatch_metrics(module.make_experience(batch))["train/rollout_mismatch_kl"] > 1e-3


@pytest.mark.parametrize("minibatch", [4, 8], ids=["two-pass", "single-pass"])
def test_grpo_at_temperature_0_7_logs_no_mismatch_at_any_step(minibatch, mlflow_uri, in_tmp):
    """``rlexp train algorithm=grpo rollout.temperature=0.7``: the sampler/trainer mismatch is numerical
    noise at every step (fp32, tiny model), and recorded in MLflow; with a separate scoring pass and with
    the single pass (the old log-probs taken from the update's own forward)."""
    exp = f"mismatch-{minibatch}"
    assert main(["train", *FAST, *GROUPS, f"algorithm.minibatch_size={minibatch}", "rollout.temperature=0.7",
                 "trainer.max_steps=3", f"tracking.uri={mlflow_uri}", f"tracking.experiment={exp}"]) == 0
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name(exp).experiment_id])[0]
    kl = client.get_metric_history(run_.info.run_id, "train/rollout_mismatch_kl")
    diff = client.get_metric_history(run_.info.run_id, "train/rollout_logprob_absdiff_max")
    assert sorted(m.step for m in kl) == [1, 2, 3] and len(diff) == 3
    assert all(0 <= m.value < 1e-4 for m in kl), [m.value for m in kl]
    assert all(0 <= m.value < 1e-3 for m in diff), [m.value for m in diff]


# ------------------------------------------------------------------ unscorable completions
def _crafted(module, scores, failed, verdicts=None):
    """A real rollout whose rewards are replaced: ``scores`` on each row's last token, ``failed`` rows
    without a reward (scored 0, as `score` leaves them), ``verdicts`` the unshaped task scores."""
    batch = _rollout(module)
    s = torch.tensor([0.0 if f else x for x, f in zip(scores, failed)])
    last = batch.mask.sum(1).long() - 1
    batch.token_rewards = torch.zeros_like(batch.mask)
    batch.token_rewards[torch.arange(batch.size), last] = s
    batch.scores, batch.reward_failed = s, torch.tensor(failed)
    batch.task_scores = s.clone() if verdicts is None else torch.tensor(verdicts)
    return batch


FAILS = [False, False, False, True, False, False, False, True]
SCORES = [1, 1, 1, 0, 1, 0, 1, 0]  # groups: [1, 1, 1, failed], [1, 0, 1, failed]


@pytest.mark.parametrize("extra, want_group_1", [
    ([], core.group_advantages(torch.tensor([1.0, 0.0, 1.0]), 3)),
    (["algorithm.adv_scale=batch"], (torch.tensor([1.0, 0, 1]) - 2 / 3) / (torch.tensor([1.0, 1, 1, 1, 0, 1]).std() + 1e-6)),
    (["algorithm.advantage=rloo"], torch.tensor([0.5, -1.0, 0.5])),
    (["algorithm.advantage=dr_grpo"], torch.tensor([1 / 3, -2 / 3, 1 / 3])),
], ids=["group-std", "batch-std", "rloo", "dr_grpo"])
def test_unscorable_completions_leave_the_group_and_batch_statistics(extra, want_group_1):
    _, module = build(GROUPS + extra)
    exp = module.make_experience(_crafted(module, SCORES, FAILS))
    adv = exp.raw_advantages[:, 0]
    torch.testing.assert_close(adv[:4], torch.zeros(4))  # [1, 1, 1, failed]: no signal at all
    torch.testing.assert_close(adv[4:7], want_group_1.float(), atol=1e-5, rtol=0)
    assert adv[7] == 0 and exp.loss_mask[[3, 7]].sum() == 0
    assert exp.zero_std_rows.tolist() == [1.0] * 4 + [0.0] * 4


def test_unscorable_completions_leave_the_whitening_statistics():
    _, module = build(["algorithm.prompts_per_step=8", "algorithm.minibatch_size=4", "algorithm.whiten_advantages=true"])
    batch = _crafted(module, [1, 0, 1, 1, 0, 1, 0, 1], [False, True] + [False] * 6)
    exp = module.make_experience(batch)
    valid_mask = batch.mask * torch.tensor([1.0, 0] + [1.0] * 6)[:, None]
    torch.testing.assert_close(exp.advantages, core.masked_whiten(exp.raw_advantages, valid_mask))


def test_zero_variance_filter_and_dynamic_sampling_ignore_unscorable_completions():
    _, module = build(GROUPS + ["algorithm.zero_variance_filter=true"])
    batch = _crafted(module, SCORES, FAILS)
    exp = module.make_experience(batch)
    assert exp.loss_mask[:4].sum() == 0 and exp.loss_mask[[4, 5, 6]].sum() > 0
    kept, draws, signal = collect_groups(lambda draw: batch, num_prompts=2, group_size=4, max_draws=1, pad_id=0)
    assert signal == 0.5 and kept.prompt_index[0] == batch.prompt_index[4]  # the signal group comes first


def test_pass_rates_and_the_reward_mean_count_only_scorable_completions():
    """[1, 1, 1, failed] has solved its prompt (pass rate 1 over the scorable rows): no-positive-resampling
    removes it; the logged reward mean is over the six scorable completions."""
    overrides = GROUPS + ["algorithm.no_positive_resampling=true", "algorithm.pass_rate_threshold=1.0"]
    _, module = build(overrides)
    batch = _crafted(module, SCORES, FAILS)
    module = one_iteration(overrides, batch)
    assert module.pool.removed == {batch.prompt_index[0]}
    h = next(h for h in module.history if "train/policy_loss" in h)
    assert h["train/reward_mean"] == pytest.approx(5 / 6) and h["train/reward_errors"] == 2


# ------------------------------------------------------------------ the verdict, not the shaped score
def test_an_all_correct_group_of_different_lengths_has_no_signal():
    """DAPO eq. 11 keeps a group iff 0 < #correct < G: the overlong penalty makes the scores of an
    all-correct group differ, but its verdicts are all equal. Same for the zero-variance filter and for
    the pass rate of no-positive-resampling."""
    overrides = GROUPS + ["algorithm.zero_variance_filter=true", "algorithm.no_positive_resampling=true"]
    _, module = build(overrides)
    shaped = [1.0, 0.8, 1.0, 0.6, 1.0, 0.0, 0.0, 0.0]
    verdicts = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    batch = _crafted(module, shaped, [False] * 8, verdicts)
    _, _, signal = collect_groups(lambda draw: batch, num_prompts=2, group_size=4, max_draws=1, pad_id=0)
    assert signal == 0.5  # group 0 (all correct) has none, group 1 (one of four) has
    exp = module.make_experience(batch)
    assert exp.zero_std_rows.tolist() == [1.0] * 4 + [0.0] * 4
    assert exp.loss_mask[:4].sum() == 0
    module = one_iteration(overrides, batch)
    assert module.pool.removed == {batch.prompt_index[0]}


def test_the_overlong_penalty_shapes_the_score_but_not_the_verdict():
    _, module = build(GROUPS + ["algorithm.overlong_penalty=1.0", "algorithm.overlong_buffer=3",
                                "algorithm.overlong_max_len=3", "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"])
    torch.manual_seed(0)
    batch = module._generate(0)
    lengths = batch.mask.sum(1)
    assert (batch.scores < batch.task_scores).any() and (lengths > 1).any()
    penalty = core.overlong_penalty(lengths, 3, 3, 1.0)
    torch.testing.assert_close(batch.scores, batch.task_scores + penalty)


# ------------------------------------------------------------------ knobs that cannot act
def test_clip_knobs_are_dead_when_the_update_is_one_step_on_the_whole_rollout():
    one = validate_and_get(["algorithm=grpo", "algorithm.minibatch_size=64"])
    assert {"clip_eps", "clip_eps_high", "dual_clip"} <= set(inactive_knobs(one))
    ppo = validate_and_get(["algorithm.minibatch_size=64", "algorithm.ppo_epochs=1"])
    assert {"clip_eps", "clip_eps_high", "dual_clip", "value_clip_eps"} <= set(inactive_knobs(ppo))
    for live in (["algorithm=grpo"], ["algorithm=grpo", "algorithm.minibatch_size=64", "algorithm.ppo_epochs=2"]):
        assert not {"clip_eps", "clip_eps_high", "dual_clip"} & set(inactive_knobs(validate_and_get(live)))


def validate_and_get(overrides):
    from rlexp.train import compose
    cfg = compose(overrides)
    validate(cfg)
    return cfg.algorithm


def test_a_clip_sweep_over_a_single_pass_update_is_warned_about_and_tagged(mlflow_uri, in_tmp, capsys):
    assert main(["train", *FAST, "algorithm=grpo", "algorithm.prompts_per_step=2", "algorithm.num_generations=4",
                 "algorithm.minibatch_size=8", "algorithm.clip_eps=0.3", "trainer.max_steps=1",
                 f"tracking.uri={mlflow_uri}", "tracking.experiment=dead-clip"]) == 0
    assert "algorithm.clip_eps has no effect in this run: one epoch over one minibatch" in capsys.readouterr().out
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name("dead-clip").experiment_id])[0]
    assert run_.data.tags["rlexp.dead_knobs"] == "algorithm.clip_eps"


def test_k1_in_the_loss_is_refused():
    """Its expected gradient is zero; the one-line message through `rlexp train` is a row of
    tests/test_bad_input.py's table."""
    with pytest.raises(ConfigError, match=r"algorithm\.kl_estimator=k1 with algorithm\.kl_placement=in_loss"):
        validate_and_get(["algorithm.kl_estimator=k1", "algorithm.kl_placement=in_loss"])
    validate_and_get(["algorithm.kl_coef=0", "algorithm.kl_estimator=k1", "algorithm.kl_placement=in_loss"])
    validate_and_get(["algorithm.kl_estimator=k1", "algorithm.kl_placement=in_reward"])
    validate_and_get(["algorithm.kl_estimator=k3", "algorithm.kl_placement=in_loss"])
