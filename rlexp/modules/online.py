"""Online RL LightningModule: PPO (actor–critic, GAE) and the critic-free GRPO family.

One ``training_step`` is one RL iteration, written top to bottom like the papers:

1. rollout — the actor samples ``num_generations`` completions for each of ``prompts_per_step``
   prompts (``generate`` with KV cache) at ``rollout.temperature``, no grad, recording the sampler's
   log-prob of each token (a `RolloutBatch`); DAPO's dynamic sampling redraws prompts whose group has no
   variance in the task's verdict (`collect_groups`); DAPO's overlong shaping adds a length penalty to the
   score, not to the verdict (`core.add_overlong_penalty`);
2. scoring (`make_experience`, which returns an `Experience`) — old log-probs, reference log-probs (only if
   ``kl_coef > 0``; from a frozen copy, or with LoRA from the actor with its adapters disabled) and values
   (only if the advantage estimator needs a critic) in no-grad passes. Every training-side log-prob and
   entropy scores ``softmax(logits / T)``, the distribution that was sampled; ``train/rollout_mismatch_kl``
   measures what is left of the sampler/trainer gap;
3. token rewards ``r_t = -β·k(logπ_old, logπ_ref) + task reward_t`` (KL ``in_reward``);
4. advantages from the registered estimator (``gae``, ``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp``, or
   any other registered in ``core.ADVANTAGE_ESTIMATORS``), optionally whitened; completions without a reward
   (``task.on_reward_error=skip``) are left out of every statistic (group mean/std, batch std, whitening,
   zero-variance, pass rates); rows left out of the loss (zero-variance groups, truncated or unscorable
   completions) get a zero ``loss_mask``;
5. ``update`` — ``ppo_epochs`` × minibatches (whole groups when possible) of the registered policy loss
   (``ppo_clip``, ``gspo``, ``cispo``, ``sapo``, or any other in ``core.POLICY_LOSSES``; per token weighted by
   π_old/π_sampler with ``rollout_correction: tis|mis``) + value loss for the
   critic + entropy bonus + KL ``in_loss``, manual backward, grad-norm clip, optimizer steps (the
   micro-batch and guarded-step machinery is `rlexp.modules.update`). **The single pass**: with one epoch
   over one minibatch (`single_pass`), step 2 skips the actor's scoring pass (``old_logprobs`` stays None)
   and the update's own first forward gives ``logπ_old = sg(logπ_θ)``; the update then stores those
   log-probs, the rollout entropy and the KL diagnostic in the experience;
6. metrics averaged over the whole update (`rlexp.modules.online_metrics`), logged at step = iterations
   completed; ScaleRL's no-positive-resampling removes prompts whose pass rate reached the threshold
   (`PromptPool.remove_solved`).

A greedy evaluation on held-out prompts runs before the first iteration, every ``eval_every``
iterations and after the last. Trainer's ``global_step`` counts optimizer steps; ``self.iteration``
counts RL iterations, which is what ``trainer.max_steps`` means.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import NamedTuple

import lightning as L
import torch

from rlexp import core
from rlexp.models import reference_forward, response_logits, response_values
from rlexp.modules.data import step_generator
from rlexp.modules.engine import RolloutEngines
from rlexp.modules.experience import Experience
from rlexp.modules.online_metrics import iteration_metrics, throughput_metrics
from rlexp.modules.pipelined import OffPolicyRollouts
from rlexp.modules.record import RunRecorder
from rlexp.modules.update import UpdateSteps
from rlexp.rollout import PromptPool, RolloutBatch, collect_groups, generate_rollout


class ActorForward(NamedTuple):
    """What the actor's loss forward gives besides the loss: ``[b, t]`` its detached log-probs and entropy
    on the micro-batch (on the single pass, the rollout's ``old_logprobs`` / ``rollout_entropy``)."""
    logprobs: torch.Tensor
    entropy: torch.Tensor


class OnlineRLModule(OffPolicyRollouts, RolloutEngines, RunRecorder, UpdateSteps, L.LightningModule):
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

    # ------------------------------------------------------------------ logging / eval
    @property
    def policy_model(self):
        return self.actor

    def on_train_start(self) -> None:
        self.start_pipeline()  # rollout.off_policy_lag ≥ 1: forked now, before an engine or an evaluation exists
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
        with self.sampling():  # at the weights' dtype: outside bf16-mixed's autocast (RunRecorder.sampling)
            batch = generate_rollout(self.actor, self.tokenizer, self.task, examples, num_generations=a.num_generations,
                                     max_new_tokens=self.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                     prompt_index=idx, engine=self.rollout_engine(draw))
        if a.overlong_penalty > 0:  # DAPO soft overlong punishment: the score is shaped, the verdict is not
            batch.token_rewards, batch.scores = core.add_overlong_penalty(
                batch.token_rewards, batch.scores, batch.mask, a.overlong_max_len or self.max_new_tokens,
                a.overlong_buffer, a.overlong_penalty)
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
    def make_experience(self, batch: RolloutBatch) -> Experience:
        """Old/ref log-probs, values, token rewards, advantages, returns and the loss mask, all ``[B, T]``.
        On the single pass (`single_pass`) ``old_logprobs``, ``rollout_entropy`` and ``kl`` are left None:
        the update's first forward gives them."""
        a, G = self.algo, self.algo.num_generations
        mask, valid = batch.mask, batch.valid_rows()  # valid [B]: completions with a reward
        stat_mask = mask * valid[:, None].to(mask.dtype)  # the other rows enter no statistic
        old_logprobs = rollout_entropy = ref_logprobs = kl = zero_std = None
        if not self.single_pass(batch.size):
            logits = response_logits(self.actor, **batch.tensors(), fp32=self.fp32_logits, temperature=self.temperature)
            old_logprobs = core.logprobs_from_logits(logits, batch.response_ids)
            rollout_entropy = core.entropy_from_logits(logits)
            del logits
        rewards = batch.token_rewards.clone()
        if self.has_reference:
            ref_logits = self._reference_logits(batch.tensors())
            ref_logprobs = core.logprobs_from_logits(ref_logits, batch.response_ids)
            del ref_logits
            if old_logprobs is not None:
                kl = core.kl_estimate(old_logprobs, ref_logprobs, a.kl_estimator) * mask
            if a.kl_placement == "in_reward":  # (never on the single pass: see `single_pass`)
                rewards = rewards - a.kl_coef * kl
        values = (response_values(self.critic, **batch.tensors()) * mask if self.critic is not None
                  else torch.zeros_like(mask))
        advantages, returns = self.estimator(rewards, values, mask, gamma=a.gamma, lam=a.lam, group_size=G,
                                             scale=a.adv_scale, eps=a.adv_eps, all_reduce=self._reduce(), valid=valid)
        # λ diagnostics: GAE(λ) against Monte-Carlo (λ=1) on the same rollouts
        mc_advantages = core.gae(rewards, values, mask, a.gamma, 1.0)[0] if self.estimator.needs_critic else None
        if G > 1:  # on the task's verdict (before shaping) of the scorable rows: per row, [B]
            zero_std = core.zero_std_groups(batch.verdicts(), G, valid=valid).repeat_interleave(G)
        return Experience(
            batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask, loss_mask=self._loss_mask(batch, zero_std),
            advantages=(core.masked_whiten(advantages, stat_mask, all_reduce=self._reduce())
                        if a.whiten_advantages else advantages),
            old_values=values, returns=returns, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, rollout=batch,
            rollout_logprobs=batch.rollout_logprobs,
            rewards=rewards, raw_advantages=advantages, mc_advantages=mc_advantages,
            zero_std_rows=None if zero_std is None else zero_std.float(), rollout_entropy=rollout_entropy, kl=kl)

    def _loss_mask(self, batch: RolloutBatch, zero_std: torch.Tensor | None) -> torch.Tensor:
        """``[B, T]`` the mask of the tokens in the loss: rows of zero-variance groups (``zero_std [B]``, with
        ``zero_variance_filter``), truncated completions (``overlong_filter``) and unscorable ones left out."""
        a, mask = self.algo, batch.mask
        keep = torch.ones(batch.size, dtype=torch.bool, device=mask.device)
        if zero_std is not None and a.zero_variance_filter:  # ScaleRL: identical rewards contribute nothing
            keep &= ~zero_std
        if a.overlong_filter:  # DAPO: truncated completions are left out of the loss
            keep &= batch.finished
        keep &= batch.valid_rows()  # unscorable completions (task.on_reward_error=skip): no loss
        return mask * keep[:, None].to(mask.dtype)

    # ------------------------------------------------------------------ step 5: update
    def _minibatch_loss(self, mb: Experience, denominator: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, dict, ActorForward]:
        """The actor's loss on ``mb``, its metrics and its forward's log-probs and entropy (detached);
        ``denominator``: the aggregation denominator of the whole minibatch over all workers (see
        `_denominator`), None = ``mb``'s own. ``mb`` is left as it is."""
        a, mask = self.algo, mb.loss_mask
        agg = dict(agg=a.loss_agg, group_size=a.num_generations, max_len=self.max_new_tokens)
        red = dict(group_size=agg["group_size"], max_len=agg["max_len"], denominator=denominator)
        logits = response_logits(self.actor, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.mask,
                                 fp32=self.fp32_logits, temperature=self.temperature)
        logprobs = core.logprobs_from_logits(logits, mb.response_ids)
        # single pass (see `single_pass`): on-policy, logπ_old = sg(logπ_θ), so ρ = 1 with its gradient
        old_logprobs = logprobs.detach() if mb.needs_old_logprobs else mb.old_logprobs
        weights, is_metrics = self._rollout_is_weights(mb, old_logprobs)  # the rollout correction (none: None)
        # the registered loss takes exactly its `uses` from the config and aggregates its per-token losses once
        loss, metrics = self.policy_loss_fn(logprobs, old_logprobs, mb.advantages, mask, config=a,
                                            denominator=denominator, weights=weights, **agg)
        metrics = {"policy_loss": loss.detach(), **metrics, **is_metrics}
        if a.entropy_coef > 0:
            entropy = core.entropy_from_logits(logits)
            loss = loss - a.entropy_coef * core.aggregate(entropy, mask, a.loss_agg, **red)
        else:
            with torch.no_grad():
                entropy = core.entropy_from_logits(logits.detach())
        entropy = entropy.detach()
        metrics["entropy"] = core.masked_mean(entropy, mb.mask)
        if self.has_reference and a.kl_placement == "in_loss":
            kl_loss = core.aggregate(core.kl_estimate(logprobs, mb.ref_logprobs, a.kl_estimator), mask, a.loss_agg,
                                     **red)
            loss = loss + a.kl_coef * kl_loss
            metrics["kl_loss"] = kl_loss.detach()
        return loss, metrics, ActorForward(logprobs.detach(), entropy)

    def _critic_loss(self, m: Experience, den: torch.Tensor) -> tuple[torch.Tensor, dict, None]:
        """The critic's value loss on micro-batch ``m`` (token-mean over all workers' tokens: ``den``)."""
        values = response_values(self.critic, m.prompt_ids, m.prompt_mask, m.response_ids, m.mask)
        vloss, vmetrics = core.value_loss(values, m.old_values, m.returns, m.loss_mask,
                                          clip_eps=self.algo.value_clip_eps, denominator=den)
        return vloss, {**vmetrics, "value_loss": vloss.detach()}, None

    def update(self, exp: Experience) -> dict[str, list[torch.Tensor]]:
        """``ppo_epochs`` passes of shuffled minibatches, each one optimizer step of the actor (and one of
        the critic) accumulated over micro-batches (`_accumulated_step`); returns every minibatch's metrics.
        On the single pass (``exp.old_logprobs`` None) the actor's forward gives ``exp``'s old log-probs,
        rollout entropy and KL diagnostic, stored once its step is done."""
        a = self.algo
        opts = self._optimizers()
        g = step_generator(self.seed, self.iteration, salt=1)
        acc: dict[str, list[torch.Tensor]] = defaultdict(list)
        single_pass = exp.needs_old_logprobs
        actor_params = list(self.actor.parameters())
        critic_params = list(self.critic.parameters()) if self.critic is not None else []
        for _ in range(a.ppo_epochs):
            for idx in self._minibatches(exp.size, g):
                idx = idx.to(exp.mask.device)
                mb = exp.take(idx)
                micro = [r.to(idx.device) for r in self._micro_slices(idx.shape[0])]
                step = self._accumulated_step(opts[0], actor_params, "train/policy_loss", mb, micro, a.loss_agg,
                                              self._minibatch_loss)
                if single_pass:  # the one minibatch's forward is the rollout's scoring pass
                    for rows, forward in step.forwards:
                        exp.store_first_pass(idx[rows], forward.logprobs, forward.entropy)
                metrics = {**step.metrics, "grad_norm": step.grad_norm}
                if self.critic is not None:
                    critic = self._accumulated_step(opts[1], critic_params, "train/value_loss", mb, micro,
                                                    "token-mean", self._critic_loss)
                    metrics.update(critic.metrics, critic_grad_norm=critic.grad_norm)
                for k, v in metrics.items():
                    acc[k].append(v.float())
        if single_pass:
            exp.store_first_pass_kl(a.kl_estimator)
        return acc

    # ------------------------------------------------------------------ one RL iteration
    def training_step(self, iteration, batch_idx):
        self._start_iteration(int(iteration))
        t0 = time.perf_counter()
        batch, draws, signal_frac = self.next_rollout()  # step 1 (with an off-policy lag: the generator's batch)
        self._check_scored(batch)
        t_rollout = time.perf_counter() - t0
        exp = self.make_experience(batch)  # steps 2-4
        acc = self.update(exp)  # step 5
        removed = self._remove_solved_prompts(batch)
        self.push_weights()  # the off-policy generator gets this update's weights (and prompt pool)
        step_seconds = time.perf_counter() - t0
        metrics = iteration_metrics(exp, acc, has_critic=self.critic is not None)  # step 6
        n_tokens = float(batch.mask.sum().item())
        self.total_tokens += n_tokens
        self.total_seconds += step_seconds
        metrics.update({"train/skipped_steps": float(self.skipped_steps),
                        "perf/total_tokens": self.total_tokens, "perf/total_seconds": self.total_seconds,
                        "train/gen_batches_drawn": float(draws), "train/prompt_pool_size": float(self.pool.size),
                        "train/prompts_removed": float(removed), "train/policy_lag": float(self.policy_lag)})
        metrics.update(throughput_metrics(n_tokens, step_seconds, t_rollout, batch.reward_seconds,
                                          self.generator_seconds))
        if signal_frac is not None:
            metrics["train/drawn_groups_with_signal"] = signal_frac
        self._log_iteration(metrics, step_seconds)

    def _start_iteration(self, iteration: int) -> None:
        self.iteration = iteration
        if self._pending_rng is not None:  # resumed: the random state of the checkpoint
            from rlexp.modules.checkpoint import set_rng_state
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def _remove_solved_prompts(self, batch: RolloutBatch) -> int:
        """ScaleRL's no-positive-resampling: solved prompts leave the training pool for good (on every
        worker: the pools stay equal). Returns how many left it."""
        a = self.algo
        if not a.no_positive_resampling:
            return 0
        return self.pool.remove_solved(batch, a.num_generations, a.pass_reward, a.pass_rate_threshold,
                                       gather=self._gather())

    def _gather(self):
        """The all-gather of a Python object over the workers, handed to `PromptPool.remove_solved`
        (None: one worker)."""
        ws = self.world[1]
        if ws == 1:
            return None

        def gather(obj):
            import torch.distributed as dist
            parts = [None] * ws
            dist.all_gather_object(parts, obj)
            return parts
        return gather

    def _log_iteration(self, metrics: dict[str, float], step_seconds: float) -> None:
        """Log the iteration's metrics (averaged over workers; rank 0 logs) at step = iterations completed,
        and evaluate when due."""
        metrics = self.all_mean_metrics(metrics)
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

    # ------------------------------------------------------------------ run state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Everything a resumed run needs to continue exactly: saved at an iteration boundary (see
        `rlexp.modules.checkpoint`), so ``iteration`` counts the iterations completed."""
        from rlexp.modules.checkpoint import rng_state
        logger = self.logger
        checkpoint["rlexp_state"] = {
            "iteration": self.iteration + 1, "max_steps": self.max_steps, "pool": self.pool.state_dict(), "total_tokens": self.total_tokens,
            "total_seconds": self.total_seconds, "skipped_steps": self.skipped_steps, "bad_steps": dict(self.bad_steps),
            "rng": rng_state(), "pipeline": self.pipeline_state(), "mlflow_run_id": getattr(logger, "run_id", None) if logger is not None else None,
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
            self._pipeline_resume = state.get("pipeline")  # the off-policy batches in flight (rlexp.modules.pipelined)
