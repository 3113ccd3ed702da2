"""Generating and scoring completions (layer 2): rollout batches, greedy and pass@k evaluation."""
from rlexp.rollout.batch import RolloutBatch, collate_supervised, encode_prompts
from rlexp.rollout.evaluate import EvalResult, SampledResult, evaluate, sample_correct
from rlexp.rollout.generate import generate_rollout
from rlexp.rollout.sampler import PromptPool, collect_groups

__all__ = ["EvalResult", "RolloutBatch", "SampledResult", "collate_supervised", "encode_prompts", "evaluate",
           "generate_rollout", "PromptPool", "collect_groups", "sample_correct"]
