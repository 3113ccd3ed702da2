"""The online module's off-policy pipeline (``rollout.off_policy_lag = k``), in one mixin.

``k = 0`` (the default): `next_rollout` is the module's own ``collect_rollout``, as it always was. ``k ≥ 1``:
a generator process (`rlexp.rollout.pipeline`), forked when training starts, runs the module's
``collect_rollout`` (sampling, scoring, DAPO's dynamic sampling and overlong shaping) for iteration ``j``
with the weights of iteration ``j - k`` while the trainer updates on iteration ``j - k``'s batch… so the
batch trained at iteration ``i`` was sampled by the policy of iteration ``i - k`` exactly
(``train/policy_lag``; the first ``k`` iterations train on batches of the initial policy).

What a version carries (`_version_payload`): the actor's *trainable* parameters (all of them; with LoRA only
the adapters, the frozen base never changes) and the prompt pool's state after the iteration's
no-positive-resampling removals, so the generator's state at version ``v`` is the trainer's at iteration
``v``. Its sampling is seeded per batch from ``(seed, j)`` (``ROLLOUT_PIPELINE``), so the batches do not depend
on the processes' timing: the same seed gives the same run. The rest of the iteration is the synchronous
one: the trainer's old log-probs are those of its current weights (the *proximal* policy of the decoupled
objective, Hilton et al. 2021), the critic's values are its current ones, and ``algorithm.rollout_correction``
weighs each token by π_prox/π_sampler.

Checkpoints hold the batches in flight (`pipeline_state`): at the boundary after iteration ``i`` the next
``k`` batches were sampled with weights the checkpoint no longer has, so they are saved, and a resumed run
trains on exactly them and forks a generator that continues from iteration ``i + 1 + k``.
"""
from __future__ import annotations

import time
from dataclasses import fields

import torch

from rlexp.core.seeding import ROLLOUT_PIPELINE, derive_seed, seeded
from rlexp.rollout import RolloutBatch
from rlexp.rollout.pipeline import OffPolicyGenerator, Produced


def batch_to_state(batch: RolloutBatch) -> dict:
    """A rollout batch as plain tensors, lists and numbers (what ``torch.load(weights_only=True)`` reads)."""
    return {f.name: getattr(batch, f.name) for f in fields(batch)}


class OffPolicyRollouts:
    """Mixin of the online module (``actor``, ``pool``, ``seed``, ``iteration``, ``max_steps``, ``collect_rollout``,
    the engine mixin's ``_engine``/``sync_engine``)."""
    off_policy_lag: int = 0
    pipeline: OffPolicyGenerator | None = None
    policy_lag: int = 0  # iteration − weights version of the batch being trained
    generator_seconds: float | None = None  # how long the generator took to make that batch (None: no generator)
    _pipeline_resume: list | None = None  # a resumed run's in-flight batches, from its checkpoint

    def configure_pipeline(self, lag: int) -> None:
        self.off_policy_lag = int(lag)

    # ------------------------------------------------------------------ trainer side
    def start_pipeline(self) -> None:
        """Fork the generator (``k ≥ 1``) from the trainer as it is now: the weights of version ``iteration``."""
        if self.off_policy_lag < 1 or self.pipeline is not None:
            return
        start = self.iteration
        buffered = [Produced(int(j), int(v), self._result_from_state(r)) for j, v, r in self._pipeline_resume or []]
        first = max([p.iteration + 1 for p in buffered], default=start)
        self.pipeline = OffPolicyGenerator(self._produce_rollout, self._apply_version, lag=self.off_policy_lag,
                                           start=start, first=max(first, start), stop=self.max_steps)
        for p in buffered:
            self.pipeline.put_back(p)
        self._pipeline_resume = None
        self.pipeline.start()

    def next_rollout(self):
        """``(batch, draws, signal fraction)`` of the current iteration: sampled now, or by the generator."""
        if self.pipeline is None:
            self.policy_lag = 0
            return self.collect_rollout()
        got = self.pipeline.get(self.iteration)
        self.policy_lag = self.iteration - got.version
        *result, self.generator_seconds = got.result
        return tuple(result)

    def push_weights(self) -> None:
        """After iteration ``i``'s update: version ``i + 1`` to the generator."""
        if self.pipeline is not None:
            self.pipeline.send(self.iteration + 1, self._version_payload())

    def pipeline_state(self) -> list:
        """``[(iteration, version, batch state)]``: the batches of the ``k`` iterations after the current one
        (waiting for the generator to finish them), for the checkpoint."""
        if self.pipeline is None:
            return []
        nxt = self.iteration + 1
        got = self.pipeline.peek(range(nxt, min(nxt + self.off_policy_lag, self.max_steps)))
        return [(p.iteration, p.version, self._result_to_state(p.result)) for p in got]

    def close_pipeline(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def teardown(self, stage: str) -> None:
        self.close_pipeline()
        super().teardown(stage)

    def _version_payload(self) -> dict:
        params = {n: p.detach().to("cpu", copy=True) for n, p in self.actor.named_parameters() if p.requires_grad}
        return {"params": params, "pool": self.pool.state_dict()}

    # ------------------------------------------------------------------ generator side (the forked process)
    def _produce_rollout(self, j: int):
        """``(batch, draws, signal fraction, seconds it took)`` of iteration ``j``."""
        self.iteration = j  # the prompts, the engine's seeds and the shaping are iteration j's
        t0 = time.perf_counter()
        with seeded(derive_seed(self.seed, j, ROLLOUT_PIPELINE), self.device):
            return (*self.collect_rollout(), time.perf_counter() - t0)

    @torch.no_grad()
    def _apply_version(self, payload: dict) -> None:
        own = dict(self.actor.named_parameters())
        for name, value in payload["params"].items():
            own[name].copy_(value)
        self.pool.load_state_dict(payload["pool"])
        if self._engine is not None:  # a vLLM engine built in this process: give it the new weights
            self.sync_engine()

    # ------------------------------------------------------------------ checkpoint form
    @staticmethod
    def _result_to_state(result) -> tuple:
        batch, *rest = result
        return (batch_to_state(batch), *rest)

    @staticmethod
    def _result_from_state(state) -> tuple:
        batch, *rest = state
        return (RolloutBatch(**batch), *rest)
