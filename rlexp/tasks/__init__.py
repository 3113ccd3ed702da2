"""Prompt sets and their verifiable rewards (layer 2). Each task owns its reward."""
from rlexp.tasks.base import Example, RewardError, Task, call_reward
from rlexp.tasks.arithmetic import ArithmeticTask, exact_match, partial_credit
from rlexp.tasks.arithmetic_chat import ArithmeticChatTask, number_match
from rlexp.tasks.running_sum import RunningSumTask, step_credit, terminal

__all__ = ["ArithmeticChatTask", "ArithmeticTask", "Example", "RewardError", "Task", "call_reward", "exact_match",
           "number_match", "partial_credit", "RunningSumTask", "step_credit", "terminal"]
