"""A tracking store that fails in the middle of a run: the run's work is not lost (training goes on, the
checkpoint lands, the policy is saved) and the error says what was not recorded. Real server, killed; a real
SQLite file, deleted. Each kind of failure is said in one line, not in a traceback per failed call."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from fast_overrides import FAST
from rlexp.modules.checkpoint import read_rlexp_state
from mlflow_server import mlflow_server

STEPS = 8


@pytest.mark.slow
def test_the_server_dies_mid_run_and_the_run_still_saves_its_work(tmp_path):
    with mlflow_server(tmp_path / "server") as (url, server):
        args = [o for o in FAST if not o.startswith(("trainer.max_steps", "trainer.eval_every"))]
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        run = subprocess.Popen([sys.executable, "-m", "rlexp", "train", *args, f"trainer.max_steps={STEPS}",
                                "trainer.eval_every=4", "checkpoint.every_n_steps=2", "tracking=server",
                                f"tracking.uri={url}", "hydra.run.dir=run"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
        while not ckpt.is_file():  # the run is recording; now the store goes away
            assert run.poll() is None, run.communicate()[0][-3000:]
            time.sleep(0.02)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        out = run.communicate(timeout=600)[0]
    assert run.returncode == 1, out[-3000:]
    assert "the run goes on" in out  # said when it happened
    _each_kind_said_once(out)
    last = out.strip().splitlines()[-1]
    assert last.startswith("rlexp: error: the run finished, but the MLflow store") and "metrics of" in last
    assert str(ckpt) in last and f"{STEPS})" in last, last  # names the checkpoint, and the steps up to the last
    assert read_rlexp_state(ckpt)["iteration"] == STEPS  # training went on to the end, checkpoints included
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()


def _each_kind_said_once(out: str) -> list[str]:
    """The kinds of record that a run's output says were not recorded, each said in one line, no traceback."""
    assert "Traceback" not in out and "[SQL:" not in out, out[-3000:]
    said = [ln for ln in out.splitlines() if "not recorded" in ln]
    kinds = [re.sub(r"\d+", "N", ln.split(" failed: ", 1)[1].split(" not recorded", 1)[0]) for ln in said]
    assert kinds and len(kinds) == len(set(kinds)), said  # each kind once: metrics, a sample table, the run's end...
    assert any("metrics of step" in k for k in kinds), said
    return kinds


def _train(tmp_path, *tracking, env=None) -> subprocess.Popen:
    args = [o for o in FAST if not o.startswith(("trainer.max_steps", "trainer.eval_every"))]
    return subprocess.Popen([sys.executable, "-m", "rlexp", "train", *args, f"trainer.max_steps={STEPS}",
                             "trainer.eval_every=4", "checkpoint.every_n_steps=2", *tracking, "hydra.run.dir=run"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines(out: str) -> list[str]:
    """A run's output lines, the warm start's aside (whichever of two concurrent runs builds it says so)."""
    return [ln for ln in out.splitlines() if "arm start" not in ln]


def _wait_for_first_checkpoint(run, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    while not ckpt.is_file():  # the run is recording
        assert run.poll() is None, run.communicate()[0][-3000:]
        time.sleep(0.02)


@pytest.mark.slow
def test_a_store_deleted_mid_run_says_so_once_per_kind_of_failure(tmp_path):
    (tmp_path / "healthy").mkdir()  # the same run on a store left alone: what a run prints anyway
    healthy = _train(tmp_path / "healthy", f"tracking.uri=sqlite:///{tmp_path / 'healthy.db'}")
    db = tmp_path / "mlflow.db"
    run = _train(tmp_path, f"tracking.uri=sqlite:///{db}")
    _wait_for_first_checkpoint(run, tmp_path)
    db.unlink()  # every later write fails (SQLite: "attempt to write a readonly database")
    out = run.communicate(timeout=600)[0]
    healthy_out = healthy.communicate(timeout=600)[0]
    assert healthy.returncode == 0, healthy_out[-3000:]
    assert run.returncode == 1, out[-3000:]
    kinds = _each_kind_said_once(out)
    assert "attempt to write a readonly database" in out  # the cause, not the SQL wrapped around it
    extra = len(_lines(out)) - len(_lines(healthy_out))  # it used to be ~90 lines per failed call
    assert extra <= len(kinds) + 3, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("rlexp: error: the run finished, but the MLflow store") and f"{STEPS})" in last, last
    assert read_rlexp_state(tmp_path / "run" / "checkpoints" / "last.ckpt")["iteration"] == STEPS
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
