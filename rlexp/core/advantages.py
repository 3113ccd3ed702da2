"""Advantage estimators: per-token advantages and returns from rewards (and values).

Registry ``ADVANTAGE_ESTIMATORS`` maps a config name to an :class:`AdvantageEstimator`,
all called the same way::

    est = ADVANTAGE_ESTIMATORS.get(name)
    advantages, returns = est(rewards, values, mask, gamma=..., lam=...,
                              group_size=..., scale=..., eps=...,
                              all_reduce=..., valid=...)            # [B, T] each

Arguments an estimator does not use are ignored (``values`` may then be ``None``);
``est.uses`` names the algorithm config keys it reads, ``est.needs_critic`` says
whether it needs ``values`` and ``est.needs_groups`` whether it compares the completions
of one prompt (then ``num_generations >= 2``).  Group estimators score a completion by
``s_b = Σ_t rewards[b,t]·mask[b,t]`` and compare it with the other completions of its
prompt: completions of one prompt are consecutive rows, in groups of ``group_size``
(``B % group_size == 0``).  Group-wise helpers work on scores ``[B]``.  ``reinforce_pp``
needs neither a critic nor groups (discounted token returns; the module whitens them).

Unscorable rows: ``valid`` (optional bool ``[B]``, True = the reward function scored the
completion; ``None`` = every row) marks completions without a reward
(``task.on_reward_error=skip``).  They leave every statistic: the group mean, the group and
batch stds, the zero-variance test, the pass rate and the RLOO baseline are taken over the
valid rows only, and an invalid row's advantage is exactly 0 (as in TRL; ``reinforce_pp``
too).  ``gae`` accepts
``valid`` and ignores it (its rows are dropped by the loss and whitening masks).  With
``valid`` None or all True every result is bit-identical to not passing it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch

from .registry import Registry
from .stats import as_bool_mask, masked_count, masked_fill_zero

Tensor = torch.Tensor

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")

SCALES = ("group", "batch", "none")


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator: ``fn`` plus what it needs from the config.

    ``fn(rewards, values, mask, *, gamma, lam, group_size, scale, eps, all_reduce, valid)
    -> (adv, ret)``;
    ``needs_critic``: reads ``values``; ``uses``: algorithm config keys it reads;
    ``needs_groups``: compares the completions of one prompt (``group_size >= 2``).
    """

    name: str
    fn: Callable[..., tuple[Tensor, Tensor]]
    needs_critic: bool
    uses: frozenset[str]
    needs_groups: bool

    def __call__(
        self,
        rewards: Tensor,
        values: Tensor | None,
        mask: Tensor,
        *,
        gamma: float = 1.0,
        lam: float = 1.0,
        group_size: int = 1,
        scale: str = "group",
        eps: float = 1e-6,
        all_reduce=None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """rewards, values, mask: ``[B, T]`` -> ``(advantages, returns)``, both ``[B, T]``.
        ``all_reduce`` sums a tensor over data-parallel workers, for batch-level statistics;
        ``valid``: bool ``[B]``, False for rows without a reward (they leave the statistics)."""
        return self.fn(rewards, values, mask, gamma=gamma, lam=lam, group_size=group_size,
                       scale=scale, eps=eps, all_reduce=all_reduce, valid=valid)


def _register(name: str, needs_critic: bool, uses: frozenset[str], needs_groups: bool = True):
    def decorator(fn):
        ADVANTAGE_ESTIMATORS.register(name)(AdvantageEstimator(name, fn, needs_critic, uses, needs_groups))
        return fn

    return decorator


# ------------------------------------------------------------------ GAE
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


@_register("gae", needs_critic=True, uses=frozenset({"gamma", "lam"}), needs_groups=False)
def _gae_estimator(rewards, values, mask, *, gamma, lam, **_unused):
    # valid is ignored: unscorable rows leave GAE through the loss and whitening masks.
    if values is None:
        raise ValueError("advantage estimator 'gae' needs values (a critic); got None")
    return gae(rewards, values, mask, gamma, lam)


# ------------------------------------------------------------------ group helpers
def _float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _groups(scores: Tensor, group_size: int) -> Tensor:
    """``[B]`` -> ``[B // G, G]`` view; ValueError unless 1-D and ``G >= 1`` divides ``B``."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    B = scores.shape[0]
    try:
        G = operator.index(group_size) if not isinstance(group_size, bool) else 0
    except TypeError:
        G = 0
    if G < 1 or B % G != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the batch size {B}")
    return scores.reshape(B // G, G)


def _valid_groups(valid: Tensor | None, scores: Tensor, group_size: int, fn: str) -> Tensor | None:
    """``valid`` ``[B]`` -> bool ``[B // G, G]``; None when every row is valid (``valid`` None or
    all True), so that callers keep their all-rows formulas bit for bit.  ValueError unless
    ``valid`` is a tensor of shape ``[B]`` (``scores`` already checked by :func:`_groups`)."""
    if valid is None:
        return None
    B = scores.shape[0]
    if not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (B,):
        got = tuple(valid.shape) if isinstance(valid, torch.Tensor) else type(valid).__name__
        raise ValueError(f"{fn}: valid must be a bool tensor of shape [B]=({B},) like scores, "
                         f"got {got}")
    v = as_bool_mask(valid)
    return None if bool(v.all()) else v.reshape(B // group_size, group_size)


def _flat(g: Tensor, v: Tensor | None) -> Tensor:
    """Zero-std test on groups ``g`` ``[N, G]``: all valid scores equal (< 2 valid rows: True).

    Each group's valid scores are compared with its first valid one (``argmax`` returns the
    first True); invalid rows pass whatever they hold.  -> bool ``[N]``.
    """
    if v is None:
        return (g == g[:, :1]).all(dim=-1)
    first = g.gather(-1, v.to(torch.int8).argmax(dim=-1, keepdim=True))
    return ((g == first) | ~v).all(dim=-1)


def zero_std_groups(scores: Tensor, group_size: int, valid: Tensor | None = None) -> Tensor:
    """True for groups whose valid scores are all exactly equal (no learning signal), including
    groups with fewer than 2 valid rows.

    scores: ``[B]``; valid: optional bool ``[B]`` (True = scored; None = all) -> bool ``[B // G]``.
    """
    g = _groups(scores, group_size)
    return _flat(g, _valid_groups(valid, scores, group_size, "zero_std_groups"))


def group_pass_rate(scores: Tensor, group_size: int, threshold: float = 1.0,
                    valid: Tensor | None = None) -> Tensor:
    """Fraction of each group's valid scores ``>= threshold``:
    ``(1/n_g) Σ_{i∈g, valid} [s_i >= thr]`` with ``n_g`` valid rows; 0 when ``n_g = 0``.

    scores: ``[B]``; valid: optional bool ``[B]`` (None = all rows, ``n_g = G``)
    -> float ``[B // group_size]`` (dtype of ``scores`` if floating).
    """
    g = _groups(scores, group_size)
    dtype = _float(scores).dtype
    v = _valid_groups(valid, scores, group_size, "group_pass_rate")
    if v is None:
        return (g >= threshold).to(dtype).mean(dim=-1)
    n = masked_count(v, dtype, dim=-1)
    return ((g >= threshold) & v).to(dtype).sum(dim=-1) / n.clamp(min=1)


def _valid_batch_std(s: Tensor, v: Tensor, all_reduce) -> Tensor:
    """Unbiased std of the valid scores of the batch (of all workers when ``all_reduce`` sums over
    them): ``n = Σ v``, ``μ = Σ_v s / n``, ``sqrt(Σ_v (s - μ)² / (n - 1))``, 0 if ``n < 2``.
    s, v: ``[B]``.  Reduces (n, Σs, Σ(s-μ)²) in the same order as the all-valid path."""
    reduce = all_reduce if all_reduce is not None else (lambda t: t)
    n = reduce(masked_count(v, s.dtype))
    mean = reduce(masked_fill_zero(s, v).sum()) / n.clamp(min=1)
    dev = masked_fill_zero(s - mean, v)
    var = reduce((dev * dev).sum()) / (n - 1).clamp(min=1)
    return torch.where(n >= 2, var.sqrt(), torch.zeros_like(var))


def group_advantages(
    scores: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6, all_reduce=None,
    valid: Tensor | None = None,
) -> Tensor:
    """GRPO-style group-relative advantages ``A_i = (s_i - mean_g) / D``.

    ``D`` by ``scale``: ``"group"`` -> ``std_g + eps`` (unbiased std of the ``G`` scores
    of i's group; needs ``G >= 2``), ``"batch"`` -> ``std(all B scores) + eps`` (unbiased;
    0 if ``B < 2``; ScaleRL batch-level normalization; over all data-parallel workers when
    ``all_reduce``, a function summing a tensor over them, is given), ``"none"`` -> 1 (Dr. GRPO).
    Groups of exactly equal scores get ``A = 0`` exactly (no rounding noise).
    ``valid`` (optional bool ``[B]``, False = no reward): mean_g, std_g and the batch std are
    over valid rows only (the batch count ``n`` summed by ``all_reduce`` too), invalid rows get
    ``A = 0``, and a group whose valid scores are all equal (or < 2 valid rows) gets 0.
    scores: ``[B]`` (float or int), ``B % G == 0`` -> ``[B]`` float, no gradient.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if scale == "group" and group_size == 1:
        raise ValueError("scale='group' needs group_size >= 2 (std of one score); "
                         "got group_size=1")
    with torch.no_grad():
        s = _float(scores)
        g = _groups(s, group_size)
        v = _valid_groups(valid, s, group_size, "group_advantages")
        if v is not None:
            return _valid_group_advantages(s, g, v, scale, eps, all_reduce)
        centered = g - g.mean(dim=-1, keepdim=True)
        if scale == "group":
            centered = centered / (g.std(dim=-1, keepdim=True) + eps)
        elif scale == "batch" and all_reduce is not None:
            n = all_reduce(torch.tensor(float(s.shape[0]), dtype=s.dtype, device=s.device))
            mean = all_reduce(s.sum()) / n
            var = all_reduce(((s - mean) ** 2).sum()) / (n - 1).clamp(min=1)
            std = torch.where(n >= 2, var.sqrt(), torch.zeros_like(var))
            centered = centered / (std + eps)
        elif scale == "batch":
            std = s.std() if s.shape[0] >= 2 else torch.zeros((), dtype=s.dtype, device=s.device)
            centered = centered / (std + eps)
        flat = _flat(g, None)[:, None]
        return torch.where(flat, torch.zeros_like(centered), centered).reshape(-1)


def _valid_group_advantages(s: Tensor, g: Tensor, v: Tensor, scale: str, eps: float,
                            all_reduce) -> Tensor:
    """:func:`group_advantages` over valid rows only; s ``[B]``, g and v ``[B // G, G]``.

    ``n_g = Σ_{i∈g} v_i``, ``mean_g = Σ_{i∈g, valid} s_i / n_g``,
    ``std_g = sqrt(Σ_{i∈g, valid} (s_i - mean_g)² / (n_g - 1))``; batch std by
    :func:`_valid_batch_std`; invalid rows and flat groups -> exactly 0.
    """
    n_g = masked_count(v, s.dtype, dim=-1)[:, None]
    mean_g = masked_fill_zero(g, v).sum(dim=-1, keepdim=True) / n_g.clamp(min=1)
    centered = masked_fill_zero(g - mean_g, v)
    if scale == "group":
        var_g = (centered * centered).sum(dim=-1, keepdim=True) / (n_g - 1).clamp(min=1)
        centered = centered / (var_g.sqrt() + eps)
    elif scale == "batch":
        centered = centered / (_valid_batch_std(s, v.reshape(-1), all_reduce) + eps)
    drop = _flat(g, v)[:, None] | ~v
    return torch.where(drop, torch.zeros_like(centered), centered).reshape(-1)


def rloo_advantages(scores: Tensor, group_size: int, valid: Tensor | None = None) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., 2024): ``A_i = s_i - (Σ_{j∈g, j≠i} s_j)/(G-1)``.

    With ``valid`` (optional bool ``[B]``, False = no reward) the baseline is the mean of the
    other *valid* rows: ``A_i = s_i - (Σ_{j∈g, j≠i, valid} s_j)/(n_g - 1)``; invalid rows and
    groups with < 2 valid rows get 0.
    scores: ``[B]``, ``B % G == 0``, ``G >= 2`` -> ``[B]`` float, no gradient; groups of
    equal (valid) scores get exactly 0.
    """
    if group_size == 1:
        raise ValueError("rloo needs group_size >= 2 (a leave-one-out baseline); got group_size=1")
    with torch.no_grad():
        s = _float(scores)
        g = _groups(s, group_size)
        v = _valid_groups(valid, s, group_size, "rloo_advantages")
        if v is None:
            adv = g - (g.sum(dim=-1, keepdim=True) - g) / (group_size - 1)
            flat = _flat(g, None)[:, None]
            return torch.where(flat, torch.zeros_like(adv), adv).reshape(-1)
        gz = masked_fill_zero(g, v)
        n_g = masked_count(v, s.dtype, dim=-1)[:, None]
        adv = gz - (gz.sum(dim=-1, keepdim=True) - gz) / (n_g - 1).clamp(min=1)
        drop = _flat(g, v)[:, None] | ~v  # flat includes groups with < 2 valid rows
        return torch.where(drop, torch.zeros_like(adv), adv).reshape(-1)


# ------------------------------------------------------------------ critic-free estimators
def _sequence_scores(rewards: Tensor, mask: Tensor) -> Tensor:
    """``s_b = Σ_t rewards[b,t]·mask[b,t]``: ``[B, T]`` -> ``[B]`` (float)."""
    return masked_fill_zero(_float(rewards), as_bool_mask(mask)).sum(dim=-1)


def _broadcast(adv_b: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``A_b`` on row b's masked tokens, 0 elsewhere; returns = advantages (a copy)."""
    m = as_bool_mask(mask)
    adv = torch.where(m, adv_b[:, None], torch.zeros((), dtype=adv_b.dtype, device=adv_b.device))
    return adv, adv.clone()


@_register("grpo", needs_critic=False, uses=frozenset({"adv_scale", "adv_eps"}))
def _grpo_estimator(rewards, values, mask, *, group_size, scale, eps, all_reduce=None, valid=None,
                    **_unused):
    """GRPO (Shao et al., 2024): ``Â_{b,t} = group_advantages(s, G, scale, eps, valid)_b``."""
    with torch.no_grad():
        return _broadcast(group_advantages(_sequence_scores(rewards, mask), group_size, scale, eps,
                                           all_reduce=all_reduce, valid=valid), mask)


@_register("dr_grpo", needs_critic=False, uses=frozenset())
def _dr_grpo_estimator(rewards, values, mask, *, group_size, valid=None, **_unused):
    """Dr. GRPO (Liu et al., 2025): ``Â_{b,t} = s_b - mean_g`` (no std division; valid rows)."""
    with torch.no_grad():
        return _broadcast(group_advantages(_sequence_scores(rewards, mask), group_size,
                                           "none", valid=valid), mask)


@_register("rloo", needs_critic=False, uses=frozenset())
def _rloo_estimator(rewards, values, mask, *, group_size, valid=None, **_unused):
    """RLOO: ``Â_{b,t} = rloo_advantages(s, G, valid=valid)_b``."""
    with torch.no_grad():
        return _broadcast(rloo_advantages(_sequence_scores(rewards, mask), group_size, valid=valid),
                          mask)


# ------------------------------------------------------------------ REINFORCE++ (no critic, no groups)
def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``G_t = Σ_{k≥t} γ^{k-t} r_k`` over each row's masked tokens.

    rewards, mask: ``[B, T]``; mask ones form a prefix of each row.  Returns ``[B, T]`` (rewards'
    float dtype), exactly 0 off-mask; inputs there are ignored.  ``G_t = r_t + γ G_{t+1}`` from the
    last masked token back (``G`` = 0 after it).  No gradient.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    with torch.no_grad():
        m = as_bool_mask(mask)
        r = masked_fill_zero(_float(rewards), m)
        mf = m.to(r.dtype)
        out = torch.zeros_like(r)
        running = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
        for t in range(r.shape[1] - 1, -1, -1):
            running = (r[:, t] + gamma * running) * mf[:, t]
            out[:, t] = running
    return out


@_register("reinforce_pp", needs_critic=False, uses=frozenset({"gamma"}), needs_groups=False)
def _reinforce_pp_estimator(rewards, values, mask, *, gamma, valid=None, **_unused):
    """REINFORCE++ (Hu et al., 2025): ``Â_{b,t} = G_{b,t}``, the discounted return of the token rewards
    (with the KL penalty in them, ``kl_placement=in_reward``); no baseline here: the module's batch
    whitening (``whiten_advantages: true``) subtracts the batch mean and divides by its std.  Rows with
    ``valid`` False get 0.  Returns = advantages (a copy)."""
    adv = discounted_returns(rewards, mask, gamma)
    if valid is not None:
        adv = torch.where(as_bool_mask(valid)[:, None], adv, torch.zeros((), dtype=adv.dtype, device=adv.device))
    return adv, adv.clone()
