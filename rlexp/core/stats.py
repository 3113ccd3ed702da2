"""Masked reductions and statistics over ``[B, T]`` response tensors.

``mask`` selects the valid positions (bool, int or float; any nonzero entry
counts as valid).  Values at masked-out positions are ignored whatever they
hold (even inf/NaN): they are replaced by 0 with ``torch.where`` before any
arithmetic, so neither the result nor its gradient can be polluted.
All results are tensors (no ``.item()``), safe to keep on device.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def as_bool_mask(mask: Tensor) -> Tensor:
    """Return ``mask`` as a bool tensor (nonzero -> True)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_fill_zero(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask`` else exactly 0: off-mask garbage reaches neither value nor grad."""
    return torch.where(as_bool_mask(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_count(mask: Tensor, dtype: torch.dtype, dim: int | None = None) -> Tensor:
    """``n = Σ m`` (over ``dim`` or everything) in ``dtype``."""
    m = as_bool_mask(mask).to(dtype)
    return m.sum() if dim is None else m.sum(dim)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``Σ_i m_i x_i`` over ``dim`` (all elements if ``None`` -> 0-dim).

    x, mask: same shape (e.g. ``[B, T]``); returns 0-dim or ``x`` reduced over ``dim``.
    """
    xz = masked_fill_zero(x, mask)
    return xz.sum() if dim is None else xz.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``Σ m_i x_i / Σ m_i`` over ``dim`` (all elements if ``None``); 0 where the mask is empty.

    x, mask: same shape; returns 0-dim or ``x`` reduced over ``dim``.  Never NaN.
    """
    n = masked_count(mask, x.dtype, dim)
    return masked_sum(x, mask, dim) / n.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over all masked elements: ``Σ m_i (x_i - x̄)² / (n - 1)`` (``/ n`` if not unbiased).

    x, mask: same shape; returns 0-dim.  0 when fewer than 2 masked elements.
    """
    m = as_bool_mask(mask)
    n = masked_count(m, x.dtype)
    mean = masked_mean(x, m)
    dev = masked_fill_zero(x - mean, m)
    denom = (n - 1 if unbiased else n).clamp(min=1)
    var = (dev * dev).sum() / denom
    return torch.where(n >= 2, var, torch.zeros_like(var))


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_reduce=None) -> Tensor:
    """``(x - μ) / sqrt(σ² + eps)`` with μ, σ² (unbiased) over masked elements.

    If ``shift_mean`` is False the mean is added back: ``(x - μ)/sqrt(σ² + eps) + μ``.
    ``all_reduce``: a function summing a tensor over data-parallel workers (None: this batch only), so
    that μ and σ² are those of the global batch.
    x, mask: same shape; returns ``x``'s shape, exactly 0 at masked-out positions.
    """
    m = as_bool_mask(mask)
    xz = masked_fill_zero(x, m)
    if all_reduce is None:
        mean = masked_mean(xz, m)
        var = masked_var(xz, m, unbiased=True)
    else:
        n = all_reduce(masked_count(m, xz.dtype))
        mean = all_reduce(xz.sum()) / n.clamp(min=1)
        dev = masked_fill_zero(xz - mean, m)
        var = all_reduce((dev * dev).sum()) / (n - 1).clamp(min=1)
        var = torch.where(n >= 2, var, torch.zeros_like(var))
    out = (xz - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return masked_fill_zero(out, m)


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var[R - V] / Var[R]`` over masked elements (detached 0-dim); 0 if ``Var[R] == 0``.

    values, returns, mask: ``[B, T]``.  1 = perfect critic, 0 = no better than a constant.
    """
    m = as_bool_mask(mask)
    v = masked_fill_zero(values, m)
    r = masked_fill_zero(returns, m)
    var_r = masked_var(r, m)
    var_d = masked_var(r - v, m)
    ev = 1 - var_d / torch.where(var_r > 0, var_r, torch.ones_like(var_r))
    return torch.where(var_r > 0, ev, torch.zeros_like(ev))
