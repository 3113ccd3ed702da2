"""The policy's weights as a plain Hugging Face state dict, for a rollout engine's weight sync.

A PEFT (LoRA) policy gives its *merged* weights ``W + scale · B·A`` under the base model's own names (no
``base_layer.`` or ``lora_`` entries), computed from the adapters (``get_delta_weight``) without touching the
policy: merging in place and unmerging would not give back the same fp32 weights.
"""
from __future__ import annotations

import torch

from rlexp.models.lora import is_lora, unwrap


@torch.no_grad()
def policy_state_dict(model) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of ``model`` as ``AutoModelForCausalLM`` names them (detached; a LoRA model merged)."""
    if not is_lora(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = unwrap(model)
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
            merged[f"{name}.weight"] = weight.detach() + delta if torch.is_tensor(delta) else weight.detach()
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value.detach())
    return out
