"""Prompt pool (ScaleRL no-positive-resampling) and DAPO dynamic sampling, on synthetic batches."""
from __future__ import annotations

import torch

from rlexp.rollout import PromptPool, RolloutBatch, collect_groups
from rlexp.tasks import Example


def _batch(scores, tag: str, T: int = 3, P: int = 2) -> RolloutBatch:
    B = len(scores)
    s = torch.tensor(scores, dtype=torch.float32)
    rewards = torch.zeros(B, T)
    rewards[:, -1] = s
    return RolloutBatch(torch.ones(B, P, dtype=torch.long), torch.ones(B, P, dtype=torch.long),
                        torch.full((B, T), 5), torch.ones(B, T), torch.ones(B, dtype=torch.bool), rewards, s,
                        prompts=[f"{tag}{i // 2}" for i in range(B)], completions=[""] * B, targets=[""] * B,
                        prompt_index=[i // 2 for i in range(B)])


def test_pool_draws_distinct_seeded_prompts_and_never_a_removed_one():
    pool = PromptPool([Example(str(i), str(i)) for i in range(50)], seed=3)
    a = pool.draw(10, iteration=4)
    assert len(set(a)) == 10 and a == pool.draw(10, iteration=4) and a != pool.draw(10, iteration=5)
    pool.remove(a[:5])
    assert pool.size == 45
    for it in range(200):
        assert not set(pool.draw(10, iteration=it)) & set(a[:5])
    state = pool.state_dict()
    fresh = PromptPool(pool.examples, seed=3)
    fresh.load_state_dict(state)
    assert fresh.draw(10, 7) == pool.draw(10, 7)


def test_dynamic_sampling_refills_a_batch_of_all_equal_groups():
    # draw 0: both groups have equal rewards (no signal); draw 1: one group with signal; draw 2: one more
    draws = {0: _batch([1, 1, 0, 0], "a"), 1: _batch([1, 0, 0, 0], "b"), 2: _batch([0, 0, 0, 1], "c")}
    calls = []

    def generate(d):
        calls.append(d)
        return draws[d]
    batch, drawn, frac = collect_groups(generate, num_prompts=2, group_size=2, max_draws=3, pad_id=0)
    assert calls == [0, 1, 2] and drawn == 3
    assert batch.prompts == ["b0", "b0", "c1", "c1"]  # the two groups with reward variance
    assert batch.scores.tolist() == [1, 0, 0, 1]
    assert frac == 2 / 6


def test_dynamic_sampling_stops_at_max_draws_and_tops_up_with_dropped_groups():
    batch, drawn, frac = collect_groups(lambda d: _batch([1, 1, 0, 1], f"d{d}"), num_prompts=2, group_size=2,
                                        max_draws=1, pad_id=0)
    assert drawn == 1 and batch.size == 4 and frac == 0.5
    assert batch.prompts == ["d01", "d01", "d00", "d00"]  # the signal group first, then the top-up


def test_cat_repads_prompts_left_and_responses_right():
    a, b = _batch([1, 0], "a", T=2, P=1), _batch([0, 1], "b", T=4, P=3)
    out = RolloutBatch.cat([a, b], pad_id=0)
    assert out.prompt_ids.shape == (4, 3) and out.response_ids.shape == (4, 4)
    assert out.prompt_mask[0].tolist() == [0, 0, 1] and out.mask[0].tolist() == [1, 1, 0, 0]
    assert out.select([3, 0]).prompts == ["b0", "a0"]


def test_remove_solved_prunes_the_groups_whose_pass_rate_reached_the_threshold():
    """ScaleRL's no-positive-resampling on the task's verdicts (not the shaped scores), over the scorable
    completions only; with a gather (several workers), every worker's solved prompts leave the pool."""
    pool = PromptPool([Example(str(i), str(i)) for i in range(10)], seed=0)
    batch = _batch([1, 1, 1, 0, 0, 0, 1, 0], "p")  # groups (prompt_index 0..3) of 2: pass rates 1, .5, 0, .5
    batch.prompt_index = [7, 7, 3, 3, 5, 5, 2, 2]
    assert pool.remove_solved(batch, 2, 1.0, 0.5) == 3 and pool.removed == {7, 3, 2}
    assert pool.remove_solved(batch, 2, 1.0, 0.5) == 0  # removed for good, counted once
    pool = PromptPool(pool.examples, seed=0)
    assert pool.remove_solved(batch, 2, 1.0, 1.0) == 1 and pool.removed == {7}
    pool = PromptPool(pool.examples, seed=0)  # pass_reward: a verdict of 0.5 passes 0.5
    assert pool.remove_solved(batch, 2, 0.0, 1.0) == 4
    # shaped scores do not count, verdicts do; a failed row leaves its group's pass rate
    shaped = _batch([0.6, 0.6, 0.4, 1, 0, 0, 0, 0], "s")
    shaped.prompt_index = batch.prompt_index
    shaped.task_scores = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 0])
    shaped.reward_failed = torch.tensor([False, False, False, True, False, False, False, False])
    pool = PromptPool(pool.examples, seed=0)
    assert pool.remove_solved(shaped, 2, 1.0, 1.0) == 2 and pool.removed == {7, 3}
    # two workers: this one solved prompt 7, the other prompts 9 and 7
    seen = []

    def gather(solved):
        seen.append(solved)
        return [solved, [9, 7]]
    pool = PromptPool(pool.examples, seed=0)
    assert pool.remove_solved(batch, 2, 1.0, 1.0, gather=gather) == 2
    assert seen == [[7]] and pool.removed == {7, 9}
