"""Rows without a reward (``valid=False``, task.on_reward_error=skip) leave every statistic.

A completion the reward function could not score must not enter its group's mean or std,
the batch std (ScaleRL), the zero-variance test, the pass rate or the RLOO baseline, and its
own advantage is exactly 0 (as in TRL).  Checked against hand-computed numbers, a plain
per-group Python loop over the valid rows, two simulated data-parallel workers, and
bit-identity with ``valid=None`` when every row is valid.
"""

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from rlexp.core import (
    ADVANTAGE_ESTIMATORS,
    group_advantages,
    group_pass_rate,
    rloo_advantages,
    zero_std_groups,
)

SCALES = ["group", "batch", "none"]
NAN = float("nan")


def _t(xs):
    return torch.tensor(xs, dtype=torch.float64)


def _v(bits):
    return torch.tensor([bool(b) for b in bits])


# ------------------------------------------------------------------ hand-computed
def test_all_correct_plus_failed_row_has_no_signal():
    # [1, 1, 1, failed]: the failed row is scored 0 by the module; today that gives +0.5 / -1.5
    s, v = _t([1, 1, 1, 0]), _v([1, 1, 1, 0])
    assert group_advantages(s, 4, "none").tolist() == [0.25, 0.25, 0.25, -0.75]  # the bug
    for scale in SCALES:
        assert group_advantages(s, 4, scale, valid=v).tolist() == [0.0] * 4, scale
    assert rloo_advantages(s, 4, valid=v).tolist() == [0.0] * 4
    assert zero_std_groups(s, 4, valid=v).tolist() == [True]
    # through the registered estimators: score = the single token's reward
    r, mask = s[:, None], torch.ones(4, 1, dtype=torch.bool)
    for name in ("grpo", "dr_grpo", "rloo"):
        for scale in ("group", "batch"):
            adv, ret = ADVANTAGE_ESTIMATORS.get(name)(r, None, mask, group_size=4, scale=scale,
                                                      valid=v)
            assert adv.flatten().tolist() == [0.0] * 4 and ret.flatten().tolist() == [0.0] * 4


@pytest.mark.parametrize("failed_score", [0.0, 7.0, NAN])
def test_one_failed_row_gives_the_advantages_of_the_others(failed_score):
    s, v = _t([1, 0, 1, failed_score]), _v([1, 1, 1, 0])
    # [1, 0, 1] alone: mean 2/3, centered [1/3, -2/3, 1/3],
    # unbiased std sqrt((1+4+1)/9/2) = sqrt(1/3)
    c = [1 / 3, -2 / 3, 1 / 3]
    sd = math.sqrt(1 / 3)
    assert group_advantages(s, 4, "group", eps=0.0, valid=v).tolist() == pytest.approx(
        [x / sd for x in c] + [0.0], abs=1e-12)
    assert group_advantages(s, 4, "none", valid=v).tolist() == pytest.approx(c + [0.0], abs=1e-12)
    # batch of this one group: the batch std is the same sqrt(1/3)
    assert group_advantages(s, 4, "batch", eps=0.0, valid=v).tolist() == pytest.approx(
        [x / sd for x in c] + [0.0], abs=1e-12)
    # rloo: 1 - (0+1)/2, 0 - (1+1)/2, 1 - (1+0)/2
    assert rloo_advantages(s, 4, valid=v).tolist() == pytest.approx([0.5, -1, 0.5, 0], abs=1e-12)
    # the same numbers as the three valid scores on their own
    alone = group_advantages(_t([1, 0, 1]), 3, "group")
    assert group_advantages(s, 4, "group", valid=v)[:3].tolist() == pytest.approx(alone.tolist())
    assert rloo_advantages(s, 4, valid=v)[:3].tolist() == pytest.approx(
        rloo_advantages(_t([1, 0, 1]), 3).tolist())
    adv, _ = ADVANTAGE_ESTIMATORS.get("dr_grpo")(s[:, None], None, torch.ones(4, 1), group_size=4,
                                                 valid=v)
    assert adv.flatten().tolist() == pytest.approx(c + [0.0], abs=1e-12)


def test_batch_std_over_valid_rows_only():
    s, v = _t([1, 0, 1, 0, 0, 0, 1, 0]), _v([1, 1, 1, 0, 1, 1, 1, 0])
    # valid scores 1,0,1,0,0,1: mean 0.5, Σ(x-μ)² = 6·0.25 = 1.5, unbiased std sqrt(1.5/5)
    sd = math.sqrt(0.3)
    want = [x / sd for x in (1 / 3, -2 / 3, 1 / 3, 0.0, -1 / 3, -1 / 3, 2 / 3, 0.0)]
    got = group_advantages(s, 4, "batch", eps=0.0, valid=v)
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    assert got[3] == 0 and got[7] == 0


