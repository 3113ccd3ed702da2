"""More policy losses (GSPO, CISPO, SAPO), registered like ``ppo_policy_loss`` (see :class:`PolicyLoss`).

Each function returns per-token losses ``ℓ`` ``[B, T]`` and metrics with the keys ``clipfrac``,
``clipfrac_low``, ``clipfrac_high``, ``dual_clipfrac``, ``approx_kl``, ``is_ratio_mean`` (detached 0-dim
token-means over masked tokens; SAPO adds ``gate_weight_mean``); calling the registered entry aggregates
``ℓ``.  Inputs ``[B, T]``, right-padded with a prefix ``mask``; garbage off-mask is zeroed before any
arithmetic, so it reaches neither loss nor gradient.  ``sg`` = stop-gradient.
"""

from __future__ import annotations

import math

import torch

from .losses import _frac, clip_bounds, clipped_surrogate, policy_loss, ratio_metrics
from .stats import as_bool_mask, masked_count, masked_fill_zero, masked_mean

Tensor = torch.Tensor


@policy_loss("gspo", uses=("clip_eps", "clip_eps_high", "dual_clip"))
def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token (Zheng et al., 2025): PPO clipping on a sequence-level ratio.

    ``ℓ_i = (1/n_i) Σ_t m_{i,t} (log π_θ - log π_old)_{i,t}`` (0 for empty rows),
    ``s_i = exp(ℓ_i)``, per-token ratio ``s_{i,t} = exp(sg(ℓ_i) + log π_θ,t - sg(log π_θ,t))``
    (value ``s_i``, gradient ``s_i ∇log π_θ,t``), then exactly as :func:`ppo_policy_loss`
    with ``ρ_t := s_{i,t}``: ``ℓ_t = -min(s_{i,t}Â_t, clip(s_{i,t}, 1-ε_low, 1+ε_high)Â_t)``,
    dual clip ``min(ℓ_t, -cÂ_t)`` where ``Â_t < 0``.  A sequence-level loss through the per-token
    contract: with ``Â`` constant per sequence (every group estimator) ``ℓ_{i,t}`` is the sequence's
    loss ``-min(s_i A_i, clip(s_i) A_i)`` on each of its tokens, so ``seq-mean-token-mean`` (the
    paper's, and the recipe's ``loss_agg``) gives the paper's value
    ``-mean_i min(s_i A_i, clip(s_i) A_i)`` and its gradient.  Use small ε (paper: 3e-4/4e-4).

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]`` -> ``(ℓ [B, T], metrics)``.
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
    return per_token, metrics


@policy_loss("cispo", uses=("clip_eps", "clip_eps_high"), incompatible={
    "dual_clip": "its clamp already caps the importance weight at 1+clip_eps_high and it has no surrogate to bound"})
def cispo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, 2025; ScaleRL, Khatri et al., 2025): clipped IS-weight REINFORCE.

    ``ρ_t = exp(log π_θ - log π_old)``,
    ``ℓ_t = -sg(clamp(ρ_t, 1-ε_low, 1+ε_high)) · Â_t · log π_θ,t``, so every token keeps
    the gradient ``∂ℓ_t/∂log π_θ,t = -clamp(ρ_t)·Â_t`` (the clamp bounds the weight, it
    never drops the token).  ``ε_low = clip_eps`` may be ``>= 1`` (lower bound ``<= 0``:
    none; ScaleRL: clip_eps=1, clip_eps_high=4, i.e. weights capped at 5).
    The value of ``ℓ`` depends on ``log π_θ`` itself and only its gradient is meaningful.
    ``dual_clip`` is incompatible (the entry refuses it unless None).

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]`` -> ``(ℓ [B, T], metrics)``.
    Metrics: ``clipfrac`` (clamp changed ρ), ``clipfrac_low`` (ρ < 1-ε_low),
    ``clipfrac_high`` (ρ > 1+ε_high), ``dual_clipfrac`` = 0, ``approx_kl``, ``is_ratio_mean``.
    """
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
    return per_token, metrics


#: ``4σ(x)(1-σ(x)) < 1/2`` exactly when ``|x| > 2·artanh(1/√2)``: SAPO's "mostly closed" gate
_SAPO_HALF_GATE = 2.0 * math.atanh(math.sqrt(0.5))


@policy_loss("sapo", uses=("sapo_tau_pos", "sapo_tau_neg"))
def sapo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    sapo_tau_pos: float = 1.0,
    sapo_tau_neg: float = 1.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (Gao et al., 2025, "Soft Adaptive Policy Optimization"): a soft gate instead of the clip.

    ``ρ_t = exp(log π_θ - log π_old)``, ``τ_t = τ_pos`` where ``Â_t > 0`` else ``τ_neg``,
    ``f_t = σ(τ_t (ρ_t - 1)) · 4/τ_t``, ``ℓ_t = -f_t Â_t``.
    Gradient ``∂ℓ_t/∂log π_θ,t = -w_t ρ_t Â_t`` with the gate weight ``w_t = 4σ(x_t)(1-σ(x_t))``,
    ``x_t = τ_t(ρ_t - 1)``: ``w = 1`` at ``ρ = 1`` (the policy gradient, whatever τ) and decays
    smoothly as ``ρ`` leaves 1, faster for a larger τ.  Both τ must be > 0 (paper: 1.0 and 1.05).

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]`` -> ``(ℓ [B, T], metrics)``.
    SAPO has no hard clip: ``clipfrac`` counts tokens whose gate weight fell below 1/2 (the gradient
    more than halved), ``clipfrac_low``/``clipfrac_high`` those with ``ρ < 1``/``ρ > 1``;
    ``dual_clipfrac`` = 0; ``gate_weight_mean`` = token-mean of ``w``; ``approx_kl``, ``is_ratio_mean``.
    """
    if not (sapo_tau_pos > 0 and sapo_tau_neg > 0):
        raise ValueError(f"sapo_tau_pos and sapo_tau_neg must be > 0, got {sapo_tau_pos}, {sapo_tau_neg}")
    m = as_bool_mask(mask)
    log_ratio = masked_fill_zero(logprobs - old_logprobs.to(logprobs.dtype), m)
    adv = masked_fill_zero(advantages.to(logprobs.dtype), m)
    ratio = torch.exp(log_ratio)
    tau = torch.where(adv > 0, adv.new_tensor(sapo_tau_pos), adv.new_tensor(sapo_tau_neg))
    x = tau * (ratio - 1.0)
    per_token = -torch.sigmoid(x) * (4.0 / tau) * adv
    dtype = per_token.dtype
    with torch.no_grad():
        gate = torch.sigmoid(x)
        weight = 4.0 * gate * (1.0 - gate)
        closed = x.abs() > _SAPO_HALF_GATE
    metrics = {
        "clipfrac": _frac(closed, m, dtype),
        "clipfrac_low": _frac(closed & (ratio < 1.0), m, dtype),
        "clipfrac_high": _frac(closed & (ratio > 1.0), m, dtype),
        "dual_clipfrac": torch.zeros((), dtype=dtype, device=per_token.device),
        "gate_weight_mean": masked_mean(weight, m).detach(),
        **ratio_metrics(ratio, log_ratio, m),
    }
    return per_token, metrics
