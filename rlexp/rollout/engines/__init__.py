"""Rollout engines: what samples completions for training and greedy evaluation (``rollout.engine``).

One interface, two engines:

- ``hf`` (`HFEngine`): the policy's own ``generate`` with KV cache (`rlexp.rollout.generate.sample`); it *is*
  the policy, so it never needs new weights;
- ``vllm`` (`rlexp.rollout.engines.vllm.VLLMEngine`): a vLLM engine in the training process (colocated, as
  TRL's colocate mode and verl's hybrid engine), built once from the policy's config and weights, given the
  trainer's weights (``load_weights``) after every update. Only that module imports vLLM, and only when an
  engine is built.

``engine.sample(prompts, max_new_tokens=..., do_sample=..., temperature=..., top_p=..., return_logprobs=...,
**prompt_options)`` returns what `rlexp.rollout.generate.sample` returns, in the same layout (`Generation`):
``prompt_ids / prompt_mask [B, P]`` left-padded (``encode_prompts``, ``prompt_options``: ``chat_template`` and
the like), ``response_ids [B, T]`` right-padded with the pad token, ``mask [B, T]`` ones up to and including the
first EOS, ``finished [B]``, and with ``return_logprobs`` the sampler's log-prob of each sampled token (0 off
the mask) under the distribution it drew from (``softmax(logits / T)``, top-p renormalized). ``T`` is the longest
completion's length. ``engine.load_weights(state_dict)`` takes Hugging Face parameter names (a LoRA policy's
merged weights); ``engine.close()`` frees it. ``engine.reseed(seed)`` sets the seed of the next rollout's
draws (the vLLM engine seeds each request; the hf engine draws from torch's global generator, as always).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rlexp.rollout.engines.hf import HFEngine

ENGINES = ("hf", "vllm")


class Generation(NamedTuple):
    """What a rollout engine's ``sample`` returns (``logprobs`` only with ``return_logprobs``)."""
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    finished: torch.Tensor
    logprobs: torch.Tensor | None = None


def build_engine(kind: str, *, model, tokenizer, **options):
    """The ``kind`` engine for ``model`` (the policy) and ``tokenizer``; ``options``: the vLLM engine's
    (`rlexp.rollout.engines.vllm.VLLMEngine`)."""
    if kind == "hf":
        return HFEngine(model, tokenizer)
    if kind == "vllm":
        from rlexp.rollout.engines.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, **options)
    raise ValueError(f"rollout.engine={kind} is not a rollout engine; known: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Generation", "HFEngine", "build_engine"]
