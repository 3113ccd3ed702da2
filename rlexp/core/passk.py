"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

From ``n`` sampled completions of one prompt of which ``c`` are correct, the probability that at least
one of ``k`` completions drawn without replacement from those ``n`` is correct::

    pass@k = 1 − C(n − c, k) / C(n, k) = 1 − ∏_{i = n − c + 1}^{n} (1 − k / i)

The product form never builds the binomial coefficients (which overflow a float for n in the
hundreds); when ``n − c < k`` every draw of ``k`` holds a correct completion and pass@k is exactly 1.
Averaged over prompts, it is an unbiased estimate of the policy's pass@k at the sampling settings.
Plain Python numbers: no framework imports.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """``1 − C(n − c, k) / C(n, k)`` for ``c`` correct completions among ``n`` samples; needs ``1 ≤ k ≤ n``
    and ``0 ≤ c ≤ n``."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} correct completions must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}] (the number of samples)")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(correct_counts: Iterable[int], n: int, ks: Sequence[int]) -> dict[int, float]:
    """``{k: pass@k averaged over prompts}`` from each prompt's number of correct completions among its ``n``
    samples; NaN for every ``k`` when there is no prompt."""
    counts = list(correct_counts)
    if not counts:
        return {k: float("nan") for k in ks}
    return {k: sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks}
