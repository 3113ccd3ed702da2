"""Loss aggregation: reduce a per-token ``[B, T]`` tensor to a scalar loss.

Each mode is registered in ``AGGREGATIONS`` as
``f(values, mask, *, group_size=None, max_len=None) -> 0-dim`` and is
differentiable w.r.t. ``values``.  Notation: ``x_{b,t}`` per-token values,
``m_{b,t}`` mask, ``n_b = Σ_t m_{b,t}``, ``B`` rows.  Masked-out values are
ignored (even if inf/NaN).
"""

from __future__ import annotations

import torch

from .registry import Registry
from .stats import as_bool_mask, masked_count, masked_fill_zero

Tensor = torch.Tensor

AGGREGATIONS = Registry("aggregation mode")


def _mean_over_nonempty(per_row: Tensor, nonempty: Tensor) -> Tensor:
    """Mean of ``per_row`` over entries with ``nonempty``; 0 if none."""
    keep = nonempty.to(per_row.dtype)
    return (per_row * keep).sum() / keep.sum().clamp(min=1)


@AGGREGATIONS.register("token-mean")
def token_mean(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """``Σ_{b,t} m x / Σ_{b,t} m`` (0 if no tokens).  values, mask: ``[B, T]`` -> 0-dim."""
    m = as_bool_mask(mask)
    return masked_fill_zero(values, m).sum() / masked_count(m, values.dtype).clamp(min=1)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """``mean_{b: n_b>0} (Σ_t m x / n_b)``.  values, mask: ``[B, T]`` -> 0-dim."""
    m = as_bool_mask(mask)
    n = masked_count(m, values.dtype, dim=-1)
    per_row = masked_fill_zero(values, m).sum(-1) / n.clamp(min=1)
    return _mean_over_nonempty(per_row, n > 0)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """``mean_{b: n_b>0} Σ_t m x``.  values, mask: ``[B, T]`` -> 0-dim."""
    m = as_bool_mask(mask)
    n = masked_count(m, values.dtype, dim=-1)
    return _mean_over_nonempty(masked_fill_zero(values, m).sum(-1), n > 0)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    values: Tensor, mask: Tensor, *, group_size=None, max_len=None
) -> Tensor:
    """Dr. GRPO: ``(1/B) Σ_b Σ_t m x / L`` with constant ``L = max_len`` (default ``T``).

    Averages over all ``B`` rows, empty ones included.  values, mask: ``[B, T]`` -> 0-dim.
    """
    L = values.shape[-1] if max_len is None else max_len
    if L <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    per_row = masked_fill_zero(values, mask).sum(-1) / L
    return per_row.sum() / max(per_row.shape[0], 1)


@AGGREGATIONS.register("prompt-mean")
def prompt_mean(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """ScaleRL prompt-level mean: rows form consecutive groups of ``G = group_size``.

    ``mean_{g: N_g>0} (Σ_{b∈g,t} m x / N_g)``, ``N_g = Σ_{b∈g} n_b``.
    values, mask: ``[B, T]`` with ``B % G == 0`` -> 0-dim.
    """
    if group_size is None:
        raise ValueError("aggregation 'prompt-mean' requires group_size")
    B = values.shape[0]
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the batch size {B}")
    m = as_bool_mask(mask)
    per_group_sum = masked_fill_zero(values, m).reshape(B // group_size, -1).sum(-1)
    per_group_n = m.to(values.dtype).reshape(B // group_size, -1).sum(-1)
    per_group = per_group_sum / per_group_n.clamp(min=1)
    return _mean_over_nonempty(per_group, per_group_n > 0)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    group_size: int | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce per-token ``values`` ``[B, T]`` under ``mask`` ``[B, T]`` to a 0-dim tensor.

    ``mode`` is one of ``AGGREGATIONS.names()`` (see each mode's docstring);
    unknown modes raise ``ValueError`` listing valid names.
    """
    return AGGREGATIONS.get(mode)(values, mask, group_size=group_size, max_len=max_len)
