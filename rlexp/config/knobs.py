"""Which algorithm knobs are inactive under a given config — so a sweep over a dead knob is visible.

``inactive_knobs(algo)`` maps each key of ``algorithm`` that cannot change anything under the rest of
the config to the reason (e.g. ``lam`` with a group estimator, ``critic_lr`` without a critic,
``kl_estimator`` with ``kl_coef: 0``, ``rollout_is_cap`` with ``rollout_correction: none``, a policy-loss
knob its ``policy_loss`` does not use, ``clip_eps`` when the update is one step on the whole rollout).  The
estimator's and the loss's own metadata (``uses``, ``needs_critic``) decide; no algorithm is named here.
``rlexp.train`` warns about every such key that was set on the command line or by a sweep, and tags the
MLflow run with them (``rlexp.dead_knobs``); so are ``task.reward`` keys while ``task.rewards`` replaces it
(``dead_task_overrides``).

``inactive_model_keys(model)`` does the same for the ``model`` group (LoRA keys while LoRA is off, warm-start
keys while the warm start is off); those keys are also left out of the run's MLflow params
(``rlexp.tracking.run_params``), since nothing they say happened; ``inactive_task_keys(task)`` likewise for
``task.reward`` while ``task.rewards`` replaces it.
"""
from __future__ import annotations


def inactive_knobs(algo) -> dict[str, str]:
    from rlexp.core import ADVANTAGE_ESTIMATORS, POLICY_LOSSES

    est = ADVANTAGE_ESTIMATORS.get(algo.advantage)
    losses = POLICY_LOSSES.entries()
    loss = losses[algo.policy_loss]
    out: dict[str, str] = {}
    for key in ("gamma", "lam", "adv_scale", "adv_eps"):
        if key not in est.uses:
            out[key] = f"advantage={algo.advantage} does not use it"
    if not est.needs_critic:
        for key in ("value_clip_eps", "critic_init", "critic_lr"):
            out[key] = f"advantage={algo.advantage} builds no critic"
    if algo.kl_coef == 0:
        for key in ("kl_estimator", "kl_placement"):
            out[key] = "kl_coef=0 (no reference model)"
    if not algo.dynamic_sampling:
        out["max_gen_batches"] = "dynamic_sampling=false"
    if algo.overlong_penalty == 0:
        for key in ("overlong_max_len", "overlong_buffer"):
            out[key] = "overlong_penalty=0"
    if not algo.no_positive_resampling:
        for key in ("pass_rate_threshold", "pass_reward"):
            out[key] = "no_positive_resampling=false"
    if algo.rollout_correction == "none":
        out["rollout_is_cap"] = "rollout_correction=none"
    for key in sorted({k for other in losses.values() for k in other.knobs} - set(loss.uses)):
        out[key] = f"policy_loss={algo.policy_loss} does not use it"
    if single_minibatch_epoch(algo):
        # the update starts from the policy that sampled and takes one step: ρ = 1 exactly, V = V_old; at ρ = 1
        # every registered loss's gradient is -Â∇logπ whatever its knobs (the PolicyLoss contract)
        why = ("one epoch over one minibatch (ppo_epochs=1, minibatch_size = prompts_per_step × num_generations): "
               "the ratio is exactly 1, so no clip or gate of the policy loss ever acts")
        keys = list(loss.uses)
        if est.needs_critic:
            keys.append("value_clip_eps")
        out.update({key: why for key in keys})
    return out


def single_minibatch_epoch(algo) -> bool:
    """Whether the update is one optimizer step on the whole rollout from the policy that sampled it, so
    that the importance ratio π_θ/π_old is exactly 1 (and the critic's values equal the rollout's)."""
    return algo.ppo_epochs == 1 and algo.minibatch_size >= algo.prompts_per_step * algo.num_generations


def dead_overrides(algo, overrides: list[str]) -> dict[str, str]:
    """``{"algorithm.lam": reason}`` for every inactive knob that ``overrides`` set explicitly.
    Only the online family is analysed (offline algorithms have none of these keys): ``{}`` otherwise."""
    if algo.get("module", "online") != "online":
        return {}
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    return {f"algorithm.{k}": why for k, why in inactive_knobs(algo).items() if f"algorithm.{k}" in keys}


def inactive_model_keys(model) -> dict[str, str]:
    """``{key or "prefix.": why it changes nothing}`` for the ``model`` group: every LoRA key but ``enabled``
    while LoRA is off, every warm-start key but ``enabled`` while the warm start is off, and then also
    ``model=hf``'s ``init_seed`` (it seeds the warm start only; the tiny model's seeds its random init)."""
    out: dict[str, str] = {}
    lora = model.get("lora")
    if lora is not None and not lora.get("enabled"):
        out["model.lora."] = "model.lora.enabled=false (LoRA is off)"
    ws = model.get("warmstart")
    if ws is not None and not ws.get("enabled"):
        out["model.warmstart."] = "model.warmstart.enabled=false (no warm start)"
        if model.get("name") != "tiny":
            out["model.init_seed"] = "model.warmstart.enabled=false (it seeds the warm start only)"
    return out


def inactive_entry(key: str, inactive: dict[str, str]) -> str | None:
    """The entry of ``inactive`` (`inactive_model_keys`) that covers ``key`` (``model.lora.r`` → ``model.lora.``),
    or None. The switches themselves (``*.enabled``) always count."""
    if key.endswith(".enabled"):
        return None
    return next((name for name in inactive if key == name or (name.endswith(".") and key.startswith(name))), None)


def dead_model_overrides(model, overrides: list[str]) -> dict[str, str]:
    """``{"model.lora.r": reason}`` for model keys set explicitly that change nothing (`inactive_model_keys`)."""
    inactive = inactive_model_keys(model)
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    return {k: inactive[name] for k in sorted(keys) if (name := inactive_entry(k, inactive)) is not None}


def inactive_task_keys(task) -> dict[str, str]:
    """``{"task.reward.": why}`` while ``task.rewards`` (several rewards with weights) is set: their weighted
    sum replaces ``task.reward``, whose keys then change nothing (``{}`` otherwise)."""
    if task is None or task.get("rewards") is None:
        return {}
    return {"task.reward.": "task.rewards is set: its weighted sum replaces task.reward"}


def dead_task_overrides(task, overrides: list[str]) -> dict[str, str]:
    """``{"task.reward._target_": reason}`` for ``task.reward`` keys set explicitly that change nothing
    (`inactive_task_keys`)."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    return {k: why for k in sorted(keys) for name, why in inactive_task_keys(task).items()
            if k == name.rstrip(".") or k.startswith(name)}
