"""Every algorithm YAML trains through the CLI; YAMLs and registries agree; recipe-level behaviours."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp import core
from rlexp.cli import main
from rlexp.config import ConfigError, validate
from rlexp.train import CONF_DIR, compose, run

# the online family (module: online, declared in ppo.yaml and inherited); the offline algorithms
# (dpo, rejection_sampling, sft) are covered by tests/test_offline.py
ALGORITHMS = sorted(p.stem for p in (Path(CONF_DIR) / "algorithm").glob("*.yaml")
                    if yaml.safe_load(p.read_text()).get("module", "online") == "online")
GROUP = ["algorithm.prompts_per_step=2", "algorithm.num_generations=4", "algorithm.minibatch_size=4"]


def test_the_family_is_there():
    assert set(ALGORITHMS) >= {"ppo", "grpo", "dr_grpo", "dapo", "gspo", "scalerl", "rloo"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_through_the_cli(algorithm, mlflow_uri, in_tmp):
    overrides = [*FAST, f"algorithm={algorithm}", f"tracking.uri={mlflow_uri}", f"tracking.experiment=alg-{algorithm}"]
    if algorithm != "ppo":
        overrides += GROUP
    assert main(["train", *overrides]) == 0
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name(f"alg-{algorithm}").experiment_id])[0]
    assert run_.info.status == "FINISHED" and run_.data.tags["algorithm"] == algorithm
    m = run_.data.metrics
    for name in ("train/reward_mean", "train/reward_std", "train/policy_loss", "train/clipfrac_low",
                 "train/clipfrac_high", "train/is_ratio_mean", "train/gen_batches_drawn", "train/prompt_pool_size",
                 "eval/reward_mean", "train/rollout_mismatch_kl", "train/rollout_logprob_absdiff_max",
                 "perf/reward_seconds"):
        assert name in m, name
    assert 0 <= m["train/rollout_mismatch_kl"] < 1e-4, m["train/rollout_mismatch_kl"]  # the trainer scores what was sampled
    has_critic = core.ADVANTAGE_ESTIMATORS.get(compose([f"algorithm={algorithm}"]).algorithm.advantage).needs_critic
    assert ("train/value_loss" in m) == has_critic
    if algorithm != "ppo":
        assert "train/frac_zero_std_groups" in m


def _algorithm_yamls() -> dict[str, dict]:
    return {name: compose([f"algorithm={name}"]).algorithm for name in ALGORITHMS}


def test_yamls_name_only_registered_pieces_and_every_piece_is_reachable():
    used = {"ADVANTAGE_ESTIMATORS": set(), "POLICY_LOSSES": set(), "AGGREGATIONS": set(), "KL_ESTIMATORS": set()}
    keys = {"ADVANTAGE_ESTIMATORS": "advantage", "POLICY_LOSSES": "policy_loss", "AGGREGATIONS": "loss_agg",
            "KL_ESTIMATORS": "kl_estimator"}
    for name, algo in _algorithm_yamls().items():
        for registry, key in keys.items():
            assert algo[key] in getattr(core, registry), f"{name}.yaml: {key}={algo[key]} is not registered"
            if key != "kl_estimator" or algo.kl_coef > 0:  # an estimator under kl_coef 0 is not really used
                used[registry].add(algo[key])
    for registry in keys:
        assert used[registry] == set(getattr(core, registry).names()), f"{registry}: unreachable pieces"


def test_every_yaml_documents_its_paper_and_command():
    for path in (Path(CONF_DIR) / "algorithm").glob("*.yaml"):
        head = path.read_text().splitlines()[:6]
        assert any(f"rlexp train algorithm={path.stem}" in line for line in head), path.name
        assert yaml.safe_load(path.read_text()).get("name") == path.stem


@pytest.mark.parametrize("overrides, key", [
    (["algorithm=grpo", "algorithm.num_generations=1", "algorithm.minibatch_size=8"], "algorithm.num_generations"),
    (["algorithm=dapo", "algorithm.clip_eps_high=0.1"], "algorithm.clip_eps_high"),
    (["algorithm=scalerl", "algorithm.prompts_per_step=6", "algorithm.num_generations=4",
      "algorithm.minibatch_size=6"], "algorithm.minibatch_size"),
    (["algorithm=scalerl", "algorithm.dual_clip=3"], "algorithm.dual_clip"),
    (["algorithm=ppo", "algorithm.dynamic_sampling=true"], "algorithm.dynamic_sampling"),
    (["algorithm=dapo", "algorithm.overlong_max_len=2"], "algorithm.overlong_buffer"),
    (["algorithm=grpo", "algorithm.adv_scale=median"], "algorithm.adv_scale"),
])
def test_bad_combinations_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(overrides))


def test_a_dead_knob_is_warned_about_and_tagged(mlflow_uri, in_tmp, capsys):
    main(["train", *FAST, *GROUP, "algorithm=grpo", "algorithm.lam=0.5", "algorithm.critic_lr=1e-3",
          f"tracking.uri={mlflow_uri}", "tracking.experiment=dead-knob", "trainer.max_steps=1"])
    # Hydra's job logging writes to stdout (it replaces the root handlers, so caplog sees nothing)
    assert "algorithm.lam has no effect in this run: advantage=grpo does not use it" in capsys.readouterr().out
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name("dead-knob").experiment_id])[0]
    assert run_.data.tags["rlexp.dead_knobs"] == "algorithm.critic_lr, algorithm.lam"


def test_critic_free_algorithms_build_no_critic_and_kl_zero_no_reference(in_tmp):
    module = run(compose([*FAST, *GROUP, "algorithm=dapo", "tracking=none"]))
    assert module.critic is None and module.reference is None
    assert len(module.trainer.optimizers) == 1


def test_no_positive_resampling_removes_solved_prompts_for_good(in_tmp):
    # pass_reward 0: every completion passes, so every prompt trained on is removed after its iteration
    module = run(compose([*FAST, *GROUP, "algorithm=scalerl", "algorithm.pass_reward=0.0", "tracking=none",
                          "trainer.max_steps=3"]))
    sizes = [h["train/prompt_pool_size"] for h in module.history if "train/prompt_pool_size" in h]
    n = len(module.task.train_examples)
    assert sizes == [n - 2, n - 4, n - 6]
    assert len(module.pool.removed) == 6  # 3 iterations × 2 prompts, never served twice


def test_dynamic_sampling_draws_more_batches_when_groups_are_flat(in_tmp):
    # a weak warm start scores (almost) every completion 0: groups are flat, so DAPO keeps drawing
    module = run(compose([*FAST, *GROUP, "algorithm=dapo", "tracking=none", "algorithm.max_gen_batches=3"]))
    drawn = [h["train/gen_batches_drawn"] for h in module.history if "train/gen_batches_drawn" in h]
    flat = [h["train/frac_zero_std_groups"] for h in module.history if "train/frac_zero_std_groups" in h]
    assert drawn and len(flat) == len(drawn) == module.iteration + 1, (drawn, flat)
    assert all(1 <= d <= 3 for d in drawn)
    assert any(d > 1 for d in drawn) or all(f == 0 for f in flat)
