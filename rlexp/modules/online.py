"""Online RL LightningModule: PPO (actor–critic, GAE) and the critic-free GRPO family.

One ``training_step`` is one RL iteration, written top to bottom like the papers:

1. rollout — the actor samples ``num_generations`` completions for each of ``prompts_per_step``
   prompts (``generate`` with KV cache) at ``rollout.temperature``, no grad, recording the sampler's
   log-prob of each token; DAPO's dynamic sampling redraws prompts whose group has no variance in the
   task's verdict; DAPO's overlong shaping adds a length penalty to the score (not to the verdict);
2. scoring — old log-probs, reference log-probs (only if ``kl_coef > 0``; from a frozen copy, or with
   LoRA from the actor with its adapters disabled) and values (only if the advantage estimator needs a
   critic) in no-grad passes. Every training-side log-prob and entropy scores ``softmax(logits / T)``,
   the distribution that was sampled; ``train/rollout_mismatch_kl`` measures what is left of the
   sampler/trainer gap;
3. token rewards ``r_t = -β·k(logπ_old, logπ_ref) + task reward_t`` (KL ``in_reward``);
4. advantages from the registered estimator (``gae``, ``grpo``, ``dr_grpo``, ``rloo``), optionally
   whitened; completions without a reward (``task.on_reward_error=skip``) are left out of every
   statistic (group mean/std, batch std, whitening, zero-variance, pass rates); rows left out of the
   loss (zero-variance groups, truncated or unscorable completions) get a zero ``loss_mask``;
5. ``ppo_epochs`` × minibatches (whole groups when possible) of the registered policy loss
   (``ppo_clip``, ``gspo``, ``cispo``) + value loss for the critic + entropy bonus + KL ``in_loss``,
   manual backward, grad-norm clip, optimizer steps;
6. metrics averaged over the whole update, logged at step = iterations completed; ScaleRL's
   no-positive-resampling removes prompts whose pass rate reached the threshold.

A greedy evaluation on held-out prompts runs before the first iteration, every ``eval_every``
iterations and after the last. Trainer's ``global_step`` counts optimizer steps; ``self.iteration``
counts RL iterations, which is what ``trainer.max_steps`` means.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict

import lightning as L
import torch

from rlexp import core
from rlexp.models import reference_forward, response_logits, response_values
from rlexp.modules.data import step_generator
from rlexp.modules.record import RunRecorder
from rlexp.rollout import PromptPool, collect_groups, generate_rollout

_ROW_KEYS = ("prompt_ids", "prompt_mask")  # [B, P] tensors: never trimmed along T
#: the experience tensors an update reads; the others (entropy, raw/MC advantages, kl...) are diagnostics
#: and are not sliced per minibatch
_UPDATE_KEYS = _ROW_KEYS + ("response_ids", "mask", "loss_mask", "old_logprobs", "advantages", "ref_logprobs",
                            "old_values", "returns")


class OnlineRLModule(RunRecorder, L.LightningModule):
    def __init__(self, *, algo, rollout, actor, tokenizer, task, critic=None, reference=None, seed: int = 0,
                 max_steps: int = 1, eval_every: int = 1, num_samples_logged: int = 0, fp32_logits: bool = True,
                 max_bad_steps: int = 3, micro_batch_size: int | None = None, lora_reference: bool = False,
                 max_unscored_steps: int = 3):
        super().__init__()
        self.automatic_optimization = False
        self.algo, self.rollout_cfg = algo, rollout
        self.actor, self.critic, self.reference = actor, critic, reference
        if reference is not None:
            reference.requires_grad_(False).eval()
        # lora_reference: the reference is the (PEFT) actor with its adapters disabled, no second model
        self.lora_reference = lora_reference
        self.has_reference = reference is not None or lora_reference
        self.tokenizer, self.task = tokenizer, task
        self.seed, self.max_steps, self.eval_every = seed, max_steps, eval_every
        self.num_samples_logged, self.fp32_logits = num_samples_logged, fp32_logits
        self.temperature = float(rollout.temperature)  # training-side log-probs score softmax(logits / T)
        self.estimator = core.ADVANTAGE_ESTIMATORS.get(algo.advantage)
        self.policy_loss_fn = core.POLICY_LOSSES.get(algo.policy_loss)
        if self.estimator.needs_critic and critic is None:
            raise ValueError(f"algorithm.advantage={algo.advantage} needs a critic and none was built")
        self.pool = PromptPool(task.train_examples, seed)
        self.max_new_tokens = rollout.max_new_tokens or task.max_new_tokens
        self.iteration = 0
        self.max_bad_steps, self.skipped_steps = max_bad_steps, 0
        self.max_unscored_steps, self.unscored_steps = max_unscored_steps, 0  # iterations in a row with no reward
        self.micro_batch_size = micro_batch_size  # rows per backward (gradient accumulation); None = minibatch
        self._pending_rng = None  # a resumed run's random state, applied when its first iteration starts
        self.bad_steps: dict[str, int] = {}  # consecutive non-finite steps, per optimized quantity
        self.total_tokens = 0.0   # cumulative generated tokens (the compute axis of the ScaleRL fit)
        self.total_seconds = 0.0  # cumulative seconds spent in training_step
        self.init_record()  # history, last_eval, pending_samples (rlexp/modules/record.py)

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
    @property
    def policy_model(self):
        return self.actor

    def on_train_start(self) -> None:
        if self.iteration == 0:
            self.run_eval(0)

    # ------------------------------------------------------------------ step 1: rollout
    def sample_prompts(self, iteration: int, draw: int = 0):
        """This worker's prompts: its contiguous share of the iteration's global draw (distinct prompts
        across workers; whole groups stay on one worker, since each worker generates its own groups)."""
        rank, ws = self.world
        n = self.algo.prompts_per_step // ws
        idx = self.pool.draw(self.algo.prompts_per_step, iteration, draw)[rank * n:(rank + 1) * n]
        return [self.task.train_examples[i] for i in idx], idx

    @property
    def local_minibatch_size(self) -> int:
        """``algorithm.minibatch_size`` counts completions over all workers; this worker's share."""
        return self.algo.minibatch_size // self.world[1]

    def _reduce(self):
        """The all-reduce handed to core functions with batch-level statistics (None: one worker)."""
        return self.all_sum if self.world[1] > 1 else None

    def _generate(self, draw: int):
        a, r = self.algo, self.rollout_cfg
        examples, idx = self.sample_prompts(self.iteration, draw)
        batch = generate_rollout(self.actor, self.tokenizer, self.task, examples, num_generations=a.num_generations,
                                 max_new_tokens=self.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                 prompt_index=idx)
        if a.overlong_penalty > 0:  # DAPO soft overlong punishment, added to the score
            penalty = core.overlong_penalty(batch.mask.sum(1), a.overlong_max_len or self.max_new_tokens,
                                            a.overlong_buffer, a.overlong_penalty)
            last = (batch.mask.sum(1).long() - 1).clamp(min=0)
            batch.token_rewards[torch.arange(batch.size), last] += penalty.to(batch.token_rewards.dtype)
            batch.scores = batch.scores + penalty.to(batch.scores.dtype)
        return batch

    def collect_rollout(self):
        """``(batch, gen batches drawn, fraction of drawn groups with reward variance)``."""
        a = self.algo
        if not a.dynamic_sampling:
            return self._generate(0), 1, None
        return collect_groups(self._generate, num_prompts=a.prompts_per_step, group_size=a.num_generations,
                              max_draws=a.max_gen_batches, pad_id=self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ steps 2-4: experience
    def single_pass(self, batch_size: int) -> bool:
        """Whether the update's own forward pass gives the old log-probs, saving a no-grad actor forward.

        True for one epoch over one minibatch (the update starts from the very policy that sampled, so
        ``logπ_old = sg(logπ_θ)`` exactly) unless the KL sits in the reward, whose advantages need
        ``logπ_old`` before the update. The rollout entropy and KL diagnostics then come from the same pass.
        """
        a = self.algo
        kl_in_reward = self.has_reference and a.kl_placement == "in_reward"
        return a.ppo_epochs == 1 and self.local_minibatch_size >= batch_size and not kl_in_reward

    def _reference_logits(self, tensors: dict) -> torch.Tensor:
        """Logits ``[B, T, V]`` of the reference policy: the frozen copy, or the actor with its LoRA adapters
        disabled (its base weights, which never train)."""
        model = self.reference if not self.lora_reference else self.actor
        with reference_forward(self.actor) if self.lora_reference else contextlib.nullcontext():
            return response_logits(model, **tensors, fp32=self.fp32_logits, temperature=self.temperature)

    @torch.no_grad()
    def make_experience(self, batch) -> dict[str, torch.Tensor]:
        """Old/ref log-probs, values, token rewards, advantages, returns and the loss mask, all ``[B, T]``."""
        a, G = self.algo, self.algo.num_generations
        d = batch.tensors()
        mask = d["mask"]
        valid = batch.valid_rows()  # [B]: completions with a reward; the others enter no statistic
        stat_mask = mask * valid[:, None].to(mask.dtype)
        if not self.single_pass(batch.size):
            logits = response_logits(self.actor, **d, fp32=self.fp32_logits, temperature=self.temperature)
            d["old_logprobs"] = core.logprobs_from_logits(logits, d["response_ids"])
            d["rollout_entropy"] = core.entropy_from_logits(logits)
            del logits
        rewards = batch.token_rewards.clone()
        if self.has_reference:
            ref_logits = self._reference_logits(batch.tensors())
            d["ref_logprobs"] = core.logprobs_from_logits(ref_logits, d["response_ids"])
            del ref_logits
            if "old_logprobs" in d:  # single pass: the KL diagnostic is filled in by the update
                d["kl"] = core.kl_estimate(d["old_logprobs"], d["ref_logprobs"], a.kl_estimator) * mask
            if a.kl_placement == "in_reward":
                rewards = rewards - a.kl_coef * d["kl"]
        values = (response_values(self.critic, **batch.tensors()) * mask if self.critic is not None
                  else torch.zeros_like(mask))
        d["old_values"], d["rewards"] = values, rewards
        advantages, returns = self.estimator(rewards, values, mask, gamma=a.gamma, lam=a.lam, group_size=G,
                                             scale=a.adv_scale, eps=a.adv_eps, all_reduce=self._reduce(), valid=valid)
        d["raw_advantages"], d["returns"] = advantages, returns
        if self.estimator.needs_critic:  # λ diagnostics: GAE(λ) against Monte-Carlo (λ=1) on the same rollouts
            d["mc_advantages"], _ = core.gae(rewards, values, mask, a.gamma, 1.0)
        d["advantages"] = (core.masked_whiten(advantages, stat_mask, all_reduce=self._reduce())
                           if a.whiten_advantages else advantages)
        keep = torch.ones(batch.size, dtype=torch.bool, device=mask.device)
        if G > 1:
            # on the task's verdict (before shaping) of the scorable rows: per row, [B]
            zero_std = core.zero_std_groups(batch.verdicts(), G, valid=valid).repeat_interleave(G)
            d["zero_std_rows"] = zero_std.float()
            if a.zero_variance_filter:  # ScaleRL: groups with identical rewards contribute nothing
                keep &= ~zero_std
        if a.overlong_filter:  # DAPO: truncated completions are left out of the loss
            keep &= batch.finished
        keep &= valid  # unscorable completions (task.on_reward_error=skip): no loss
        d["loss_mask"] = mask * keep[:, None].to(mask.dtype)
        return d

    # ------------------------------------------------------------------ step 5: update
    def _minibatch_loss(self, mb: dict, denominator: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The actor's loss on ``mb``; ``denominator``: the aggregation denominator of the whole
        minibatch over all workers (see `_denominator`), None = ``mb``'s own."""
        a = self.algo
        mask = mb["loss_mask"]
        agg = dict(agg=a.loss_agg, group_size=a.num_generations, max_len=self.max_new_tokens)
        red = dict(group_size=agg["group_size"], max_len=agg["max_len"], denominator=denominator)
        logits = response_logits(self.actor, mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"], mb["mask"],
                                 fp32=self.fp32_logits, temperature=self.temperature)
        logprobs = core.logprobs_from_logits(logits, mb["response_ids"])
        if "old_logprobs" not in mb:  # single pass (see `single_pass`): on-policy, ρ = 1 with its gradient
            mb["old_logprobs"] = logprobs.detach()
        # the registered loss takes exactly its `uses` from the config and aggregates its per-token losses once
        loss, metrics = self.policy_loss_fn(logprobs, mb["old_logprobs"], mb["advantages"], mask, config=a,
                                            denominator=denominator, **agg)
        metrics = {"policy_loss": loss.detach(), **metrics}
        if a.entropy_coef > 0:
            entropy = core.entropy_from_logits(logits)
            loss = loss - a.entropy_coef * core.aggregate(entropy, mask, a.loss_agg, **red)
        else:
            with torch.no_grad():
                entropy = core.entropy_from_logits(logits.detach())
        mb["entropy"] = entropy.detach()
        metrics["entropy"] = core.masked_mean(mb["entropy"], mb["mask"])
        if self.has_reference and a.kl_placement == "in_loss":
            kl = core.kl_estimate(logprobs, mb["ref_logprobs"], a.kl_estimator)
            kl_loss = core.aggregate(kl, mask, a.loss_agg, **red)
            loss = loss + a.kl_coef * kl_loss
            metrics["kl_loss"] = kl_loss.detach()
        return loss, metrics

    def _backward(self, loss: torch.Tensor, name: str) -> str | None:
        """Backward of one (micro-)batch loss, unless it is NaN/Inf on any worker (then every worker skips
        the step together); returns why the step must be skipped, None when it may go on."""
        finite = self.all_min(torch.isfinite(loss.detach()).float().reshape(1))
        if finite.item() < 1:
            return f"{name} is {loss.item()}" if not torch.isfinite(loss) else f"{name} is non-finite on another worker"
        self.manual_backward(loss)
        return None

    def _optimizer_step(self, opt, params, name: str, bad: str | None) -> torch.Tensor:
        """Clip and apply the accumulated gradient; not applied when ``bad`` or the gradient norm is
        NaN/Inf. More than ``max_bad_steps`` such steps in a row stop the run with an error naming the
        quantity."""
        if bad is None:
            max_norm = self.algo.max_grad_norm if self.algo.max_grad_norm is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # DDP: gradients already averaged
            if not torch.isfinite(grad_norm):
                bad = f"the gradient norm of {name} is {grad_norm.item()}"
        if bad is not None:
            opt.zero_grad(set_to_none=True)  # the step is not applied
            self.bad_steps[name] = self.bad_steps.get(name, 0) + 1
            self.skipped_steps += 1
            if self.bad_steps[name] > self.max_bad_steps:
                raise FloatingPointError(f"{bad} at iteration {self.iteration + 1}: {self.bad_steps[name]} non-finite "
                                         f"optimizer steps in a row (trainer.max_bad_steps={self.max_bad_steps})")
            return torch.full((), float("nan"))
        self.bad_steps[name] = 0
        opt.step()
        return grad_norm.detach()

    def _minibatches(self, B: int, g: torch.Generator):
        """Row indices of each minibatch; whole groups are kept together when the size allows."""
        G, size = self.algo.num_generations, self.local_minibatch_size
        if G > 1 and size % G == 0:
            groups = torch.randperm(B // G, generator=g)
            order = (groups[:, None] * G + torch.arange(G)[None, :]).flatten()
        else:
            order = torch.randperm(B, generator=g)
        return [order[s:s + size] for s in range(0, B, size)]

    @staticmethod
    def _take(d: dict, idx: torch.Tensor) -> dict:
        """Rows ``idx`` of the update tensors, trimmed to the longest completion among them."""
        T = max(int(d["mask"][idx].sum(1).max().item()), 1)
        return {k: d[k][idx] if k in _ROW_KEYS else d[k][idx, :T] for k in _UPDATE_KEYS if k in d}

    def _micro_slices(self, n: int) -> list[torch.Tensor]:
        """Row ranges of the micro-batches of a minibatch of ``n`` rows (one range without micro-batching)."""
        size = self.micro_batch_size or n
        return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]

    def _denominator(self, mask: torch.Tensor, mode: str) -> torch.Tensor:
        """The minibatch's aggregation denominator summed over workers, divided by their number (DDP
        averages the workers' gradients): every worker's ``numerator / this`` adds up to the loss of the
        global minibatch, and so do the micro-batches' within a worker."""
        den = core.aggregation_denominator(mask, mode, group_size=self.algo.num_generations)
        return self.all_sum(den) / self.world[1]

    @staticmethod
    def _combine(parts: list[dict]) -> dict:
        """One minibatch's metrics from its micro-batches': losses add up (each is numerator / the whole
        minibatch's denominator), the other metrics are averaged."""
        if len(parts) == 1:
            return parts[0]
        summed = ("policy_loss", "kl_loss", "value_loss")
        return {k: torch.stack([p[k] for p in parts]).sum() if k in summed else torch.stack([p[k] for p in parts]).mean()
                for k in parts[0]}

    def _fill_rollout_stats(self, exp: dict, idx: torch.Tensor, mb: dict) -> None:
        """Scatter the single pass's log-probs and entropy (rows ``idx``, first ``T`` positions) into ``exp``
        as ``old_logprobs``/``rollout_entropy``, as `make_experience` would have computed them."""
        T = mb["old_logprobs"].shape[1]
        for src, dst in (("old_logprobs", "old_logprobs"), ("entropy", "rollout_entropy")):
            if dst not in exp:
                exp[dst] = torch.zeros_like(exp["mask"])
            exp[dst][idx, :T] = mb[src].to(exp[dst].dtype)

    def _accumulated_step(self, opt, params, name: str, mb: dict, micro: list[torch.Tensor], mode: str,
                          loss_fn) -> tuple[dict, torch.Tensor]:
        """One optimizer step on minibatch ``mb``: ``loss_fn(micro_batch, rows, denominator) -> (loss, metrics)``
        for each micro-batch, every loss normalized by the whole minibatch's ``mode`` denominator over all
        workers and backpropagated, then the accumulated gradient applied. Returns the minibatch's metrics
        and the gradient norm (NaN for a step not applied)."""
        den = self._denominator(mb["loss_mask"], mode)
        opt.zero_grad(set_to_none=True)
        parts, bad = [], None
        for rows in micro:
            m = self._take(mb, rows) if len(micro) > 1 else mb
            loss, metrics = loss_fn(m, rows, den)
            parts.append(metrics)
            bad = self._backward(loss, name)
            if bad:
                break
        return self._combine(parts), self._optimizer_step(opt, params, name, bad)

    def update(self, exp: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """``ppo_epochs`` passes of shuffled minibatches, each one optimizer step of the actor (and one of
        the critic) accumulated over micro-batches; returns every minibatch's metrics."""
        a = self.algo
        opts = self._optimizers()
        g = step_generator(self.seed, self.iteration, salt=1)
        acc: dict[str, list[torch.Tensor]] = defaultdict(list)
        fill = "old_logprobs" not in exp  # single pass: the rollout diagnostics come from the update's forward
        actor_params = list(self.actor.parameters())
        critic_params = list(self.critic.parameters()) if self.critic is not None else []
        for _ in range(a.ppo_epochs):
            for idx in self._minibatches(exp["mask"].shape[0], g):
                idx = idx.to(exp["mask"].device)
                mb = self._take(exp, idx)
                micro = [r.to(idx.device) for r in self._micro_slices(idx.shape[0])]

                def actor_loss(m, rows, den):
                    loss, metrics = self._minibatch_loss(m, den)
                    if fill:
                        self._fill_rollout_stats(exp, idx[rows], m)
                    return loss, metrics
                metrics, grad_norm = self._accumulated_step(opts[0], actor_params, "train/policy_loss", mb, micro,
                                                            a.loss_agg, actor_loss)
                metrics["grad_norm"] = grad_norm
                if self.critic is not None:
                    critic_metrics, grad_norm = self._accumulated_step(opts[1], critic_params, "train/value_loss", mb,
                                                                       micro, "token-mean", self._critic_loss)
                    metrics.update(critic_metrics, critic_grad_norm=grad_norm)
                for k, v in metrics.items():
                    acc[k].append(v.float())
        if fill and "ref_logprobs" in exp:  # the KL diagnostic of the single pass's log-probs
            exp["kl"] = core.kl_estimate(exp["old_logprobs"], exp["ref_logprobs"], a.kl_estimator) * exp["mask"]
        return acc

    def _critic_loss(self, m: dict, rows, den: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The critic's value loss on micro-batch ``m`` (token-mean over all workers' tokens: ``den``)."""
        values = response_values(self.critic, m["prompt_ids"], m["prompt_mask"], m["response_ids"], m["mask"])
        vloss, vmetrics = core.value_loss(values, m["old_values"], m["returns"], m["loss_mask"],
                                          clip_eps=self.algo.value_clip_eps, denominator=den)
        return vloss, {**vmetrics, "value_loss": vloss.detach()}

    # ------------------------------------------------------------------ one RL iteration
    def training_step(self, iteration, batch_idx):
        self.iteration = int(iteration)
        if self._pending_rng is not None:  # resumed: the random state of the checkpoint
            from rlexp.modules.checkpoint import set_rng_state
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        a = self.algo
        t0 = time.perf_counter()
        batch, draws, signal_frac = self.collect_rollout()
        self._check_scored(batch)
        t_rollout = time.perf_counter() - t0
        t_gen = t_rollout - batch.reward_seconds  # generation only; scoring is perf/reward_seconds
        exp = self.make_experience(batch)
        acc = self.update(exp)
        removed = 0
        if a.no_positive_resampling:  # ScaleRL: solved prompts leave the training pool for good
            rate = core.group_pass_rate(batch.verdicts(), a.num_generations, a.pass_reward, valid=batch.valid_rows())
            solved = [batch.prompt_index[g * a.num_generations] for g in (rate >= a.pass_rate_threshold).nonzero()
                      .flatten().tolist()]
            if self.world[1] > 1:  # every worker removes every worker's solved prompts: the pools stay equal
                import torch.distributed as dist
                gathered = [None] * self.world[1]
                dist.all_gather_object(gathered, solved)
                solved = [i for part in gathered for i in part]
            before = self.pool.size
            self.pool.remove(solved)
            removed = before - self.pool.size
        step_seconds = time.perf_counter() - t0
        metrics = self._iteration_metrics(batch, exp, acc)
        n_tokens = float(batch.mask.sum().item())
        self.total_tokens += n_tokens
        self.total_seconds += step_seconds
        metrics.update({"train/skipped_steps": float(self.skipped_steps),
                        "perf/total_tokens": self.total_tokens, "perf/total_seconds": self.total_seconds,
                        "train/gen_batches_drawn": float(draws), "train/prompt_pool_size": float(self.pool.size),
                        "train/prompts_removed": float(removed),
                        "perf/step_seconds": step_seconds, "perf/generate_seconds": t_gen,
                        "perf/reward_seconds": batch.reward_seconds, "perf/update_seconds": step_seconds - t_rollout,
                        "perf/tokens_per_second": n_tokens / step_seconds,
                        "perf/generate_tokens_per_second": n_tokens / max(t_gen, 1e-9)})
        if signal_frac is not None:
            metrics["train/drawn_groups_with_signal"] = signal_frac
        metrics = self.all_mean_metrics(metrics)  # averaged over workers before logging (rank 0 logs)
        done = self.iteration + 1
        self._log(metrics, done)
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, logger=False)
        self.log("s/it", step_seconds, prog_bar=True, logger=False)
        if done % self.eval_every == 0 or done == self.max_steps:
            ev = self.run_eval(done)
            self.log("eval", ev["eval/reward_mean"], prog_bar=True, logger=False)

    def _check_scored(self, batch) -> None:
        """Stop the run once ``max_unscored_steps`` iterations in a row had no completion the reward function
        could score on any worker (``task.on_reward_error=skip`` would otherwise train on nothing, silently)."""
        scored = self.all_sum(batch.valid_rows().sum().reshape(1).float())
        self.unscored_steps = self.unscored_steps + 1 if scored.item() == 0 else 0
        if self.unscored_steps >= self.max_unscored_steps:
            from rlexp.tasks.base import RewardError
            last = batch.reward_errors[-1] if batch.reward_errors else "it returned no usable value"
            raise RewardError(f"no completion could be scored in {self.unscored_steps} iterations in a row "
                              f"(trainer.max_unscored_steps={self.max_unscored_steps}); last error: {last}")

    def _iteration_metrics(self, batch, exp, acc) -> dict[str, float]:
        mask = exp["mask"]
        # nanmean: a skipped (non-finite) step must not turn the iteration's averages into NaN
        stats = {f"train/{k}": torch.stack(v).nanmean() for k, v in acc.items()}
        zero = torch.zeros(())
        scored = batch.scores[batch.valid_rows()]  # completions with a reward
        stats.update({
            "train/reward_mean": scored.mean() if scored.numel() else torch.full((), float("nan")),
            "train/reward_std": scored.std() if scored.numel() > 1 else zero,
            "train/kl": core.masked_mean(exp["kl"], mask) if "kl" in exp else zero,
            "train/response_length": mask.sum(1).mean(),
            "train/finished_frac": batch.finished.float().mean(),
            "train/rollout_entropy": core.masked_mean(exp["rollout_entropy"], mask),
            "train/advantage_mean": core.masked_mean(exp["raw_advantages"], mask),
            "train/advantage_var": core.masked_var(exp["raw_advantages"], mask),
            "train/returns_mean": core.masked_mean(exp["returns"], mask),
            "train/loss_rows_frac": (exp["loss_mask"].sum(1) > 0).float().mean(),
            "train/reward_errors": batch.failed_rows().float().sum(),
        })
        stats.update(self._mismatch_metrics(batch, exp))
        if "zero_std_rows" in exp:  # groups are equal-sized: the row mean is the fraction of groups
            stats["train/frac_zero_std_groups"] = exp["zero_std_rows"].mean()
        if self.critic is not None:
            stats["train/explained_variance"] = core.explained_variance(exp["old_values"], exp["returns"], mask)
        if "mc_advantages" in exp:
            gap = exp["raw_advantages"] - exp["mc_advantages"]
            stats["train/adv_bias_vs_mc"] = core.masked_mean(gap, mask)
            stats["train/adv_mse_vs_mc"] = core.masked_mean(gap * gap, mask)
            stats["train/mc_advantage_var"] = core.masked_var(exp["mc_advantages"], mask)
        return {k: float(v.item()) for k, v in stats.items()}

    @staticmethod
    def _mismatch_metrics(batch, exp) -> dict[str, torch.Tensor]:
        """How far the trainer's log-probs at the start of the update (``old_logprobs``) are from the
        sampler's (``rollout_logprobs``), over the sampled tokens: the k3 estimate of
        KL(π_sampler ‖ π_trainer) (``d = logπ_sampler - logπ_trainer``, ``k3 = e^{-d} + d - 1``) and
        ``max |d|``. ~1e-7 in fp32 when both score the same distribution."""
        mask = exp["mask"]
        d = (batch.rollout_logprobs - exp["old_logprobs"]) * mask
        kl = core.kl_estimate(batch.rollout_logprobs, exp["old_logprobs"], "k3") * mask
        return {"train/rollout_mismatch_kl": core.masked_mean(kl, mask),
                "train/rollout_logprob_absdiff_max": d.abs().max()}

    # ------------------------------------------------------------------ run state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Everything a resumed run needs to continue exactly: saved at an iteration boundary (see
        `rlexp.modules.checkpoint`), so ``iteration`` counts the iterations completed."""
        from rlexp.modules.checkpoint import rng_state
        logger = self.logger
        checkpoint["rlexp_state"] = {
            "iteration": self.iteration + 1, "max_steps": self.max_steps, "pool": self.pool.state_dict(), "total_tokens": self.total_tokens,
            "total_seconds": self.total_seconds, "skipped_steps": self.skipped_steps, "bad_steps": dict(self.bad_steps),
            "rng": rng_state(), "mlflow_run_id": getattr(logger, "run_id", None) if logger is not None else None,
            "evals": [dict(h) for h in self.history if "eval/reward_mean" in h]}  # the summaries need them all

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rlexp_state")
        if state:
            # rlexp resumes by iteration: the run's dataloader starts at the next one. Lightning's own
            # mid-epoch loop restoration would then skip batches of that loader, so it is left out (the
            # model, optimizer and RNG states are all that the next iteration depends on).
            checkpoint.pop("loops", None)
            self.pool.load_state_dict(state["pool"])
            self.total_tokens, self.total_seconds = state["total_tokens"], state["total_seconds"]
            self.iteration = state.get("iteration", 0)  # the next iteration to run (no initial evaluation)
            self.skipped_steps = state.get("skipped_steps", 0)
            self.bad_steps = dict(state.get("bad_steps", {}))
            self.history = [dict(h) for h in state.get("evals", [])]  # the evaluations before the checkpoint
            self.last_eval = dict(self.history[-1]) if self.history else {}
            # applied when the next iteration starts: Lightning draws from the global generator between
            # restoring and training (e.g. the dataloader iterator's base seed)
            self._pending_rng = state.get("rng")
