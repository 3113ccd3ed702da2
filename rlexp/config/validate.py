"""Start-up validation of a composed config: one line naming the key, the value and what is allowed.

``validate(cfg)`` runs before any model is built. Range and type checks import no torch; names that
must exist in a ``rlexp.core`` registry are checked last (that import costs ~2 s). A built-in task is
built once with the default reward (its own checks: a prompt pool the operand range can fill), and
``task.reward._target_`` must import, as must each ``task.rewards[i]._target_`` (with a finite ``weight``
and a name of its own). ``check_machine(cfg)`` then checks what this machine must offer
(CUDA for a GPU setting, a precision that runs as recorded, writable cache, checkpoint directories).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import dataclasses
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlexp.config.engines import check_rollout_engine
from rlexp.config.paths import DatasetError
from rlexp.config.precision import check_cpu_precision, runs_on_cpu
from rlexp.config.schema import KINDS, OPEN_KINDS, SCHEMAS, model_kind, reward_names


class ConfigError(ValueError):
    """A config value that is out of range, of the wrong type, unknown or inconsistent."""


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value)


def _check_field(key: str, value: Any, meta: dict, registry_checks: list) -> None:
    if value is None or not meta:
        return
    if isinstance(value, (list, ListConfig)):  # a list's constraints hold for each element
        for i, item in enumerate(value):
            _check_field(f"{key}[{i}]", item, meta, registry_checks)
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}={_fmt(value)} is not a known option; allowed: {', '.join(meta['choices'])}")
    if "registry" in meta:
        registry_checks.append((key, value, meta["registry"]))
    if isinstance(value, float) and not math.isfinite(value):  # nan compares false, inf passes `gt`
        raise ConfigError(f"{key}={_fmt(value)} must be a finite number")
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


def _typed(group: str, node: DictConfig, schema: type, picked: str = "") -> DictConfig:
    """Merge a group's node into its schema: wrong types, unknown and missing keys fail here (``picked``: by
    what the schema was chosen, said after the error)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
        return merged
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        raise ConfigError((f"{group}.{key}: {msg}" if key else f"{group}: {msg}") + picked) from None


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
    from rlexp.core import ADVANTAGE_ESTIMATORS, POLICY_LOSSES

    G = a.num_generations
    est = ADVANTAGE_ESTIMATORS.get(a.advantage)
    if est.needs_groups and G < 2:  # the estimator compares completions of one prompt
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
    for key, why in POLICY_LOSSES.entries()[a.policy_loss].incompatible.items():
        if a.get(key) is not None:
            raise ConfigError(f"algorithm.{key}={a[key]} does not apply to algorithm.policy_loss={a.policy_loss} "
                              f"({why}); set it to null")
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
    if m is not None and model_kind(m) == "hf":
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
    if t is not None and m is not None and model_kind(m) == "tiny" and t.get("chat_template") is True:
        raise ConfigError("task.chat_template=true: model=tiny's character tokenizer has no chat template (set "
                          "task.chat_template=false, or use model=hf with an instruct model)")


#: seeds reach numpy (``np.random.seed``, via Lightning's ``seed_everything``), which takes 32 bits
SEED_LIMIT = 2 ** 32


def check_writable_dir(key: str, path, env: str | None = None) -> None:
    """``path`` is a directory that this process can write into, or can create: the nearest part of it that
    exists is a directory where a file can be created (probed with a real file: permission bits say
    nothing for root, nor for a read-only filesystem)."""
    target = Path(str(path)).expanduser()
    name = f"{env}={path} ({key})" if env and os.environ.get(env) == str(path) else f"{key}={path}"
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{name}: {existing} is a file, not a directory; point it at a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".rlexp-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{name}: cannot be written ({e.strerror or type(e).__name__}: {existing}); point it "
                          f"at a writable directory") from None


