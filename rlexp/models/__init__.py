"""Building and running the actor, critic and reference models (layer 2: torch + transformers only).

- ``tokenizer``: the embedded character tokenizer, and the check that text fits its alphabet;
- ``tiny``: the embedded tiny Llama-style model;
- ``loading``: loading any local HF causal-LM directory or GGUF file (the one path every model takes);
- ``lora``: LoRA adapters (PEFT) and activation checkpointing;
- ``value``: the critic, a causal-LM trunk with a scalar value head;
- ``forward``: log-probabilities / values at response positions of a prompt+response batch.
"""
from rlexp.models.forward import response_logits, response_logprobs, response_values, sequence_inputs
from rlexp.models.loading import (
    ModelLoadError, disable_dropout, load_causal_lm, load_tokenizer, source_gguf_file, without_quantization,
)
from rlexp.models.lora import apply_lora, enable_gradient_checkpointing, is_lora, reference_forward
from rlexp.models.tiny import build_tiny_model
from rlexp.models.tokenizer import (
    UnknownCharacterError, build_char_tokenizer, char_vocabulary, check_characters, unknown_characters,
    without_special_tokens,
)
from rlexp.models.value import ValueModel

__all__ = [
    "ModelLoadError", "UnknownCharacterError", "ValueModel", "apply_lora", "build_char_tokenizer", "build_tiny_model",
    "char_vocabulary", "check_characters", "disable_dropout", "enable_gradient_checkpointing", "is_lora",
    "load_causal_lm", "load_tokenizer", "reference_forward", "response_logits", "response_logprobs", "response_values",
    "sequence_inputs", "source_gguf_file", "unknown_characters", "without_quantization", "without_special_tokens",
]
