"""Where an iteration's time goes: generation, the reward function, and the rest, logged apart."""
from __future__ import annotations

import time

import pytest

from fast_overrides import FAST
from rlexp.train import compose, run

SLEEP = 0.5


def slow_reward(prompts, completions, *, targets, **_):
    """Exact match, after sleeping: a verifier that takes its time."""
    time.sleep(SLEEP)
    return [float(c == t) for c, t in zip(completions, targets)]


def test_reward_time_is_not_booked_as_generation_time(in_tmp):
    module = run(compose([*FAST, "tracking=none", "algorithm=grpo", "algorithm.prompts_per_step=2",
                          "algorithm.num_generations=4", "algorithm.minibatch_size=4",
                          f"task.reward._target_={__name__}.slow_reward"]))
    steps = [h for h in module.history if "train/policy_loss" in h]
    assert len(steps) == 2
    for h in steps:
        assert h["perf/reward_seconds"] >= SLEEP
        assert h["perf/generate_seconds"] < h["perf/reward_seconds"]
        parts = h["perf/generate_seconds"] + h["perf/reward_seconds"] + h["perf/update_seconds"]
        assert parts == pytest.approx(h["perf/step_seconds"], rel=1e-6)
        tokens = h["perf/generate_tokens_per_second"] * h["perf/generate_seconds"]
        assert tokens == pytest.approx(h["train/response_length"] * 8, rel=1e-4)
