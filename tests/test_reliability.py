"""Faults: a NaN/Inf loss is not applied; persistent NaN stops the run, FAILED, with what it logged kept;
Ctrl-C or SIGTERM before training starts ends the run KILLED, in one line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp import core
from rlexp.cli import main
from rlexp.train import compose, run

ONE_ITERATION = [*FAST, "tracking=none", "trainer.max_steps=1", "algorithm.ppo_epochs=1", "algorithm.minibatch_size=4"]


def _nan_policy_loss(monkeypatch, bad_calls):
    """Make the registered policy loss return NaN on the given call numbers (1-based; None = always)."""
    real_get = core.POLICY_LOSSES.get
    calls = {"n": 0}

    def get(name):
        inner = real_get(name)

        def flaky(*args, **kwargs):
            loss, metrics = inner(*args, **kwargs)
            calls["n"] += 1
            if bad_calls is None or calls["n"] in bad_calls:
                loss = loss * float("nan")
            return loss, metrics
        return flaky
    monkeypatch.setattr(core.POLICY_LOSSES, "get", get)
    return calls


def test_a_nan_loss_is_not_applied_and_training_goes_on(monkeypatch, in_tmp):
    calls = _nan_policy_loss(monkeypatch, bad_calls={1, 2})  # both actor steps of the only iteration
    cfg = compose(ONE_ITERATION)
    from rlexp.models import load_causal_lm
    from rlexp.warmstart import prepare_model_dir
    from hydra.utils import instantiate

    model_dir, _ = prepare_model_dir(cfg.model, instantiate(cfg.task), cfg.hardware)
    start = torch.cat([p.flatten() for p in load_causal_lm(model_dir).parameters()])
    module = run(cfg)
    assert calls["n"] == 2
    after = torch.cat([p.detach().flatten() for p in module.actor.parameters()])
    assert torch.equal(start, after), "a NaN step must not change the actor"
    logged = next(h for h in module.history if "train/skipped_steps" in h)
    assert logged["train/skipped_steps"] == 2.0
    assert torch.isfinite(torch.tensor(logged["train/value_loss"]))  # the critic still trained


def test_max_bad_steps_sets_how_many_nan_steps_are_tolerated(monkeypatch, in_tmp):
    """The same two NaN steps that the default (3) tolerates stop a run with trainer.max_bad_steps=1."""
    _nan_policy_loss(monkeypatch, bad_calls={1, 2})
    with pytest.raises(FloatingPointError, match=r"2 non-finite optimizer steps in a row \(trainer.max_bad_steps=1\)"):
        run(compose([*ONE_ITERATION, "trainer.max_bad_steps=1"]))


def test_persistent_nan_stops_the_run_naming_quantity_and_iteration(monkeypatch, mlflow_uri, in_tmp):
    _nan_policy_loss(monkeypatch, bad_calls=None)
    with pytest.raises(SystemExit) as e:  # not a user error: Hydra reports it with its traceback, exit 1
        main(["train", *FAST, "algorithm.ppo_epochs=2", "algorithm.minibatch_size=2",
              f"tracking.uri={mlflow_uri}", "tracking.experiment=nan"])  # `nan` must stay a name, not a float
    assert e.value.code == 1
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name("nan").experiment_id])[0]
    assert run_.info.status == "FAILED"
    assert run_.data.tags["rlexp.error"] == ("FloatingPointError: train/policy_loss is nan at iteration 1: 4 non-finite "
                                             "optimizer steps in a row (trainer.max_bad_steps=3)")
    assert [m.step for m in client.get_metric_history(run_.info.run_id, "eval/reward_mean")] == [0]


def test_an_unreachable_store_is_refused_before_any_model_is_built(tmp_path, in_tmp, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's directory should be")
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, f"tracking.uri=sqlite:///{blocker}/sub/mlflow.db"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "rlexp: error: tracking store sqlite:///" in err and "is not usable" in err
    assert not list(tmp_path.glob("**/warmstart"))


@pytest.mark.slow
@pytest.mark.parametrize("sig, status, name", [(signal.SIGINT, 1, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_while_the_warm_start_is_built_ends_the_run_killed_in_one_line(tmp_path, sig, status, name):
    """A real process, a real signal while it builds its warm start (an empty cache: a long build)."""
    env = {**os.environ, "RLEXP_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlexp", "train", *FAST, "model.warmstart.max_steps=5000",
                             "model.warmstart.eval_every=5000", "hydra.run.dir=run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 120
    while not any("Building the warm start" in ln for ln in lines):
        assert proc.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
        time.sleep(0.05)
    time.sleep(2)  # into the warm start's SFT (a Lightning fit of its own)
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == status, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    said = [ln for ln in out.splitlines() if f"Interrupted ({name}) before training started" in ln]
    assert len(said) == 1 and "the MLflow run is marked KILLED; nothing to resume: start the run again" in said[0], out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])
    assert run_.info.status == "KILLED"
    assert run_.data.tags["rlexp.error"] == f"KeyboardInterrupt: interrupted ({name})"
