"""Sweeps: sweep files, MLflow parent/child runs, failing jobs, Optuna and parallel jobs."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import SWEEPS_DIR, main
from rlexp.train import compose

SMALL = [o for o in FAST if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=2", "trainer.eval_every=2"]


def _sweep_runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("rlexp.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("rlexp.role") == "job"]
    return client, parents, children


@pytest.mark.parametrize("name", sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
def test_every_sweep_file_composes_and_shows_its_command(name):
    text = (SWEEPS_DIR / f"{name}.yaml").read_text()
    assert f"rlexp sweep {name}" in "\n".join(text.splitlines()[:8])
    cfg = compose([f"+sweeps={name}"])
    assert cfg.sweep.name == name


def test_ppo_gae_sweep_makes_one_parent_and_nested_children(mlflow_uri, in_tmp):
    main(["sweep", "ppo_gae", *SMALL, "algorithm.clip_eps=0.1,0.2", "algorithm.gamma=1.0", "algorithm.lam=0,0.95",
          "seed=0", f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-gae"])
    client, parents, children = _sweep_runs(mlflow_uri, "sweep-gae")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["rlexp.sweep_name"] == "ppo_gae"
    assert parent.data.params["sweep.algorithm.clip_eps"] == "0.1,0.2"
    assert parent.data.params["sweep.algorithm.lam"] == "0,0.95"
    assert parent.data.metrics["sweep/jobs"] == 4 and parent.data.metrics["sweep/failed_jobs"] == 0
    sweep_id = parent.data.tags["rlexp.sweep_id"]
    grid = set()
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["rlexp.sweep_id"] == sweep_id and child.data.tags["rlexp.sweep_name"] == "ppo_gae"
        p = child.data.params
        grid.add((p["algorithm.clip_eps"], p["algorithm.gamma"], p["algorithm.lam"]))
        for name in ("summary/final_eval_reward", "summary/reward_auc", "summary/wall_seconds"):
            assert name in child.data.metrics
    assert grid == {(e, "1.0", lam) for e in ("0.1", "0.2") for lam in ("0", "0.95")}
    # `rlexp compare` over the real sweep: one row per configuration (4), n = 1 each
    from rlexp.compare.cli import main as compare_main

    assert compare_main(["--sweep", sweep_id, "--tracking-uri", mlflow_uri, "--experiment", "sweep-gae",
                         "--out", str(in_tmp / "report")]) == 0
    from rlexp.compare import load_runs, group_runs

    runs, parent_record = load_runs(mlflow_uri, experiment="sweep-gae", sweep=sweep_id)
    assert parent_record is not None and len(runs) == 4 and len(group_runs(runs)) == 4
    assert (in_tmp / "report" / "report.html").exists()
    assert "RLEXP_PARENT_RUN_ID" not in __import__("os").environ  # the sweep cleaned up after itself


def test_a_failing_job_is_recorded_and_the_others_go_on(mlflow_uri, in_tmp):
    main(["train", "-m", *SMALL, "algorithm.lam=0.5,7", f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-fail"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-fail")
    assert len(parents) == 1 and parents[0].data.tags["rlexp.sweep_name"] == "multirun"
    status = {c.data.params.get("algorithm.lam"): c.info.status for c in children}
    assert status == {"0.5": "FINISHED", "7": "FAILED"}  # a refused job keeps its params as given
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "algorithm.lam=7.0 is out of range" in failed.data.tags["rlexp.error"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["sweep/failed_jobs"] == 1


def test_a_sweep_whose_every_job_fails_is_failed(mlflow_uri, in_tmp):
    main(["train", "-m", *SMALL, "algorithm.gamma=3,4", f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-allfail"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-allfail")
    assert len(children) == 2 and all(c.info.status == "FAILED" for c in children)
    assert parents[0].info.status == "FAILED"


def test_optuna_sweep_runs_trials_as_nested_runs(mlflow_uri, in_tmp):
    main(["sweep", "ppo_optuna", *SMALL, "hydra.sweeper.n_trials=2", f"tracking.uri={mlflow_uri}",
          "tracking.experiment=sweep-optuna"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-optuna")
    assert len(parents) == 1 and len(children) == 2
    values = {c.data.params["algorithm.clip_eps"] for c in children}
    assert len(values) == 2 and all(0.05 <= float(v) <= 0.4 for v in values)


@pytest.mark.slow
def test_parallel_jobs_share_the_sqlite_store_safely(mlflow_uri, in_tmp):
    """joblib runs jobs in 2 worker processes writing to one SQLite store at once."""
    main(["train", "-m", *SMALL, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
          f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-joblib"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-joblib")
    assert len(parents) == 1 and len(children) == 4
    assert all(c.info.status == "FINISHED" and "eval/reward_mean" in c.data.metrics for c in children)
    assert {c.data.params["seed"] for c in children} == {"0", "1", "2", "3"}
    assert len({c.data.tags["mlflow.parentRunId"] for c in children}) == 1
