"""The `rlexp` command end to end: MLflow params/metrics/tags/artifacts, FAILED runs, fast config errors.

Most runs go in-process through `rlexp.cli.main` (the function the console script calls); a few true
subprocesses check the installed command itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import rewards_for_tests
from fast_overrides import FAST
from rlexp.cli import main

REQUIRED_METRICS = [
    "train/reward_mean", "train/kl", "train/policy_loss", "train/value_loss", "train/clipfrac", "train/approx_kl",
    "train/entropy", "train/explained_variance", "train/response_length", "eval/reward_mean",
    "perf/step_seconds", "perf/tokens_per_second",
]


def _runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_train_logs_params_metrics_tags_and_artifacts(mlflow_uri, in_tmp):
    assert main(["train", *FAST, f"tracking.uri={mlflow_uri}", "tracking.experiment=cli",
                 "algorithm.lam=0.9"]) == 0
    client, runs = _runs(mlflow_uri, "cli")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["algorithm.gamma"] == "1.0" and p["algorithm.lam"] == "0.9" and p["algorithm.clip_eps"] == "0.2"
    assert p["model.hidden_size"] == "128" and p["trainer.max_steps"] == "2" and p["seed"] == "0"
    for name in REQUIRED_METRICS:
        assert name in run.data.metrics, name
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/reward_mean")]
    assert steps == [1, 2]  # step = RL iterations completed, not optimizer steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/reward_mean")] == [0, 1, 2]
    tags = run.data.tags
    assert tags["algorithm"] == "ppo" and tags["task"] == "arithmetic" and tags["model"] == "tiny"
    assert "algorithm.lam=0.9" in tags["rlexp.overrides"]
    assert tags["warmstart.built"] in ("True", "False")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "samples", "warmstart.json"} <= artifacts
    cfg_text = Path(client.download_artifacts(run.info.run_id, "config/resolved.yaml", str(in_tmp))).read_text()
    assert "lam: 0.9" in cfg_text
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "samples/eval_step_000002.json",
                                                      str(in_tmp))).read_text())
    assert set(table["columns"]) == {"prompt", "completion", "target", "reward"} and len(table["data"]) == 4


def test_tracking_uri_from_the_environment(mlflow_uri, in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    main(["train", *FAST, "tracking.experiment=env-uri", "trainer.max_steps=1"])
    _, runs = _runs(mlflow_uri, "env-uri")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert not (in_tmp / "mlflow.db").exists()


def test_tracking_uri_does_not_leak_into_the_environment(mlflow_uri, in_tmp):
    main(["train", *FAST, f"tracking.uri={mlflow_uri}", "tracking.experiment=no-leak", "trainer.max_steps=1"])
    assert "MLFLOW_TRACKING_URI" not in os.environ  # a later run or child process keeps its own default


def test_a_crash_marks_the_run_failed_and_keeps_what_it_logged(mlflow_uri, in_tmp, capsys):
    from one_iteration import build
    build([])  # the warm start exists first: building it evaluates with the reward function, a call counted below
    rewards_for_tests.CALLS["n"] = 0
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, f"tracking.uri={mlflow_uri}", "tracking.experiment=crash",
              "task.reward._target_=rewards_for_tests.fails_after_first_call"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    # it fails on every completion (not a completion's fault): said so, without recommending skip
    assert err[-1].startswith("rlexp: error: reward function rewards_for_tests.fails_after_first_call raised "
                              "KeyError: \"no such field 'answer'\" on every completion, alone as in a batch")
    assert "would not help" in err[-1]
    client, runs = _runs(mlflow_uri, "crash")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    history = client.get_metric_history(runs[0].info.run_id, "eval/reward_mean")
    assert [m.step for m in history] == [0]  # the step-0 evaluation made before the crash is kept
    assert runs[0].data.params["algorithm.gamma"] == "1.0"


def test_model_hf_loads_a_local_directory_through_the_same_path(tmp_path, in_tmp):
    from rlexp.models import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer("0123456789+=")
    build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, seed=0
                     ).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    from rlexp.train import compose, run

    module = run(compose([*FAST, "tracking=none", "model=hf", f"model.name_or_path={tmp_path / 'm'}"]))
    assert module.actor.config.hidden_size == 32 and module.iteration == 1


def _cli(args, cwd, timeout=300, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rlexp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_bad_value_exits_nonzero_before_importing_the_stack(tmp_path):
    code = ("import sys\nfrom rlexp.cli import main\n"
            "try:\n    main(['train', 'algorithm.gamma=1.5'])\nexcept SystemExit as e:\n"
            "    print('torch' in sys.modules, 'lightning' in sys.modules); sys.exit(e.code)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "algorithm.gamma=1.5" in res.stderr and "[0.0, 1.0]" in res.stderr
    assert res.stdout.split() == ["False", "False"]  # refused before torch/lightning were imported
    assert not (tmp_path / "mlflow.db").exists()


def test_help_is_instant_and_lists_the_config_groups(tmp_path):
    res = _cli(["--help"], tmp_path, timeout=60)
    assert res.returncode == 0 and "rlexp train" in res.stdout
    res = _cli(["train", "--help"], tmp_path, timeout=120)
    assert res.returncode == 0
    for group in ("algorithm", "model", "task", "hardware", "tracking"):
        assert group in res.stdout


@pytest.mark.slow
def test_real_cli_subprocess_writes_the_default_store_in_the_launch_dir(tmp_path):
    res = _cli(["train", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    _, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "rlexp")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "eval/reward_mean" in runs[0].data.metrics
