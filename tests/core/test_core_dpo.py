"""dpo_loss: a plain-float reference for every loss type, hand cases, every knob, gradients."""

import math

import pytest
import torch

from rlexp.core import DPO_LOSSES, dpo_loss

LOSS_TYPES = ["sigmoid", "ipo", "hinge"]


def _ref_pair(pc, pr, rc, rr, beta, loss_type, ls):
    """One pair with Python floats: (loss, chosen_reward, rejected_reward)."""
    delta = (pc - pr) - (rc - rr)

    def ell(d):
        if loss_type == "sigmoid":
            z = beta * d  # -log σ(z) = log(1 + e^{-z}), written stably for both signs
            return math.log1p(math.exp(-z)) if z >= 0 else -z + math.log1p(math.exp(z))
        if loss_type == "ipo":
            return (d - 1 / (2 * beta)) ** 2
        if loss_type == "hinge":
            return max(0.0, 1 - beta * d)
        raise AssertionError(loss_type)

    loss = (1 - ls) * ell(delta) + ls * ell(-delta)
    return loss, beta * (pc - rc), beta * (pr - rr)


def _batch(seed, B=16, scale=6.0):
    g = torch.Generator().manual_seed(seed)
    return [(-scale * torch.rand(B, generator=g, dtype=torch.float64)) for _ in range(4)]


def test_registry_names():
    assert DPO_LOSSES.names() == sorted(LOSS_TYPES)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("ls", [0.0, 0.1, 0.3])
def test_matches_the_plain_float_reference(loss_type, beta, ls):
    pc, pr, rc, rr = _batch(seed=int(beta * 10) + int(ls * 100))
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta, loss_type, ls)
    assert losses.shape == cr.shape == rj.shape == (16,)
    for b in range(16):
        want = _ref_pair(*(float(x[b]) for x in (pc, pr, rc, rr)), beta, loss_type, ls)
        assert losses[b].item() == pytest.approx(want[0], abs=1e-6)
        assert cr[b].item() == pytest.approx(want[1], abs=1e-6)
        assert rj[b].item() == pytest.approx(want[2], abs=1e-6)


def test_sigmoid_is_stable_for_large_margins():
    one = torch.ones(1, dtype=torch.float64)
    big, _, _ = dpo_loss(-one * 1e4, one * 0, one * 0, one * 0, 1.0)   # βΔ = -1e4: loss ≈ 1e4, finite
    small, _, _ = dpo_loss(one * 0, -one * 1e4, one * 0, one * 0, 1.0)  # βΔ = +1e4: loss ≈ 0
    assert big.item() == pytest.approx(1e4) and small.item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ hand-computed cases
# π_c=-1, π_r=-3, ref_c=-2, ref_r=-2.5:  Δ = (−1+3) − (−2+2.5) = 2 − 0.5 = 1.5
HAND = [torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.5)]


def test_hand_case_sigmoid():
    # β=1: -log σ(1.5) = log(1 + e^-1.5) = 0.201413...
    losses, cr, rj = dpo_loss(*HAND, beta=1.0, loss_type="sigmoid")
    assert losses.item() == pytest.approx(0.2014132779827524, abs=1e-12)
    assert cr.item() == pytest.approx(1.0) and rj.item() == pytest.approx(-0.5)


def test_hand_case_sigmoid_with_label_smoothing():
    # ε=0.25: 0.75·log(1+e^-1.5) + 0.25·log(1+e^1.5) = 0.75·0.201413 + 0.25·1.701413 = 0.576413...
    losses, _, _ = dpo_loss(*HAND, beta=1.0, loss_type="sigmoid", label_smoothing=0.25)
    assert losses.item() == pytest.approx(0.75 * 0.2014132779827524 + 0.25 * 1.7014132779827524, abs=1e-12)


def test_hand_case_ipo():
    # β=0.5: (Δ − 1/(2β))² = (1.5 − 1)² = 0.25
    losses, cr, rj = dpo_loss(*HAND, beta=0.5, loss_type="ipo")
    assert losses.item() == pytest.approx(0.25)
    assert cr.item() == pytest.approx(0.5) and rj.item() == pytest.approx(-0.25)


def test_hand_case_hinge():
    # β=0.5: max(0, 1 − 0.75) = 0.25; β=1: max(0, 1 − 1.5) = 0
    assert dpo_loss(*HAND, beta=0.5, loss_type="hinge")[0].item() == pytest.approx(0.25)
    assert dpo_loss(*HAND, beta=1.0, loss_type="hinge")[0].item() == 0.0


def test_equal_policy_and_reference_gives_log2():
    x = torch.tensor([-1.0, -4.0])
    losses, cr, rj = dpo_loss(x, x - 1, x, x - 1, beta=0.1)  # Δ = 0 for both pairs
    assert torch.allclose(losses, torch.full((2,), math.log(2.0)))
    assert torch.equal(cr, torch.zeros(2)) and torch.equal(rj, torch.zeros(2))


# ------------------------------------------------------------------ every knob acts
def _value(**kw):
    pc, pr, rc, rr = _batch(seed=7)
    args = dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0) | kw
    return dpo_loss(pc, pr, rc, rr, **args)[0]


@pytest.mark.parametrize("knob", [dict(beta=0.5), dict(loss_type="ipo"), dict(loss_type="hinge"),
                                  dict(label_smoothing=0.2)])
def test_every_knob_changes_the_loss(knob):
    assert not torch.allclose(_value(), _value(**knob))


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_label_smoothing_acts_on_every_loss_type(loss_type):
    assert not torch.allclose(_value(loss_type=loss_type), _value(loss_type=loss_type, label_smoothing=0.2))


@pytest.mark.parametrize("kw, match", [(dict(beta=0.0), "beta"), (dict(beta=-1.0), "beta"),
                                       (dict(label_smoothing=0.5), "label_smoothing"),
                                       (dict(label_smoothing=-0.1), "label_smoothing"),
                                       (dict(loss_type="kto"), "hinge, ipo, sigmoid")])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _value(**kw)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_raises_chosen_and_lowers_rejected(loss_type):
    """Descent increases log π(chosen) and decreases log π(rejected) while the pair is not yet
    separated; the reference gets no gradient."""
    pc = torch.tensor([-2.0, -3.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-2.0, -2.5], dtype=torch.float64, requires_grad=True)
    rc = torch.tensor([-2.0, -3.0], dtype=torch.float64, requires_grad=True)
    rr = torch.tensor([-2.0, -2.5], dtype=torch.float64, requires_grad=True)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type)
    losses.mean().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert torch.allclose(pc.grad, -pr.grad)  # the loss depends on π_c - π_r only
    assert not cr.requires_grad and not rj.requires_grad


def test_sigmoid_gradient_matches_the_formula():
    # ∂ℓ/∂π_c = -β·σ(-βΔ) (the DPO weight: larger when the implicit reward orders the pair wrongly)
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    losses, _, _ = dpo_loss(pc, *HAND[1:], beta=2.0)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-2.0 * (1 / (1 + math.exp(2.0 * 1.5))))


def test_reached_hinge_margin_has_no_gradient():
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    dpo_loss(pc, *HAND[1:], beta=1.0, loss_type="hinge")[0].sum().backward()  # βΔ = 1.5 > 1
    assert pc.grad.item() == 0.0
