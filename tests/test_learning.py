"""The product promise: the default experiment learns visibly on a CPU (slow: a real training run)."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from rlexp.cli import main


@pytest.mark.slow
def test_default_experiment_raises_eval_reward_by_0_2(mlflow_uri, in_tmp):
    """`rlexp train` with no overrides (bar where results go): eval/reward_mean at the end is at least
    0.2 above the warm start's (step 0). Builds the default warm start in this session's cache."""
    assert main(["train", f"tracking.uri={mlflow_uri}", "tracking.experiment=learning",
                 "trainer.progress_bar=false"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("learning").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "eval/reward_mean")
    start = next(m.value for m in history if m.step == 0)
    end = max(history, key=lambda m: m.step)
    assert end.step == 150
    assert end.value >= start + 0.2, f"eval/reward_mean {start:.3f} -> {end.value:.3f}"
    assert run.data.metrics["train/explained_variance"] > 0.0  # the critic learned something


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "gspo", "scalerl"])
def test_critic_free_algorithms_learn_within_the_default_run_length(algorithm, in_tmp):
    """`rlexp train algorithm=NAME`: the final greedy evaluation is above the warm start's."""
    from rlexp.train import compose, run

    module = run(compose([f"algorithm={algorithm}", "tracking=none", "trainer.progress_bar=false"]))
    evals = [h["eval/reward_mean"] for h in module.history if "eval/reward_mean" in h]
    assert module.iteration + 1 == 150
    assert evals[-1] >= evals[0] + 0.05, f"{algorithm}: eval/reward_mean {evals}"
