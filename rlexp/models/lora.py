"""LoRA adapters (PEFT) and activation checkpointing.

- ``apply_lora``: wraps a causal LM with PEFT LoRA adapters (``model.lora.*``); only the adapters train
  (the base weights are frozen by PEFT), and the reference policy is the same model with its adapters
  disabled (``reference_forward``), not a second copy;
- ``enable_gradient_checkpointing``: ``model.gradient_checkpointing`` (recompute each block's activations
  in the backward pass); generation is run in eval mode (``rlexp.rollout.generate.sample``), where the
  checkpointed blocks keep their KV cache.

Saving a trained LoRA policy as a plain model (adapters merged into a copy): ``rlexp.models.export``.
"""
from __future__ import annotations

import sys
import warnings

from transformers import PreTrainedModel

from rlexp.models.loading import ModelLoadError


def is_lora(model) -> bool:
    """Whether ``model`` is a PEFT-wrapped model (LoRA adapters around a base model)."""
    return hasattr(model, "get_base_model") and hasattr(model, "disable_adapter")


def unwrap(model):
    """The causal LM itself: a PEFT wrapper's model (its LoRA layers sit inside it), else ``model``."""
    return model.get_base_model() if is_lora(model) else model


def apply_lora(model: PreTrainedModel, lora, key: str = "model.lora"):
    """``model`` wrapped with LoRA adapters as ``lora`` (``enabled, r, alpha, dropout, target_modules``) asks,
    or ``model`` itself when ``lora.enabled`` is false. The adapters start as a zero update (B = 0), so the
    wrapped model computes exactly what ``model`` did."""
    if not lora.enabled:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelLoadError(f"{key}.enabled=true needs the `peft` package; install it with: "
                             f"{sys.executable} -m pip install peft") from None
    config = LoraConfig(r=int(lora.r), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
        raise ModelLoadError(f"{key}.target_modules={list(lora.target_modules)}: "
                             f"{str(e).splitlines()[0]}") from None


def reference_forward(model):
    """Context in which ``model`` computes the reference policy: a LoRA model with its adapters disabled
    (the frozen base weights). A model without adapters is not a reference: use a frozen copy then."""
    if not is_lora(model):
        raise ValueError("reference_forward needs a LoRA (PEFT) model; without adapters the reference is a copy")
    return model.disable_adapter()


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Activation checkpointing on every transformer block, non-reentrant (no input must require grad,
    so it works with frozen embeddings under LoRA). ``use_cache`` needs no change: the training forwards
    (``rlexp.models.forward``) pass ``use_cache=False``, and generation (``rlexp.rollout.generate.sample``)
    runs in eval mode, where checkpointing is off and the KV cache is used."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
