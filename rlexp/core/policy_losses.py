"""More policy losses (GSPO, CISPO) with the signature and metrics of ``ppo_policy_loss``.

Both are registered in ``POLICY_LOSSES`` and return ``(loss 0-dim, metrics)`` with the
metric keys ``clipfrac``, ``clipfrac_low``, ``clipfrac_high``, ``dual_clipfrac``,
``approx_kl``, ``is_ratio_mean`` (detached 0-dim token-means over masked tokens).
Inputs ``[B, T]``, right-padded with a prefix ``mask``; garbage off-mask is zeroed
before any arithmetic, so it reaches neither loss nor gradient.  ``sg`` = stop-gradient.
"""

from __future__ import annotations

import torch

from .aggregation import aggregate
from .losses import POLICY_LOSSES, _frac, clip_bounds, clipped_surrogate, ratio_metrics
from .stats import as_bool_mask, masked_count, masked_fill_zero, masked_mean

Tensor = torch.Tensor


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    *,
    group_size: int | None = None,
    max_len: int | None = None,
    denominator: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token (Zheng et al., 2025): PPO clipping on a sequence-level ratio.

    ``ℓ_i = (1/n_i) Σ_t m_{i,t} (log π_θ - log π_old)_{i,t}`` (0 for empty rows),
    ``s_i = exp(ℓ_i)``, per-token ratio ``s_{i,t} = exp(sg(ℓ_i) + log π_θ,t - sg(log π_θ,t))``
    (value ``s_i``, gradient ``s_i ∇log π_θ,t``), then exactly as :func:`ppo_policy_loss`
    with ``ρ_t := s_{i,t}``: ``ℓ_t = -min(s_{i,t}Â_t, clip(s_{i,t}, 1-ε_low, 1+ε_high)Â_t)``,
    dual clip ``min(ℓ_t, -cÂ_t)`` where ``Â_t < 0``; ``loss = aggregate(ℓ, mask, agg, ...)``
    (the paper uses ``seq-mean-token-mean``; with ``Â`` constant per sequence its gradient
    is that of ``-mean_i min(s_i A_i, clip(s_i) A_i)``).  Use small ε (paper: 3e-4/4e-4).

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]``.
    Metrics: clip fractions as in PPO with ``ρ = s_{i,t}`` (per-token means),
    ``is_ratio_mean`` = token-mean of ``s_{i,t}``, ``approx_kl`` = token-mean of
    ``ρ_t - 1 - log ρ_t`` with the per-token ``ρ_t = exp(log π_θ - log π_old)``.
    """
    eps_low, eps_high = clip_bounds(clip_eps, clip_eps_high)
    m = as_bool_mask(mask)
    lp = masked_fill_zero(logprobs, m)
    log_ratio = masked_fill_zero(logprobs - old_logprobs.to(logprobs.dtype), m)
    adv = masked_fill_zero(advantages.to(logprobs.dtype), m)
    n = masked_count(m, log_ratio.dtype, dim=-1)
    seq_log_ratio = log_ratio.sum(dim=-1) / n.clamp(min=1)  # ℓ_i, [B]
    seq_ratio = torch.exp(seq_log_ratio.detach()[:, None] + lp - lp.detach())  # s_{i,t}
    per_token, metrics = clipped_surrogate(seq_ratio, adv, m, eps_low, eps_high, dual_clip)
    metrics["approx_kl"] = ratio_metrics(torch.exp(log_ratio), log_ratio, m)["approx_kl"]
    metrics["is_ratio_mean"] = masked_mean(seq_ratio.detach(), m)
    loss = aggregate(per_token, m, agg, group_size=group_size, max_len=max_len, denominator=denominator)
    return loss, metrics


@POLICY_LOSSES.register("cispo")
def cispo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    *,
    group_size: int | None = None,
    max_len: int | None = None,
    denominator: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, 2025; ScaleRL, Khatri et al., 2025): clipped IS-weight REINFORCE.

    ``ρ_t = exp(log π_θ - log π_old)``,
    ``ℓ_t = -sg(clamp(ρ_t, 1-ε_low, 1+ε_high)) · Â_t · log π_θ,t``, so every token keeps
    the gradient ``∂ℓ_t/∂log π_θ,t = -clamp(ρ_t)·Â_t`` (the clamp bounds the weight, it
    never drops the token).  ``ε_low = clip_eps`` may be ``>= 1`` (lower bound ``<= 0``:
    none; ScaleRL: clip_eps=1, clip_eps_high=4, i.e. weights capped at 5).
    ``loss = aggregate(ℓ, mask, agg, ...)``; its value depends on ``log π_θ`` itself and
    only its gradient is meaningful.  ``dual_clip`` must be None.

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]``.
    Metrics: ``clipfrac`` (clamp changed ρ), ``clipfrac_low`` (ρ < 1-ε_low),
    ``clipfrac_high`` (ρ > 1+ε_high), ``dual_clipfrac`` = 0, ``approx_kl``, ``is_ratio_mean``.
    """
    if dual_clip is not None:
        raise ValueError(f"dual_clip does not apply to cispo (got {dual_clip}); use None")
    eps_low, eps_high = clip_bounds(clip_eps, clip_eps_high)
    m = as_bool_mask(mask)
    lp = masked_fill_zero(logprobs, m)
    log_ratio = masked_fill_zero(logprobs - old_logprobs.to(logprobs.dtype), m)
    adv = masked_fill_zero(advantages.to(logprobs.dtype), m)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high).detach()
    per_token = -weight * adv * lp
    dtype = per_token.dtype
    low, high = ratio < 1.0 - eps_low, ratio > 1.0 + eps_high
    metrics = {
        "clipfrac": _frac(low | high, m, dtype),
        "clipfrac_low": _frac(low, m, dtype),
        "clipfrac_high": _frac(high, m, dtype),
        "dual_clipfrac": torch.zeros((), dtype=dtype, device=per_token.device),
        **ratio_metrics(ratio, log_ratio, m),
    }
    loss = aggregate(per_token, m, agg, group_size=group_size, max_len=max_len, denominator=denominator)
    return loss, metrics
