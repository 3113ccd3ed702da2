"""Advantage estimators: per-token advantages and returns from rewards and values.

Registry ``ADVANTAGE_ESTIMATORS`` maps a config name to an estimator with the
signature ``(rewards, values, mask, gamma, lam) -> (advantages, returns)``.
"""

from __future__ import annotations

import torch

from .registry import Registry
from .stats import as_bool_mask, masked_fill_zero

Tensor = torch.Tensor

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al., 2016).

    ``δ_t = r_t + γ V_{t+1} - V_t``,  ``Â_t = δ_t + γλ Â_{t+1}``,  ``R_t = Â_t + V_t``,
    with ``V`` and ``Â`` after the last masked token equal to 0 (terminal).

    rewards, values, mask: ``[B, T]``; mask ones form a prefix of each row.
    Returns ``(advantages, returns)``, both ``[B, T]`` in the promoted input dtype,
    exactly 0 at masked-out positions; inputs there are ignored.  No normalization,
    no gradient (computed under ``torch.no_grad``).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    with torch.no_grad():
        dtype = torch.promote_types(rewards.dtype, values.dtype)
        m = as_bool_mask(mask)
        r = masked_fill_zero(rewards.to(dtype), m)
        v = masked_fill_zero(values.to(dtype), m)
        mf = m.to(dtype)
        B, T = r.shape
        adv = torch.zeros_like(r)
        next_v = torch.zeros(B, dtype=dtype, device=r.device)
        last = torch.zeros(B, dtype=dtype, device=r.device)
        for t in range(T - 1, -1, -1):
            # next_v / last are 0 past the end because v and adv are 0 off-mask (prefix).
            delta = r[:, t] + gamma * next_v - v[:, t]
            last = (delta + gamma * lam * last) * mf[:, t]
            adv[:, t] = last
            next_v = v[:, t]
        returns = adv + v
    return adv, returns
