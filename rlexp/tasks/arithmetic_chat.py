"""The arithmetic task phrased as an instruction, for chat (instruct) models: ``What is 7 + 45? ...``.

The same operand pairs, split and held-out set as ``ArithmeticTask`` (same ``split_seed``), but the
prompt is a sentence (``prompt_template``) that the model's chat template wraps as a user turn
(``chat_template: true``: ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``), and the
answer is read from free text: ``number_match`` gives 1.0 when the last integer the completion writes is
the sum, so ``The answer is 52.`` counts. Operands are written without zero padding. A completion cut
at the token budget is judged by what it wrote.
"""
from __future__ import annotations

import re

from rlexp.tasks.arithmetic import ArithmeticTask
from rlexp.tasks.base import Example

_INTEGER = re.compile(r"-?\d[\d,]*")


def last_integer(text: str) -> str | None:
    """The last integer written in ``text`` (thousands separators dropped), or None."""
    found = [m.group().rstrip(",").replace(",", "") for m in _INTEGER.finditer(text)]
    return str(int(found[-1])) if found else None


def number_match(prompts, completions, *, targets, **kwargs) -> list[float]:
    """1.0 when the last integer in the completion equals the target, else 0.0."""
    return [1.0 if last_integer(c) == t else 0.0 for c, t in zip(completions, targets)]


class ArithmeticChatTask(ArithmeticTask):
    alphabet = None  # free text: model=tiny's alphabet is derived from the prompts (Task.char_alphabet)

    def __init__(self, *, name: str = "arithmetic_chat",
                 prompt_template: str = "What is {a} + {b}? Reply with just the number.",
                 chat_template: bool = True, min_operand: int = 0, max_operand: int = 99, num_eval: int = 200,
                 split_seed: int = 1234, max_new_tokens: int = 16, reward=None, on_reward_error: str = "raise",
                 **common):
        try:
            prompt_template.format(a=1, b=2)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"task.prompt_template={prompt_template!r}: may only use the fields {{a}} and {{b}} "
                             f"({type(e).__name__}: {e})") from None
        self.prompt_template = prompt_template  # read by _example, which the parent's __init__ calls
        super().__init__(name=name, min_operand=min_operand, max_operand=max_operand, num_eval=num_eval,
                         split_seed=split_seed, max_new_tokens=max_new_tokens, reward=reward or number_match,
                         on_reward_error=on_reward_error, **common)
        self.chat_template = chat_template

    def _example(self, a: int, b: int) -> Example:
        return Example(prompt=self.prompt_template.format(a=a, b=b), target=str(a + b))

    def is_correct(self, example: Example, completion: str, finished: bool) -> bool:
        return last_integer(completion) == example.target

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "prompt_template": self.prompt_template,
                "chat_template": self.chat_template}
