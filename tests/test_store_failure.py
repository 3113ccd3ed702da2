"""A tracking store that fails in the middle of a run: the run's work is not lost (training goes on, the
checkpoint lands, the policy is saved) and the error says what was not recorded. Real server, killed."""
from __future__ import annotations

import os
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
    last = out.strip().splitlines()[-1]
    assert last.startswith("rlexp: error: the run finished, but the MLflow store") and "metrics of" in last
    assert str(ckpt) in last and f"{STEPS})" in last, last  # names the checkpoint, and the steps up to the last
    assert read_rlexp_state(ckpt)["iteration"] == STEPS  # training went on to the end, checkpoints included
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
