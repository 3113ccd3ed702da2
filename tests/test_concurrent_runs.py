"""Runs started at the same moment: real `rlexp train` processes, side by side, on one fresh directory.

Two runs started in the same second used to share ``outputs/DATE/TIME/`` (one's policy, checkpoint and
``.hydra/`` overwrote the other's); each run now has its own directory (``${rlexp_run_id:}`` in
``hydra.run.dir``), named on its MLflow run (tag ``rlexp.output_dir``). Two first runs used to race through the SQLite store's schema migration (``table _alembic_tmp_tags already
exists``) and leave an ``mlflow.db`` that refused every later run; the store is now created under a file
lock (``rlexp.tracking.common.store_lock``).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fast_overrides import FAST
from rlexp.modules.checkpoint import find_last_checkpoint, read_rlexp_state
from rlexp.train import CONF_DIR

TRAIN = [sys.executable, "-m", "rlexp", "train", *FAST, "checkpoint.every_n_steps=1", "tracking.experiment=concurrent"]


def _start(cwd, uri, seed) -> subprocess.Popen:
    return subprocess.Popen([*TRAIN, f"tracking.uri={uri}", f"seed={seed}"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_first_runs_at_once_then_a_third_all_finish(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a fresh directory: neither run finds a store
    first = [_start(tmp_path, uri, seed) for seed in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in first]
    for p, out in zip(first, outs):
        assert p.returncode == 0, out[-3000:]
    dirs = sorted(d for d in (tmp_path / "outputs").glob("*/*") if d.is_dir())
    assert len(dirs) == 2, dirs  # one directory each, whether or not they started in the same second
    third = _start(tmp_path, uri, 3)
    out3 = third.communicate(timeout=600)[0]
    assert third.returncode == 0, out3[-3000:]  # the store the first two made is whole
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2", "3"]
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    for r in runs:  # the tag names the run's own directory: its checkpoint is this run's, its policy is there
        out_dir = Path(r.data.tags["rlexp.output_dir"])
        assert out_dir.parent.parent == tmp_path / "outputs", out_dir
        assert read_rlexp_state(out_dir / "checkpoints" / "last.ckpt")["mlflow_run_id"] == r.info.run_id
        assert (out_dir / "policy" / "model.safetensors").is_file()
        assert f"seed={r.data.params['seed']}" in OmegaConf.load(out_dir / ".hydra" / "overrides.yaml")
    assert len({r.data.tags["rlexp.output_dir"] for r in runs}) == 3
    newest = find_last_checkpoint([tmp_path / "outputs", tmp_path / "multirun"])  # what resume=auto takes
    assert read_rlexp_state(newest)["mlflow_run_id"] == next(r.info.run_id for r in runs if r.data.params["seed"] == "3")


def _hydra_dirs() -> tuple[str, str, str]:
    """``(hydra.run.dir, the same read again, hydra.sweep.dir)`` of one composition of the real config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    return str(cfg.hydra.run.dir), str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


def test_runs_composed_in_the_same_second_get_directories_of_their_own():
    for _ in range(5):  # two compositions within one second (the clock's seconds are all that used to tell them apart)
        t0 = int(time.time())
        a, b = _hydra_dirs(), _hydra_dirs()
        if int(time.time()) == t0:
            break
    assert a[0] == a[1]  # one run, one directory however often it is read
    assert a[0] != b[0] and a[2] != b[2], (a, b)
    assert a[0].startswith("outputs/") and a[2].startswith("multirun/")