def check_machine(cfg: DictConfig) -> None:
    """What this machine must offer a (valid) config before a run starts: the devices it asks for, a precision
    that runs as recorded, and the directories it will write (``rlexp.train.run`` calls it after ``validate``;
    a config can be valid and still be meant for another machine)."""
    hw = cfg.get("hardware")
    if hw is not None and "accelerator" in hw:
        import torch  # costs ~2 s; the registry checks import it anyway

        cuda = torch.cuda.is_available()
        if hw.accelerator in ("gpu", "cuda") and not cuda:
            raise ConfigError(f"hardware.accelerator={hw.accelerator} (hardware={hw.name}) needs CUDA, which this "
                              f"machine does not have (torch {torch.__version__}, torch.cuda.is_available() is "
                              f"False); use hardware=cpu")
        if hw.accelerator in ("gpu", "cuda") and hw.devices > torch.cuda.device_count():
            raise ConfigError(f"hardware.devices={hw.devices}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s)")
        if hw.accelerator == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("hardware.accelerator=mps needs Apple's MPS backend, which this machine does not have")
        on_cpu = runs_on_cpu(hw, cuda)
        if on_cpu and hw.precision == "16-mixed":
            raise ConfigError("hardware.precision=16-mixed needs a GPU: on CPU Lightning would run bf16-mixed "
                              "instead while the run records 16-mixed; use hardware.precision=bf16-mixed or 32-true")
        if on_cpu:
            check_cpu_precision(hw, ConfigError)  # bf16: only where the CPU has bf16 instructions
    m = cfg.get("model")
    if m is not None and m.get("cache_dir"):
        check_writable_dir("model.cache_dir", m.cache_dir, env="RLEXP_CACHE_DIR")
    ck = cfg.get("checkpoint")
    if ck is not None and ck.get("dir") and OmegaConf.select(cfg, "algorithm.module") == "online":
        check_writable_dir("checkpoint.dir", ck.dir)


def _check_task(cfg: DictConfig) -> None:
    """The built-in tasks' own checks (a prompt pool the operand range can fill, answers that fit the token
    budget; ``task=dataset``: its files exist and have the fields named, every row is well-formed, the split
    leaves prompts on both sides) run when the task is built; build it here, before any run exists, with the
    default reward (the configured one is imported when the run builds the task). A data file's error
    (``DatasetError``) is said as it is: it names the key or ``file:line``."""
    t = cfg.get("task")
    if t is None or t.get("_target_") not in SCHEMAS["task"]:  # a user's own Task checks itself when built
        return
    from hydra.utils import instantiate

    try:
        instantiate(t, reward=None, rewards=None)  # task.rewards: checked by _check_rewards
    except Exception as e:  # noqa: BLE001 - the task's own ValueError names the keys
        cause = e.__cause__ or e
        if isinstance(cause, DatasetError):  # names the key or file:line itself
            raise ConfigError(str(cause)) from None
        raise ConfigError(f"task: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from None


def import_path_hint(target: str) -> str:
    """Whether the current directory, where a user's reward module usually is, is on the import path:
    ``python -m rlexp`` puts it there, the ``rlexp`` command does not."""
    import sys

    cwd = Path.cwd().resolve()
    on_path = any(Path(p or ".").resolve() == cwd for p in sys.path if isinstance(p, str))
    top = target.split(".", 1)[0]
    here = next((f for f in (cwd / f"{top}.py", cwd / top) if f.exists()), None)
    found = f"{here.name} is in the current directory {cwd}, but " if here else ""
    if on_path:
        return f"the current directory {cwd} is on the import path; check the module and function names"
    return (f"{found}the current directory {cwd} is not on the import path (`rlexp train` does not add it; "
            f"`python -m rlexp train` does): run `PYTHONPATH=. rlexp train ...` or `python -m rlexp train ...`")


def _check_reward_target(t, key: str = "reward._target_"):
    """``task.reward._target_`` (or the task's own ``_target_``, ``key``) can be imported (the user's reward
    runs only when the task is built); returns what it names (None when ``key`` holds no string)."""
    target = OmegaConf.select(t, key, default=None)
    if not isinstance(target, str):
        return None
    from hydra._internal.utils import _locate

    try:
        return _locate(target)
    except Exception as e:  # noqa: BLE001 - ImportError, or an error raised by the module itself
        why = " ".join(str(e).split()).removeprefix(f"Error loading '{target}': ") or type(e).__name__
        raise ConfigError(f"task: Error locating target '{target}' (task.{key}): {why[:300]}; "
                          f"{import_path_hint(target)}") from None


def _check_rewards(t) -> None:
    """``task.rewards`` (when set): a non-empty list of ``{_target_, weight, name?, ...}``, each target importable,
    each weight a finite number, the names distinct (``schema.reward_names``)."""
    entries = t.get("rewards")
    if entries is None:
        return
    form = "{_target_: <reward function>, weight: <number>, name: <optional>, ...its arguments}"
    if not isinstance(entries, ListConfig) or not len(entries):
        raise ConfigError(f"task.rewards={_fmt(entries)} must be a non-empty list of {form} (null: task.reward alone)")
    explicit, defaults = [], []
    for i, e in enumerate(entries):
        key = f"task.rewards[{i}]"
        if not isinstance(e, DictConfig) or not isinstance(e.get("_target_"), str):
            raise ConfigError(f"{key}={_fmt(e)}: each component is {form}")
        fn = _check_reward_target(t, f"rewards[{i}]._target_")
        if "weight" not in e:
            raise ConfigError(f"{key}.weight is missing: each component needs a weight (a finite number, e.g. 1.0)")
        w = e.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"{key}.weight={_fmt(w)} must be a finite number")
        explicit.append(e.get("name"))
        defaults.append(getattr(fn, "__name__", None) or type(fn).__name__)
    try:
        reward_names(explicit, defaults)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _float_values(cfg: DictConfig) -> None:
    """Numbers the samplers pass on as floats (``rollout.temperature=2`` is 2.0: transformers refuses an int)."""
    r = cfg.get("rollout")
    if r is None:
        return
    for key in ("temperature", "top_p"):
        if isinstance(r.get(key), int) and not isinstance(r.get(key), bool):
            r[key] = float(r[key])


