"""overlong_penalty (DAPO soft overlong punishment): reference loop, hand cases, knobs; add_overlong_penalty
applied to a batch's last-token rewards and scores."""

import pytest
import torch

from rlexp.core import add_overlong_penalty, overlong_penalty

LENGTHS = [0, 1, 11, 12, 13, 15, 16, 17, 19, 20, 21, 40]


@pytest.mark.parametrize("max_len,buffer,penalty", [
    (16, 4, 1.0), (16, 0, 1.0), (16, 16, 0.5), (20, 8, 2.0), (20, 1, 1.0), (16, 4, 0.0),
])
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.float32, torch.float64])
def test_matches_reference(ref, max_len, buffer, penalty, dtype):
    got = overlong_penalty(torch.tensor(LENGTHS, dtype=dtype), max_len, buffer, penalty)
    want_dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
    assert got.shape == (len(LENGTHS),) and got.dtype == want_dtype
    want = [ref.overlong(L, max_len, buffer, penalty) for L in LENGTHS]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert all(-penalty - 1e-9 <= v <= 0 for v in got.tolist())


def test_hand_computed():
    L = torch.tensor([0, 16, 17, 18, 20, 21, 100])
    # L_max = 20, L_cache = 4: zero up to 16, then (16 - |y|)/4, then -1 past 20
    assert overlong_penalty(L, 20, 4, 1.0).tolist() == [0, 0, -0.25, -0.5, -1, -1, -1]
    assert overlong_penalty(L, 20, 4, 2.0).tolist() == [0, 0, -0.5, -1, -2, -2, -2]
    assert overlong_penalty(L, 20, 0, 1.0).tolist() == [0, 0, 0, 0, 0, -1, -1]  # hard cutoff
    # buffer = max_len: ramp from 0 -> (0 - |y|)/20
    assert overlong_penalty(torch.tensor([0, 10, 20, 21]), 20, 20, 1.0).tolist() == \
        [0, -0.5, -1, -1]
    # fractional lengths (e.g. token counts averaged) are fine
    assert overlong_penalty(torch.tensor([16.5]), 20, 4, 1.0).tolist() == [-0.125]


def test_knobs_change_result():
    L = torch.tensor(LENGTHS)
    base = overlong_penalty(L, 16, 4, 1.0)
    for kw in (dict(max_len=18), dict(buffer=2), dict(penalty=0.5)):
        out = overlong_penalty(L, **{**dict(max_len=16, buffer=4, penalty=1.0), **kw})
        assert not torch.equal(out, base), kw


def test_no_mutation_and_device_dtype_kept():
    L = torch.tensor([3.0, 30.0], dtype=torch.float32)
    L0 = L.clone()
    out = overlong_penalty(L, 10, 5, 1.0)
    assert torch.equal(L, L0) and out.dtype == torch.float32 and out.device == L.device


@pytest.mark.parametrize("max_len,buffer,penalty", [(16, -1, 1.0), (16, 17, 1.0), (16, 4, -0.1)])
def test_invalid_arguments(max_len, buffer, penalty):
    with pytest.raises(ValueError, match="buffer" if penalty >= 0 else "penalty"):
        overlong_penalty(torch.tensor([1]), max_len, buffer, penalty)


def test_the_batch_penalty_lands_on_each_rows_last_token_and_its_score(ref):
    """R(|y|) added to the reward of the last masked token (position 0 for an empty row) and to the score;
    every other entry and the inputs unchanged."""
    lengths = [0, 2, 5, 7, 8]
    T = 8
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    token_rewards = torch.arange(len(lengths) * T, dtype=torch.float32).reshape(len(lengths), T) / 10
    scores = torch.tensor([0.5, 1.0, 0.0, 1.0, 0.25])
    inputs = token_rewards.clone(), scores.clone(), mask.clone()
    got_rewards, got_scores = add_overlong_penalty(token_rewards, scores, mask, 6, 3, 1.0)
    want_rewards = token_rewards.clone()
    for b, n in enumerate(lengths):
        want_rewards[b, max(n - 1, 0)] += ref.overlong(n, 6, 3, 1.0)
    torch.testing.assert_close(got_rewards, want_rewards)
    torch.testing.assert_close(got_scores, scores + torch.tensor([ref.overlong(n, 6, 3, 1.0) for n in lengths]))
    assert got_rewards.dtype == token_rewards.dtype and got_scores.dtype == scores.dtype
    assert all(torch.equal(x, x0) for x, x0 in zip((token_rewards, scores, mask), inputs))  # inputs left alone
    assert (got_rewards != token_rewards).sum() == 3  # lengths 5, 7 and 8 are past L_max - L_cache = 3
