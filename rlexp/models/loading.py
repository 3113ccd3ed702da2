"""Loading a causal LM and its tokenizer from a local directory — the single path every model takes.

The embedded tiny model is saved to a cache directory with ``save_pretrained`` and loaded back here,
exactly like a user's own model (``model=hf model.name_or_path=DIR``). Hub access is disabled:
``local_files_only=True`` always; ``trust_remote_code`` only when the config turns it on.

A directory may also hold a GGUF file (``model.gguf_file``, e.g. ``model=smollm2``): transformers reads
it (de-quantizing the weights into ``dtype``) and rlexp moves the weights into a fresh model of the same
class without the quantization attributes (``without_quantization``), so that it trains, wraps with
LoRA and saves with ``save_pretrained`` like any other model.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlexp.config.paths import ModelPathError, resolve_gguf_file, resolve_model_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model directory that is missing or unusable (no weights, tokenizer without pad/eos...)."""


def _check_dir(path: str | Path, key: str, gguf_file: str | None = None) -> Path:
    try:
        if gguf_file:
            return resolve_gguf_file(str(path), gguf_file).parent
        p = resolve_model_dir(str(path), key)
    except ModelPathError as e:
        raise ModelLoadError(str(e)) from None
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{key}={path}: no config.json (save the model with save_pretrained)")
    return p


def _gguf(gguf_file: str | None) -> dict:
    return {"gguf_file": gguf_file} if gguf_file else {}


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, key: str = "model.name_or_path",
                   gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer, left-padding prompts; a missing EOS is an error, a missing pad reuses EOS."""
    p = _check_dir(path, key, gguf_file)
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code,
                                        **_gguf(gguf_file))
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


def without_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """The model as a fresh instance of its class whose config has no ``quantization_config``.

    ``save_pretrained`` (and training code that checks ``is_quantized``) refuses a model loaded from a GGUF
    file although transformers has already de-quantized its weights. The fresh model is built on the meta
    device and takes ``model``'s parameters and buffers themselves (no copy: ``model`` should be dropped;
    tied weights stay tied); a model that is not quantized is returned as it is.
    """
    if not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config"):
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict(keep_vars=True), assign=True, strict=True)
    buffers = dict(model.named_buffers())
    for name, _ in list(fresh.named_buffers()):  # non-persistent ones (rotary inv_freq) are not in the state dict
        owner, _, leaf = name.rpartition(".")
        fresh.get_submodule(owner)._buffers[leaf] = buffers[name]
    fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.train(model.training)
    return fresh


def load_causal_lm(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False,
                   key: str = "model.name_or_path", gguf_file: str | None = None) -> PreTrainedModel:
    p = _check_dir(path, key, gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        p, dtype=DTYPES[dtype], local_files_only=True, trust_remote_code=trust_remote_code, **_gguf(gguf_file))
    if gguf_file:
        model = without_quantization(model)
    disable_dropout(model)
    return model


def source_gguf_file(model_cfg, model_dir: str | Path) -> str | None:
    """``model.gguf_file`` when ``model_dir`` is the model's own directory (``model.name_or_path``); None
    for models without one and for a warm-started copy, which is a plain ``save_pretrained`` directory."""
    gguf_file = model_cfg.get("gguf_file")
    if not gguf_file:
        return None
    try:
        source = resolve_model_dir(str(model_cfg.name_or_path))
    except ModelPathError as e:
        raise ModelLoadError(str(e)) from None
    return gguf_file if Path(model_dir).resolve() == source.resolve() else None
