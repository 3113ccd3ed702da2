"""A long-horizon embedded task: a chain of terms ``3+4+8+1=``, answered by every running sum after the
first term, comma-separated, then EOS: ``7,15,16<eos>``.

A chain of ``n`` terms (``n`` in ``[min_terms, max_terms]``, each term in ``[0, max_term]``, written
without padding) has ``m = n - 1`` running sums, so with the defaults (4–5 single-digit terms) an
answer is 6–12 tokens long, EOS included (8–12 for most chains): about three times the horizon of
``task=arithmetic``, which is what makes γ and λ matter. (Six terms are past what the tiny model
learns: PPO left its 6-term exact accuracy at 0.14 → 0.17.) Chains are sampled deterministically by
``split_seed`` (each length equally represented where its number of chains allows, all of them when
the space is small), without repeats, and split once into a held-out evaluation set and the training
pool. Two rewards:

- ``terminal`` (sparse, the default): 1.0 for the exact answer followed by EOS, else 0 (a sequence score);
- ``step_credit`` (per token): the completion is read as comma-separated fields; its ``k``-th field
  is *correct* when it is exactly the ``k``-th running sum (``k ≤ m``; no leading zeros, no spaces)
  and is closed — followed by a comma, or by EOS for the last field (a field cut off by the token
  budget is not closed: more digits could follow). Each correct field earns ``1/(m+1)`` on the token
  holding its last character; the EOS earns ``1/(m+1)`` when it ends the completion right after its
  ``m``-th field (exactly ``m`` fields, the last non-empty). An exact answer sums to 1.0, and only an
  exact answer does; a wrong sum costs its own share and not the later ones (``7,14,16`` earns 3/4).
"""
from __future__ import annotations

import bisect
import itertools
import random

from rlexp.tasks.base import Example, Task

#: at most this many training chains are sampled (plus the held-out ones)
_MAX_POOL = 20_000


def running_sums(terms: list[int]) -> list[int]:
    """The running sums after the first term: ``[3, 4, 8, 1]`` → ``[7, 15, 16]``."""
    return list(itertools.accumulate(terms))[1:]


def _quotas(counts: list[int], total: int) -> list[int]:
    """Split ``total`` draws over lengths with ``counts`` chains each: equal shares, a length that has
    fewer chains than its share gives the rest to the others (so every chain when ``total`` ≥ the sum)."""
    quotas, left, open_ = [0] * len(counts), total, list(range(len(counts)))
    while open_ and left > 0:
        share = -(-left // len(open_))  # ceil
        full = [i for i in open_ if counts[i] - quotas[i] <= share]
        for i in (full or open_):
            take = min(counts[i] - quotas[i], share, left)
            quotas[i] += take
            left -= take
        open_ = [i for i in open_ if quotas[i] < counts[i]]
    return quotas


class RunningSumTask(Task):
    alphabet = "0123456789+=,"

    def __init__(self, *, name: str = "running_sum", min_terms: int = 4, max_terms: int = 5, max_term: int = 9,
                 num_eval: int = 200, split_seed: int = 1234, max_new_tokens: int = 16, reward=None,
                 on_reward_error: str = "raise", **common):
        super().__init__(name=name, reward=reward or terminal, max_new_tokens=max_new_tokens,
                         on_reward_error=on_reward_error, **common)
        if min_terms < 2:
            raise ValueError(f"task.min_terms={min_terms} must be >= 2: a chain needs two terms for one running sum")
        if max_terms < min_terms:
            raise ValueError(f"task.max_terms={max_terms} must be >= task.min_terms={min_terms}")
        if max_term < 1:
            raise ValueError(f"task.max_term={max_term} must be >= 1")
        self.min_terms, self.max_terms, self.max_term = min_terms, max_terms, max_term
        self.num_eval, self.split_seed = num_eval, split_seed
        lengths = list(range(min_terms, max_terms + 1))
        counts = [(max_term + 1) ** n for n in lengths]
        if num_eval >= sum(counts):
            raise ValueError(f"task.num_eval={num_eval} leaves no training prompts: only {sum(counts)} chains of "
                             f"{min_terms}-{max_terms} terms in [0, {max_term}]")
        rng = random.Random(split_seed)
        examples = []
        for n, count, k in zip(lengths, counts, _quotas(counts, _MAX_POOL + num_eval)):
            examples += [self._example(self._decode(i, n)) for i in rng.sample(range(count), k)]
        rng.shuffle(examples)
        self.eval_examples = examples[:num_eval]
        self.train_examples = examples[num_eval:]
        need = len(",".join(str(s) for s in running_sums([max_term] * max_terms))) + 1
        if max_new_tokens < need:
            raise ValueError(f"task.max_new_tokens={max_new_tokens} is too small: answers need up to {need} "
                             f"tokens ({max_terms - 1} running sums, their commas and EOS)")

    def _decode(self, index: int, n: int) -> list[int]:
        """Chain number ``index`` of length ``n``: its base-(max_term+1) digits."""
        base, terms = self.max_term + 1, []
        for _ in range(n):
            index, t = divmod(index, base)
            terms.append(t)
        return terms

    @staticmethod
    def _example(terms: list[int]) -> Example:
        return Example(prompt="+".join(map(str, terms)) + "=", target=",".join(map(str, running_sums(terms))))

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "min_terms": self.min_terms, "max_terms": self.max_terms,
                "max_term": self.max_term, "num_eval": self.num_eval, "split_seed": self.split_seed}


def terminal(prompts, completions, *, targets, finished, **kwargs) -> list[float]:
    """Sparse: 1.0 when the completion is exactly the whole chain of running sums and ended with EOS, else 0."""
    return [1.0 if done and c == t else 0.0 for c, t, done in zip(completions, targets, finished)]


def step_credit(prompts, completions, *, targets, completion_tokens, finished, **kwargs) -> list[list[float]]:
    """Per-token: ``1/(m+1)`` on the last token of each correct, closed field and on an EOS right after the
    ``m``-th field (the module docstring defines it); sums to 1.0 for the exact answer only."""
    return [_step_row(tokens, target, done) for tokens, target, done in zip(completion_tokens, targets, finished)]


def _step_row(tokens: list[str], target: str, done: bool) -> list[float]:
    want = target.split(",")
    unit = 1.0 / (len(want) + 1)
    pieces = tokens[:-1] if done else tokens  # the text tokens (the last token of a finished one is EOS)
    ends = list(itertools.accumulate(len(p) for p in pieces))  # end offset of each token's text
    fields = "".join(pieces).split(",")
    row, start = [0.0] * len(tokens), 0
    for k, got in enumerate(fields):
        closed = k < len(fields) - 1 or done
        if k < len(want) and closed and got == want[k]:
            row[bisect.bisect_right(ends, start + len(got) - 1)] += unit  # the token holding its last character
        start += len(got) + 1
    if done and len(fields) == len(want) and fields[-1]:
        row[-1] += unit
    return row
