"""Saving the trained policy so that plain transformers loads it back: ``save_pretrained`` (safetensors)
plus the tokenizer. A PEFT (LoRA) policy is saved merged into its base weights."""
from __future__ import annotations

import copy
from pathlib import Path

from rlexp.models.lora import is_lora


def export_policy(model, tokenizer, path: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``path``; returns it. ``AutoModelForCausalLM.from_pretrained(path)``
    loads the result with no rlexp code."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if is_lora(model):  # fold the adapters into a copy of the base weights
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
