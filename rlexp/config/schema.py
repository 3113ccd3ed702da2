"""Structured-config schemas: one dataclass per kind of config group option (``SCHEMAS``, ``KINDS``).

The YAML files in ``conf/`` hold the defaults and the documentation of every key; the dataclasses
here hold the *types* and the *allowed values* (``metadata=``). ``rlexp.config.validate`` merges the
composed config into these schemas (OmegaConf rejects wrong types and unknown keys, naming the full
key) and then checks every constraint, before any model is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


def spec(*, ge=None, gt=None, le=None, lt=None, choices=None, registry=None, default=MISSING, default_factory=None):
    """A field with constraints: numeric bounds, a fixed set of choices, or a core registry name (on a list:
    for each of its elements)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, registry=registry).items()
            if v is not None}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class OnlineAlgorithmConfig:
    name: str = MISSING
    module: str = spec(choices=("online",))
    advantage: str = spec(registry="ADVANTAGE_ESTIMATORS")
    gamma: float = spec(ge=0.0, le=1.0)
    lam: float = spec(ge=0.0, le=1.0)
    whiten_advantages: bool = MISSING
    adv_scale: str = spec(choices=("group", "batch", "none"))
    adv_eps: float = spec(ge=0.0)
    policy_loss: str = spec(registry="POLICY_LOSSES")
    clip_eps: float = spec(gt=0.0)
    clip_eps_high: Optional[float] = spec(gt=0.0, default=None)
    dual_clip: Optional[float] = spec(gt=1.0, default=None)
    sapo_tau_pos: float = spec(gt=0.0)
    sapo_tau_neg: float = spec(gt=0.0)
    rollout_correction: str = spec(registry="ROLLOUT_CORRECTIONS")
    rollout_is_cap: float = spec(gt=1.0)
    off_policy_lag: int = spec(ge=0)
    loss_agg: str = spec(registry="AGGREGATIONS")
    entropy_coef: float = spec(ge=0.0)
    kl_coef: float = spec(ge=0.0)
    kl_estimator: str = spec(registry="KL_ESTIMATORS")
    kl_placement: str = spec(choices=("in_reward", "in_loss"))
    value_clip_eps: Optional[float] = spec(gt=0.0, default=None)
    critic_init: str = spec(choices=("actor", "random"))
    prompts_per_step: int = spec(ge=1)
    num_generations: int = spec(ge=1)
    minibatch_size: int = spec(ge=1)
    ppo_epochs: int = spec(ge=1)
    actor_lr: float = spec(gt=0.0)
    critic_lr: float = spec(gt=0.0)
    weight_decay: float = spec(ge=0.0)
    max_grad_norm: Optional[float] = spec(gt=0.0, default=None)
    dynamic_sampling: bool = MISSING
    max_gen_batches: int = spec(ge=1)
    zero_variance_filter: bool = MISSING
    overlong_penalty: float = spec(ge=0.0)
    overlong_max_len: Optional[int] = spec(ge=1, default=None)
    overlong_buffer: int = spec(ge=0)
    overlong_filter: bool = MISSING
    no_positive_resampling: bool = MISSING
    pass_rate_threshold: float = spec(gt=0.0, le=1.0)
    pass_reward: float = MISSING


@dataclass
class _OfflineAlgorithmCommon:
    """Keys every offline algorithm has: AdamW with a linear warm-up to a constant rate, its batch."""
    name: str = MISSING
    lr: float = spec(gt=0.0)
    warmup_steps: int = spec(ge=0)
    weight_decay: float = spec(ge=0.0)
    batch_size: int = spec(ge=1)
    max_grad_norm: Optional[float] = spec(gt=0.0, default=None)


@dataclass
class PreferenceDataConfig:
    path: Optional[str] = None
    skip_invalid: bool = MISSING
    num_prompts: int = spec(ge=1)
    samples_per_prompt: int = spec(ge=2)


@dataclass
class DPOConfig(_OfflineAlgorithmCommon):
    module: str = spec(choices=("dpo",))
    beta: float = spec(gt=0.0)
    loss_type: str = spec(registry="DPO_LOSSES")
    label_smoothing: float = spec(ge=0.0, lt=0.5)
    precompute_ref_logps: bool = MISSING
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)


@dataclass
class RejectionSamplingConfig(_OfflineAlgorithmCommon):
    module: str = spec(choices=("rejection_sampling",))
    num_prompts: int = spec(ge=1)
    samples_per_prompt: int = spec(ge=1)
    threshold: Optional[float] = None
    epochs_per_round: int = spec(ge=1)
    rounds: Optional[int] = spec(ge=1, default=None)


@dataclass
class SFTConfig(_OfflineAlgorithmCommon):
    module: str = spec(choices=("sft",))


@dataclass
class WarmStartConfig:
    enabled: bool = MISSING
    lr: float = spec(gt=0.0)
    warmup_steps: int = spec(ge=0)
    batch_size: int = spec(ge=1)
    max_steps: int = spec(ge=1)
    eval_every: int = spec(ge=1)
    target_accuracy: float = spec(ge=0.0, le=1.0)


