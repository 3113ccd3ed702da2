"""Rollout correction: importance weights for the gap between the policy that sampled and the trainer's.

The sampler (``π_rollout``: the generation engine, with its own kernels, precision or a lagging copy of the
weights) and the trainer's policy at the start of the update (``π_old``; in general the proximal policy of
the PPO ratio) can assign the sampled tokens different probabilities. The PPO ratio ``π_θ/π_old`` corrects
for the update's own steps, not for that gap. Per token, with ``ρ_t = π_old(y_t)/π_rollout(y_t)``, a
detached weight ``w_t`` multiplies the per-token policy loss before its aggregation (the aggregation's
denominator is unchanged: see the ``weights=`` of :class:`rlexp.core.PolicyLoss`):

- ``none``: ``w_t = 1`` (the online module then passes no weights at all);
- ``tis`` — truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
  you off-policy RL training"): ``w_t = min(ρ_t, C)``;
- ``mis`` — masked importance sampling (IcePop, Ling Team 2025, "Every step evolves: scaling RL for
  trillion-scale thinking model"): ``w_t = ρ_t · 1[1/C ≤ ρ_t ≤ C]``. Tokens outside the band leave the
  policy loss; the kept ones are still weighted by their ratio (IcePop's ``M(k) = k`` inside
  ``[α, β]``; TRL's ``token_mask`` is the one-sided ``ρ_t · 1[ρ_t ≤ C]``), so inside the band the gap is
  corrected as by ``tis``, not ignored.

Registry ``ROLLOUT_CORRECTIONS`` maps a mode to ``fn(ratio, cap) -> (w, cut)`` (``ratio`` ``[B, T]`` with
1 off-mask; ``cut`` bool, the tokens truncated or masked). :func:`rollout_is_weights` is the entry::

    weights, metrics = rollout_is_weights(old_logprobs, rollout_logprobs, mask, "tis", 2.0)

Inputs ``[B, T]``; garbage off-mask is zeroed before any arithmetic; weights are 0 off-mask.
"""

from __future__ import annotations

import torch

from .registry import Registry
from .stats import as_bool_mask, masked_fill_zero, masked_mean

Tensor = torch.Tensor

ROLLOUT_CORRECTIONS = Registry("rollout correction")


@ROLLOUT_CORRECTIONS.register("none")
def no_correction(ratio: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """``w = 1``: the sampler's tokens are trained on as if the trainer had sampled them."""
    return torch.ones_like(ratio), torch.zeros_like(ratio, dtype=torch.bool)


@ROLLOUT_CORRECTIONS.register("tis")
def truncated_is(ratio: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """``w = min(ρ, C)``; ``cut``: ``ρ > C`` (truncated)."""
    return ratio.clamp(max=cap), ratio > cap


@ROLLOUT_CORRECTIONS.register("mis")
def masked_is(ratio: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """``w = ρ · 1[1/C ≤ ρ ≤ C]``; ``cut``: ``ρ`` outside ``[1/C, C]`` (masked out)."""
    keep = (ratio >= 1.0 / cap) & (ratio <= cap)
    return torch.where(keep, ratio, torch.zeros_like(ratio)), ~keep


def rollout_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, mode: str,
                       cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The detached per-token weights ``w`` ``[B, T]`` (0 off-mask) of correction ``mode`` with cap ``C``.

    old_logprobs: the trainer's (proximal) log-probs ``log π_old``; rollout_logprobs: the sampler's
    ``log π_rollout``; mask: the tokens of the loss; all ``[B, T]``. ``ρ = exp(log π_old - log π_rollout)``.
    Metrics (detached 0-dim token-means over ``mask``): ``rollout_is_weight_mean`` (of ``w``, masked-out
    tokens counting 0) and ``rollout_is_clipfrac`` (the share truncated, ``tis``, or masked, ``mis``); both NaN
    on an empty mask, so that the update's average over minibatches (a ``nanmean``) leaves such a minibatch out.
    ValueError for an unknown mode or ``C <= 1``.
    """
    fn = ROLLOUT_CORRECTIONS.get(mode)
    if not cap > 1.0:
        raise ValueError(f"rollout correction cap must be > 1, got {cap}")
    m = as_bool_mask(mask)
    with torch.no_grad():
        log_ratio = masked_fill_zero(old_logprobs - rollout_logprobs.to(old_logprobs.dtype), m)
        weights, cut = fn(torch.exp(log_ratio), float(cap))
        weights = masked_fill_zero(weights, m)
        metrics = {"rollout_is_weight_mean": masked_mean(weights, m),
                   "rollout_is_clipfrac": masked_mean((cut & m).to(weights.dtype), m)}
        if not bool(m.any()):  # no token in the loss (e.g. every group zero-variance filtered): nothing to
            metrics = {k: torch.full_like(v, float("nan")) for k, v in metrics.items()}  # average, not 0
    return weights, metrics
