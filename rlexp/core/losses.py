"""Policy and value losses (PPO family) with their diagnostic metrics, and the policy-loss contract.

A policy loss is a function of per-token tensors ``[B, T]`` that returns per-token losses ``ℓ`` ``[B, T]``
and metrics; it knows nothing of aggregation.  Inputs at masked-out positions are zeroed before any
arithmetic (so garbage there affects neither loss nor gradient).  Metrics are token-means over masked
tokens, returned as detached 0-dim tensors.

Registry ``POLICY_LOSSES`` maps a config name to a :class:`PolicyLoss`: the function, the algorithm keys
it reads (``uses``) and the keys it refuses (``incompatible``).  Calling the entry runs the function and
reduces ``ℓ`` once with :func:`rlexp.core.aggregate`::

    loss, metrics = POLICY_LOSSES.get(name)(logprobs, old_logprobs, advantages, mask,
                                            config=algo, agg=..., group_size=..., max_len=...,
                                            denominator=..., weights=...)

``weights`` (optional, ``[B, T]``, detached): a per-token weight multiplied into ``ℓ`` before the
aggregation, whose denominator stays that of the mask (the rollout correction of
:mod:`.rollout_correction`); None leaves ``ℓ`` untouched.

``config`` (the algorithm config, any mapping) hands the function exactly its ``uses``; knobs may also
be given by keyword.  Adding a loss = one function decorated with :func:`policy_loss` (more entries in
:mod:`.policy_losses`) + its keys declared in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .aggregation import aggregate
from .registry import Registry
from .stats import as_bool_mask, masked_fill_zero, masked_mean

Tensor = torch.Tensor

POLICY_LOSSES = Registry("policy loss")


@dataclass(frozen=True, eq=False)
class PolicyLoss:
    """A registered policy loss: ``fn`` plus what it reads from the algorithm config.

    ``fn(logprobs, old_logprobs, advantages, mask, **knobs) -> (per_token [B, T], metrics)``, with
    ``knobs`` the algorithm keys ``uses`` (in the order of the legacy positional call);
    ``incompatible``: ``{key: reason}``, algorithm keys that must be null with this loss.
    Contract (checked by tests/core/test_core_policy_loss_contract.py for every entry): where
    ``ρ = π_θ/π_old = 1`` the gradient is the policy gradient ``-Â_t ∇log π_θ,t`` whatever the knobs
    (they act only off-policy), and ``ℓ`` and its gradient are 0 off-mask.
    """

    name: str
    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    uses: tuple[str, ...]
    incompatible: Mapping[str, str] = field(default_factory=dict)

    @property
    def knobs(self) -> tuple[str, ...]:
        """Every algorithm key this loss has a say about: ``uses``, then ``incompatible``."""
        return self.uses + tuple(self.incompatible)

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *args,
                 config: Mapping[str, Any] | None = None, agg: str = "token-mean", group_size: int | None = None,
                 max_len: int | None = None, denominator: Tensor | float | None = None,
                 weights: Tensor | None = None, **knobs) -> tuple[Tensor, dict[str, Tensor]]:
        """``loss = aggregate(ℓ, mask, agg, group_size=, max_len=, denominator=)`` with
        ``ℓ, metrics = fn(logprobs, old_logprobs, advantages, mask, **uses)`` -> ``(loss 0-dim, metrics)``;
        with ``weights`` ``w`` ``[B, T]``, ``ℓ·sg(w)`` is aggregated instead (``w`` off-mask is ignored).

        Knobs come from ``config`` (exactly ``uses``; ``incompatible`` keys read to refuse them), then by
        keyword, or positionally in the order ``knobs`` then ``agg`` (the historical signature
        ``(..., clip_eps, clip_eps_high, dual_clip, agg)`` of the PPO-family losses).  ValueError if an
        ``incompatible`` key is not None; TypeError for a knob the loss does not take.
        """
        order = self.knobs + ("agg",)
        if len(args) > len(order):
            raise TypeError(f"policy loss {self.name!r} takes at most {len(order)} positional knobs "
                            f"({', '.join(order)}), got {len(args)}")
        given = dict(zip(order, args))
        if "agg" in given:
            agg = given.pop("agg")
        twice = sorted(given.keys() & knobs.keys())
        if twice:
            raise TypeError(f"policy loss {self.name!r} got {', '.join(twice)} both by position and by keyword")
        if config is not None:
            given = {**{k: config[k] for k in self.uses},
                     **{k: config.get(k) for k in self.incompatible}, **given}
        given.update(knobs)
        for key, why in self.incompatible.items():
            value = given.pop(key, None)
            if value is not None:
                raise ValueError(f"{key} does not apply to {self.name} (got {value}): {why}; use None")
        unknown = sorted(given.keys() - set(self.uses))
        if unknown:
            raise TypeError(f"policy loss {self.name!r} takes no knob {', '.join(unknown)}; "
                            f"it uses {', '.join(self.uses) or 'none'}")
        per_token, metrics = self.fn(logprobs, old_logprobs, advantages, mask, **given)
        if weights is not None:
            per_token = per_token * masked_fill_zero(weights.detach().to(per_token.dtype), mask)
        loss = aggregate(per_token, as_bool_mask(mask), agg, group_size=group_size, max_len=max_len,
                         denominator=denominator)
        return loss, metrics


def policy_loss(name: str, *, uses: tuple[str, ...], incompatible: Mapping[str, str] | None = None):
    """Decorator: register ``fn`` in ``POLICY_LOSSES`` as ``PolicyLoss(name, fn, uses, incompatible)``
    and return that entry (so the module-level name is the callable, aggregating entry)."""
    def decorator(fn) -> PolicyLoss:
        entry = PolicyLoss(name, fn, tuple(uses), dict(incompatible or {}))
        POLICY_LOSSES.register(name)(entry)
        return entry

    return decorator


def _frac(cond: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Token-mean of a bool condition over masked tokens, detached."""
    return masked_mean(cond.to(dtype), mask).detach()


