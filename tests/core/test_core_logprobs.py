"""logprobs_from_logits and entropy_from_logits vs log_softmax-based definitions."""

import pytest
import torch

from rlexp.core import entropy_from_logits, logprobs_from_logits


def _data(dtype=torch.float64, B=3, T=5, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    return logits, labels


def test_logprobs_equal_log_softmax_gather_with_grad():
    logits, labels = _data()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = logprobs_from_logits(a, labels)
    want = torch.log_softmax(b, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert got.shape == labels.shape and got.dtype == torch.float64
    assert torch.allclose(got, want, atol=1e-12)
    w = torch.randn_like(got)
    (got * w).sum().backward()
    (want * w).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_entropy_equals_minus_p_logp():
    logits, _ = _data(seed=1)
    logp = torch.log_softmax(logits, -1)
    want = -(logp.exp() * logp).sum(-1)
    got = entropy_from_logits(logits)
    assert got.shape == logits.shape[:-1]
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(entropy_from_logits(torch.zeros(2, 3, 7)), torch.log(torch.tensor(7.0)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_computed_in_float32(dtype):
    logits, labels = _data(dtype=dtype, seed=2)
    x = logits.clone().requires_grad_(True)
    got = logprobs_from_logits(x, labels)
    up = logits.float()
    want = torch.log_softmax(up, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    got.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    ent = entropy_from_logits(logits)
    assert ent.dtype == torch.float32
    assert torch.allclose(ent, entropy_from_logits(up), atol=1e-5)


def test_float32_labels_int32():
    logits, labels = _data(dtype=torch.float32, seed=3)
    got = logprobs_from_logits(logits, labels.int())
    want = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)
