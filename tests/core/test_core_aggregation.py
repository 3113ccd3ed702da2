"""aggregate(): every mode against a pure-Python reference and hand-computed values."""

import pytest
import torch

from rlexp.core import AGGREGATIONS, aggregate

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
         "seq-mean-token-sum-norm", "prompt-mean"]
LENGTHS = [5, 2, 0, 1, 0, 0, 3, 4]  # 4 groups of 2; group 2 (rows 4, 5) is empty
T = 5
G = 2


def _kwargs(mode):
    return {"group_size": G} if mode == "prompt-mean" else {}


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(ref, mode):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=11)
    got = aggregate(x, mask, mode, **_kwargs(mode))
    want = ref.aggregate(ref.rows(x, LENGTHS), mode, group_size=G, T=T)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("group_size", [1, 4, 8])
def test_prompt_mean_group_sizes(ref, group_size):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=12)
    got = aggregate(x, mask, "prompt-mean", group_size=group_size)
    want = ref.aggregate(ref.rows(x, LENGTHS), "prompt-mean", group_size=group_size)
    assert got.item() == pytest.approx(want, abs=1e-9)


def test_sum_norm_max_len(ref):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=13)
    got = aggregate(x, mask, "seq-mean-token-sum-norm", max_len=64)
    want = ref.aggregate(ref.rows(x, LENGTHS), "seq-mean-token-sum-norm", max_len=64)
    assert got.item() == pytest.approx(want, abs=1e-9)


# Rows: [1, 2, 3] (n=3), [4, -, -] (n=1), [2, 2, -] (n=2), [-, -, -] (n=0); '-' = garbage.
HAND = (
    torch.tensor([[1.0, 2.0, 3.0], [4.0, 1e6, 1e6], [2.0, 2.0, -1e6], [1e6, 1e6, 1e6]],
                 dtype=torch.float64),
    torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]]),
)


@pytest.mark.parametrize(
    "mode,kwargs,want",
    [
        ("token-mean", {}, 14 / 6),                      # (1+2+3+4+2+2) / 6
        ("seq-mean-token-mean", {}, (2 + 4 + 2) / 3),     # row means 2, 4, 2; empty row skipped
        ("seq-mean-token-sum", {}, (6 + 4 + 4) / 3),      # row sums 6, 4, 4; empty row skipped
        ("seq-mean-token-sum-norm", {}, (6 + 4 + 4 + 0) / 3 / 4),  # / T=3, mean over all 4
        ("seq-mean-token-sum-norm", {"max_len": 7}, (6 + 4 + 4 + 0) / 7 / 4),
        ("prompt-mean", {"group_size": 2}, (10 / 4 + 4 / 2) / 2),  # groups: 10/4, 4/2
        ("prompt-mean", {"group_size": 1}, (2 + 4 + 2) / 3),
        ("prompt-mean", {"group_size": 4}, 14 / 6),
    ],
)
def test_hand_computed(mode, kwargs, want):
    x, mask = HAND
    assert aggregate(x, mask, mode, **kwargs).item() == pytest.approx(want, abs=1e-12)


def test_modes_differ(ref):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=14)
    vals = [round(aggregate(x, mask, m, group_size=G).item(), 9) for m in MODES]
    assert len(set(vals)) == len(MODES)


@pytest.mark.parametrize("mode", MODES)
def test_empty_mask_and_garbage_gradients(mode):
    x = torch.full((4, 3), float("nan"), dtype=torch.float64, requires_grad=True)
    out = aggregate(x, torch.zeros(4, 3), mode, group_size=2)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("mode", MODES)
def test_gradient_matches_autograd_of_reference(ref, mode):
    mask, (x,) = ref.make_batch(LENGTHS, T, seed=15)
    x.requires_grad_(True)
    aggregate(x, mask, mode, group_size=G).backward()
    y = x.detach().clone().requires_grad_(True)
    rows_ = [[y[b, t] for t in range(L)] for b, L in enumerate(LENGTHS)]
    want = ref.aggregate(rows_, mode, group_size=G, T=T)
    want.backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-12)
    assert (x.grad[~mask] == 0).all()


def test_errors():
    x, mask = HAND
    with pytest.raises(ValueError, match="group_size"):
        aggregate(x, mask, "prompt-mean")
    with pytest.raises(ValueError, match="group_size"):
        aggregate(x, mask, "prompt-mean", group_size=3)
    with pytest.raises(ValueError) as info:
        aggregate(x, mask, "mean")
    for mode in MODES:
        assert mode in str(info.value)
    assert sorted(MODES) == AGGREGATIONS.names()
