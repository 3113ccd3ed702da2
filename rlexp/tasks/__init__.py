"""Prompt sets and their verifiable rewards (layer 2). Each task owns its reward."""
from rlexp.tasks.base import Example, RewardError, Task, call_reward
from rlexp.tasks.arithmetic import ArithmeticTask, exact_match, partial_credit

__all__ = ["ArithmeticTask", "Example", "RewardError", "Task", "call_reward", "exact_match", "partial_credit"]
