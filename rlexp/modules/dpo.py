"""Direct Preference Optimization (Rafailov et al., 2023) and its IPO / hinge variants, offline.

One ``training_step`` is one optimizer step on ``batch_size`` preference pairs (automatic
optimization; ``trainer.max_steps`` = optimizer steps, the loader has exactly that many batches and
goes over the pairs epoch by epoch in a seeded order):

1. chosen and rejected completions of the batch are concatenated into ``2B`` rows and scored in
   ONE forward pass of the policy: ``log π_θ(y|x)`` summed over completion tokens (EOS included);
2. the reference's ``log π_ref(y|x)`` come from a cache computed once for the whole dataset before
   the first update (``precompute_ref_logps: true``) — the policy *is* the reference then, so no
   reference model is kept at all — or from a frozen copy of the starting policy run every step
   (with LoRA: the policy with its adapters disabled, no copy);
3. ``loss = mean_b ℓ(Δ_b)`` from ``rlexp.core.dpo_loss`` (``loss_type``, ``beta``,
   ``label_smoothing``); metrics: the implicit rewards ``β·(log π_θ - log π_ref)`` of chosen and
   rejected, their margin and how often chosen > rejected.

The pairs come from a JSONL file (``algorithm.data.path``, validated before training) or are
generated on-policy from the task by the starting policy before the first step (``data.*``), and
then saved as the run's artifact ``data/preferences.jsonl`` (reusable with ``algorithm.data.path=``).
Departures from the paper: the reference is the warm start itself (no separate SFT on the
preferred completions), and completions are re-tokenized from text.
"""
from __future__ import annotations

import logging

import lightning as L
import torch

from rlexp import core
from rlexp.models import reference_forward
from rlexp.modules.offline import OfflineRunMixin, seeded, sequence_logprobs, step_loader
from rlexp.modules.preference_data import PreferencePair, generate_preferences, to_jsonl
from rlexp.modules.sft import warmup_adamw
from rlexp.rollout import PromptPool, collate_supervised

log = logging.getLogger(__name__)
REF_CHUNK = 256  # pairs per no-grad forward when caching the reference log-probs


