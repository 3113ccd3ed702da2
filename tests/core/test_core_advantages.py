"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) and group statistics.

Checked against per-group pure-Python loops, hand-computed numbers, and "every
knob changes the result / unused arguments change nothing" tests.
"""

import math

import pytest
import torch

from rlexp.core import (
    ADVANTAGE_ESTIMATORS,
    group_advantages,
    group_pass_rate,
    rloo_advantages,
    zero_std_groups,
)

# groups of 3: group 0 has an empty row, group 2 is single-token rows with equal rewards
LENGTHS = [4, 0, 2, 3, 3, 1, 1, 1, 1]
T = 4
G = 3
SCALES = ["group", "batch", "none"]
HAND = [1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]  # two groups of 4; the second is flat


def _scores(seed=0, B=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ group_advantages
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("group_size", [2, 3, 4, 12])
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.5])
def test_group_advantages_match_reference(ref, scale, group_size, eps):
    s = _scores(seed=group_size)
    s[:group_size] = 0.7  # first group flat
    got = group_advantages(s, group_size, scale, eps)
    assert got.shape == s.shape and got.dtype == torch.float64 and not got.requires_grad
    want = ref.group_adv(s.tolist(), group_size, scale, eps)
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert (got[:group_size] == 0).all()  # flat group: exactly 0


def test_group_advantages_hand_computed():
    s = torch.tensor(HAND, dtype=torch.float64)
    # group [1,0,0,0]: mean 0.25, unbiased std sqrt(0.75/3) = 0.5 -> [1.5, -0.5, -0.5, -0.5]
    got = group_advantages(s, 4, "group", eps=0.0)
    assert got.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], abs=1e-12)
    got = group_advantages(s, 4, "group", eps=0.5)  # divide by 0.5 + 0.5
    assert got.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0], abs=1e-12)
    # batch: mean 1.125, Σ(x-μ)² = 0.015625 + 3·1.265625 + 4·0.765625 = 6.875, std = sqrt(6.875/7)
    std = math.sqrt(6.875 / 7)
    got = group_advantages(s, 4, "batch", eps=0.0)
    assert got.tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std,
                                          0, 0, 0, 0], abs=1e-12)
    got = group_advantages(s, 4, "none")
    assert got.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0], abs=1e-12)
    # group_size 2: [1,0] -> ±0.5/std([1,0]) = ±0.5/sqrt(0.5); [0,0], [2,2], [2,2] flat
    got = group_advantages(s, 2, "group", eps=0.0)
    assert got.tolist() == pytest.approx([0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)] + [0] * 6)


def test_group_advantages_knobs_change_result():
    s = _scores(seed=1)
    outs = {sc: group_advantages(s, 3, sc) for sc in SCALES}
    for a in SCALES:
        for b in SCALES:
            if a != b:
                assert not torch.allclose(outs[a], outs[b]), (a, b)
    for sc in ("group", "batch"):
        assert not torch.allclose(group_advantages(s, 3, sc, eps=0.1), outs[sc])
    assert torch.equal(group_advantages(s, 3, "none", eps=0.1), outs["none"])  # eps unused
    assert not torch.allclose(group_advantages(s, 4, "group"), outs["group"])
    assert not torch.allclose(group_advantages(s, 4, "batch"), outs["batch"])


def test_group_advantages_dtypes_and_no_grad():
    s = torch.tensor([1, 0, 1, 1], dtype=torch.long)
    got = group_advantages(s, 2)
    assert got.dtype == torch.get_default_dtype()
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert got.tolist() == pytest.approx([a, -a, 0, 0], abs=1e-6)
    x = torch.tensor([1.0, 0.0], dtype=torch.float32, requires_grad=True)
    out = group_advantages(x, 2)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert group_advantages(torch.tensor([3.0]), 1, "batch").tolist() == [0.0]  # B=1: std 0


def test_group_advantages_errors():
    s = _scores(B=6)
    with pytest.raises(ValueError, match="group_size=4"):
        group_advantages(s, 4)
    with pytest.raises(ValueError, match="group_size=0"):
        group_advantages(s, 0, "none")
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(s, 1, "group")
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(s, 2, "std")
    with pytest.raises(ValueError, match="eps"):
        group_advantages(s, 2, eps=-1.0)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(s.reshape(2, 3), 3)
    group_advantages(s, 1, "batch")  # fine: no per-group std needed
    group_advantages(s, 1, "none")


# ------------------------------------------------------------------ rloo / group stats
@pytest.mark.parametrize("group_size", [2, 3, 4, 12])
def test_rloo_matches_reference_and_dr_grpo_relation(ref, group_size):
    s = _scores(seed=10 + group_size)
    s[-group_size:] = -1.5
    got = rloo_advantages(s, group_size)
    assert got.tolist() == pytest.approx(ref.rloo(s.tolist(), group_size), abs=1e-9)
    assert (got[-group_size:] == 0).all()
    # A_rloo = G/(G-1) · (s - mean_g)
    scaled = group_advantages(s, group_size, "none") * group_size / (group_size - 1)
    assert torch.allclose(got, scaled, atol=1e-12)


def test_rloo_hand_and_errors():
    got = rloo_advantages(torch.tensor(HAND, dtype=torch.float64), 4)
    assert got.tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0])
    assert rloo_advantages(torch.tensor([1.0, 3.0]), 2).tolist() == [-2.0, 2.0]
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="group_size=3"):
        rloo_advantages(torch.zeros(4), 3)


def test_zero_std_groups_and_pass_rate(ref):
    s = torch.tensor(HAND)
    assert zero_std_groups(s, 4).tolist() == [False, True]
    assert zero_std_groups(s, 2).tolist() == [False, True, True, True]
    assert zero_std_groups(s, 1).tolist() == [True] * 8
    near = torch.tensor([0.1, 0.1 + 1e-12], dtype=torch.float64)
    assert zero_std_groups(near, 2).tolist() == [False]  # exact equality only
    assert group_pass_rate(s, 4).tolist() == [0.25, 1.0]
    assert group_pass_rate(s, 4, threshold=1.5).tolist() == [0.0, 1.0]
    assert group_pass_rate(s, 2, threshold=0.0).tolist() == [1.0] * 4
    assert group_pass_rate(torch.tensor([1, 0, 1, 1]), 2).tolist() == [0.5, 1.0]
    # against per-group loops
    r = _scores(seed=3, B=12).round()
    for gs in (2, 3, 6):
        grp = [r[i : i + gs].tolist() for i in range(0, 12, gs)]
        assert zero_std_groups(r, gs).tolist() == [len(set(g_)) == 1 for g_ in grp]
        assert group_pass_rate(r, gs, 0.5).tolist() == pytest.approx(
            [sum(x >= 0.5 for x in g_) / gs for g_ in grp])
    for fn in (zero_std_groups, group_pass_rate):
        with pytest.raises(ValueError, match="group_size=5"):
            fn(s, 5)


# ------------------------------------------------------------------ estimators ([B, T])
def _rewards(ref, seed):
    mask, (r,) = ref.make_batch(LENGTHS, T, seed=seed)
    r[6:9, 0] = 0.25  # group 2: equal rewards, single-token rows
    return mask, r


def _check_broadcast(adv, ret, want_b):
    assert adv.shape == ret.shape == (len(LENGTHS), T) and torch.equal(adv, ret)
    assert not adv.requires_grad
    for b, L in enumerate(LENGTHS):
        assert adv[b, :L].tolist() == pytest.approx([want_b[b]] * L, abs=1e-6)
        assert (adv[b, L:] == 0).all()


@pytest.mark.parametrize("name,scale,eps,group_size", [
    ("grpo", "group", 1e-6, 3), ("grpo", "group", 0.3, 3), ("grpo", "group", 1e-6, 9),
    ("grpo", "batch", 1e-6, 3), ("grpo", "batch", 1e-6, 1), ("grpo", "none", 1e-6, 3),
    ("dr_grpo", "group", 1e-6, 3), ("dr_grpo", "group", 1e-6, 1), ("rloo", "group", 1e-6, 3),
    ("rloo", "group", 1e-6, 9),
])
def test_estimators_match_reference(ref, name, scale, eps, group_size):
    mask, r = _rewards(ref, seed=len(name) + group_size)
    adv, ret = ADVANTAGE_ESTIMATORS.get(name)(r, None, mask, group_size=group_size,
                                              scale=scale, eps=eps)
    scores = [sum(row) for row in ref.rows(r, LENGTHS)]  # empty row -> 0
    if name == "grpo":
        want = ref.group_adv(scores, group_size, scale, eps)
    elif name == "dr_grpo":
        want = ref.group_adv(scores, group_size, "none")
    else:
        want = ref.rloo(scores, group_size)
    _check_broadcast(adv, ret, want)
    if group_size == 3:
        assert (adv[6:9] == 0).all()  # equal-reward group: no signal


def test_grpo_hand_computed():
    # two prompts × 2 completions; rewards on the last token; garbage off-mask
    r = torch.tensor([[0.0, 1.0, 9.0], [0.0, 0.0, 0.0], [5.0, 9.0, 9.0], [2.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    # scores [1, 0 | 5, 5]: group 0 -> ±0.5/(std 0.7071 + eps), group 1 flat -> 0
    adv, ret = ADVANTAGE_ESTIMATORS.get("grpo")(r, None, mask, group_size=2, eps=0.0)
    a = 0.5 / math.sqrt(0.5)
    assert adv.flatten().tolist() == pytest.approx([a, a, 0, -a, -a, -a] + [0] * 6)
    adv, _ = ADVANTAGE_ESTIMATORS.get("dr_grpo")(r, None, mask, group_size=2)
    assert adv.flatten().tolist() == pytest.approx([0.5, 0.5, 0, -0.5, -0.5, -0.5] + [0] * 6)
    adv, _ = ADVANTAGE_ESTIMATORS.get("rloo")(r, None, mask, group_size=2)
    assert adv.flatten().tolist() == pytest.approx([1, 1, 0, -1, -1, -1] + [0] * 6)


KW = {"gamma": 0.9, "lam": 0.8, "group_size": 3, "scale": "group", "eps": 1e-6}
CONFIG_KEY = {"gamma": "gamma", "lam": "lam", "adv_scale": "scale", "adv_eps": "eps"}
OTHER = {"gamma": 0.5, "lam": 0.3, "scale": "batch", "eps": 0.5}


@pytest.mark.parametrize("name", ["gae", "grpo", "dr_grpo", "rloo"])
def test_used_knobs_change_result_unused_do_not(ref, name):
    mask, (r, v) = ref.make_batch(LENGTHS, T, seed=17, n=2)
    est = ADVANTAGE_ESTIMATORS.get(name)
    base = est(r, v, mask, **KW)[0]
    used = {CONFIG_KEY[k] for k in est.uses}
    for arg, val in OTHER.items():
        out = est(r, v, mask, **{**KW, arg: val})[0]
        if arg in used:
            assert not torch.allclose(out, base), arg
        else:
            assert torch.equal(out, base), arg
    if not est.needs_critic:  # values unused; group_size matters
        assert torch.equal(est(r, None, mask, **KW)[0], base)
        assert not torch.allclose(est(r, v, mask, **{**KW, "group_size": 9})[0], base)
    else:
        assert torch.equal(est(r, v, mask, **{**KW, "group_size": 9})[0], base)


def test_estimator_errors_and_mask_dtypes(ref):
    mask, r = _rewards(ref, seed=2)
    for name in ("grpo", "dr_grpo", "rloo"):
        with pytest.raises(ValueError, match="group_size=2"):
            ADVANTAGE_ESTIMATORS.get(name)(r, None, mask, group_size=2)
        outs = [ADVANTAGE_ESTIMATORS.get(name)(r, None, mask.to(dt), group_size=3)[0]
                for dt in (torch.bool, torch.int64, torch.float32)]
        assert all(torch.equal(o, outs[0]) for o in outs)
    with pytest.raises(ValueError, match="group_size"):
        ADVANTAGE_ESTIMATORS.get("rloo")(r, None, mask, group_size=1)
    with pytest.raises(ValueError, match="group, batch, none"):
        ADVANTAGE_ESTIMATORS.get("grpo")(r, None, mask, group_size=3, scale="token")
    # dr_grpo ignores scale entirely, even a bogus one
    ADVANTAGE_ESTIMATORS.get("dr_grpo")(r, None, mask, group_size=3, scale="token")
