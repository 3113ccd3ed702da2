"""The showcase sweeps of docs/sweeps.md (lambda_bias_variance, algorithms): their grids, enough seeds for the
intervals to separate, equal completions per iteration across the compared algorithms, and
benchmarks/showcase.py's reward at equal generated tokens."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf

from rlexp.cli import SWEEPS_DIR
from rlexp.compare.runs import RunRecord
from rlexp.train import compose

ROOT = Path(__file__).resolve().parent.parent


def _grid(name: str) -> dict[str, list[str]]:
    params = OmegaConf.load(SWEEPS_DIR / f"{name}.yaml").hydra.sweeper.params
    return {k: str(v).split(",") for k, v in params.items()}


def _jobs(grid: dict[str, list[str]]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


def test_lambda_sweep_runs_lambda_from_td_to_monte_carlo_with_five_seeds():
    grid = _grid("lambda_bias_variance")
    assert grid == {"algorithm.lam": ["0", "0.5", "1.0"], "algorithm.gamma": ["1.0"],
                    "seed": [str(s) for s in range(5)]}
    assert _jobs(grid) == 15  # the header's 3 × 5
    assert "3 × 5 = 15 jobs" in (SWEEPS_DIR / "lambda_bias_variance.yaml").read_text()
    cfg = compose(["+sweeps=lambda_bias_variance"])
    assert cfg.algorithm.name == "ppo" and cfg.task.name == "running_sum" and cfg.trainer.max_steps == 60
    # the showcase's warm start (0.25), not the task's own (0.45): docs/sweeps.md's figures were measured from it
    assert cfg.model.warmstart.target_accuracy == 0.25
    assert compose(["task=running_sum"]).model.warmstart.target_accuracy == 0.45


def test_algorithm_sweep_samples_equal_completions_per_iteration():
    grid = _grid("algorithms")
    assert grid["algorithm"] == ["ppo", "grpo", "dapo", "scalerl"] and len(grid["seed"]) >= 5
    assert _jobs(grid) == 20 and "4 × 5 = 20 jobs" in (SWEEPS_DIR / "algorithms.yaml").read_text()
    per_iteration = set()
    for algo in grid["algorithm"]:
        cfg = compose(["+sweeps=algorithms", f"algorithm={algo}"])
        assert cfg.trainer.max_steps == 60
        per_iteration.add(cfg.algorithm.prompts_per_step * cfg.algorithm.num_generations)
    assert per_iteration == {64}


def _showcase():
    spec = importlib.util.spec_from_file_location("showcase", ROOT / "benchmarks" / "showcase.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(evals, tokens) -> RunRecord:
    return RunRecord(run_id="r", name="r", status="FINISHED", start_time=0, params={}, tags={}, metrics={},
                     histories={"eval/reward_mean": evals, "perf/total_tokens": tokens})


def test_reward_at_equal_tokens_interpolates_between_the_evaluations_around_the_budget():
    showcase = _showcase()
    # evaluations at steps 0, 2, 4; 100 tokens per iteration
    run = _run([(0, 0.2), (2, 0.4), (4, 0.8)], [(s, 100.0 * s) for s in range(1, 5)])
    assert showcase.reward_at(run, 0) == 0.2
    assert abs(showcase.reward_at(run, 100) - 0.3) < 1e-12
    assert abs(showcase.reward_at(run, 300) - 0.6) < 1e-12
    assert showcase.reward_at(run, 400) == 0.8
    assert showcase.reward_at(run, 401) is None  # past the run's last evaluation


def test_redrawn_batches_count_as_generated_tokens():
    showcase = _showcase()
    run = _run([(0, 0.2), (2, 0.6)], [(1, 100.0), (2, 200.0)])
    run.histories["train/gen_batches_drawn"] = [(1, 3.0), (2, 1.0)]  # iteration 1 drew 3 batches (DAPO)
    assert showcase.generated_tokens(run) == [(1, 300.0), (2, 400.0)]
    assert abs(showcase.reward_at(run, 200) - 0.4) < 1e-12
