"""Building the LightningModule of a run: a registry keyed by ``algorithm.module``.

Each builder takes ``(cfg, task, model_dir)`` and returns ``(module, train_dataloader or None)``
(``None``: the module provides its own ``train_dataloader``). Every module keeps rlexp's run
contract: ``history`` (every logged metrics dict, with its ``"step"``), ``last_eval`` (the latest
evaluation, with ``eval/reward_mean``), and ``pending_samples`` (sample tables to log).
"""
from __future__ import annotations

import copy
from pathlib import Path

from rlexp.core import ADVANTAGE_ESTIMATORS, Registry

MODULE_BUILDERS = Registry("algorithm module")


@MODULE_BUILDERS.register("online")
def build_online(cfg, task, model_dir: Path):
    """PPO and the GRPO family: actor (from ``model_dir``), critic and reference as the config asks."""
    from rlexp.models import ValueModel, load_causal_lm, load_tokenizer
    from rlexp.modules.data import iteration_loader
    from rlexp.modules.online import OnlineRLModule

    m, a = cfg.model, cfg.algorithm
    tokenizer = load_tokenizer(model_dir, trust_remote_code=m.trust_remote_code)
    actor = load_causal_lm(model_dir, dtype=m.dtype, trust_remote_code=m.trust_remote_code)
    critic = None
    if ADVANTAGE_ESTIMATORS.get(a.advantage).needs_critic:  # e.g. gae; the GRPO family builds none
        critic = ValueModel.from_causal_lm(actor, reinit=a.critic_init == "random", seed=cfg.seed)
    reference = copy.deepcopy(actor) if a.kl_coef > 0 else None  # kl_coef 0: no reference pass at all
    actor.train()  # from_pretrained returns eval mode; dropout is already disabled
    if critic is not None:
        critic.train()
    module = OnlineRLModule(algo=a, rollout=cfg.rollout, actor=actor, tokenizer=tokenizer, task=task, critic=critic,
                            reference=reference, seed=cfg.seed, max_steps=cfg.trainer.max_steps,
                            eval_every=cfg.trainer.eval_every, num_samples_logged=cfg.trainer.num_samples_logged,
                            fp32_logits=m.fp32_logits)
    return module, iteration_loader(cfg.trainer.max_steps)
