"""Start-up validation of a composed config: one line naming the key, the value and what is allowed.

``validate(cfg)`` runs before any model is built. Range and type checks import no torch; names that
must exist in a ``rlexp.core`` registry are checked last (that import costs ~2 s).
"""
from __future__ import annotations

import os
from pathlib import Path

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlexp.config.schema import SCHEMAS


class ConfigError(ValueError):
    """A config value that is out of range, of the wrong type, unknown or inconsistent."""


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value)


def _check_field(key: str, value: Any, meta: dict, registry_checks: list) -> None:
    if value is None or not meta:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}={_fmt(value)} is not a known option; allowed: {', '.join(meta['choices'])}")
    if "registry" in meta:
        registry_checks.append((key, value, meta["registry"]))
    bounds = []
    if "ge" in meta:
        bounds.append((value >= meta["ge"], f">= {meta['ge']}"))
    if "gt" in meta:
        bounds.append((value > meta["gt"], f"> {meta['gt']}"))
    if "le" in meta:
        bounds.append((value <= meta["le"], f"<= {meta['le']}"))
    if "lt" in meta:
        bounds.append((value < meta["lt"], f"< {meta['lt']}"))
    if not all(ok for ok, _ in bounds):
        allowed = " and ".join(text for _, text in bounds)
        if "ge" in meta and "le" in meta:
            allowed = f"in [{meta['ge']}, {meta['le']}]"
        raise ConfigError(f"{key}={_fmt(value)} is out of range: must be {allowed}")


def _check_node(prefix: str, node: DictConfig, schema: type, registry_checks: list) -> None:
    for f in dataclasses.fields(schema):
        value = node[f.name]
        key = f"{prefix}.{f.name}"
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
            _check_node(key, value, type(f.default_factory()), registry_checks)
            continue
        _check_field(key, value, dict(f.metadata), registry_checks)


