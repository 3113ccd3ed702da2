"""Shared fixtures: one MLflow SQLite store and one warm-start cache per test session.

Creating an MLflow SQLite store costs ~6 s of migrations and the tiny model's warm start a few
seconds, so both are made once and reused. ``fast_overrides.FAST`` shrinks a run to seconds.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fast_overrides import FAST  # noqa: F401  (re-exported for convenience)


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rlexp_cache")
    old = {k: os.environ.get(k) for k in ("RLEXP_CACHE_DIR", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE")}
    os.environ["RLEXP_CACHE_DIR"] = str(cache)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(1)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A real MLflow SQLite store shared by the session (tests use their own experiment names)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in a fresh directory (Hydra writes outputs/ there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
