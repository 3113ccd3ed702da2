"""The embedded default task: ``a+b=`` with zero-padded operands, answered by digits then EOS.

Prompts are fixed-width (``07+45=``) so a batch needs no padding. All operand pairs are enumerated
(or, for very wide ranges, a sample of them) and split once by ``split_seed`` into a held-out
evaluation set and the training pool. Two rewards:

- ``exact_match``: 1.0 for the exact answer followed by EOS, else 0 (a sequence score);
- ``partial_credit``: per-token rewards — ``1/(L+1)`` for each answer character in its right place
  and for an EOS right after ``L`` characters, so an exact answer sums to 1.0 and γ/λ have
  intermediate rewards to act on.
"""
from __future__ import annotations

import random

from rlexp.tasks.base import Example, Task

_MAX_POOL = 200_000


class ArithmeticTask(Task):
    alphabet = "0123456789+="

    def __init__(self, *, name: str = "arithmetic", min_operand: int = 0, max_operand: int = 99,
                 num_eval: int = 200, split_seed: int = 1234, max_new_tokens: int = 8, reward=None,
                 on_reward_error: str = "raise", **common):
        super().__init__(name=name, reward=reward or exact_match, max_new_tokens=max_new_tokens,
                         on_reward_error=on_reward_error, **common)
        self.min_operand, self.max_operand = min_operand, max_operand
        self.width = len(str(max_operand))
        self.num_eval, self.split_seed = num_eval, split_seed
        n = max_operand - min_operand + 1
        total = n * n
        if num_eval >= total:
            raise ValueError(f"task.num_eval={num_eval} leaves no training prompts: only {total} operand pairs "
                             f"in [{min_operand}, {max_operand}]")
        rng = random.Random(split_seed)
        picks = rng.sample(range(total), min(total, _MAX_POOL + num_eval))
        examples = [self._example(min_operand + k // n, min_operand + k % n) for k in picks]
        self.eval_examples = examples[:num_eval]
        self.train_examples = examples[num_eval:]
        need = len(str(2 * max_operand)) + 1
        if max_new_tokens < need:
            raise ValueError(f"task.max_new_tokens={max_new_tokens} is too small: answers need up to {need} "
                             f"tokens (digits + EOS)")

    def _example(self, a: int, b: int) -> Example:
        return Example(prompt=f"{a:0{self.width}d}+{b:0{self.width}d}=", target=str(a + b))

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "min_operand": self.min_operand, "max_operand": self.max_operand,
                "num_eval": self.num_eval, "split_seed": self.split_seed}


def exact_match(prompts, completions, *, targets, finished, **kwargs) -> list[float]:
    """1.0 when the completion is exactly the answer and ended with EOS, else 0.0."""
    return [1.0 if done and c == t else 0.0 for c, t, done in zip(completions, targets, finished)]


def partial_credit(prompts, completions, *, targets, completion_tokens, finished, **kwargs) -> list[list[float]]:
    """Per-token rewards: ``1/(L+1)`` per answer character in place, and for EOS right after L characters."""
    out = []
    for tokens, target, done in zip(completion_tokens, targets, finished):
        unit = 1.0 / (len(target) + 1)
        pos, row = 0, []
        for j, piece in enumerate(tokens):
            if done and j == len(tokens) - 1:  # the EOS token
                row.append(unit if pos == len(target) else 0.0)
                continue
            hits = sum(1 for k, ch in enumerate(piece) if pos + k < len(target) and target[pos + k] == ch)
            row.append(unit * hits)
            pos += len(piece)
        out.append(row)
    return out