@dataclass
class LoraConfig:
    enabled: bool = MISSING
    r: int = spec(ge=1)
    alpha: float = spec(gt=0.0)
    dropout: float = spec(ge=0.0, lt=1.0)
    target_modules: List[str] = MISSING


DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class _ModelCommon:
    """Keys every model option has (the warm start, loading, LoRA and memory settings)."""
    name: str = MISSING
    init_seed: int = spec(ge=0)
    dtype: str = spec(choices=DTYPES)
    fp32_logits: bool = MISSING
    trust_remote_code: bool = MISSING
    cache_dir: str = MISSING
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    gradient_checkpointing: bool = MISSING
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TinyModelConfig(_ModelCommon):
    hidden_size: int = spec(ge=1)
    intermediate_size: int = spec(ge=1)
    num_layers: int = spec(ge=1)
    num_heads: int = spec(ge=1)


@dataclass
class HFModelConfig(_ModelCommon):
    name_or_path: str = MISSING
    gguf_file: Optional[str] = None


@dataclass
class TaskEvalConfig:
    """``task.eval``: the pass@k evaluation (off while ``pass_k`` is empty). A list's bounds hold for each
    element; ``pass_samples`` ≥ the largest k is checked by ``rlexp.tasks.base.pass_at_k_settings``."""
    pass_k: List[int] = spec(ge=1, default_factory=list)
    pass_samples: Optional[int] = spec(ge=1, default=None)
    pass_prompts: Optional[int] = spec(ge=1, default=None)


@dataclass
class _TaskCommon:
    """Keys every task option has (rlexp.tasks.base.Task's own arguments): its name, token budget, reward,
    the pass@k evaluation."""
    _target_: str = MISSING
    name: str = MISSING
    max_new_tokens: int = spec(ge=1)
    on_reward_error: str = spec(choices=("raise", "skip"), default="raise")
    reward: Any = MISSING
    #: several rewards with weights, in place of ``reward`` (None: ``reward`` alone): each entry
    #: ``{_target_, weight, name?, ...}``, checked by ``rlexp.config.validate`` (a finite weight, a target that
    #: imports, names as ``reward_names`` makes them)
    rewards: Optional[List[Any]] = None
    eval: TaskEvalConfig = field(default_factory=TaskEvalConfig)


@dataclass
class ArithmeticTaskConfig(_TaskCommon):
    min_operand: int = spec(ge=0)
    max_operand: int = spec(ge=0)
    num_eval: int = spec(ge=1)
    split_seed: int = spec(ge=0)


@dataclass
class ArithmeticChatTaskConfig(ArithmeticTaskConfig):
    prompt_template: str = MISSING
    chat_template: bool = MISSING


@dataclass
class RunningSumTaskConfig(_TaskCommon):
    min_terms: int = spec(ge=2)
    max_terms: int = spec(ge=2)
    max_term: int = spec(ge=1)
    num_eval: int = spec(ge=1)
    split_seed: int = spec(ge=0)


@dataclass
class ReasoningGymTaskConfig(_TaskCommon):
    """``task=reasoning_gym``: the generator and its config are checked by the task (reasoning-gym's registry
    and config dataclasses, rlexp.tasks.reasoning_gym)."""
    dataset: str = MISSING
    config: Dict[str, Any] = field(default_factory=dict)
    seed: int = spec(ge=0)
    size: int = spec(ge=1)
    num_eval: int = spec(ge=1)
    chat_template: bool = MISSING
    system_prompt: Optional[str] = None


@dataclass
class DatasetTaskConfig(_TaskCommon):
    """``task=dataset``: prompts and answers from a local file (rlexp.tasks.dataset); the files, their fields and
    rows are checked when the task is built at start-up."""
    path: Optional[str] = None
    eval_path: Optional[str] = None
    eval_fraction: Optional[float] = spec(gt=0.0, lt=1.0, default=None)
    split_seed: int = spec(ge=0)
    prompt_field: str = MISSING
    answer_field: str = MISSING
    template: Optional[str] = None
    system_prompt: Optional[str] = None
    chat_template: bool = MISSING
    limit: Optional[int] = spec(ge=1, default=None)
    skip_invalid: bool = MISSING


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: str = spec(choices=("cpu", "gpu", "cuda", "mps", "auto"))
    devices: int = spec(ge=1)
    num_nodes: int = spec(ge=1)
    strategy: str = MISSING
    precision: str = spec(choices=("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"))
    num_threads: Optional[int] = spec(ge=1, default=None)
    micro_batch_size: Optional[int] = spec(ge=1, default=None)


@dataclass
class TrackingConfig:
    name: str = spec(choices=("mlflow", "server", "none"))
    uri: Optional[str] = None
    experiment: str = MISSING
    run_name: Optional[str] = None
    tags: dict = field(default_factory=dict)
    log_model: bool = False


