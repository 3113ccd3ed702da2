"""Runs started at the same moment: real `rlexp train` processes, side by side, on one fresh directory.

Two first runs used to race through the SQLite store's schema migration (``table _alembic_tmp_tags already
exists``) and leave an ``mlflow.db`` that refused every later run; the store is now created under a file
lock (``rlexp.tracking.common.store_lock``).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST

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
    third = _start(tmp_path, uri, 3)
    out3 = third.communicate(timeout=600)[0]
    assert third.returncode == 0, out3[-3000:]  # the store the first two made is whole
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2", "3"]
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
