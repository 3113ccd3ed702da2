"""The arithmetic task, its rewards, and the reward-function contract."""
from __future__ import annotations

import pytest
import torch

from rlexp.models import build_char_tokenizer
from rlexp.rollout.generate import _response_mask, score
from rlexp.tasks import ArithmeticTask, RewardError, call_reward, exact_match, partial_credit


def test_split_is_disjoint_seeded_and_fixed_width():
    t = ArithmeticTask(num_eval=50)
    assert len(t.eval_examples) == 50 and len(t.train_examples) == 100 * 100 - 50
    assert not {e.prompt for e in t.eval_examples} & {e.prompt for e in t.train_examples}
    assert all(len(e.prompt) == 6 and e.prompt.endswith("=") for e in t.eval_examples)
    assert ArithmeticTask(num_eval=50).eval_examples == t.eval_examples
    assert ArithmeticTask(num_eval=50, split_seed=9).eval_examples != t.eval_examples
    e = t.eval_examples[0]
    a, b = e.prompt[:-1].split("+")
    assert int(e.target) == int(a) + int(b)


def test_bad_task_settings_are_refused():
    with pytest.raises(ValueError, match="task.num_eval"):
        ArithmeticTask(max_operand=3, num_eval=16)
    with pytest.raises(ValueError, match="task.max_new_tokens"):
        ArithmeticTask(max_new_tokens=2)


def test_exact_match_needs_eos_and_the_exact_text():
    out = exact_match(None, ["46", "46", "4", "460"], targets=["46"] * 4, finished=[True, False, True, True])
    assert out == [1.0, 0.0, 0.0, 0.0]


def test_partial_credit_hand_computed():
    toks = [["4", "6", "<eos>"], ["4", "7", "<eos>"], ["4", "<eos>"], ["4", "6", "1"]]
    out = partial_credit(None, None, targets=["46"] * 4, completion_tokens=toks, finished=[True, True, True, False])
    third = 1 / 3
    assert out == [[third, third, third], [third, 0.0, third], [third, 0.0], [third, third, 0.0]]
    assert sum(out[0]) == pytest.approx(1.0)


def test_response_mask_is_a_prefix_through_the_first_eos():
    ids = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0], [5, 6, 1, 1]])
    mask, finished = _response_mask(ids, eos_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert finished.tolist() == [True, False, True, True]


def test_scores_put_sequence_rewards_on_the_last_token():
    tok = build_char_tokenizer(ArithmeticTask.alphabet)
    task = ArithmeticTask()
    ex = [task.eval_examples[0]] * 2
    target_ids = tok(ex[0].target, add_special_tokens=False)["input_ids"]
    resp = torch.tensor([target_ids + [1, 0], [tok.convert_tokens_to_ids("9")] * (len(target_ids) + 2)])
    mask, finished = _response_mask(resp, 1)
    token_rewards, scores, texts = score(task, tok, ex, resp, mask, finished)
    assert texts[0] == ex[0].target and scores.tolist() == [1.0, 0.0]
    assert token_rewards[0, len(target_ids)] == 1.0 and token_rewards[0].sum() == 1.0


def _kwargs(n=2):
    return dict(targets=["1"] * n, completion_ids=[[3, 1]] * n, completion_tokens=[["1", "<eos>"]] * n,
                finished=[True] * n)


def boom(prompts, completions, **kw):
    raise ZeroDivisionError("bad luck")


def test_reward_errors_name_the_function():
    with pytest.raises(RewardError, match=r"test_tasks\.boom raised ZeroDivisionError"):
        call_reward(boom, ["p", "q"], ["1", "1"], **_kwargs())
    with pytest.raises(RewardError, match="returned 1 values for 2"):
        call_reward(lambda *a, **k: [1.0], ["p", "q"], ["1", "1"], **_kwargs())
    with pytest.raises(RewardError, match="3 token rewards for completion 0 of 2 tokens"):
        call_reward(lambda *a, **k: [[1, 2, 3], [1, 2]], ["p", "q"], ["1", "1"], **_kwargs())
    with pytest.raises(RewardError, match="non-finite"):
        call_reward(lambda *a, **k: [float("nan"), 1.0], ["p", "q"], ["1", "1"], **_kwargs())
