"""The run contract of the offline modules (DPO, SFT, rejection sampling), which use automatic optimization.

``OfflineRunMixin`` gives a LightningModule what ``OnlineRLModule`` has: ``history`` (every logged
metrics dict, with its ``"step"``), ``last_eval``, ``pending_samples``, metrics logged through
``self.logger.log_metrics(metrics, step=...)``, and a greedy evaluation on the task's held-out
prompts before the first step, every ``eval_every`` steps and after the last. Here a step is one
**optimizer step** (``trainer.max_steps`` = optimizer steps; the train loader has exactly that many
batches). Per-step metrics are gathered in ``self.step_metrics`` by ``training_step`` (and
``train/grad_norm`` by the gradient clipping) and logged once the optimizer has stepped, from
``optimizer_step`` — so that an evaluation sees the updated weights and its samples are logged by
``RunArtifacts`` at the same batch end.

Also here: ``step_loader`` (a loader of exactly ``max_steps`` batches that goes over a dataset epoch
by epoch in a seeded order), ``sequence_logprobs`` and ``seeded`` (from ``rlexp.core.seeding``: sampling
that depends only on a seed, not on what ran before).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.data import DataLoader, RandomSampler

from rlexp import core
from rlexp.core.seeding import seeded  # noqa: F401  (the offline modules import it from here)
from rlexp.models import response_logits
from rlexp.modules.record import RunRecorder


class OfflineRunMixin(RunRecorder):
    """Mixed into a ``LightningModule`` whose policy is ``self.model``; call ``init_run`` in ``__init__``."""

    def init_run(self, *, tokenizer, task, seed: int, max_steps: int, eval_every: int, num_samples_logged: int,
                 max_new_tokens: int, max_grad_norm: float | None) -> None:
        self.tokenizer, self.task, self.seed = tokenizer, task, seed
        self.max_steps, self.eval_every, self.num_samples_logged = max_steps, eval_every, num_samples_logged
        self.max_new_tokens, self.max_grad_norm = max_new_tokens, max_grad_norm
        self.init_record()  # history, last_eval, pending_samples (rlexp/modules/record.py)
        self.step_metrics: dict[str, torch.Tensor | float] = {}  # this step's train metrics, logged after it

    # ------------------------------------------------------------------ logging / eval
    @property
    def policy_model(self):
        return self.model

    def log_text_artifact(self, text: str, artifact_file: str) -> None:
        """A text artifact of the run (nothing without a logger, e.g. ``tracking=none``)."""
        if self.logger is not None:
            self.logger.experiment.log_text(self.logger.run_id, text, artifact_file)

    def on_start(self) -> None:
        """Hook: what to log at step 0 before the first evaluation (data statistics...)."""

    def on_train_start(self) -> None:
        if self.global_step == 0:
            self.on_start()
            self.run_eval(0)

    def stop_requested(self) -> bool:
        """Hook: True to end the run after this step (e.g. the last round of rejection sampling)."""
        return False

    # ------------------------------------------------------------------ after each optimizer step
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip to ``max_grad_norm`` (None: no clipping) and record the norm before clipping.

        Lightning calls this after the backward (and after unscaling under mixed precision)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        self.step_metrics["train/grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm).detach()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # training_step runs in here
        self.after_step(batch_idx + 1)

    def after_step(self, done: int) -> None:
        """Log the step's train metrics at step ``done``, then evaluate when due."""
        metrics, self.step_metrics = self.step_metrics, {}
        if "train/loss" in metrics:  # a step that had nothing to train on logs nothing
            metrics = {k: float(v.item() if torch.is_tensor(v) else v) for k, v in metrics.items()}
            self._log(metrics, done)
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)
        stop = self.stop_requested()
        if done % self.eval_every == 0 or done == self.max_steps or stop:
            ev = self.run_eval(done)
            self.log("eval", ev["eval/reward_mean"], prog_bar=True, logger=False)
        if stop:
            self.trainer.should_stop = True

    def check_finite(self, loss: torch.Tensor, name: str, step: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name} is {loss.item()} at step {step + 1}")


def step_loader(num_items: int, *, batch_size: int, max_steps: int, seed: int, collate: Callable) -> DataLoader:
    """Exactly ``max_steps`` batches of ``batch_size`` item indices, passed to ``collate``.

    The indices go over ``range(num_items)`` epoch after epoch, each epoch a fresh permutation drawn
    from a generator seeded by ``seed`` (torch's ``RandomSampler`` without replacement), so every
    item is seen once per epoch and a run is reproducible.
    """
    sampler = RandomSampler(range(num_items), replacement=False, num_samples=max_steps * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(range(num_items), batch_size=batch_size, sampler=sampler, collate_fn=collate)


def sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, mask, *, fp32: bool = True) -> torch.Tensor:
    """``log π(y|x) = Σ_t mask_t · log π(y_t|x, y_<t)``: ``[B]``, summed over the completion's tokens."""
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, mask, fp32=fp32)  # [B, T, V]
    return core.masked_sum(core.logprobs_from_logits(logits, response_ids), mask, dim=-1)
