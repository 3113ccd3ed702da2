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


# Every mode is ``numerator / denominator`` where the denominator depends on the mask alone. Under data
# parallelism each worker computes its numerator over its own rows and divides by the denominator summed
# over all workers (``aggregation_denominator`` + an all-reduce): the loss is then the same whatever the
# split of the batch (verl normalizes over the global batch the same way).
def _token_mean_parts(values, mask, group_size, max_len):
    m = as_bool_mask(mask)
    return masked_fill_zero(values, m).sum(), masked_count(m, values.dtype)


def _seq_parts(values, mask, per_token_mean: bool):
    m = as_bool_mask(mask)
    n = masked_count(m, values.dtype, dim=-1)
    per_row = masked_fill_zero(values, m).sum(-1)
    if per_token_mean:
        per_row = per_row / n.clamp(min=1)
    keep = (n > 0).to(per_row.dtype)
    return (per_row * keep).sum(), keep.sum()


def _sum_norm_parts(values, mask, group_size, max_len):
    L = values.shape[-1] if max_len is None else max_len
    if L <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    per_row = masked_fill_zero(values, mask).sum(-1) / L
    return per_row.sum(), torch.tensor(float(per_row.shape[0]), dtype=per_row.dtype, device=per_row.device)


def _prompt_parts(values, mask, group_size, max_len):
    if group_size is None:
        raise ValueError("aggregation 'prompt-mean' requires group_size")
    B = values.shape[0]
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the batch size {B}")
    m = as_bool_mask(mask)
    per_group_sum = masked_fill_zero(values, m).reshape(B // group_size, -1).sum(-1)
    per_group_n = m.to(values.dtype).reshape(B // group_size, -1).sum(-1)
    keep = (per_group_n > 0).to(per_group_sum.dtype)
    return (per_group_sum / per_group_n.clamp(min=1) * keep).sum(), keep.sum()


_PARTS = {
    "token-mean": _token_mean_parts,
    "seq-mean-token-mean": lambda v, m, g, L: _seq_parts(v, m, per_token_mean=True),
    "seq-mean-token-sum": lambda v, m, g, L: _seq_parts(v, m, per_token_mean=False),
    "seq-mean-token-sum-norm": _sum_norm_parts,
    "prompt-mean": _prompt_parts,
}


def _ratio(mode: str):
    def f(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
        num, den = _PARTS[mode](values, mask, group_size, max_len)
        return num / den.clamp(min=1)
    return f


@AGGREGATIONS.register("token-mean")
def token_mean(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """``Σ_{b,t} m x / Σ_{b,t} m`` (0 if no tokens).  values, mask: ``[B, T]`` -> 0-dim."""
    return _ratio("token-mean")(values, mask, group_size=group_size, max_len=max_len)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """``mean_{b: n_b>0} (Σ_t m x / n_b)``.  values, mask: ``[B, T]`` -> 0-dim."""
    return _ratio("seq-mean-token-mean")(values, mask, group_size=group_size, max_len=max_len)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """``mean_{b: n_b>0} Σ_t m x``.  values, mask: ``[B, T]`` -> 0-dim."""
    return _ratio("seq-mean-token-sum")(values, mask, group_size=group_size, max_len=max_len)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    values: Tensor, mask: Tensor, *, group_size=None, max_len=None
) -> Tensor:
    """Dr. GRPO: ``(1/B) Σ_b Σ_t m x / L`` with constant ``L = max_len`` (default ``T``).

    Averages over all ``B`` rows, empty ones included.  values, mask: ``[B, T]`` -> 0-dim.
    """
    return _ratio("seq-mean-token-sum-norm")(values, mask, group_size=group_size, max_len=max_len)


@AGGREGATIONS.register("prompt-mean")
def prompt_mean(values: Tensor, mask: Tensor, *, group_size=None, max_len=None) -> Tensor:
    """ScaleRL prompt-level mean: rows form consecutive groups of ``G = group_size``.

    ``mean_{g: N_g>0} (Σ_{b∈g,t} m x / N_g)``, ``N_g = Σ_{b∈g} n_b``.
    values, mask: ``[B, T]`` with ``B % G == 0`` -> 0-dim.
    """
    return _ratio("prompt-mean")(values, mask, group_size=group_size, max_len=max_len)


def aggregation_denominator(mask: Tensor, mode: str, *, group_size: int | None = None) -> Tensor:
    """The denominator of ``mode`` for ``mask`` ``[B, T]`` (tokens, non-empty rows, rows or non-empty
    groups), a 0-dim float tensor without gradient. Sum it over data-parallel workers and pass the sum
    (divided by the number of workers, whose gradients DDP averages) as ``aggregate(..., denominator=)``."""
    AGGREGATIONS.get(mode)  # unknown modes: the registry's error
    m = as_bool_mask(mask)
    zeros = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    return _PARTS[mode](zeros, m, group_size, None)[1].detach()


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    group_size: int | None = None,
    max_len: int | None = None,
    denominator: Tensor | float | None = None,
) -> Tensor:
    """Reduce per-token ``values`` ``[B, T]`` under ``mask`` ``[B, T]`` to a 0-dim tensor.

    ``mode`` is one of ``AGGREGATIONS.names()`` (see each mode's docstring);
    unknown modes raise ``ValueError`` listing valid names. ``denominator``: divide this batch's
    numerator by it instead of by the batch's own denominator (data parallelism, micro-batches: see
    :func:`aggregation_denominator`).
    """
    fn = AGGREGATIONS.get(mode)
    if denominator is None:
        return fn(values, mask, group_size=group_size, max_len=max_len)
    num, _ = _PARTS[mode](values, mask, group_size, max_len)
    return num / torch.as_tensor(denominator, dtype=num.dtype, device=num.device).clamp(min=1e-12)
