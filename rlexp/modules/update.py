"""The machinery of an online update: minibatches, micro-batches, global denominators, guarded steps.

`UpdateSteps` is a mixin of `OnlineRLModule` (like `RunRecorder`): the module's ``update`` loops over
``ppo_epochs`` × `_minibatches` and calls `_accumulated_step` once per optimizer (actor, critic). One
accumulated step on a minibatch:

1. the minibatch's aggregation denominator over all workers (`_denominator`), so that every micro-batch's
   ``numerator / denominator`` adds up to the loss of the global minibatch;
2. for each micro-batch (`_micro_slices`, rows per backward = ``hardware.micro_batch_size``): its loss and a
   guarded backward (`_backward`: a NaN/Inf loss on any worker skips the step on every worker);
3. `_optimizer_step`: grad-norm clip, then the step, unless the loss or the gradient norm is non-finite;
   ``trainer.max_bad_steps`` such steps in a row stop the run with an error naming the quantity.

`_rollout_is_weights` gives the actor's loss the rollout correction's per-token weights
(``algorithm.rollout_correction``, `rlexp.core.rollout_is_weights`).

The host provides ``algo``, ``world``, ``all_sum``, ``all_min``, ``manual_backward``, ``micro_batch_size``,
``local_minibatch_size``, ``max_bad_steps``, ``bad_steps``, ``skipped_steps`` and ``iteration``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch

from rlexp import core
from rlexp.modules.experience import Experience

#: ``loss_fn(micro_batch, denominator) -> (loss, metrics, forward)``; ``forward``: what the loss hands back
#: to the update besides its metrics (the actor: its detached log-probs and entropy; the critic: None)
LossFn = Callable[[Experience, torch.Tensor], tuple[torch.Tensor, dict, Any]]


class Step(NamedTuple):
    """One optimizer step on a minibatch: its metrics, the gradient norm (NaN for a step not applied) and,
    per micro-batch whose loss was computed, ``(rows of the minibatch, the loss's forward)``."""
    metrics: dict
    grad_norm: torch.Tensor
    forwards: list[tuple[torch.Tensor, Any]]


class UpdateSteps:
    def _optimizers(self) -> list:
        """The module's optimizers as a list (actor first, then the critic's when there is one)."""
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def _minibatches(self, B: int, g: torch.Generator) -> list[torch.Tensor]:
        """Row indices of each minibatch; whole groups are kept together when the size allows."""
        G, size = self.algo.num_generations, self.local_minibatch_size
        if G > 1 and size % G == 0:
            groups = torch.randperm(B // G, generator=g)
            order = (groups[:, None] * G + torch.arange(G)[None, :]).flatten()
        else:
            order = torch.randperm(B, generator=g)
        return [order[s:s + size] for s in range(0, B, size)]

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

    def _accumulated_step(self, opt, params, name: str, mb: Experience, micro: list[torch.Tensor], mode: str,
                          loss_fn: LossFn) -> Step:
        """One optimizer step on minibatch ``mb``: ``loss_fn`` on each micro-batch (rows ``micro``), every
        loss normalized by the whole minibatch's ``mode`` denominator over all workers and backpropagated,
        then the accumulated gradient applied."""
        den = self._denominator(mb.loss_mask, mode)
        opt.zero_grad(set_to_none=True)
        parts, forwards, bad = [], [], None
        for rows in micro:
            loss, metrics, forward = loss_fn(mb.take(rows) if len(micro) > 1 else mb, den)
            parts.append(metrics)
            forwards.append((rows, forward))
            bad = self._backward(loss, name)
            if bad:
                break
        return Step(self._combine(parts), self._optimizer_step(opt, params, name, bad), forwards)

    def _rollout_is_weights(self, mb: Experience, old_logprobs: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """The rollout correction of micro-batch ``mb``: detached weights ``[b, t]`` from ``π_old/π_sampler``
        on its loss mask and their metrics; ``(None, {})`` with ``algorithm.rollout_correction=none``."""
        mode = self.algo.rollout_correction
        if mode == "none":
            return None, {}
        if mb.rollout_logprobs is None:
            raise ValueError(f"algorithm.rollout_correction={mode} needs the sampler's log-prob of each sampled token "
                             "and this rollout did not record them (RolloutBatch.rollout_logprobs is None); use "
                             "algorithm.rollout_correction=none or a rollout engine that returns them")
        return core.rollout_is_weights(old_logprobs, mb.rollout_logprobs, mb.loss_mask, mode, self.algo.rollout_is_cap)

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
