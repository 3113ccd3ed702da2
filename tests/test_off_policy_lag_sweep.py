"""sweeps/off_policy_lag.yaml: ScaleRL (TIS) at lags {0, 1, 2, 4, 8} × three seeds, the lag reaching the run."""
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
