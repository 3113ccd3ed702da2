"""sweeps/off_policy_lag.yaml: ScaleRL (TIS) at lags {0, 1, 2, 4, 8} × three seeds, the lag reaching the run; and
benchmarks/off_policy_lag.py's per-run costs."""
from __future__ import annotations

from omegaconf import OmegaConf

from rlexp.cli import SWEEPS_DIR
from rlexp.train import compose


def test_the_lag_sweep_grid_and_its_header():
    params = OmegaConf.load(SWEEPS_DIR / "off_policy_lag.yaml").hydra.sweeper.params
    grid = {k: str(v).split(",") for k, v in params.items()}
    assert grid == {"rollout.off_policy_lag": ["0", "1", "2", "4", "8"], "seed": ["0", "1", "2"]}
    assert "5 × 3 = 15 jobs" in (SWEEPS_DIR / "off_policy_lag.yaml").read_text()


def test_each_job_is_scalerl_with_tis_at_its_lag():
    for k in (0, 8):
        cfg = compose(["+sweeps=off_policy_lag", f"rollout.off_policy_lag={k}"])
        assert cfg.algorithm.name == "scalerl" and cfg.algorithm.rollout_correction == "tis"
        assert cfg.rollout.off_policy_lag == k and cfg.trainer.max_steps == 100 and cfg.trainer.eval_every == 10


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "off_policy_lag.py"
    spec = importlib.util.spec_from_file_location("off_policy_lag_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_benchmark_reads_seconds_per_iteration_and_per_iteration_means(tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    bench = _bench()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("rlexp", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp)
    m = [Metric("perf/total_seconds", 0.5 * s, 0, s) for s in (1, 2, 3, 4)]
    m += [Metric("train/rollout_mismatch_kl", v, 0, s) for s, v in ((1, 0.0), (2, 0.02), (3, 0.04))]
    m.append(Metric("summary/wall_seconds", 9.0, 0, 4))
    client.log_batch(run.info.run_id, metrics=m)
    costs = bench.run_costs(client, client.get_run(run.info.run_id))
    assert costs == {"s/iteration": 0.5, "wall s": 9.0, "train/rollout_mismatch_kl": 0.02}
    assert bench._cell([0.1, 0.3], ".2f") == "0.20 [0.10–0.30]" and bench._cell([0.1], ".2f") == "0.10"
    assert bench._cell([], ".2f") == "—"
