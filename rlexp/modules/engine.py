"""The online module's rollout engine (``rollout.engine``), in one mixin: built, kept in sync, seeded, closed.

``rollout.engine=hf`` (the default): `rollout_engine` and `eval_engine` give None and the policy's own
``generate`` samples, exactly as it always did. ``rollout.engine=vllm``: a `rlexp.rollout.engines.vllm` engine,
built on first use in the process that uses it (so under DDP every worker builds its own, after the process
group exists, and drives it on its share of the prompts), from the policy's config and current weights
(`rlexp.models.weights.policy_state_dict`: a LoRA policy's merged ones). Its weights are replaced by the
policy's (`sync_engine`) before it samples whenever an optimizer step happened since the last sync (Lightning's
``global_step``; every worker syncs its own engine); each rollout is seeded with
``derive_seed(seed, iteration, ROLLOUT_ENGINE, draw)``; the greedy evaluation uses the same engine; it is
closed when the fit ends (``teardown``).
"""
from __future__ import annotations

from rlexp.core.seeding import ROLLOUT_ENGINE, derive_seed


def engine_options(cfg) -> dict:
    """The keyword arguments of the ``rollout.engine`` engine (``rollout.vllm``'s keys), from the run's config."""
    if cfg.rollout.get("engine", "hf") != "vllm":
        return {}
    v = cfg.rollout.vllm
    return dict(dtype=str(v.dtype), kv_cache_gib=float(v.kv_cache_gib),
                gpu_memory_utilization=float(v.gpu_memory_utilization), enforce_eager=bool(v.enforce_eager),
                max_num_seqs=int(v.max_num_seqs), sleep_between_rollouts=bool(v.sleep_between_rollouts))


class RolloutEngines:
    """Mixin of a module with ``actor``, ``tokenizer``, ``seed`` and ``iteration``."""
    engine_kind: str = "hf"
    engine_kwargs: dict = {}
    _engine = None
    _engine_step: int | None = None  # the optimizer step whose weights the engine holds (None: unknown)

    def configure_engine(self, kind: str, options: dict) -> None:
        """Sample with the ``kind`` engine (``rollout.engine``), built with ``options`` when first used."""
        self.engine_kind, self.engine_kwargs = kind, dict(options)

    def rollout_engine(self, draw: int = 0):
        """The engine for this iteration's ``draw``-th rollout, holding the current weights and seeded for it;
        None: the policy's own ``generate``."""
        if self.engine_kind == "hf":
            return None
        engine = self._ready_engine()
        engine.reseed(derive_seed(self.seed, self.iteration, ROLLOUT_ENGINE, draw))
        return engine

    def eval_engine(self):
        """The engine of the greedy evaluation (the rollouts' one, holding the current weights); None: ``generate``."""
        return None if self.engine_kind == "hf" else self._ready_engine()

    def _optimizer_steps(self) -> int | None:
        trainer = getattr(self, "_trainer", None)
        return None if trainer is None else int(trainer.global_step)

    def _ready_engine(self):
        if self._engine is None:
            from rlexp.models.weights import policy_state_dict
            from rlexp.rollout.engines import build_engine

            self._engine = build_engine(self.engine_kind, model=self.actor, tokenizer=self.tokenizer,
                                        state_dict=policy_state_dict(self.actor), device=self.device,
                                        **self.engine_kwargs)
            self._engine_step = self._optimizer_steps()
        elif self._engine_step is None or self._engine_step != self._optimizer_steps():
            self.sync_engine()
        return self._engine

    def sync_engine(self) -> None:
        """Give the engine the policy's current weights."""
        from rlexp.models.weights import policy_state_dict

        self._engine.load_weights(policy_state_dict(self.actor))
        self._engine_step = self._optimizer_steps()

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine, self._engine_step = None, None

    def teardown(self, stage: str) -> None:
        self.close_engine()
        super().teardown(stage)
