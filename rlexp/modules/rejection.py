"""Rejection-sampling fine-tuning: best-of-k sampling + SFT, in rounds (Llama 2's rejection sampling,
Touvron et al. 2023; RAFT, Dong et al. 2023).

A clear manual loop in one LightningModule (automatic optimization): one ``training_step`` is one
optimizer step, ``trainer.max_steps`` steps in all (the loader yields step indices). A **round**:

1. draw ``num_prompts`` training prompts (seeded by round) and sample ``samples_per_prompt``
   completions each from the *current* policy (``rollout.temperature`` / ``top_p``), no grad;
2. score them with the task's reward and accept, per prompt, the best completion (first of the
   maximum), or with ``threshold`` set every completion scoring ``>= threshold`` (duplicates kept) —
   in both cases only completions with a positive reward;
3. fine-tune on the accepted completions with the completion-only NLL of ``SFTModule``:
   ``epochs_per_round`` passes, each a fresh seeded shuffle cut into minibatches of ``batch_size``.

When a round's minibatches are used up, the next step starts the next round, so the rounds follow
one another until ``trainer.max_steps`` optimizer steps are done (the last round may be cut short);
``rounds`` (when set) caps their number and ends the run after the last one, like Lightning's
``max_epochs`` against ``max_steps``. A round that accepts nothing makes no update at its step
(nothing is logged for it but the round's metrics). Per round, at step = optimizer steps done before
it: ``train/pass_at_k`` (prompts with an exact answer among their k completions),
``train/accepted_fraction``, ``train/sample_reward_mean`` (the task's reward: with ``task.rewards`` their
weighted sum, and each component's mean as ``train/reward/<name>``) and ``train/round``; the accepted set is
the artifact ``data/accepted_round_NN.jsonl``. Per step: ``train/loss``, ``train/grad_norm``.
"""
from __future__ import annotations

import logging

import torch

from rlexp.core.seeding import ACCEPTED_ORDER, ROLLOUT, derive_seed, generator
from rlexp.modules.offline import OfflineRunMixin, seeded
from rlexp.modules.preference_data import to_jsonl
from rlexp.modules.sft import SFTModule
from rlexp.rollout import PromptPool, collate_supervised, generate_rollout

log = logging.getLogger(__name__)


class RejectionSamplingModule(OfflineRunMixin, SFTModule):
    def __init__(self, *, algo, model, tokenizer, task, rollout, seed: int = 0, max_steps: int = 1,
                 eval_every: int = 1, num_samples_logged: int = 0, max_new_tokens: int = 8, fp32_logits: bool = True):
        super().__init__(model, lr=algo.lr, warmup_steps=algo.warmup_steps, weight_decay=algo.weight_decay,
                         fp32_logits=fp32_logits)
        self.algo, self.rollout_cfg = algo, rollout
        self.init_run(tokenizer=tokenizer, task=task, seed=seed, max_steps=max_steps, eval_every=eval_every,
                      num_samples_logged=num_samples_logged, max_new_tokens=max_new_tokens,
                      max_grad_norm=algo.max_grad_norm)
        self.pool = PromptPool(task.train_examples, seed)
        self.round = 0                           # rounds started
        self.accepted: list[dict] = []           # this round's accepted completions
        self.queue: list[list[int]] = []         # this round's minibatches left (indices into accepted)

    # ------------------------------------------------------------------ steps 1-2: sample, score, accept
    def accept(self, scores: torch.Tensor) -> list[int]:
        """Rows to keep; ``scores [N·k]`` with the k completions of a prompt consecutive."""
        a, k = self.algo, self.algo.samples_per_prompt
        keep = []
        for g, row in enumerate(scores.view(-1, k).tolist()):
            if a.threshold is None:
                best = max(range(k), key=lambda j: row[j])
                picked = [best] if row[best] > 0 else []
            else:
                picked = [j for j in range(k) if row[j] >= a.threshold and row[j] > 0]
            keep += [g * k + j for j in picked]
        return keep

    def start_round(self, step: int) -> None:
        a, r, k = self.algo, self.rollout_cfg, self.algo.samples_per_prompt
        self.round += 1
        idx = self.pool.draw(a.num_prompts, iteration=self.round - 1)
        examples = [self.task.train_examples[i] for i in idx]
        with seeded(derive_seed(self.seed, self.round, ROLLOUT), self.device), self.sampling():
            batch = generate_rollout(self.model, self.tokenizer, self.task, examples, num_generations=k,
                                     max_new_tokens=self.max_new_tokens, temperature=r.temperature, top_p=r.top_p)
        rows = self.accept(batch.scores)
        exact = [float(done and text == target) for done, text, target
                 in zip(batch.finished.tolist(), batch.completions, batch.targets)]
        pass_at_k = torch.tensor(exact).view(-1, k).amax(dim=1).mean().item()
        self.accepted = [{"prompt": batch.prompts[i], "completion": batch.completions[i],
                          "reward": float(batch.scores[i])} for i in rows]
        g = generator(self.seed, self.round, ACCEPTED_ORDER)
        self.queue = []
        for _ in range(a.epochs_per_round):
            order = torch.randperm(len(rows), generator=g).tolist()
            self.queue += [order[s:s + a.batch_size] for s in range(0, len(order), a.batch_size)]
        self._log({"train/round": float(self.round), "train/pass_at_k": pass_at_k,
                   "train/accepted_fraction": len(rows) / batch.size,
                   "train/sample_reward_mean": batch.scores.mean().item(),
                   **{f"train/reward/{k}": v.item() for k, v in batch.component_means().items()}}, step)
        self.log_text_artifact(to_jsonl(self.accepted), f"data/accepted_round_{self.round:02d}.jsonl")
        if not rows:
            log.warning("rejection sampling round %d accepted nothing (no completion with a positive reward among "
                        "%d): no update at step %d", self.round, batch.size, step + 1)

    # ------------------------------------------------------------------ step 3: fine-tune
    def training_step(self, step, batch_idx):
        if not self.queue:
            self.start_round(batch_idx)
        if not self.queue:
            return None  # nothing accepted this round: no update at this step
        rows = [self.accepted[i] for i in self.queue.pop(0)]
        batch = collate_supervised(self.tokenizer, [x["prompt"] for x in rows], [x["completion"] for x in rows],
                                   device=self.device, chat_template=self.task.chat_template,
                                   system_turn=self.task.system_turn)
        loss = self.nll(*batch)
        self.check_finite(loss, "train/loss", batch_idx)
        self.step_metrics["train/loss"] = loss.detach()
        return loss

    def stop_requested(self) -> bool:
        return self.algo.rounds is not None and self.round >= self.algo.rounds and not self.queue
