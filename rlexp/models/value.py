"""The critic: a causal-LM trunk (no LM head) with a scalar value head on every position.

``V(s_t)`` is read at the hidden state that predicts response token ``t`` (the same position the
policy's log-prob of token ``t`` is read from), so values and log-probs are aligned ``[B, T]``.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


class ValueModel(nn.Module):
    def __init__(self, trunk: PreTrainedModel, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.value_head = nn.Linear(hidden_size, 1)
        # zero init: V ≡ 0 at the start, so the first advantages are the (KL-shaped) returns
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_causal_lm(cls, model: PreTrainedModel, *, reinit: bool = False, seed: int = 0) -> "ValueModel":
        """A critic whose trunk is a copy of ``model``'s trunk (``reinit=True``: a fresh random one)."""
        import copy

        trunk = copy.deepcopy(model.base_model)
        if reinit:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                trunk.apply(model._init_weights)
        return cls(trunk, model.config.hidden_size)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Values ``[B, L]`` for every position of the input."""
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False).last_hidden_state
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