@dataclass
class CheckpointConfig:
    every_n_steps: int = spec(ge=1)
    dir: Optional[str] = None
    keep_all: bool = False


@dataclass
class VLLMConfig:
    """``rollout.vllm``: the colocated vLLM engine (``rollout.engine=vllm``; rlexp.rollout.engines.vllm)."""
    gpu_memory_utilization: float = spec(gt=0.0, le=1.0)
    kv_cache_gib: float = spec(gt=0.0)
    enforce_eager: bool = MISSING
    dtype: str = spec(choices=("auto",) + DTYPES)
    sleep_between_rollouts: bool = MISSING
    max_num_seqs: int = spec(ge=1)


@dataclass
class RolloutConfig:
    temperature: float = spec(gt=0.0)
    top_p: float = spec(gt=0.0, le=1.0)
    max_new_tokens: Optional[int] = spec(ge=1, default=None)
    engine: str = spec(choices=("hf", "vllm"), default="hf")
    off_policy_lag: int = spec(ge=0, default=0)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class TrainerConfig:
    max_steps: int = spec(ge=1)
    eval_every: int = spec(ge=1)
    num_samples_logged: int = spec(ge=0)
    progress_bar: bool = MISSING
    max_bad_steps: int = spec(ge=0)
    max_unscored_steps: int = spec(ge=1)
    save_policy: bool = True


def model_kind(node) -> str:
    """``tiny`` (the embedded model, built locally) or ``hf`` (every other option: loaded from
    ``model.name_or_path``), the rule ``rlexp.warmstart.prepare_model_dir`` builds the model by."""
    return "tiny" if node.get("name") == "tiny" else "hf"


#: group -> {the kind of an option -> its schema}; ``"*"``: one schema for every option of the group. What
#: an option's kind is, is said by ``KINDS``: so a user's own recipe (``algorithm.module: online``, or
#: inherited with ``defaults: [grpo]``) is checked like rlexp's own.
SCHEMAS: dict[str, dict[str, type]] = {
    "algorithm": {"online": OnlineAlgorithmConfig, "dpo": DPOConfig, "rejection_sampling": RejectionSamplingConfig,
                  "sft": SFTConfig},
    "model": {"tiny": TinyModelConfig, "hf": HFModelConfig},
    "task": {"rlexp.tasks.arithmetic.ArithmeticTask": ArithmeticTaskConfig,
             "rlexp.tasks.arithmetic_chat.ArithmeticChatTask": ArithmeticChatTaskConfig,
             "rlexp.tasks.dataset.DatasetTask": DatasetTaskConfig,
             "rlexp.tasks.reasoning_gym.ReasoningGymTask": ReasoningGymTaskConfig,
             "rlexp.tasks.running_sum.RunningSumTask": RunningSumTaskConfig},
    "hardware": {"*": HardwareConfig},
    "tracking": {"*": TrackingConfig},
    "rollout": {"*": RolloutConfig},
    "trainer": {"*": TrainerConfig},
    "checkpoint": {"*": CheckpointConfig},
}

#: group -> (the key that says an option's kind, how it is read from the group's node)
KINDS = {
    "algorithm": ("algorithm.module", lambda node: node.get("module")),  # the LightningModule builder
    "model": ("model.name", model_kind),
    "task": ("task._target_", lambda node: node.get("_target_")),  # the Task class
}

#: groups whose options may be of a kind without a schema: a user's own Task class (``task._target_``)
#: takes its own keys, which its constructor checks when the task is built
OPEN_KINDS = {"task": "your own Task class, whose constructor checks its keys"}


#: what ``task.rewards[i].name`` may be: it ends metric names (``train/reward/<name>``)
REWARD_NAME = r"[A-Za-z0-9_.-]+"


def reward_names(explicit: list, defaults: list[str]) -> list[str]:
    """The metric name of each ``task.rewards`` component: its ``name`` when given (given names must be distinct
    and match ``REWARD_NAME``), else its function's ``__name__`` (``defaults``), with ``_2``, ``_3``... added
    when another component already has that name. ``ValueError`` naming ``task.rewards[i].name``."""
    import re

    taken: dict[str, int] = {}
    for i, name in enumerate(explicit):
        if name is None:
            continue
        if not isinstance(name, str) or not re.fullmatch(REWARD_NAME, name):
            raise ValueError(f"task.rewards[{i}].name={name!r} must be a non-empty metric name of letters, digits, "
                             f"'_', '.' or '-'")
        if name in taken:
            raise ValueError(f"task.rewards[{i}].name={name} is already the name of task.rewards[{taken[name]}]: "
                             f"each component needs its own name (its metrics are train/reward/<name>)")
        taken[name] = i
    out = []
    for name, default in zip(explicit, defaults):
        if name is None:
            name, n = default, 1
            while name in taken:
                n += 1
                name = f"{default}_{n}"
            taken[name] = len(out)
        out.append(name)
    return out
