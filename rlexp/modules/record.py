"""The run contract every rlexp LightningModule keeps, in one mixin.

``history`` holds every logged metrics dict with its ``"step"``; ``last_eval`` the latest greedy
evaluation (``eval/reward_mean``...); ``pending_samples`` the sample tables waiting to be logged as
artifacts (``rlexp.tracking.RunArtifacts``). Metrics go to the Lightning logger (MLflow) at an
explicit step. The module provides ``policy_model``, ``tokenizer``, ``task``, ``max_new_tokens`` and
``num_samples_logged``.
"""
from __future__ import annotations

from rlexp.rollout import evaluate


class RunRecorder:
    def init_record(self) -> None:
        self.history: list[dict] = []
        self.pending_samples: list[tuple[int, list[dict]]] = []
        self.last_eval: dict = {}

    def _log(self, metrics: dict, step: int) -> None:
        self.history.append({"step": step, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)

    def run_eval(self, step: int) -> dict:
        """Greedy evaluation of ``policy_model`` on the task's held-out prompts, logged at ``step``."""
        res = evaluate(self.policy_model, self.tokenizer, self.task, self.task.eval_examples,
                       max_new_tokens=self.max_new_tokens, num_samples=self.num_samples_logged)
        metrics = {"eval/reward_mean": res.reward_mean, "eval/accuracy": res.accuracy,
                   "eval/response_length": res.response_length}
        self.last_eval = {"step": step, **metrics}
        if res.samples:
            self.pending_samples.append((step, res.samples))
        self._log(metrics, step)
        return metrics
