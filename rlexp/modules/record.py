"""The run contract every rlexp LightningModule keeps, in one mixin.

``history`` holds every logged metrics dict with its ``"step"``; ``last_eval`` the latest greedy
evaluation (``eval/reward_mean``...), with the pass@k one when ``task.eval.pass_k`` asks for it;
``pending_samples`` the sample tables waiting to be logged as artifacts (``rlexp.tracking.RunArtifacts``).
Metrics go to the Lightning logger (MLflow) at an explicit step. The module provides ``policy_model``,
``tokenizer``, ``task``, ``max_new_tokens``, ``num_samples_logged``, ``seed`` and, where it samples,
``rollout_cfg`` (the pass@k evaluation samples at its temperature and top_p).
"""
from __future__ import annotations

import torch

from rlexp.core import pass_at_k
from rlexp.core.seeding import PASS_AT_K, derive_seed, seeded
from rlexp.rollout import evaluate, sample_correct


class RunRecorder:
    # ------------------------------------------------------------------ data parallelism
    @property
    def world(self) -> tuple[int, int]:
        """``(rank, world size)`` of this process; ``(0, 1)`` outside a distributed run."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all workers (a detached copy; ``t`` itself when there is one worker)."""
        return self._all_reduce(t, "SUM")

    def all_min(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s minimum over all workers (``t`` itself when there is one worker)."""
        return self._all_reduce(t, "MIN")

    def _all_reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        if self.world[1] == 1:
            return t
        import torch.distributed as dist
        out = t.detach().clone()
        dist.all_reduce(out, op=getattr(dist.ReduceOp, op))
        return out

    def all_mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the workers (every worker logs the same keys); a metric whose name
        ends in ``_max`` is a maximum, taken over the workers."""
        if self.world[1] == 1:
            return metrics
        keys = sorted(k for k in metrics if not k.endswith("_max"))
        vals = self.all_sum(torch.tensor([metrics[k] for k in keys], dtype=torch.float64,
                                         device=self.device)) / self.world[1]
        out = dict(zip(keys, vals.tolist()))
        maxima = sorted(k for k in metrics if k.endswith("_max"))
        if maxima:
            top = self._all_reduce(torch.tensor([metrics[k] for k in maxima], dtype=torch.float64,
                                                device=self.device), "MAX")
            out.update(zip(maxima, top.tolist()))
        return {k: out[k] for k in metrics}

    def init_record(self) -> None:
        self.history: list[dict] = []
        self.pending_samples: list[tuple[int, list[dict]]] = []
        self.last_eval: dict = {}
        self.already_logged: dict[str, int] = {}  # resumed: metric -> last step its MLflow run already holds

    def _log(self, metrics: dict, step: int) -> None:
        self.history.append({"step": step, **metrics})
        new = {k: v for k, v in metrics.items() if step > self.already_logged.get(k, -1)}
        if self.logger is not None and new:
            self.logger.log_metrics(new, step=step)

    def sampling(self):
        """The context of every generation (rollouts, the greedy and pass@k evaluations): outside autocast, so the
        sampler runs at the weights' dtype whatever ``hardware.precision`` does to the training step (``bf16-mixed``:
        Lightning autocasts the whole ``training_step``, where most evaluations and every rollout happen; the one
        before training does not), and ``train/rollout_mismatch_kl`` shows the bf16 trainer against it."""
        return torch.autocast(self.device.type, enabled=False)

    def eval_engine(self):
        """The rollout engine that decodes the greedy evaluation (`rlexp.rollout.engines`); None: the policy's
        own ``generate`` (modules with a ``rollout.engine`` override it: `rlexp.modules.engine`)."""
        return None

    def run_eval(self, step: int) -> dict:
        """Greedy evaluation of ``policy_model`` on the task's held-out prompts, logged at ``step``."""
        rank, ws = self.world
        examples = self.task.eval_examples[rank::ws]  # each worker its share; the sums are reduced
        with self.sampling():
            res = evaluate(self.policy_model, self.tokenizer, self.task, examples, max_new_tokens=self.max_new_tokens,
                           num_samples=self.num_samples_logged if rank == 0 else 0, engine=self.eval_engine())
        metrics = {"eval/reward_mean": res.reward_mean, "eval/accuracy": res.accuracy,
                   "eval/response_length": res.response_length, "eval/reward_errors": float(res.reward_errors)}
        if ws > 1:  # reward_mean: over the scorable completions of all workers (NaN when none)
            n = float(len(examples))
            scored = n - res.reward_errors
            sums = self.all_sum(torch.tensor([res.reward_mean * scored if scored else 0.0, scored, res.accuracy * n,
                                              res.response_length * n, n, float(res.reward_errors)],
                                             dtype=torch.float64, device=self.device)).tolist()
            metrics = {"eval/reward_mean": sums[0] / sums[1] if sums[1] else float("nan"),
                       "eval/accuracy": sums[2] / max(sums[4], 1.0),
                       "eval/response_length": sums[3] / max(sums[4], 1.0), "eval/reward_errors": sums[5]}
        metrics.update(self.component_eval_metrics(res, len(examples)))
        metrics.update(self.pass_at_k_metrics(step))
        self.last_eval = {"step": step, **metrics}
        if res.samples:
            self.pending_samples.append((step, res.samples))
        self._log(metrics, step)
        return metrics

    def component_eval_metrics(self, res, n: int) -> dict:
        """``eval/reward/<name>``: each ``task.rewards`` component's mean score over the scorable completions
        (of all workers; ``n`` this worker's completions). ``{}`` with a single ``task.reward``."""
        if self.world[1] == 1 or not res.component_means:
            return {f"eval/reward/{name}": mean for name, mean in res.component_means.items()}
        names, scored = list(res.component_means), float(n - res.reward_errors)
        sums = self.all_sum(torch.tensor([scored] + [res.component_means[k] * scored if scored else 0.0 for k in names],
                                         dtype=torch.float64, device=self.device)).tolist()
        return {f"eval/reward/{k}": (s / sums[0] if sums[0] else float("nan")) for k, s in zip(names, sums[1:])}

    def pass_at_k_metrics(self, step: int) -> dict:
        """``eval/pass_at_K`` for each k of ``task.pass_k`` (averaged over the prompts) and
        ``eval/sampled_reward_mean``: ``task.pass_samples`` completions of each of the first
        ``task.pass_prompts`` held-out prompts (each worker its share), sampled at the rollout's temperature and
        top_p under the run's PASS_AT_K seed of ``step`` (the global RNG streams are restored after it, so
        training is the same with it or without it), by the greedy evaluation's engine (``eval_engine``: the
        ``rollout.engine`` one, or the policy's ``generate``). ``{}`` when ``task.pass_k`` is empty."""
        task = self.task
        ks, n = getattr(task, "pass_k", None), getattr(task, "pass_samples", 0)
        if not ks:
            return {}
        rank, ws = self.world
        examples = task.eval_examples[:task.pass_prompts][rank::ws]
        r = getattr(self, "rollout_cfg", None)
        temperature, top_p = (float(r.temperature), float(r.top_p)) if r is not None else (1.0, 1.0)
        seed = derive_seed(self.seed, step, PASS_AT_K, draw=rank)
        engine = self.eval_engine()  # None: the policy's generate, drawing from the seeded global RNG
        if engine is not None:  # it seeds its own requests, from this stream; every rollout reseeds it again
            engine.reseed(seed)
        with seeded(seed, self.device), self.sampling():
            res = sample_correct(self.policy_model, self.tokenizer, task, examples, n=n,
                                 max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=top_p,
                                 engine=engine)
        scored = len(examples) * n - res.reward_errors
        sums = [sum(pass_at_k(n, c, k) for c in res.correct_counts) for k in ks]
        sums += [float(len(examples)), res.reward_mean * scored if scored else 0.0, float(scored)]
        if ws > 1:  # sums over every worker's prompts
            sums = self.all_sum(torch.tensor(sums, dtype=torch.float64, device=self.device)).tolist()
        prompts, reward_sum, scored = sums[len(ks):]
        out = {f"eval/pass_at_{k}": (s / prompts if prompts else float("nan")) for k, s in zip(ks, sums)}
        out["eval/sampled_reward_mean"] = reward_sum / scored if scored else float("nan")
        return out
