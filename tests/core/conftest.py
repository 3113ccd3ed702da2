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


def ref_group_adv(scores, G, scale="group", eps=1e-6):
    """GRPO-style advantages of a list of float scores, group by group (flat group -> 0)."""
    B = len(scores)
    mu_all = sum(scores) / B
    std_all = math.sqrt(sum((x - mu_all) ** 2 for x in scores) / (B - 1)) if B >= 2 else 0.0
    out = []
    for g in range(0, B, G):
        grp = scores[g : g + G]
        mu = sum(grp) / G
        if scale == "group" and len(set(grp)) > 1:
            div = math.sqrt(sum((x - mu) ** 2 for x in grp) / (G - 1)) + eps
        elif scale == "batch" and len(set(grp)) > 1:
            div = std_all + eps
        else:
            div = 1.0
        out += [(x - mu) / div if len(set(grp)) > 1 else 0.0 for x in grp]
    return out


def ref_rloo(scores, G):
    """Leave-one-out advantages, group by group (flat group -> 0)."""
    out = []
    for g in range(0, len(scores), G):
        grp = scores[g : g + G]
        out += [x - (sum(grp) - x) / (G - 1) if len(set(grp)) > 1 else 0.0 for x in grp]
    return out


def ref_overlong(length, max_len, buffer, penalty):
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return ((max_len - buffer) - length) / buffer * penalty
    return -penalty


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


def ref_gspo_rows(lp_rows, old_rows, adv_rows, eps_low, eps_high, dual=None):
    """Per-token GSPO loss values (floats): PPO with ρ = s_i = exp(mean_t(lp - old))."""
    out = []
    for lp, old, adv in zip(lp_rows, old_rows, adv_rows):
        ell = sum(a - b for a, b in zip(lp, old)) / len(lp) if lp else 0.0
        out.append([ref_ppo_token(ell, 0.0, a, eps_low, eps_high, dual) for a in adv])
    return out


def ref_cispo_token(lp, old, a, eps_low, eps_high):
    """Per-token CISPO loss value: -clamp(ρ, 1-ε_low, 1+ε_high)·Â·lp."""
    return -min(max(math.exp(lp - old), 1 - eps_low), 1 + eps_high) * a * lp


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
        gspo_rows=ref_gspo_rows,
        cispo_token=ref_cispo_token,
        group_adv=ref_group_adv,
        rloo=ref_rloo,
        overlong=ref_overlong,
        value_token=ref_value_token,
        mean=ref_mean,
        GARBAGE=GARBAGE,
    )
