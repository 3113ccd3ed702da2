"""Forward passes over a prompt+response batch, returning quantities at the response positions.

Inputs: ``prompt_ids [B, P]`` left-padded (``prompt_mask``), ``response_ids [B, T]`` right-padded
(``mask``). The model sees ``cat(prompt, response)`` with position ids counted over real tokens only.
The logit that scores response token ``t`` sits at sequence position ``P - 1 + t``; only those T
positions go through the LM head (``[B, T, V]``, never ``[B, P+T, V]``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlexp.core import entropy_from_logits, logprobs_from_logits
from rlexp.models.lora import unwrap


def sequence_inputs(prompt_ids, prompt_mask, response_ids, mask):
    """``input_ids, attention_mask, position_ids``, all ``[B, P+T]``."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def response_logits(model, prompt_ids, prompt_mask, response_ids, mask, *, fp32: bool = True,
                    temperature: float = 1.0) -> torch.Tensor:
    """Logits ``[B, T, V]`` scoring each response token, divided by ``temperature``: the logits of the
    distribution ``softmax(logits / T)`` that completions were sampled from, so that log-probs, ratios,
    KL and entropy on the training side refer to the sampling policy (as in verl, TRL and OpenRLHF).

    ``fp32=True`` computes the LM head itself in float32 (ScaleRL's FP32 logits: the matmul, not only its
    output, in full precision), applying Gemma-style final soft-capping when the config has it. A PEFT
    (LoRA) model is unwrapped to its causal LM, whose LoRA layers then act as they are set (enabled, or
    disabled inside ``model.disable_adapter()``).
    """
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    input_ids, attention_mask, position_ids = sequence_inputs(prompt_ids, prompt_mask, response_ids, mask)
    if not fp32:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, logits_to_keep=T + 1)
        logits = out.logits[:, :-1]
        return logits if temperature == 1.0 else logits / temperature
    lm = unwrap(model)  # PEFT: its LoRA layers sit inside
    hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).last_hidden_state[:, P - 1:P - 1 + T]   # [B, T, H]
    head = lm.get_output_embeddings()
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = F.linear(hidden.float(), head.weight.float(),
                          None if head.bias is None else head.bias.float())        # [B, T, V]
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits if temperature == 1.0 else logits / temperature  # after soft-capping, as generate does


def response_logprobs(model, prompt_ids, prompt_mask, response_ids, mask, *, fp32: bool = True,
                      with_entropy: bool = False, temperature: float = 1.0):
    """``(logprobs [B, T], entropy [B, T] or None)`` of the response tokens under ``model`` at ``temperature``."""
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, mask, fp32=fp32, temperature=temperature)
    logprobs = logprobs_from_logits(logits, response_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, entropy


def response_values(critic, prompt_ids, prompt_mask, response_ids, mask) -> torch.Tensor:
    """``V(s_t)`` ``[B, T]``: the value at the position that predicts response token ``t``."""
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    input_ids, attention_mask, position_ids = sequence_inputs(prompt_ids, prompt_mask, response_ids, mask)
    values = critic(input_ids, attention_mask, position_ids)
    return values[:, P - 1:P - 1 + T].float()
