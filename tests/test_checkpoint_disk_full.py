"""A checkpoint that cannot be written (the disk is full): the partial file is removed, the run stops with one
line naming ``checkpoint.dir``, and its MLflow run is FAILED with what it had recorded. Real failing writes in a
real `rlexp train` process: a file-size limit (``RLIMIT_FSIZE``: every write past it fails with EFBIG, no root
needed), and, where this user may mount, a full tmpfs (ENOSPC, the disk-full case itself)."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST

#: the checkpoint of the tiny model with its optimizers is ~15 MB; everything else the run writes (its
#: warm start, mlflow.db, logs) stays under 3 MB
LIMIT = 6 * 2**20


def _file_size_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing


@contextmanager
def _small_tmpfs(path):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (and a container that allows it)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextmanager
def _plain_dir(path):
    path.mkdir()
    yield path


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["file-size limit", "full tmpfs"])
def test_a_checkpoint_that_cannot_be_written_cleans_up_and_says_so_in_one_line(tmp_path, fault):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    place = _small_tmpfs if fault == "full tmpfs" else _plain_dir
    with place(tmp_path / "ckpt") as ckpt_dir:
        res = subprocess.run([sys.executable, "-m", "rlexp", "train", *FAST, "checkpoint.every_n_steps=1",
                              f"checkpoint.dir={ckpt_dir}", f"tracking.uri={uri}", "tracking.experiment=disk_full",
                              "hydra.run.dir=run"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             preexec_fn=_file_size_limit if fault == "file-size limit" else None)
        left = sorted(p.name for p in ckpt_dir.iterdir())
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rlexp: error: checkpoint.dir={ckpt_dir}: cannot write the checkpoint of iteration 1"), last
    assert left == [], left  # no partial .last.ckpt.tmp keeping the disk full
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("disk_full").experiment_id])
    assert run.info.status == "FAILED", last
    assert "checkpoint.dir" in run.data.tags["rlexp.error"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/reward_mean")] == [0, 1]  # kept
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss")] == [1]
