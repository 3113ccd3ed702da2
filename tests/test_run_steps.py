"""`rlexp.train.run` as a reader sees it (issue 14 item 4): one screen of steps, the MLflow run reached through
rlexp's RunLogger, and a stop signal at any moment after the run exists ending it KILLED."""
from __future__ import annotations

import ast
import inspect
import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST

ROOT = Path(__file__).resolve().parent.parent


def test_run_fits_in_one_screen():
    from rlexp.train import run

    lines = inspect.getsource(run).splitlines()
    assert len(lines) <= 50, f"rlexp.train.run is {len(lines)} lines"


def test_rlexp_train_reads_no_private_attribute_of_a_logger():
    found = []
    files = sorted((ROOT / "rlexp" / "train").rglob("*.py")) + sorted((ROOT / "rlexp").glob("train.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
                if owner.endswith("logger"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {owner}.{node.attr}")
    assert found == [], found


class _Stopped(Exception):
    """What this test's own SIGTERM handler raises where rlexp has none in place (else pytest would die)."""


def test_a_sigterm_right_after_the_mlflow_run_is_created_ends_it_killed(tmp_path, monkeypatch):
    """The window of the flaky sweep test: a real SIGTERM to this process once the run exists, while
    ``make_logger`` is still recording it (its params just logged). The run ends KILLED, tagged as one stopped
    during the warm start is, and ``run`` exits with 143."""
    import rlexp.tracking.mlflow as tracking
    from rlexp.train import compose, run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(FAST + [f"tracking.uri={uri}", "tracking.experiment=window"])
    real_log_params = tracking.log_params

    def log_params_then_sigterm(client, run_id, params):  # only picks the moment; the signal is real
        real_log_params(client, run_id, params)
        os.kill(os.getpid(), signal.SIGTERM)

    def stopped(signum, frame):
        raise _Stopped

    monkeypatch.setattr(tracking, "log_params", log_params_then_sigterm)
    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        with pytest.raises((SystemExit, Exception)) as e:
            run(cfg, launch_dir=str(tmp_path))
    finally:
        signal.signal(signal.SIGTERM, previous)
    client = MlflowClient(uri)
    (run_,) = client.search_runs([client.get_experiment_by_name("window").experiment_id])
    assert (run_.info.status, run_.data.tags.get("rlexp.error")) == ("KILLED", "KeyboardInterrupt: interrupted (SIGTERM)")
    assert isinstance(e.value, SystemExit) and e.value.code == 143, repr(e.value)


def test_a_sigterm_before_the_params_are_logged_still_leaves_them_on_the_killed_run(tmp_path, monkeypatch):
    """A signal that lands while the run is being created is held until its params and tags are logged
    (a sweep job's configuration is read from its params): the run ends KILLED *with* its params."""
    import rlexp.tracking.mlflow as tracking
    from rlexp.train import compose, run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(FAST + [f"tracking.uri={uri}", "tracking.experiment=early", "algorithm.lam=0.5"])
    real_log_params = tracking.log_params

    def sigterm_then_log_params(client, run_id, params):  # the real signal lands before the params
        os.kill(os.getpid(), signal.SIGTERM)
        real_log_params(client, run_id, params)

    def stopped(signum, frame):
        raise _Stopped

    monkeypatch.setattr(tracking, "log_params", sigterm_then_log_params)
    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        with pytest.raises(SystemExit) as e:
            run(cfg, launch_dir=str(tmp_path))
    finally:
        signal.signal(signal.SIGTERM, previous)
    client = MlflowClient(uri)
    (run_,) = client.search_runs([client.get_experiment_by_name("early").experiment_id])
    assert run_.info.status == "KILLED" and e.value.code == 143
    assert run_.data.params["algorithm.lam"] == "0.5"
