"""Per-token KL estimators between the policy and a reference policy (Schulman, 2020).

With ``d = log π(a) - log π_ref(a)`` for sampled tokens ``a ~ π``:

* ``k1 = d``                    (unbiased, high variance, can be negative)
* ``k2 = d² / 2``               (biased, low variance, ≥ 0)
* ``k3 = exp(-d) + d - 1``      (unbiased, low variance, ≥ 0)

Registry ``KL_ESTIMATORS`` maps each name to ``f(logprobs, ref_logprobs) -> [B, T]``.
"""

from __future__ import annotations

import torch

from .registry import Registry

Tensor = torch.Tensor

KL_ESTIMATORS = Registry("kl estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k1 = d``, ``d = logprobs - ref_logprobs``; shapes ``[B, T]`` -> ``[B, T]``."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k2 = d² / 2``, ``d = logprobs - ref_logprobs``; shapes ``[B, T]`` -> ``[B, T]``."""
    d = logprobs - ref_logprobs
    return 0.5 * d * d


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``k3 = exp(-d) + d - 1``, ``d = logprobs - ref_logprobs``; ``[B, T]`` -> ``[B, T]``.

    Computed as ``expm1(-d) + d`` for accuracy near ``d = 0``; no clamping.
    """
    d = logprobs - ref_logprobs
    return torch.expm1(-d) + d


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Elementwise KL estimate of ``kind`` in ``{"k1", "k2", "k3"}``; ``[B, T]`` -> ``[B, T]``.

    Unknown ``kind`` raises the registry's ``ValueError`` listing valid names.
    Masking/aggregation is the caller's job (see :func:`rlexp.core.aggregate`).
    """
    return KL_ESTIMATORS.get(kind)(logprobs, ref_logprobs)
