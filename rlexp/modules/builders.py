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


def _load_tokenizer(cfg, task, model_dir: Path):
    """The tokenizer of ``model_dir`` (or of its GGUF file); it must have a chat template if the task uses one,
    and a character tokenizer must have every character of the task's texts."""
    from rlexp.models import ModelLoadError, check_characters, load_tokenizer, source_gguf_file

    m = cfg.model
    tokenizer = load_tokenizer(model_dir, trust_remote_code=m.trust_remote_code,
                               gguf_file=source_gguf_file(m, model_dir))
    if task.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"task.chat_template=true: the tokenizer in {model_dir} has no chat template "
                             f"(use an instruct model, or set task.chat_template=false)")
    check_characters(tokenizer, task.texts(), source=str(model_dir))
    return tokenizer


def _load_policy(cfg, task, model_dir: Path, tokenizer=None, *, lora: bool = True):
    """``(tokenizer, policy)`` from ``model_dir`` (its GGUF file when ``model.gguf_file`` names one); the policy
    in train mode (``from_pretrained`` returns eval mode; dropout is already disabled), with activation
    checkpointing and LoRA adapters as ``model.gradient_checkpointing`` / ``model.lora`` ask
    (``lora=False``: the caller wraps it later with ``apply_lora``)."""
    from rlexp.models import apply_lora, enable_gradient_checkpointing, load_causal_lm, source_gguf_file

    m = cfg.model
    if tokenizer is None:
        tokenizer = _load_tokenizer(cfg, task, model_dir)
    model = load_causal_lm(model_dir, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                           gguf_file=source_gguf_file(m, model_dir))
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora:
        model = apply_lora(model, m.lora)
    return tokenizer, model.train()


@MODULE_BUILDERS.register("online")
def build_online(cfg, task, model_dir: Path):
    """PPO and the GRPO family: actor (from ``model_dir``), critic and reference as the config asks."""
    from rlexp.models import ValueModel, apply_lora
    from rlexp.modules.data import iteration_loader
    from rlexp.modules.engine import engine_options
    from rlexp.modules.online import OnlineRLModule

    m, a = cfg.model, cfg.algorithm
    tokenizer, actor = _load_policy(cfg, task, model_dir, lora=False)
    critic = None
    if ADVANTAGE_ESTIMATORS.get(a.advantage).needs_critic:  # e.g. gae; the GRPO family builds none
        # from the actor before LoRA wraps it: the critic trains all its weights
        critic = ValueModel.from_causal_lm(actor, reinit=a.critic_init == "random", seed=cfg.seed).train()
    actor = apply_lora(actor, m.lora).train()
    # kl_coef 0: no reference pass at all; LoRA: the actor with its adapters disabled, no copy
    lora_reference = a.kl_coef > 0 and m.lora.enabled
    reference = copy.deepcopy(actor) if a.kl_coef > 0 and not lora_reference else None
    module = OnlineRLModule(algo=a, rollout=cfg.rollout, actor=actor, tokenizer=tokenizer, task=task, critic=critic,
                            reference=reference, lora_reference=lora_reference, seed=cfg.seed,
                            max_steps=cfg.trainer.max_steps,
                            eval_every=cfg.trainer.eval_every, num_samples_logged=cfg.trainer.num_samples_logged,
                            fp32_logits=m.fp32_logits, max_bad_steps=cfg.trainer.max_bad_steps,
                            max_unscored_steps=cfg.trainer.max_unscored_steps,
                            micro_batch_size=cfg.hardware.get("micro_batch_size"))
    module.configure_engine(cfg.rollout.get("engine", "hf"), engine_options(cfg))  # built when first used
    module.configure_pipeline(cfg.rollout.get("off_policy_lag", 0))  # k ≥ 1: forked when training starts
    return module, iteration_loader(cfg.trainer.max_steps)


# ------------------------------------------------------------------ offline algorithms (automatic optimization)
def _offline_common(cfg, task, model_dir: Path, tokenizer=None):
    """Tokenizer, policy (train mode) and the run-contract arguments shared by the offline modules."""
    m = cfg.model
    tokenizer, model = _load_policy(cfg, task, model_dir, tokenizer)
    run = dict(seed=cfg.seed, max_steps=cfg.trainer.max_steps, eval_every=cfg.trainer.eval_every,
               num_samples_logged=cfg.trainer.num_samples_logged, fp32_logits=m.fp32_logits,
               max_new_tokens=cfg.rollout.max_new_tokens or task.max_new_tokens)
    return tokenizer, model, run


@MODULE_BUILDERS.register("dpo")
def build_dpo(cfg, task, model_dir: Path):
    """DPO: the policy (from ``model_dir``), a frozen reference copy only when reference log-probs are not
    precomputed (with LoRA, the policy with its adapters disabled instead), and the preference pairs: read
    and validated now from ``algorithm.data.path``, or generated by the policy when the fit starts. The
    module provides its loader."""
    from rlexp.modules.dpo import DPOModule
    from rlexp.modules.preference_data import load_preferences

    a = cfg.algorithm
    tokenizer = _load_tokenizer(cfg, task, model_dir)
    pairs, skipped = None, []
    if a.data.path:  # validated before the model is loaded
        pairs, skipped = load_preferences(a.data.path, skip_invalid=a.data.skip_invalid, tokenizer=tokenizer)
    tokenizer, model, run = _offline_common(cfg, task, model_dir, tokenizer)
    # LoRA: the policy with its adapters disabled is the reference, no copy
    lora_reference = cfg.model.lora.enabled and not a.precompute_ref_logps
    reference = None if a.precompute_ref_logps or lora_reference else copy.deepcopy(model)
    module = DPOModule(algo=a, model=model, tokenizer=tokenizer, task=task, pairs=pairs, skipped=skipped,
                       reference=reference, lora_reference=lora_reference, rollout=cfg.rollout, **run)
    return module, None


@MODULE_BUILDERS.register("rejection_sampling")
def build_rejection_sampling(cfg, task, model_dir: Path):
    """Rejection-sampling fine-tuning: the policy only; the loader yields the ``max_steps`` step indices."""
    from rlexp.modules.data import iteration_loader
    from rlexp.modules.rejection import RejectionSamplingModule

    tokenizer, model, run = _offline_common(cfg, task, model_dir)
    module = RejectionSamplingModule(algo=cfg.algorithm, model=model, tokenizer=tokenizer, task=task,
                                     rollout=cfg.rollout, **run)
    return module, iteration_loader(cfg.trainer.max_steps)


@MODULE_BUILDERS.register("sft")
def build_sft(cfg, task, model_dir: Path):
    """SFT on the task's reference answers; the module provides its loader (``max_steps`` batches)."""
    from rlexp.modules.sft_run import SFTRunModule

    tokenizer, model, run = _offline_common(cfg, task, model_dir)
    return SFTRunModule(algo=cfg.algorithm, model=model, tokenizer=tokenizer, task=task, rollout=cfg.rollout,
                        **run), None