class DPOModule(OfflineRunMixin, L.LightningModule):
    def __init__(self, *, algo, model, tokenizer, task, pairs: list[PreferencePair] | None = None,
                 skipped: list[str] | None = None, reference=None, rollout=None, seed: int = 0, max_steps: int = 1,
                 eval_every: int = 1, num_samples_logged: int = 0, max_new_tokens: int = 8,
                 fp32_logits: bool = True, lora_reference: bool = False):
        super().__init__()
        self.algo, self.model, self.rollout_cfg = algo, model, rollout
        self.fp32_logits = fp32_logits
        self.init_run(tokenizer=tokenizer, task=task, seed=seed, max_steps=max_steps, eval_every=eval_every,
                      num_samples_logged=num_samples_logged, max_new_tokens=max_new_tokens,
                      max_grad_norm=algo.max_grad_norm)
        core.DPO_LOSSES.get(algo.loss_type)  # an unknown name fails here, listing the valid ones
        if not algo.precompute_ref_logps and reference is None and not lora_reference:
            raise ValueError("algorithm.precompute_ref_logps=false needs a reference model")
        self.reference = reference
        self.lora_reference = lora_reference  # the reference is the (PEFT) policy with its adapters disabled
        if reference is not None:
            reference.requires_grad_(False).eval()
        self.pairs = pairs                      # None: generated in on_fit_start
        self.skipped = skipped or []
        self.generated: list[dict] | None = None
        self.data_stats: dict[str, float] = {}
        self.ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None  # cached (chosen [N], rejected [N])

    # ------------------------------------------------------------------ data
    def _generate_pairs(self) -> None:
        d, r = self.algo.data, self.rollout_cfg
        temperature, top_p = (r.temperature, r.top_p) if r is not None else (1.0, 1.0)
        examples = [self.task.train_examples[i] for i in PromptPool(self.task.train_examples, self.seed)
                    .draw(d.num_prompts, iteration=0)]
        with seeded(self.seed, self.device):
            records, self.data_stats = generate_preferences(
                self.model, self.tokenizer, self.task, examples, samples_per_prompt=d.samples_per_prompt,
                max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=top_p)
        if not records:
            raise RuntimeError(f"no preference pair could be made: the {len(examples)} prompts × "
                               f"{d.samples_per_prompt} samples all scored the same per prompt; raise "
                               f"algorithm.data.num_prompts or samples_per_prompt, or give algorithm.data.path")
        self.generated = records
        self.pairs = [PreferencePair(x["prompt"], x["chosen"], x["rejected"]) for x in records]
        log.info("DPO: %d preference pairs generated from %d prompts × %d samples", len(records), len(examples),
                 d.samples_per_prompt)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """``B`` pair indices -> ``2B`` rows: chosen rows ``[0, B)``, then rejected rows ``[B, 2B)``."""
        rows = [self.pairs[i] for i in indices]
        prompt_ids, prompt_mask, response_ids, mask = collate_supervised(
            self.tokenizer, [p.prompt for p in rows] * 2, [p.chosen for p in rows] + [p.rejected for p in rows],
            chat_template=self.task.chat_template, system_turn=self.task.system_turn)
        return {"index": torch.tensor(indices, dtype=torch.long), "prompt_ids": prompt_ids,
                "prompt_mask": prompt_mask, "response_ids": response_ids, "mask": mask}

    def _logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log π(chosen) [B], log π(rejected) [B])`` from one forward pass over the ``2B`` rows."""
        logps = sequence_logprobs(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                  batch["mask"], fp32=self.fp32_logits)
        B = batch["index"].shape[0]
        return logps[:B], logps[B:]

    @torch.no_grad()
    def _reference_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``log π_ref`` of chosen and rejected: the frozen copy, or the policy with its LoRA adapters disabled."""
        if not self.lora_reference:
            return self._logps(self.reference, batch)
        with reference_forward(self.model):
            return self._logps(self.model, batch)

    @torch.no_grad()
    def _cache_reference_logps(self) -> None:
        """Reference log-probs of every pair, computed once with the not-yet-updated policy (= π_ref)."""
        chosen, rejected = [], []
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(self.pairs), REF_CHUNK):
            batch = self.collate(list(range(start, min(start + REF_CHUNK, len(self.pairs)))))
            c, r = self._logps(self.model, {k: v.to(self.device) for k, v in batch.items()})
            chosen.append(c)
            rejected.append(r)
        self.model.train(was_training)
        self.ref_logps = (torch.cat(chosen), torch.cat(rejected))

    def on_fit_start(self) -> None:
        if self.pairs is None:
            self._generate_pairs()
        if self.algo.precompute_ref_logps and self.ref_logps is None:
            self._cache_reference_logps()

    def train_dataloader(self):
        return step_loader(len(self.pairs), batch_size=self.algo.batch_size, max_steps=self.max_steps,
                           seed=self.seed, collate=self.collate)

    def on_start(self) -> None:
        stats = {**self.data_stats, "data/pairs": float(len(self.pairs))}
        if self.generated is None:
            stats["data/skipped_records"] = float(len(self.skipped))
        else:
            self.log_text_artifact(to_jsonl(self.generated), "data/preferences.jsonl")
        self._log(stats, 0)

    # ------------------------------------------------------------------ one optimizer step
    def training_step(self, batch, batch_idx):
        a = self.algo
        policy_chosen, policy_rejected = self._logps(self.model, batch)
        if self.ref_logps is not None:
            idx = batch["index"].to(self.ref_logps[0].device)
            ref_chosen, ref_rejected = self.ref_logps[0][idx], self.ref_logps[1][idx]
        else:
            ref_chosen, ref_rejected = self._reference_logps(batch)
        losses, chosen_rewards, rejected_rewards = core.dpo_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, a.beta, a.loss_type, a.label_smoothing)
        loss = losses.mean()
        self.check_finite(loss, "train/loss", batch_idx)
        self.step_metrics.update({
            "train/loss": loss.detach(),
            "train/rewards_chosen": chosen_rewards.mean(),
            "train/rewards_rejected": rejected_rewards.mean(),
            "train/reward_margin": (chosen_rewards - rejected_rewards).mean(),
            "train/reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "train/logps_chosen": policy_chosen.detach().mean(),
            "train/logps_rejected": policy_rejected.detach().mean(),
        })
        return loss

    def configure_optimizers(self):
        a = self.algo
        return warmup_adamw(self.model.parameters(), lr=a.lr, weight_decay=a.weight_decay,
                            warmup_steps=a.warmup_steps)
