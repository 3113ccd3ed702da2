"""Supervised fine-tuning as an experiment of its own (``algorithm=sft``).

The same completion-only NLL and optimizer as the warm start (``SFTModule``), on the task's training
prompts with their reference answers (``task.sft_completion``), wrapped in the offline run contract:
one ``training_step`` = one optimizer step on ``batch_size`` examples, ``trainer.max_steps`` steps
(the loader goes over the training pool epoch by epoch in a seeded order), ``train/loss`` and
``train/grad_norm`` every step, a greedy evaluation at step 0, every ``eval_every`` steps and at the
end. Unlike the warm start it has no accuracy target: it runs its full length.
"""
from __future__ import annotations

from rlexp.modules.offline import OfflineRunMixin, step_loader
from rlexp.modules.sft import SFTModule
from rlexp.rollout import collate_supervised


class SFTRunModule(OfflineRunMixin, SFTModule):
    def __init__(self, *, algo, model, tokenizer, task, seed: int = 0, max_steps: int = 1, eval_every: int = 1,
                 num_samples_logged: int = 0, max_new_tokens: int = 8, fp32_logits: bool = True, rollout=None):
        super().__init__(model, lr=algo.lr, warmup_steps=algo.warmup_steps, weight_decay=algo.weight_decay,
                         fp32_logits=fp32_logits)
        self.algo = algo
        self.rollout_cfg = rollout  # its temperature / top_p: the pass@k evaluation's sampling (task.eval)
        self.init_run(tokenizer=tokenizer, task=task, seed=seed, max_steps=max_steps, eval_every=eval_every,
                      num_samples_logged=num_samples_logged, max_new_tokens=max_new_tokens,
                      max_grad_norm=algo.max_grad_norm)

    def collate(self, indices: list[int]):
        rows = [self.task.train_examples[i] for i in indices]
        return collate_supervised(self.tokenizer, [e.prompt for e in rows], [self.task.sft_completion(e) for e in rows],
                                  chat_template=self.task.chat_template, system_turn=self.task.system_turn)

    def train_dataloader(self):
        return step_loader(len(self.task.train_examples), batch_size=self.algo.batch_size, max_steps=self.max_steps,
                           seed=self.seed, collate=self.collate)

    def training_step(self, batch, batch_idx):
        loss = self.nll(*batch)
        self.check_finite(loss, "train/loss", batch_idx)
        self.step_metrics["train/loss"] = loss.detach()
        return loss
