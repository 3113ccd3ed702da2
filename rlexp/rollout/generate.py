"""Sampling completions with ``generate`` (KV cache) and scoring them with the task's reward.

Sampling applies, in this order, the temperature ``T`` (``softmax(logits / T)``) and nucleus
truncation (``top_p``: the smallest set of tokens whose tempered probability reaches ``top_p``,
renormalized). ``sample(..., return_logprobs=True)`` also returns the log-probability the sampler
gave each sampled token under *that* processed distribution (``rollout_logprobs``): the training side
scores ``softmax(logits / T)`` over the whole vocabulary (as verl, TRL and OpenRLHF do), so with
``top_p = 1`` the two agree up to numerics, while ``top_p < 1`` makes the sampler's log-prob larger
by the log of the nucleus mass it renormalized by (the trainer does not truncate;
``train/rollout_mismatch_kl`` shows that gap).
"""
from __future__ import annotations

import math
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from rlexp.rollout.batch import RolloutBatch, encode_prompts
from rlexp.tasks.base import Example, Task
from rlexp.tasks.combine import score_rows


def _response_mask(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask [B, T]`` up to and including the first EOS (all ones if none), ``finished [B]``."""
    is_eos = response_ids == eos_id
    finished = is_eos.any(dim=1)
    T = response_ids.shape[1]
    first = torch.where(finished, is_eos.float().argmax(dim=1), torch.full_like(finished, T - 1, dtype=torch.long))
    mask = (torch.arange(T, device=response_ids.device)[None, :] <= first[:, None]).float()
    return mask, finished


class SampledLogprobs(LogitsProcessor):
    """The last logits processor of a sampling ``generate``: records ``log softmax(scores)[token]`` of each
    sampled token, where ``scores`` are the fully processed logits the sampler draws from.

    Step ``t``'s token is only known at step ``t + 1`` (as ``input_ids[:, -1]``), so one ``[B, V]``
    log-softmax is kept pending at a time (never the whole ``[B, T, V]``); `finish` gathers the last one.
    """

    def __init__(self):
        self.steps: list[torch.Tensor] = []
        self._pending: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._pending is not None:
            self.steps.append(self._pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, response_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` log-probs of ``response_ids`` (the ``T`` generated tokens) under the sampler."""
        if self._pending is not None:
            self.steps.append(self._pending.gather(-1, response_ids[:, -1:]).squeeze(-1))
            self._pending = None
        if len(self.steps) != response_ids.shape[1]:
            raise RuntimeError(f"SampledLogprobs saw {len(self.steps)} sampling steps for {response_ids.shape[1]} "
                               f"generated tokens")
        return torch.stack(self.steps, dim=1)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, do_sample: bool,
           temperature: float = 1.0, top_p: float = 1.0, chat_template: bool = False,
           system_turn: str | None = None, return_logprobs: bool = False):
    """``(prompt_ids, prompt_mask, response_ids, mask, finished)`` for the given prompt strings, plus the
    sampler's ``logprobs [B, T]`` of the response tokens (0 off the mask) with ``return_logprobs``
    (sampling only).

    Generation runs in eval mode (then the model's mode is restored): a model with activation
    checkpointing drops its KV cache in train mode."""
    if return_logprobs and not do_sample:
        raise ValueError("return_logprobs=True needs do_sample=True")
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device, chat_template=chat_template,
                                             system_turn=system_turn)
    # The sampling processors are passed explicitly so that the log-prob recorder runs after them (generate
    # would append its own temperature/top-p warpers after any user processor). top_k=0: no top-k cut.
    processors, recorder = LogitsProcessorList(), None
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(temperature)))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=float(top_p)))
        if return_logprobs:
            recorder = SampledLogprobs()
            processors.append(recorder)
    gen = GenerationConfig(
        do_sample=do_sample, temperature=1.0 if do_sample else None, top_p=1.0 if do_sample else None,
        top_k=0 if do_sample else None, max_new_tokens=max_new_tokens, use_cache=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen,
                             logits_processor=processors)
    finally:
        model.train(was_training)
    response_ids = out[:, prompt_ids.shape[1]:]
    if response_ids.shape[1] == 0:  # cannot happen with max_new_tokens >= 1; keep shapes sane anyway
        response_ids = torch.full((len(prompts), 1), tokenizer.eos_token_id, device=device)
    logprobs = recorder.finish(response_ids) if recorder is not None else None
    mask, finished = _response_mask(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, tokenizer.pad_token_id))
    if return_logprobs:
        # off the mask (after EOS) the recorder gathered pad tokens, -inf under top-p: zeros there
        logprobs = torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs))
        return prompt_ids, prompt_mask, response_ids, mask, finished, logprobs
    return prompt_ids, prompt_mask, response_ids, mask, finished


