"""masked_sum / masked_mean / masked_var / masked_whiten / explained_variance."""

import math

import pytest
import torch

from rlexp.core import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

LENGTHS = [6, 3, 0, 1, 5]
T = 6


def _flat(ref, x):
    return [v for r in ref.rows(x, LENGTHS) for v in r]


def _var(xs, unbiased=True):
    n = len(xs)
    if n < 2:
        return 0.0
    mu = sum(xs) / n
    return sum((x - mu) ** 2 for x in xs) / (n - 1 if unbiased else n)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_sum_and_mean_match_reference(ref, mask_dtype):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=1)
    m = mask.to(mask_dtype)
    xs = _flat(ref, x)
    assert masked_sum(x, m).item() == pytest.approx(sum(xs), abs=1e-9)
    assert masked_mean(x, m).item() == pytest.approx(sum(xs) / len(xs), abs=1e-9)
    per_row = masked_mean(x, m, dim=-1)
    per_row_sum = masked_sum(x, m, dim=1)
    for b, r in enumerate(ref.rows(x, LENGTHS)):
        assert per_row[b].item() == pytest.approx(sum(r) / len(r) if r else 0.0, abs=1e-9)
        assert per_row_sum[b].item() == pytest.approx(sum(r), abs=1e-9)
    per_col = masked_mean(x, m, dim=0)
    for t in range(T):
        col = [float(x[b, t]) for b, L in enumerate(LENGTHS) if t < L]
        assert per_col[t].item() == pytest.approx(sum(col) / len(col), abs=1e-9)


def test_empty_mask_is_zero_and_nan_free():
    x = torch.tensor([[float("nan"), float("inf")]], requires_grad=True)
    mask = torch.zeros(1, 2)
    assert masked_sum(x, mask).item() == 0.0
    assert masked_mean(x, mask).item() == 0.0
    assert masked_mean(x, mask, dim=-1).tolist() == [0.0]
    assert masked_var(x, mask).item() == 0.0
    assert masked_whiten(x, mask).tolist() == [[0.0, 0.0]]
    masked_mean(x, mask).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("unbiased", [True, False])
def test_var_matches_reference(ref, unbiased):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=2)
    want = _var(_flat(ref, x), unbiased)
    assert masked_var(x, mask, unbiased).item() == pytest.approx(want, abs=1e-9)


def test_var_fewer_than_two_elements_is_zero():
    x = torch.tensor([[3.0, 1e6]], dtype=torch.float64)
    assert masked_var(x, torch.tensor([[1, 0]])).item() == 0.0
    assert masked_var(x, torch.tensor([[1, 0]]), unbiased=False).item() == 0.0


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_reference(ref, shift_mean):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=3)
    x.requires_grad_(True)
    out = masked_whiten(x, mask, shift_mean=shift_mean, eps=1e-8)
    xd = x.detach()
    xs = _flat(ref, xd)
    mu, var = sum(xs) / len(xs), _var(xs)
    for b in range(len(LENGTHS)):
        for t in range(T):
            if t < LENGTHS[b]:
                want = (float(xd[b, t]) - mu) / math.sqrt(var + 1e-8) + (0.0 if shift_mean else mu)
                assert out[b, t].item() == pytest.approx(want, abs=1e-9)
            else:
                assert out[b, t].item() == 0.0
    vals = out[mask]
    if shift_mean:
        assert vals.mean().item() == pytest.approx(0.0, abs=1e-9)
        assert vals.std().item() == pytest.approx(1.0, abs=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()


def test_explained_variance(ref):
    mask, (v, r) = ref.make_batch(LENGTHS, T, seed=4, n=2)
    vs, rs = _flat(ref, v), _flat(ref, r)
    want = 1 - _var([a - b for a, b in zip(rs, vs)]) / _var(rs)
    ev = explained_variance(v, r, mask)
    assert ev.dim() == 0 and not ev.requires_grad
    assert ev.item() == pytest.approx(want, abs=1e-9)
    assert explained_variance(r, r, mask).item() == pytest.approx(1.0)
    const = torch.where(mask, torch.ones_like(r), r)  # garbage off-mask, constant on-mask
    assert explained_variance(v, const, mask).item() == 0.0
    assert explained_variance(v, r, torch.zeros_like(mask)).item() == 0.0
