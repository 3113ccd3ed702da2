"""Loading a causal LM and its tokenizer from a local directory — the single path every model takes.

The embedded tiny model is saved to a cache directory with ``save_pretrained`` and loaded back here,
exactly like a user's own model (``model=hf model.name_or_path=DIR``). Hub access is disabled:
``local_files_only=True`` always; ``trust_remote_code`` only when the config turns it on.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model directory that is missing or unusable (no weights, tokenizer without pad/eos...)."""


def _check_dir(path: str | Path, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"{key}={path}: no such directory (models load from local directories only)")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{key}={path}: no config.json (save the model with save_pretrained)")
    return p


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False,
                   key: str = "model.name_or_path") -> PreTrainedTokenizerBase:
    """Load the tokenizer, left-padding prompts; a missing EOS is an error, a missing pad reuses EOS."""
    p = _check_dir(path, key)
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
    if tok.eos_token_id is None:
        raise ModelLoadError(f"{key}={path}: the tokenizer has no eos_token (completions could never end)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def disable_dropout(model: torch.nn.Module) -> None:
    """RL compares log-probs of the same tokens across passes: dropout would make them disagree."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def load_causal_lm(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False,
                   key: str = "model.name_or_path") -> PreTrainedModel:
    p = _check_dir(path, key)
    model = AutoModelForCausalLM.from_pretrained(
        p, dtype=DTYPES[dtype], local_files_only=True, trust_remote_code=trust_remote_code)
    disable_dropout(model)
    return model
