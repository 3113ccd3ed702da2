"""Shared fixtures for rlexp.core tests: random masked batches and pure-Python references.

The references loop over Python floats row by row, reading only each row's
first ``n_b`` entries; they are independent of the implementation.  Several
are written with plain arithmetic and ``min``/``max`` so they also run on
0-dim torch tensors (for autograd comparisons).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

GARBAGE = 1e6


def make_batch(lengths, T, seed=0, dtype=torch.float64, garbage=GARBAGE, n=1):
    """``n`` random ``[B, T]`` tensors with ``garbage`` off-mask, and a prefix mask."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, L in enumerate(lengths):
        mask[b, :L] = True
    xs = []
    for _ in range(n):
        x = torch.randn(B, T, generator=g, dtype=dtype)
        xs.append(torch.where(mask, x, torch.full_like(x, garbage)))
    return mask, xs


def rows(x, lengths):
    """Python-float rows truncated to their lengths."""
    return [[float(v) for v in x[b, :L]] for b, L in enumerate(lengths)]


# ---------------------------------------------------------------- aggregation
def ref_aggregate(rows_, mode, group_size=None, max_len=None, T=None):
    """Reduce a list of per-row token lists (may be 0-dim tensors) to a scalar."""
    nonempty = [r for r in rows_ if r]
    if mode == "token-mean":
        toks = [v for r in rows_ for v in r]
        return sum(toks) / len(toks) if toks else 0.0
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in nonempty) / len(nonempty) if nonempty else 0.0
    if mode == "seq-mean-token-sum":
        return sum(sum(r) for r in nonempty) / len(nonempty) if nonempty else 0.0
    if mode == "seq-mean-token-sum-norm":
        L = T if max_len is None else max_len
        return sum(sum(r) / L for r in rows_) / len(rows_)
    if mode == "prompt-mean":
        groups = [rows_[i : i + group_size] for i in range(0, len(rows_), group_size)]
        means = []
        for grp in groups:
            toks = [v for r in grp for v in r]
            if toks:
                means.append(sum(toks) / len(toks))
        return sum(means) / len(means) if means else 0.0
    raise AssertionError(mode)


# ---------------------------------------------------------------- advantages
def ref_gae(r, v, gamma, lam):
    """One row: r, v lists of length n -> (adv, ret) lists."""
    n = len(r)
    adv = [0.0] * n
    nxt_v, nxt_a = 0.0, 0.0
    for t in reversed(range(n)):
        delta = r[t] + gamma * nxt_v - v[t]
        nxt_a = delta + gamma * lam * nxt_a
        adv[t] = nxt_a
        nxt_v = v[t]
    return adv, [a + b for a, b in zip(adv, v)]


# ---------------------------------------------------------------- losses
def ref_ppo_token(lp, old, a, eps_low, eps_high, dual=None, exp=math.exp):
    """Per-token PPO loss; works on floats or 0-dim tensors (pass exp=torch.exp)."""
    rho = exp(lp - old)
    unclipped = -a * rho
    clipped = -a * min(max(rho, 1 - eps_low), 1 + eps_high)
    loss = unclipped if unclipped >= clipped else clipped
    if dual is not None and a < 0:
        loss = min(loss, -dual * a)
    return loss


def ref_value_token(v, old, r, eps=None):
    sq = (v - r) ** 2
    if eps is None:
        return 0.5 * sq
    v_clip = old + min(max(v - old, -eps), eps)
    return 0.5 * max(sq, (v_clip - r) ** 2)


def ref_mean(rows_):
    toks = [v for r in rows_ for v in r]
    return sum(toks) / len(toks) if toks else 0.0


@pytest.fixture
def ref():
    return SimpleNamespace(
        make_batch=make_batch,
        rows=rows,
        aggregate=ref_aggregate,
        gae=ref_gae,
        ppo_token=ref_ppo_token,
        value_token=ref_value_token,
        mean=ref_mean,
        GARBAGE=GARBAGE,
    )