def clip_bounds(clip_eps: float, clip_eps_high: float | None) -> tuple[float, float]:
    """``(ε_low, ε_high)`` with ``ε_high = clip_eps_high or clip_eps``; both must be > 0.

    ``ε_low >= 1`` is allowed: the lower ratio bound ``1 - ε_low <= 0`` then never binds.
    """
    eps_low = float(clip_eps)
    eps_high = eps_low if clip_eps_high is None else float(clip_eps_high)
    if not (eps_low > 0 and eps_high > 0):
        raise ValueError(f"clip_eps must be > 0, got low={eps_low}, high={eps_high}")
    return eps_low, eps_high


def clipped_surrogate(
    ratio: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token ``-min(ρÂ, clip(ρ, 1-ε_low, 1+ε_high)Â)``, dual-clipped where ``Â < 0``.

    ratio, adv (zeroed off-mask), mask: ``[B, T]`` -> ``(per_token [B, T], metrics)`` with
    ``clipfrac``, ``clipfrac_low``, ``clipfrac_high``, ``dual_clipfrac`` (token-means).
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    dtype = per_token.dtype
    metrics = {
        "clipfrac": _frac(clipped > unclipped, mask, dtype),
        "clipfrac_low": _frac((adv < 0) & (ratio < 1.0 - eps_low), mask, dtype),
        "clipfrac_high": _frac((adv > 0) & (ratio > 1.0 + eps_high), mask, dtype),
    }
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_taken = (adv < 0) & (bound < per_token)
        per_token = torch.where(dual_taken, bound, per_token)
        metrics["dual_clipfrac"] = _frac(dual_taken, mask, dtype)
    else:
        metrics["dual_clipfrac"] = torch.zeros((), dtype=dtype, device=per_token.device)
    return per_token, metrics


@torch.no_grad()
def ratio_metrics(ratio: Tensor, log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``approx_kl`` = token-mean of ``ρ - 1 - log ρ``; ``is_ratio_mean`` = token-mean of ``ρ``.

    ratio, log_ratio (zeroed off-mask), mask: ``[B, T]`` -> detached 0-dim tensors.
    """
    return {"approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask).detach(),
            "is_ratio_mean": masked_mean(ratio, mask).detach()}


@policy_loss("ppo_clip", uses=("clip_eps", "clip_eps_high", "dual_clip"))
def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al., 2017) with asymmetric and dual clip.

    ``ρ_t = exp(log π_θ - log π_old)``,
    ``ℓ_t = -min(ρ_t Â_t, clip(ρ_t, 1-ε_low, 1+ε_high) Â_t)``  (ε_low = clip_eps,
    ε_high = clip_eps_high or clip_eps, DAPO clip-higher), and with ``dual_clip = c > 1``
    (Ye et al., 2020; verl): ``ℓ_t = min(ℓ_t, -c Â_t)`` where ``Â_t < 0``.

    logprobs (with grad), old_logprobs, advantages, mask: ``[B, T]``.
    Returns ``(ℓ [B, T], metrics)`` with metrics ``clipfrac`` (clipped term taken),
    ``clipfrac_low`` (Â<0, ρ<1-ε_low), ``clipfrac_high`` (Â>0, ρ>1+ε_high),
    ``dual_clipfrac``, ``approx_kl`` (token-mean of ``ρ - 1 - log ρ``), ``is_ratio_mean``.
    Called through the entry (``ppo_policy_loss(...)``), ``ℓ`` is aggregated: see :class:`PolicyLoss`.
    """
    eps_low, eps_high = clip_bounds(clip_eps, clip_eps_high)
    m = as_bool_mask(mask)
    log_ratio = masked_fill_zero(logprobs - old_logprobs.to(logprobs.dtype), m)
    adv = masked_fill_zero(advantages.to(logprobs.dtype), m)
    ratio = torch.exp(log_ratio)
    per_token, metrics = clipped_surrogate(ratio, adv, m, eps_low, eps_high, dual_clip)
    metrics.update(ratio_metrics(ratio, log_ratio, m))
    return per_token, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None = None,
    agg: str = "token-mean",
    *,
    group_size: int | None = None,
    max_len: int | None = None,
    denominator: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Critic regression loss, optionally value-clipped (PPO2-style).

    Unclipped: ``ℓ_t = ½ (V_t - R_t)²``.  With ``clip_eps = ε``:
    ``V^clip_t = V^old_t + clamp(V_t - V^old_t, -ε, ε)``,
    ``ℓ_t = ½ max((V_t - R_t)², (V^clip_t - R_t)²)``.
    ``loss = aggregate(ℓ, mask, agg, group_size=..., max_len=...)``.

    values (with grad), old_values, returns, mask: ``[B, T]``.
    Returns ``(loss 0-dim, metrics)`` with ``vf_clipfrac`` (clipped term strictly larger;
    0 without clipping) and ``value_mean`` (token-mean of V).
    """
    m = as_bool_mask(mask)
    v = masked_fill_zero(values, m)
    r = masked_fill_zero(returns.to(values.dtype), m)
    sq = (v - r) ** 2
    dtype = sq.dtype
    if clip_eps is None:
        per_token = 0.5 * sq
        clipfrac = torch.zeros((), dtype=dtype, device=sq.device)
    else:
        if clip_eps < 0:
            raise ValueError(f"value clip_eps must be >= 0, got {clip_eps}")
        old = masked_fill_zero(old_values.to(values.dtype), m)
        v_clip = old + torch.clamp(v - old, -clip_eps, clip_eps)
        sq_clip = (v_clip - r) ** 2
        per_token = 0.5 * torch.maximum(sq, sq_clip)
        clipfrac = _frac(sq_clip > sq, m, dtype)
    metrics = {"vf_clipfrac": clipfrac, "value_mean": masked_mean(v, m).detach()}
    loss = aggregate(per_token, m, agg, group_size=group_size, max_len=max_len, denominator=denominator)
    return loss, metrics