def decode_completions(tokenizer, response_ids, mask, finished):
    """Per row: token ids (EOS included), text without EOS, and the text of each token."""
    lengths = mask.sum(1).long().tolist()
    rows = response_ids.tolist()
    ids = [r[:n] for r, n in zip(rows, lengths)]
    ends = finished.tolist()
    texts = tokenizer.batch_decode([r[:-1] if e else r for r, e in zip(ids, ends)], skip_special_tokens=False)
    vocab = sorted({t for r in ids for t in r})
    piece = dict(zip(vocab, tokenizer.batch_decode([[t] for t in vocab], skip_special_tokens=False)))
    tokens = [[piece[t] for t in r] for r in ids]
    return ids, texts, tokens


def score(task: Task, tokenizer, examples: list[Example], response_ids, mask, finished, *, with_failed: bool = False,
          errors: list[str] | None = None, components: dict | None = None):
    """Task rewards as ``(token_rewards [B, T], scores [B], completions)``, plus ``failed [B]`` with
    ``with_failed``: completions the reward function could not score (``task.on_reward_error=skip``),
    rewarded 0 here and left out of the loss by the caller. ``components``, when given, receives each
    ``task.rewards`` component's own scores ``{name: [B]}`` (NaN where a completion is unscorable)."""
    ids, texts, tokens = decode_completions(tokenizer, response_ids, mask, finished)
    rows, parts = score_rows(task.reward, [e.prompt for e in examples], texts, targets=[e.target for e in examples],
                             completion_ids=ids, completion_tokens=tokens, finished=finished.tolist(),
                             on_error=getattr(task, "on_reward_error", "raise"), errors=errors)
    if components is not None:
        components.update({name: torch.tensor([math.nan if s is None else s for s in values], dtype=torch.float32,
                                              device=mask.device) for name, values in parts.items()})
    token_rewards = torch.zeros(mask.shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        if row is not None:
            token_rewards[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
    token_rewards = token_rewards.to(mask.device)
    failed = torch.tensor([row is None for row in rows], dtype=torch.bool, device=mask.device)
    out = (token_rewards, token_rewards.sum(1), texts)
    return (*out, failed) if with_failed else out


def sampler(engine=None):
    """`sample` itself (``engine`` None: the policy's ``generate``), or a rollout engine's ``sample`` behind
    the same signature (it needs no model or tokenizer: it has its own)."""
    if engine is None:
        return sample
    return lambda model, tokenizer, prompts, **kwargs: engine.sample(prompts, **kwargs)


def generate_rollout(model, tokenizer, task: Task, examples: list[Example], *, num_generations: int,
                     max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                     prompt_index: list[int] | None = None, engine=None) -> RolloutBatch:
    """Sample ``num_generations`` completions per example (consecutive rows) and score them.
    ``prompt_index`` (one per example) records where each prompt sits in the training pool. ``engine``: a
    rollout engine (`rlexp.rollout.engines`) that samples instead of the policy's ``generate``."""
    sample = sampler(engine)
    rows = [e for e in examples for _ in range(num_generations)]
    prompt_ids, prompt_mask, response_ids, mask, finished, rollout_logprobs = sample(
        model, tokenizer, [e.prompt for e in rows], max_new_tokens=max_new_tokens, do_sample=True,
        temperature=temperature, top_p=top_p, chat_template=task.chat_template, system_turn=task.system_turn,
        return_logprobs=True)
    t0, errors, components = time.perf_counter(), [], {}
    token_rewards, scores, texts, failed = score(task, tokenizer, rows, response_ids, mask, finished, with_failed=True,
                                                 errors=errors, components=components)
    reward_seconds = time.perf_counter() - t0
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, mask, finished, token_rewards, scores,
                        prompts=[e.prompt for e in rows], completions=texts, targets=[e.target for e in rows],
                        reward_failed=failed, rollout_logprobs=rollout_logprobs, task_scores=scores.clone(),
                        reward_seconds=reward_seconds, reward_errors=errors, component_scores=components,
                        prompt_index=[i for i in (prompt_index or [-1] * len(examples))
                                      for _ in range(num_generations)])
