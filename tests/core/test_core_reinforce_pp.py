"""REINFORCE++ (Hu et al., 2025): discounted token returns against a plain loop, a hand case, the
registered estimator (no critic, no groups) and the `needs_groups` metadata of every estimator."""

import pytest
import torch

from rlexp.core import ADVANTAGE_ESTIMATORS, discounted_returns

LENGTHS = [6, 3, 0, 1, 5, 2]
T = 6


def ref_returns(r, gamma):
    """One row: G_t = Σ_{k≥t} γ^{k-t} r_k, written as the sum."""
    return [sum(gamma ** (k - t) * r[k] for k in range(t, len(r))) for t in range(len(r))]


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5, 0.0])
def test_discounted_returns_match_the_sum(ref, gamma):
    mask, (r,) = ref.make_batch(LENGTHS, T, seed=int(gamma * 10))  # garbage off-mask
    out = discounted_returns(r, mask, gamma)
    assert out.shape == r.shape and out.dtype == r.dtype and (out[~mask] == 0).all()
    for b, row in enumerate(ref.rows(r, LENGTHS)):
        assert out[b, :LENGTHS[b]].tolist() == pytest.approx(ref_returns(row, gamma), abs=1e-12)


def test_discounted_returns_hand_computed():
    # a score of 1 on the last of 3 tokens and a per-token KL penalty -β·KL = [-0.1, -0.2, -0.3]
    r = torch.tensor([[-0.1, -0.2, 1.0 - 0.3, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert discounted_returns(r, mask, 1.0)[0].tolist() == pytest.approx([0.4, 0.5, 0.7, 0.0])
    # γ = 0.5: G_2 = 0.7, G_1 = -0.2 + 0.35 = 0.15, G_0 = -0.1 + 0.075 = -0.025
    assert discounted_returns(r, mask, 0.5)[0].tolist() == pytest.approx([-0.025, 0.15, 0.7, 0.0])
    # integer rewards and a bool mask give floats
    assert discounted_returns(torch.tensor([[0, 2]]), torch.tensor([[True, True]]), 0.5).tolist() == [[1.0, 2.0]]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            discounted_returns(r, mask, bad)


def test_reinforce_pp_entry(ref):
    est = ADVANTAGE_ESTIMATORS.get("reinforce_pp")
    assert (est.needs_critic, est.needs_groups, est.uses) == (False, False, frozenset({"gamma"}))
    mask, (r, v) = ref.make_batch(LENGTHS, T, seed=4, n=2)
    adv, ret = est(r, v, mask, gamma=0.9, lam=0.3, group_size=1, scale="batch", eps=0.5)
    assert torch.equal(adv, discounted_returns(r, mask, 0.9)) and torch.equal(ret, adv) and ret is not adv
    # values, λ, the group size, scale and eps are not read: one completion per prompt is fine
    for kw in (dict(group_size=3), dict(lam=1.0, scale="group", eps=0.0)):
        assert torch.equal(est(r, None, mask, gamma=0.9, **kw)[0], adv)
    assert not torch.allclose(est(r, None, mask, gamma=0.5)[0], adv)
    # a row without a reward (valid False) gets 0, the others are unchanged
    valid = torch.tensor([True, False, True, True, False, True])
    got, _ = est(r, None, mask, gamma=0.9, valid=valid)
    assert (got[~valid] == 0).all() and torch.equal(got[valid], adv[valid])
    assert torch.equal(est(r, None, mask, gamma=0.9, valid=torch.ones(6, dtype=torch.bool))[0], adv)


def test_needs_groups_metadata():
    want = {"gae": False, "reinforce_pp": False, "grpo": True, "dr_grpo": True, "rloo": True}
    assert {n: ADVANTAGE_ESTIMATORS.get(n).needs_groups for n in ADVANTAGE_ESTIMATORS.names()} == want