def _schema_of(group: str, node: DictConfig, options: dict) -> type | None:
    """The schema of a group's option, by its kind (``schema.KINDS``); ``None`` only for a kind of an open
    group that rlexp does not know (a user's own Task class)."""
    if "*" in options:
        return options["*"]
    key, kind_of = KINDS[group]
    kind = kind_of(node)
    if kind in options:
        return options[kind]
    if group in OPEN_KINDS and isinstance(kind, str) and kind:
        return None
    known = ", ".join(options) + (f"; or {OPEN_KINDS[group]}" if group in OPEN_KINDS else "")
    said = f"{key}={_fmt(kind)} has no schema" if kind is not None else f"{key} is missing"
    raise ConfigError(f"{said} ({group}={_fmt(node.get('name'))}): every {group} option is checked by its "
                      f"{key.split('.', 1)[1]}; known: {known}")


def validate(cfg: DictConfig) -> None:
    """Check every group of ``cfg`` against its schema; raise ``ConfigError`` on the first problem."""
    registry_checks: list = []
    for group, options in SCHEMAS.items():
        node = cfg.get(group)
        if node is None:
            raise ConfigError(f"{group}: missing from the config")
        schema = _schema_of(group, node, options)
        if schema is None:
            continue
        key = KINDS[group][0] if group in KINDS else ""
        picked = f" ({key}={_fmt(node.get(key.split('.', 1)[1]))}: checked as {schema.__name__})" if key else ""
        typed = _typed(group, node, schema, picked)
        _check_node(group, typed, schema, registry_checks)
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < SEED_LIMIT:
        raise ConfigError(f"seed={_fmt(cfg.get('seed'))} must be an integer in [0, 2^32 - 1] (numpy's seed range)")
    resume = cfg.get("resume")
    if resume is not None and resume != "auto" and not Path(str(resume)).expanduser().is_file():
        raise ConfigError(f"resume={resume}: no such checkpoint file (a path to a .ckpt file, or `auto`)")
    _check_combinations(cfg)
    check_rollout_engine(cfg, ConfigError)  # rollout.engine=vllm: installed, the architecture
    _check_task(cfg)
    if cfg.get("task") is not None:
        _check_reward_target(cfg.task, "_target_")
        _check_reward_target(cfg.task)
        _check_rewards(cfg.task)
    _check_registries(registry_checks)
    if "advantage" in cfg.algorithm:
        _check_algorithm_pieces(cfg.algorithm)
    _float_values(cfg)
