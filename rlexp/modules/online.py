"""Online RL LightningModule: PPO (actor–critic with GAE) — and the base for the critic-free family.

One ``training_step`` is one RL iteration, written top to bottom like the paper:

1. rollout — the actor samples ``num_generations`` completions for each of ``prompts_per_step``
   prompts (``generate`` with KV cache), no grad;
2. scoring — the task's reward; old log-probs, reference log-probs and values in no-grad passes;
3. token rewards ``r_t = -β·k(logπ_old, logπ_ref) + task reward_t`` (KL ``in_reward``);
4. advantages from the registered estimator (``gae(γ, λ)``), optionally whitened;
5. ``ppo_epochs`` × minibatches of the registered policy loss (+ value loss for the critic,
   + entropy bonus, + KL ``in_loss``), manual backward, grad-norm clip, optimizer steps;
6. metrics averaged over the whole update, logged at step = iterations completed.

A greedy evaluation on held-out prompts runs before the first iteration, every ``eval_every``
iterations and after the last. Trainer's ``global_step`` counts optimizer steps (two per minibatch
with a critic); ``self.iteration`` counts RL iterations, which is what ``trainer.max_steps`` means.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

import lightning as L
import torch

from rlexp import core
from rlexp.models import response_logits, response_values
from rlexp.modules.data import step_generator
from rlexp.rollout import evaluate, generate_rollout


class OnlineRLModule(L.LightningModule):
    def __init__(self, *, algo, rollout, actor, tokenizer, task, critic=None, reference=None, seed: int = 0,
                 max_steps: int = 1, eval_every: int = 1, num_samples_logged: int = 0, fp32_logits: bool = True):
        super().__init__()
        self.automatic_optimization = False
        self.algo, self.rollout_cfg = algo, rollout
        self.actor, self.critic, self.reference = actor, critic, reference
        if reference is not None:
            reference.requires_grad_(False).eval()
        self.tokenizer, self.task = tokenizer, task
        self.seed, self.max_steps, self.eval_every = seed, max_steps, eval_every
        self.num_samples_logged, self.fp32_logits = num_samples_logged, fp32_logits
        self.advantage_fn = core.ADVANTAGE_ESTIMATORS.get(algo.advantage)
        self.policy_loss_fn = core.POLICY_LOSSES.get(algo.policy_loss)
        self.iteration = 0
        self.history: list[dict] = []          # every logged metrics dict, with its "step"
        self.pending_samples: list[tuple[int, list[dict]]] = []
        self.last_eval: dict = {}

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        a = self.algo
        opts = [torch.optim.AdamW(self.actor.parameters(), lr=a.actor_lr, weight_decay=a.weight_decay)]
        if self.critic is not None:
            opts.append(torch.optim.AdamW(self.critic.parameters(), lr=a.critic_lr, weight_decay=a.weight_decay))
        return opts

    def _optimizers(self):
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    # ------------------------------------------------------------------ logging / eval
    def _log(self, metrics: dict, step: int) -> None:
        self.history.append({"step": step, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)

    def run_eval(self, step: int) -> dict:
        max_new = self.rollout_cfg.max_new_tokens or self.task.max_new_tokens
        res = evaluate(self.actor, self.tokenizer, self.task, self.task.eval_examples, max_new_tokens=max_new,
                       num_samples=self.num_samples_logged)
        metrics = {"eval/reward_mean": res.reward_mean, "eval/accuracy": res.accuracy,
                   "eval/response_length": res.response_length}
        self.last_eval = {"step": step, **metrics}
        if res.samples:
            self.pending_samples.append((step, res.samples))
        self._log(metrics, step)
        return metrics

    def on_train_start(self) -> None:
        if self.iteration == 0:
            self.run_eval(0)

    # ------------------------------------------------------------------ one RL iteration
    def sample_prompts(self, iteration: int):
        pool = self.task.train_examples
        g = step_generator(self.seed, iteration)
        idx = torch.randperm(len(pool), generator=g)[: self.algo.prompts_per_step]
        return [pool[i] for i in idx.tolist()]

    @torch.no_grad()
    def make_experience(self, batch) -> dict[str, torch.Tensor]:
        """Steps 2–4: old/ref log-probs, values, token rewards, advantages and returns, all ``[B, T]``."""
        a = self.algo
        d = batch.tensors()
        mask = d["mask"]
        logits = response_logits(self.actor, **d, fp32=self.fp32_logits)
        d["old_logprobs"] = core.logprobs_from_logits(logits, d["response_ids"])
        d["rollout_entropy"] = core.entropy_from_logits(logits)
        del logits
        rewards = batch.token_rewards.clone()
        if self.reference is not None:
            ref_logits = response_logits(self.reference, **batch.tensors(), fp32=self.fp32_logits)
            d["ref_logprobs"] = core.logprobs_from_logits(ref_logits, d["response_ids"])
            del ref_logits
            kl = core.kl_estimate(d["old_logprobs"], d["ref_logprobs"], a.kl_estimator) * mask
            d["kl"] = kl
            if a.kl_placement == "in_reward":
                rewards = rewards - a.kl_coef * kl
        values = (response_values(self.critic, **batch.tensors()) * mask if self.critic is not None
                  else torch.zeros_like(mask))
        d["old_values"] = values
        d["rewards"] = rewards
        advantages, returns = self.advantage_fn(rewards, values, mask, a.gamma, a.lam)
        d["raw_advantages"] = advantages
        d["returns"] = returns
        d["advantages"] = core.masked_whiten(advantages, mask) if a.whiten_advantages else advantages
        return d

    def _minibatch_loss(self, mb: dict) -> tuple[torch.Tensor, dict]:
        a = self.algo
        mask = mb["mask"]
        logits = response_logits(self.actor, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"], mask,
                                 fp32=self.fp32_logits)
        logprobs = core.logprobs_from_logits(logits, mb["response_ids"])
        loss, metrics = self.policy_loss_fn(logprobs, mb["old_logprobs"], mb["advantages"], mask,
                                            clip_eps=a.clip_eps, clip_eps_high=a.clip_eps_high,
                                            dual_clip=a.dual_clip, agg=a.loss_agg)
        metrics = {"policy_loss": loss.detach(), **metrics}
        if a.entropy_coef > 0:
            entropy = core.entropy_from_logits(logits)
            loss = loss - a.entropy_coef * core.aggregate(entropy, mask, a.loss_agg)
        else:
            with torch.no_grad():
                entropy = core.entropy_from_logits(logits.detach())
        metrics["entropy"] = core.masked_mean(entropy.detach(), mask)
        if self.reference is not None and a.kl_placement == "in_loss":
            kl = core.kl_estimate(logprobs, mb["ref_logprobs"], a.kl_estimator)
            kl_loss = core.aggregate(kl, mask, a.loss_agg)
            loss = loss + a.kl_coef * kl_loss
            metrics["kl_loss"] = kl_loss.detach()
        return loss, metrics

    def _step(self, opt, loss: torch.Tensor, params, name: str) -> torch.Tensor:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name} is {loss.item()} at iteration {self.iteration + 1}")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        max_norm = self.algo.max_grad_norm if self.algo.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        return grad_norm.detach()

    def update(self, exp: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Step 5: ``ppo_epochs`` passes of shuffled minibatches; returns every minibatch's metrics."""
        a = self.algo
        opts = self._optimizers()
        B = exp["mask"].shape[0]
        g = step_generator(self.seed, self.iteration, salt=1)
        acc: dict[str, list[torch.Tensor]] = defaultdict(list)
        for _ in range(a.ppo_epochs):
            perm = torch.randperm(B, generator=g)
            for start in range(0, B, a.minibatch_size):
                idx = perm[start:start + a.minibatch_size].to(exp["mask"].device)
                T = int(exp["mask"][idx].sum(1).max().item())  # trim to the longest completion
                mb = {k: (v[idx][:, :T] if v.dim() == 2 and k not in ("prompt_ids", "prompt_mask") else v[idx])
                      for k, v in exp.items()}
                loss, metrics = self._minibatch_loss(mb)
                metrics["grad_norm"] = self._step(opts[0], loss, list(self.actor.parameters()), "train/policy_loss")
                if self.critic is not None:
                    values = response_values(self.critic, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"],
                                             mb["mask"])
                    vloss, vmetrics = core.value_loss(values, mb["old_values"], mb["returns"], mb["mask"],
                                                      clip_eps=a.value_clip_eps)
                    metrics.update(vmetrics, value_loss=vloss.detach())
                    metrics["critic_grad_norm"] = self._step(opts[1], vloss, list(self.critic.parameters()),
                                                             "train/value_loss")
                for k, v in metrics.items():
                    acc[k].append(v.float())
        return acc

    def training_step(self, iteration, batch_idx):
        self.iteration = int(iteration)
        t0 = time.perf_counter()
        examples = self.sample_prompts(self.iteration)
        r = self.rollout_cfg
        batch = generate_rollout(self.actor, self.tokenizer, self.task, examples,
                                 num_generations=self.algo.num_generations,
                                 max_new_tokens=r.max_new_tokens or self.task.max_new_tokens,
                                 temperature=r.temperature, top_p=r.top_p)
        t_gen = time.perf_counter() - t0
        exp = self.make_experience(batch)
        acc = self.update(exp)
        step_seconds = time.perf_counter() - t0
        metrics = self._iteration_metrics(batch, exp, acc)
        n_tokens = float(batch.mask.sum().item())
        metrics.update({"perf/step_seconds": step_seconds, "perf/generate_seconds": t_gen,
                        "perf/update_seconds": step_seconds - t_gen,
                        "perf/tokens_per_second": n_tokens / step_seconds,
                        "perf/generate_tokens_per_second": n_tokens / max(t_gen, 1e-9)})
        done = self.iteration + 1
        self._log(metrics, done)
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, logger=False)
        self.log("s/it", step_seconds, prog_bar=True, logger=False)
        if done % self.eval_every == 0 or done == self.max_steps:
            ev = self.run_eval(done)
            self.log("eval", ev["eval/reward_mean"], prog_bar=True, logger=False)

    def _iteration_metrics(self, batch, exp, acc) -> dict[str, float]:
        mask = exp["mask"]
        stats = {f"train/{k}": torch.stack(v).mean() for k, v in acc.items()}
        stats.update({
            "train/reward_mean": batch.scores.mean(),
            "train/reward_std": batch.scores.std() if batch.size > 1 else torch.zeros(()),
            "train/kl": core.masked_mean(exp["kl"], mask) if "kl" in exp else torch.zeros(()),
            "train/response_length": mask.sum(1).mean(),
            "train/finished_frac": batch.finished.float().mean(),
            "train/rollout_entropy": core.masked_mean(exp["rollout_entropy"], mask),
            "train/advantage_mean": core.masked_mean(exp["raw_advantages"], mask),
            "train/advantage_var": core.masked_var(exp["raw_advantages"], mask),
            "train/returns_mean": core.masked_mean(exp["returns"], mask),
        })
        if self.critic is not None:
            stats["train/explained_variance"] = core.explained_variance(exp["old_values"], exp["returns"], mask)
        return {k: float(v.item()) for k, v in stats.items()}
