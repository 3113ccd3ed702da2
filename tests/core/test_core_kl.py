"""KL estimators k1 / k2 / k3."""

import math

import pytest
import torch

from rlexp.core import KL_ESTIMATORS, kl_estimate

REF = {
    "k1": lambda d: d,
    "k2": lambda d: d * d / 2,
    "k3": lambda d: math.exp(-d) + d - 1,
}


def test_hand_computed():
    lp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    ref_lp = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    # d = [0.5, -1, 0]
    assert kl_estimate(lp, ref_lp, "k1").tolist()[0] == pytest.approx([0.5, -1.0, 0.0])
    assert kl_estimate(lp, ref_lp, "k2").tolist()[0] == pytest.approx([0.125, 0.5, 0.0])
    # k3: e^-0.5 + 0.5 - 1 = 0.1065306597,  e^1 - 1 - 1 = 0.7182818285,  0
    assert kl_estimate(lp, ref_lp, "k3").tolist()[0] == pytest.approx(
        [0.1065306597, 0.7182818285, 0.0], abs=1e-9
    )


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_matches_reference(kind):
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 9, generator=g, dtype=torch.float64) * 2
    rl = torch.randn(4, 9, generator=g, dtype=torch.float64) * 2
    out = kl_estimate(lp, rl, kind)
    assert out.shape == lp.shape
    for b in range(4):
        for t in range(9):
            want = REF[kind](float(lp[b, t]) - float(rl[b, t]))
            assert out[b, t].item() == pytest.approx(want, rel=1e-9, abs=1e-9)
    if kind != "k1":
        assert (out >= 0).all()
    assert KL_ESTIMATORS.get(kind)(lp, rl).equal(out)


def test_kind_changes_value_and_gradient():
    lp = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, requires_grad=True)
    rl = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    vals, grads = {}, {}
    for kind in ["k1", "k2", "k3"]:
        lp.grad = None
        out = kl_estimate(lp, rl, kind).sum()
        out.backward()
        vals[kind], grads[kind] = out.item(), lp.grad.clone()
    d = lp.detach()
    assert torch.allclose(grads["k1"], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(grads["k2"], d)
    assert torch.allclose(grads["k3"], 1 - torch.exp(-d))
    assert len(set(vals.values())) == 3


def test_unknown_kind():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="valid: k1, k2, k3"):
        kl_estimate(x, x, "kl")
