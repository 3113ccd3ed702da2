"""The typed rollout batch and prompt encoding.

Shapes: ``prompt_ids/prompt_mask [B, P]`` left-padded; ``response_ids/mask [B, T]`` right-padded,
``mask`` ones a prefix of each row (EOS included); ``token_rewards [B, T]`` the task's rewards per
token (a sequence score sits on the last masked token); ``scores [B]`` their per-row sums.
Completions of one prompt are consecutive rows (groups of ``num_generations``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    finished: torch.Tensor
    token_rewards: torch.Tensor
    scores: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-row tensors, for minibatch slicing together with derived ones (advantages...)."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask,
                "response_ids": self.response_ids, "mask": self.mask}


def encode_prompts(tokenizer, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_ids, prompt_mask)`` ``[B, P]``, left-padded."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def collate_supervised(tokenizer, prompts: list[str], completions: list[str], device=None):
    """Prompt + completion + EOS as ``(prompt_ids, prompt_mask, response_ids, mask)`` for an NLL loss."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
    T = max(len(r) for r in rows)
    response_ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, r in enumerate(rows):
        response_ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1.0
    return prompt_ids, prompt_mask, response_ids.to(device), mask.to(device)