def _typed(group: str, node: DictConfig, schema: type) -> DictConfig:
    """Merge a group's node into its schema: wrong types, unknown and missing keys fail here."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
        return merged
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{group}.{key}: {msg}" if key else f"{group}: {msg}") from None


def _check_registries(checks: list) -> None:
    if not checks:
        return
    import rlexp.core as core  # imports torch: done last

    for key, value, registry_name in checks:
        registry = getattr(core, registry_name)
        if value not in registry:
            raise ConfigError(f"{key}={value} is not registered; allowed: {', '.join(registry.names())}")


def _check_algorithm_pieces(a) -> None:
    """Combinations that depend on what the registered pieces are (after the registry check)."""
    from rlexp.core import ADVANTAGE_ESTIMATORS

    G = a.num_generations
    est = ADVANTAGE_ESTIMATORS.get(a.advantage)
    if not est.needs_critic and G < 2:  # every critic-free estimator compares completions of one prompt
        raise ConfigError(f"algorithm.num_generations={G} must be >= 2 with the group estimator "
                          f"algorithm.advantage={a.advantage}")
    for key in ("dynamic_sampling", "zero_variance_filter", "no_positive_resampling"):
        if a[key] and G < 2:
            raise ConfigError(f"algorithm.{key}=true needs groups: algorithm.num_generations={G} must be >= 2")
    if a.loss_agg == "prompt-mean" and a.minibatch_size % G:
        raise ConfigError(f"algorithm.minibatch_size={a.minibatch_size} must be a multiple of "
                          f"algorithm.num_generations={G} with loss_agg=prompt-mean (whole groups per minibatch)")
    if a.kl_coef > 0 and a.kl_placement == "in_loss" and a.kl_estimator == "k1":
        raise ConfigError("algorithm.kl_estimator=k1 with algorithm.kl_placement=in_loss has zero expected gradient "
                          "(E_π[∇log π] = 0), so algorithm.kl_coef would do nothing: use kl_estimator=k3 or k2, or "
                          "kl_placement=in_reward")
    if a.policy_loss == "cispo" and a.dual_clip is not None:
        raise ConfigError(f"algorithm.dual_clip={a.dual_clip} does not apply to policy_loss=cispo; set it to null")
    if a.overlong_max_len is not None and a.overlong_buffer > a.overlong_max_len:
        raise ConfigError(f"algorithm.overlong_buffer={a.overlong_buffer} must be <= "
                          f"algorithm.overlong_max_len={a.overlong_max_len}")


def _check_data_parallel(a, hw) -> None:
    """Batch sizes count completions over all workers; each worker needs a whole share."""
    world = hw.devices * hw.num_nodes
    G = a.num_generations
    if a.prompts_per_step % world:
        raise ConfigError(f"algorithm.prompts_per_step={a.prompts_per_step} must be a multiple of the number of "
                          f"workers hardware.devices × hardware.num_nodes = {world} (each samples its own share)")
    if a.minibatch_size % world:
        raise ConfigError(f"algorithm.minibatch_size={a.minibatch_size} must be a multiple of the number of "
                          f"workers hardware.devices × hardware.num_nodes = {world}")
    local = a.minibatch_size // world
    if a.loss_agg == "prompt-mean" and local % G:
        raise ConfigError(f"algorithm.minibatch_size={a.minibatch_size} over {world} workers leaves {local} "
                          f"completions per worker: with loss_agg=prompt-mean it must be a multiple of "
                          f"algorithm.num_generations={G} (whole groups)")
    mb = hw.get("micro_batch_size")
    if mb is not None:
        if local % mb:
            raise ConfigError(f"hardware.micro_batch_size={mb} must divide the per-worker minibatch "
                              f"algorithm.minibatch_size / workers = {local}")
        if a.loss_agg == "prompt-mean" and mb % G:
            raise ConfigError(f"hardware.micro_batch_size={mb} must be a multiple of algorithm.num_generations={G} "
                              f"with loss_agg=prompt-mean (whole groups)")


def _check_lora(lora) -> None:
    import importlib.util
    import sys

    modules = list(lora.target_modules)
    if not modules or not all(isinstance(x, str) and x for x in modules):
        raise ConfigError(f"model.lora.target_modules={modules} must name at least one module, e.g. [q_proj, v_proj]")
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"model.lora.enabled=true needs the `peft` package; install it with: "
                          f"{sys.executable} -m pip install peft")


def _check_combinations(cfg: DictConfig) -> None:
    a = cfg.get("algorithm")
    if a is not None and "minibatch_size" in a:
        batch = a.prompts_per_step * a.num_generations
        if batch % a.minibatch_size:
            raise ConfigError(
                f"algorithm.minibatch_size={a.minibatch_size} must divide prompts_per_step × num_generations "
                f"= {batch}")
        if a.clip_eps_high is not None and a.clip_eps_high < a.clip_eps:
            raise ConfigError(f"algorithm.clip_eps_high={a.clip_eps_high} must be >= algorithm.clip_eps={a.clip_eps}")
    t = cfg.get("tracking")
    if t is not None and t.get("name") == "server" and not t.get("uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("tracking=server needs the server's URL: tracking.uri=http://host:port "
                          "(or the environment variable MLFLOW_TRACKING_URI)")
    hw = cfg.get("hardware")
    if a is not None and hw is not None and "minibatch_size" in a:
        _check_data_parallel(a, hw)
    m = cfg.get("model")
    if m is not None and "hidden_size" in m and "num_heads" in m and m.hidden_size % m.num_heads:
        raise ConfigError(f"model.hidden_size={m.hidden_size} must be divisible by model.num_heads={m.num_heads}")
    if m is not None and m.get("name") in SCHEMAS["model"] and "name_or_path" in m:
        from rlexp.config.paths import ModelPathError, resolve_gguf_file, resolve_model_dir

        try:  # a directory, or pkg://<module>; and the GGUF file in it when model.gguf_file is set
            if m.get("gguf_file"):
                resolve_gguf_file(m.name_or_path, m.gguf_file)
            else:
                resolve_model_dir(m.name_or_path)
        except ModelPathError as e:
            raise ConfigError(str(e)) from None
    if m is not None and m.get("lora") is not None and m.lora.enabled:
        _check_lora(m.lora)
    t = cfg.get("task")
    if t is not None and "min_operand" in t and t.max_operand < t.min_operand:
        raise ConfigError(f"task.max_operand={t.max_operand} must be >= task.min_operand={t.min_operand}")


def validate(cfg: DictConfig) -> None:
    """Check every group of ``cfg`` against its schema; raise ``ConfigError`` on the first problem."""
    registry_checks: list = []
    for group, options in SCHEMAS.items():
        node = cfg.get(group)
        if node is None:
            raise ConfigError(f"{group}: missing from the config")
        name = node.get("name", None)
        schema = options.get("*") or options.get(name)
        if schema is None:
            continue
        typed = _typed(group, node, schema)
        _check_node(group, typed, schema, registry_checks)
    if not isinstance(cfg.get("seed"), int) or cfg.seed < 0:
        raise ConfigError(f"seed={_fmt(cfg.get('seed'))} must be an integer >= 0")
    resume = cfg.get("resume")
    if resume is not None and resume != "auto" and not Path(str(resume)).expanduser().is_file():
        raise ConfigError(f"resume={resume}: no such checkpoint file (a path to a .ckpt file, or `auto`)")
    _check_combinations(cfg)
    _check_registries(registry_checks)
    if "advantage" in cfg.algorithm:
        _check_algorithm_pieces(cfg.algorithm)
