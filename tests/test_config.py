"""Hydra composition and start-up validation: every bad value is one line naming key, value, allowed."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlexp.config import ConfigError, validate
from rlexp.train import CONF_DIR, compose


def test_default_config_composes_and_validates():
    cfg = compose()
    validate(cfg)
    assert cfg.algorithm.name == "ppo" and cfg.model.name == "tiny" and cfg.task.name == "arithmetic"
    assert cfg.hardware.name == "cpu" and cfg.tracking.name == "mlflow"


@pytest.mark.parametrize("overrides", [
    [], ["hardware=gpu"], ["hardware=ddp"], ["tracking=none"], ["model=hf", "model.name_or_path=."],
    ["task.reward._target_=rlexp.tasks.arithmetic.partial_credit"],
])
def test_group_options_validate(overrides):
    validate(compose(overrides))


@pytest.mark.parametrize("override, key", [
    ("algorithm.gamma=1.5", "algorithm.gamma"),
    ("algorithm.gamma=-0.1", "algorithm.gamma"),
    ("algorithm.lam=1.01", "algorithm.lam"),
    ("algorithm.clip_eps=0", "algorithm.clip_eps"),
    ("algorithm.clip_eps_high=0.1", "algorithm.clip_eps_high"),
    ("algorithm.dual_clip=1.0", "algorithm.dual_clip"),
    ("algorithm.ppo_epochs=0", "algorithm.ppo_epochs"),
    ("algorithm.prompts_per_step=0", "algorithm.prompts_per_step"),
    ("algorithm.minibatch_size=7", "algorithm.minibatch_size"),
    ("algorithm.kl_coef=-1", "algorithm.kl_coef"),
    ("algorithm.kl_estimator=k9", "algorithm.kl_estimator"),
    ("algorithm.kl_placement=nowhere", "algorithm.kl_placement"),
    ("algorithm.loss_agg=sum-of-everything", "algorithm.loss_agg"),
    ("algorithm.advantage=magic", "algorithm.advantage"),
    ("algorithm.policy_loss=magic", "algorithm.policy_loss"),
    ("algorithm.critic_init=zeros", "algorithm.critic_init"),
    ("algorithm.actor_lr=0", "algorithm.actor_lr"),
    ("algorithm.gamma=abc", "algorithm.gamma"),
    ("algorithm.ppo_epochs=1.5", "algorithm.ppo_epochs"),
    ("model.num_heads=3", "model.hidden_size"),
    ("model.dtype=float8", "model.dtype"),
    ("model.warmstart.target_accuracy=2", "model.warmstart.target_accuracy"),
    ("task.max_operand=-1", "task.max_operand"),
    ("hardware.precision=fp4", "hardware.precision"),
    ("hardware.num_threads=0", "hardware.num_threads"),
    ("rollout.temperature=0", "rollout.temperature"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("seed=-3", "seed"),
])
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(key) or f" {key}" in msg or msg.startswith(key.split(".")[0]), msg
    assert key.split(".")[-1] in msg


def test_unknown_key_is_refused_by_hydra():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="gama"):
        compose(["algorithm.gama=0.9"])


def test_unknown_group_option_is_refused():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="algorithm"):
        compose(["algorithm=nope"])


def test_missing_model_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.name_or_path"):
        validate(compose(["model=hf", f"model.name_or_path={tmp_path / 'absent'}"]))


def _keys_without_comment(path: Path) -> list[str]:
    """Keys of a YAML file whose line is not directly preceded by a comment line."""
    missing = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.]*):", line)
        if not m or m.group(2) in ("defaults", "hydra", "job"):
            continue
        if m.group(2).startswith("_") and m.group(2) != "_target_":
            continue
        prev = lines[i - 1].strip() if i else ""
        if not prev.startswith("#"):
            missing.append(f"{path.name}:{i + 1}:{m.group(2)}")
    return missing


def test_every_config_key_is_documented():
    files = sorted(Path(CONF_DIR).rglob("*.yaml"))
    assert files
    missing = [k for f in files for k in _keys_without_comment(f)]
    assert not missing, f"config keys without a comment above them: {missing}"


def test_every_schema_field_is_in_its_yaml():
    """Schemas and YAML files agree: no schema key is missing from the file it validates."""
    cfg = compose()
    from rlexp.config.schema import OnlineAlgorithmConfig, TinyModelConfig
    import dataclasses

    for node, schema in ((cfg.algorithm, OnlineAlgorithmConfig), (cfg.model, TinyModelConfig)):
        assert {f.name for f in dataclasses.fields(schema)} == set(OmegaConf.to_container(node)), schema
