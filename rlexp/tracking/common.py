"""What the tracking code shares and that must stay cheap to import (no Lightning, no MLflow):
the store's URI resolution and the environment variables that carry a sweep to its jobs."""
from __future__ import annotations

import os
from pathlib import Path

#: environment variables through which a multirun's parent run reaches its jobs (set by
#: rlexp.tracking.sweep.SweepCallback; inherited by joblib/submitit workers)
ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME = "RLEXP_PARENT_RUN_ID", "RLEXP_SWEEP_ID", "RLEXP_SWEEP_NAME"


def experiment_id(client, name) -> str:
    """The id of experiment ``name``, created if missing (``str()``: names like ``2024`` or ``nan``
    reach us from Hydra as numbers)."""
    exp = client.get_experiment_by_name(str(name))
    return exp.experiment_id if exp else client.create_experiment(str(name))


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` on a run, in batches of 100 (MLflow's limit per ``log_batch``)."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def resolve_tracking_uri(tracking_cfg, launch_dir: str | Path) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<launch dir>/mlflow.db``."""
    if tracking_cfg.get("uri"):
        return str(tracking_cfg.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(launch_dir).resolve() / 'mlflow.db'}"
