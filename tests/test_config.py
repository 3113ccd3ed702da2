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


# ------------------------------------------------------------------ schemas by kind (issue 14 item 2)
def test_a_recipe_of_any_name_is_checked_by_its_module():
    """`algorithm.name` is only a tag: the recipe's `module` picks its schema."""
    with pytest.raises(ConfigError, match=r"^algorithm\.clip_eps=-1\.0 is out of range: must be > 0\.0$"):
        validate(compose(["algorithm=grpo", "algorithm.name=mine", "algorithm.clip_eps=-1"]))
    with pytest.raises(ConfigError, match=r"^algorithm\.beta=0\.0 is out of range"):
        validate(compose(["algorithm=dpo", "algorithm.name=mine", "algorithm.beta=0"]))


def test_the_refusal_of_a_renamed_recipe_comes_before_torch(tmp_path):
    """`rlexp train algorithm=grpo algorithm.name=mine algorithm.clip_eps=-1`: exit 2 with one line naming the
    key, decided before torch is imported (so well within a second), in a fresh process."""
    import subprocess
    import sys

    code = ("import sys\nfrom rlexp.cli import main\ntry:\n    main(['train', 'algorithm=grpo', 'algorithm.name=mine', "
            "'algorithm.clip_eps=-1', 'tracking=none'])\nexcept SystemExit as e:\n"
            "    print(e.code, 'torch' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["2", "False"], (p.stdout, p.stderr[-2000:])
    assert p.stderr.strip().splitlines() == ["rlexp: config error: algorithm.clip_eps=-1.0 is out of range: "
                                             "must be > 0.0"], p.stderr[-2000:]


def _user_recipes(root: Path) -> str:
    """my_conf/algorithm/{mine,my_dpo,bare}.yaml; returns the search-path override."""
    (root / "my_conf" / "algorithm").mkdir(parents=True)
    (root / "my_conf" / "algorithm" / "mine.yaml").write_text(
        "defaults:\n  - grpo\n  - _self_\n# my recipe\nname: mine\n# ε of the clipped ratio\nclip_eps: -0.5\n")
    (root / "my_conf" / "algorithm" / "my_dpo.yaml").write_text(
        "defaults:\n  - dpo\n  - _self_\n# my recipe\nname: my_dpo\n# a label smoothing\nlabel_smoothing: 0.7\n")
    (root / "my_conf" / "algorithm" / "bare.yaml").write_text("# my recipe\nname: bare\n# ε\nclip_eps: 0.2\n")
    return "hydra.searchpath=[file://./my_conf]"


def test_a_users_recipe_on_the_search_path_is_checked_by_its_module(in_tmp):
    searchpath = _user_recipes(in_tmp)
    with pytest.raises(ConfigError, match=r"^algorithm\.clip_eps=-0\.5 is out of range"):
        validate(compose([searchpath, "algorithm=mine"]))
    validate(compose([searchpath, "algorithm=mine", "algorithm.clip_eps=0.15"]))
    with pytest.raises(ConfigError, match=r"^algorithm\.label_smoothing=0\.7 is out of range: must be >= 0\.0 and < 0\.5"):
        validate(compose([searchpath, "algorithm=my_dpo"]))
    with pytest.raises(ConfigError) as e:  # no module, declared or inherited
        validate(compose([searchpath, "algorithm=bare"]))
    assert str(e.value) == ("algorithm.module is missing (algorithm=bare): every algorithm option is checked by its "
                            "module; known: online, dpo, rejection_sampling, sft")


def test_a_module_without_a_schema_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"^algorithm\.module=mine has no schema \(algorithm=ppo\): .*known: "
                                          r"online, dpo, rejection_sampling, sft$"):
        validate(compose(["algorithm.module=mine"]))


def test_every_module_builder_has_a_schema():
    from rlexp.config.schema import SCHEMAS
    from rlexp.modules.builders import MODULE_BUILDERS

    assert sorted(SCHEMAS["algorithm"]) == sorted(MODULE_BUILDERS.names())