def test_zero_std_groups_over_valid_rows():
    s = _t([1, 1, 1, 0, 5, 2, 2, 2, 2, 2, 3, 2, 4, 9, 9, 9, 4, 5, 6, 7])
    v = _v([1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    # the failed row differs / the first row differs (and is invalid) / two valid rows differ /
    # one valid row / no valid row
    assert zero_std_groups(s, 4).tolist() == [False] * 5
    assert zero_std_groups(s, 4, valid=v).tolist() == [True, True, False, True, True]


def test_pass_rate_over_valid_rows():
    s = _t([1, 0, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    v = _v([1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    assert group_pass_rate(s, 4).tolist() == [0.5, 0.5, 1.0]
    assert group_pass_rate(s, 4, valid=v).tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    assert group_pass_rate(s, 4, 0.5, valid=v).tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    got = group_pass_rate(s.long(), 4, valid=v.long())  # int scores, int valid
    assert got.dtype == torch.get_default_dtype()
    assert got.tolist() == pytest.approx([2 / 3, 0.0, 1.0])


def test_group_with_every_row_failed():
    s, v = _t([1, 0, 0, 2, NAN, 3, 1, 0]), _v([1, 1, 1, 1, 0, 0, 0, 0])
    alone = {sc: group_advantages(s[:4], 4, sc) for sc in SCALES}
    for scale in SCALES:
        got = group_advantages(s, 4, scale, valid=v)
        assert got[4:].tolist() == [0.0] * 4
        # batch std is that of the first group's 4 scores only
        assert got[:4].tolist() == pytest.approx(alone[scale].tolist(), abs=1e-12), scale
    assert rloo_advantages(s, 4, valid=v).tolist() == pytest.approx(
        rloo_advantages(s[:4], 4).tolist() + [0.0] * 4)
    assert zero_std_groups(s, 4, valid=v).tolist() == [False, True]
    assert group_pass_rate(s, 4, valid=v).tolist() == [0.5, 0.0]
    none = torch.zeros(8, dtype=torch.bool)  # no valid row anywhere: all 0, no NaN
    for scale in SCALES:
        assert group_advantages(s, 4, scale, eps=0.0, valid=none).tolist() == [0.0] * 8
    assert group_pass_rate(s, 4, valid=none).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ against a per-group loop
def _ref(scores, valid, G, scale, eps):
    """Plain loop: (group advantages, rloo, zero_std, pass rate) over valid rows only."""
    vals = [x for x, ok in zip(scores, valid) if ok]
    n = len(vals)
    mu = sum(vals) / n if n else 0.0
    std_all = math.sqrt(sum((x - mu) ** 2 for x in vals) / (n - 1)) if n >= 2 else 0.0
    adv, loo, flat, rate = [], [], [], []
    for g0 in range(0, len(scores), G):
        grp = list(zip(scores[g0 : g0 + G], valid[g0 : g0 + G]))
        vg = [x for x, ok in grp if ok]
        flat.append(len(set(vg)) <= 1)
        rate.append(sum(x >= 1.0 for x in vg) / len(vg) if vg else 0.0)
        if flat[-1]:
            adv += [0.0] * G
            loo += [0.0] * G
            continue
        m = sum(vg) / len(vg)
        if scale == "group":
            d = math.sqrt(sum((x - m) ** 2 for x in vg) / (len(vg) - 1)) + eps
        elif scale == "batch":
            d = std_all + eps
        else:
            d = 1.0
        adv += [(x - m) / d if ok else 0.0 for x, ok in grp]
        loo += [x - (sum(vg) - x) / (len(vg) - 1) if ok else 0.0 for x, ok in grp]
    return adv, loo, flat, rate


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("G", [2, 3, 4, 6])
def test_valid_rows_match_reference_loop(seed, G):
    gen = torch.Generator().manual_seed(100 * seed + G)
    B = 24
    s = torch.randint(0, 3, (B,), generator=gen).to(torch.float64)  # ties: flat groups
    if seed % 2:
        s = s + torch.randn(B, generator=gen, dtype=torch.float64)
    v = torch.rand(B, generator=gen) < 0.6
    v[:G] = False  # one group with no valid row
    v[G : 2 * G] = False
    v[G] = True  # one group with a single valid row
    s = torch.where(v, s, torch.full_like(s, 1e6))  # garbage on failed rows
    for scale in SCALES:
        for eps in (0.0, 1e-6):
            want, loo, flat, rate = _ref(s.tolist(), v.tolist(), G, scale, eps)
            got = group_advantages(s, G, scale, eps, valid=v)
            assert got.tolist() == pytest.approx(want, abs=1e-9), (scale, eps)
            assert (got[~v] == 0).all()
    assert rloo_advantages(s, G, valid=v).tolist() == pytest.approx(loo, abs=1e-9)
    assert zero_std_groups(s, G, valid=v).tolist() == flat
    assert group_pass_rate(s, G, valid=v).tolist() == pytest.approx(rate)
    got = group_advantages(s, G, "group", valid=v).reshape(-1, G)
    assert (got[torch.tensor(flat)] == 0).all()  # flat groups exactly 0


# ------------------------------------------------------------------ two data-parallel workers
def _two_workers(fn, halves):
    """Run ``fn(half, all_reduce)`` on two threads whose all_reduce sums both workers' tensors."""
    barrier = threading.Barrier(2, timeout=10)
    slots = [None, None]
    calls = [0, 0]

    def reducer(rank):
        def all_reduce(t):
            calls[rank] += 1
            slots[rank] = t.clone()
            barrier.wait()
            out = slots[0] + slots[1]
            barrier.wait()
            return out
        return all_reduce

    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(fn, h, reducer(rank)) for rank, h in enumerate(halves)]
        outs = [f.result() for f in futs]
    assert calls[0] == calls[1] > 0
    return torch.cat(outs)


@pytest.mark.parametrize("case,local_differs", [
    ("mixed", True), ("one_all_valid", True),
    ("one_all_failed", False),  # every valid row on worker 0: its local std is the global one
])
def test_batch_scale_over_two_workers_counts_valid_rows_globally(case, local_differs):
    gen = torch.Generator().manual_seed(7)
    s = torch.randn(12, generator=gen, dtype=torch.float64)
    v = _v([1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1])
    if case == "one_all_valid":  # worker 0 takes the all-valid path, worker 1 the masked one
        v[:6] = True
    elif case == "one_all_failed":
        v[6:] = False
    s = torch.where(v, s, torch.full_like(s, NAN))
    want = group_advantages(s, 3, "batch", valid=v)
    got = _two_workers(lambda h, ar: group_advantages(h[0], 3, "batch", all_reduce=ar, valid=h[1]),
                       [(s[:6], v[:6]), (s[6:], v[6:])])
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-12)
    # a local-only std (this worker's valid rows) would differ
    local = torch.cat([group_advantages(s[:6], 3, "batch", valid=v[:6]),
                       group_advantages(s[6:], 3, "batch", valid=v[6:])])
    assert torch.allclose(local, want) is not local_differs
    # the estimator passes valid and all_reduce on
    r = s[:, None]
    est = ADVANTAGE_ESTIMATORS.get("grpo")
    got = _two_workers(lambda h, ar: est(h[0], None, torch.ones_like(h[0]), group_size=3,
                                         scale="batch", all_reduce=ar, valid=h[1])[0],
                       [(r[:6], v[:6]), (r[6:], v[6:])])
    assert got.flatten().tolist() == pytest.approx(want.tolist(), abs=1e-12)


# ------------------------------------------------------------------ all valid == None, bit for bit
def test_all_true_valid_is_bit_identical_to_none():
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(12, generator=gen, dtype=torch.float64)
    s[:3] = 0.5  # a flat group
    ones = torch.ones(12, dtype=torch.bool)
    for G in (2, 3, 4):
        for scale in SCALES:
            for ar in (None, lambda t: t * 1.0):
                assert torch.equal(group_advantages(s, G, scale, all_reduce=ar, valid=ones),
                                   group_advantages(s, G, scale, all_reduce=ar)), (G, scale)
        assert torch.equal(rloo_advantages(s, G, valid=ones), rloo_advantages(s, G))
        assert torch.equal(zero_std_groups(s, G, valid=ones), zero_std_groups(s, G))
        assert torch.equal(group_pass_rate(s, G, 0.0, valid=ones), group_pass_rate(s, G, 0.0))
    r = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    values = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    mask = torch.arange(5)[None, :] < torch.randint(0, 6, (12, 1), generator=gen)
    for name in ("gae", "grpo", "dr_grpo", "rloo"):
        est = ADVANTAGE_ESTIMATORS.get(name)
        for scale in ("group", "batch"):
            a = est(r, values, mask, group_size=3, scale=scale, valid=ones)
            b = est(r, values, mask, group_size=3, scale=scale)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), name
    # gae ignores valid entirely (its rows leave through the loss / whitening masks)
    gae = ADVANTAGE_ESTIMATORS.get("gae")
    part = _v([1, 0] * 6)
    assert torch.equal(gae(r, values, mask, valid=part)[0], gae(r, values, mask)[0])


def test_valid_shape_is_checked():
    s = _t([1, 0, 1, 1])
    for bad in (torch.ones(3, dtype=torch.bool), torch.ones(4, 1, dtype=torch.bool), [True] * 4):
        for fn, call in [("group_advantages", lambda b: group_advantages(s, 2, valid=b)),
                         ("rloo_advantages", lambda b: rloo_advantages(s, 2, valid=b)),
                         ("zero_std_groups", lambda b: zero_std_groups(s, 2, valid=b)),
                         ("group_pass_rate", lambda b: group_pass_rate(s, 2, valid=b))]:
            with pytest.raises(ValueError, match=rf"{fn}: valid must be .*\[B\]=\(4,\)"):
                call(bad)
    with pytest.raises(ValueError, match="valid"):
        ADVANTAGE_ESTIMATORS.get("grpo")(s[:, None], None, torch.ones(4, 1), group_size=2,
                                         valid=torch.ones(2, dtype=torch.bool))
