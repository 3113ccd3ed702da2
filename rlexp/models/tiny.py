"""The embedded default policy: a small Llama-style causal LM, random-initialised from a seed.

2 layers × 128 hidden × 4 heads with tied embeddings is 0.53 M parameters with the 14-token character
tokenizer: it learns the arithmetic task on a CPU in seconds. Nothing is downloaded.
"""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, *, hidden_size: int, intermediate_size: int,
                     num_layers: int, num_heads: int, seed: int, max_positions: int = 64) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