def test_a_model_of_any_name_is_checked_by_its_kind():
    """Every model but `tiny` is loaded from `model.name_or_path` (rlexp.warmstart.prepare_model_dir), and is
    checked as such whatever its name."""
    validate(compose(["model=hf", "model.name=mine", "model.name_or_path=."]))
    with pytest.raises(ConfigError, match=r"^model\.dtype=float8 is not a known option"):
        validate(compose(["model=hf", "model.name=mine", "model.name_or_path=.", "model.dtype=float8"]))
    with pytest.raises(ConfigError, match=r"^model\.hidden_size: .*\(model\.name=mine: checked as HFModelConfig\)$"):
        validate(compose(["model.name=mine"]))  # tiny's keys under another name: it would be loaded from a path


def test_a_task_is_checked_by_its_class(in_tmp, monkeypatch):
    """The built-in Task classes by their schema whatever the option's name; a user's own Task class passes
    through to its own constructor (its keys are its own), once it can be imported."""
    with pytest.raises(ConfigError, match=r"^task\.num_eval=0 is out of range"):
        validate(compose(["task.name=mine", "task.num_eval=0"]))
    with pytest.raises(ConfigError, match=r"^task: Error locating target 'nowhere\.Task' \(task\._target_\)"):
        validate(compose(["task._target_=nowhere.Task"]))
    (in_tmp / "my_tasks.py").write_text("from rlexp.tasks.arithmetic import ArithmeticTask as MyTask\n")
    (in_tmp / "my_conf" / "task").mkdir(parents=True)
    (in_tmp / "my_conf" / "task" / "mine.yaml").write_text(
        "# my task\n_target_: my_tasks.MyTask\n# its name\nname: mine\n# a key of my own\ndifficulty: 3\n")
    monkeypatch.syspath_prepend(str(in_tmp))
    validate(compose(["hydra.searchpath=[file://./my_conf]", "task=mine"]))


# ------------------------------------------------------------------ ranges stated once (issue 14 item 4)
def test_no_yaml_comment_restates_a_range_its_schema_holds():
    """The schema is the one home of a key's range: the comment above a key with bounds says what it means."""
    from config_reference import RANGE_IN_PROSE, option_comments

    seen, restated = set(), []
    for path, key, comment, field in option_comments():
        bounds = {k: v for k, v in field.metadata.items() if k in ("ge", "gt", "le", "lt")}
        seen.add(key)
        if bounds and RANGE_IN_PROSE.search(comment):
            restated.append(f"{Path(path).relative_to(CONF_DIR)}: {key} {bounds}: {comment}")
    assert {"gamma", "lam", "clip_eps", "lora.r", "warmstart.target_accuracy", "micro_batch_size", "top_p",
            "max_bad_steps", "num_eval"} <= seen  # every kind of file is read
    assert not restated, "ranges restated in YAML comments (the schema states them):\n" + "\n".join(restated)


def test_range_in_prose_recognises_the_usual_forms():
    from config_reference import RANGE_IN_PROSE

    for text in ("(≥ 0)", "(> 0); null = none", "discount γ in [0, 1]; 1.0", "threshold in (0, 1]", "ε in [0, 0.5)",
                 "β ≥ 0; 0 skips", "c > 1 for negative advantages", "(≥ 1, divisible by num_heads)"):
        assert RANGE_IN_PROSE.search(text), text
    for text in ("0.24 -> 0.06 at lr 1e-4", "scoring ≥ threshold", "(≥ min_operand)", "two or more"):
        assert not RANGE_IN_PROSE.search(text), text


def test_the_config_reference_is_up_to_date():
    """docs/config.md: every key's type, range (from its schema), default and comment; regenerate it with
    `python tests/config_reference.py > docs/config.md`."""
    from config_reference import markdown

    written = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    assert written == markdown(), "docs/config.md is stale: python tests/config_reference.py > docs/config.md"


def test_the_config_reference_shows_each_range_from_the_schema():
    from config_reference import markdown

    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in markdown().splitlines()
            if line.startswith("| `")}
    assert rows["gamma"][2] == "[0, 1]" and rows["clip_eps"][2] == "> 0" and rows["label_smoothing"][2] == "[0, 0.5)"
    assert rows["top_p"][2] == "(0, 1]" and rows["max_bad_steps"][2] == "≥ 0" and rows["lora.r"][2] == "≥ 1"
    assert rows["kl_estimator"][2] == "a name in `rlexp.core.KL_ESTIMATORS`"
    assert "grpo: `0.04`" in rows["kl_coef"][4]  # what each recipe sets
