"""What the tracking code shares and that must stay cheap to import (no Lightning, no MLflow):
the store's URI resolution and the environment variables that carry a sweep to its jobs."""
from __future__ import annotations

import os
from pathlib import Path

#: environment variables through which a multirun's parent run reaches its jobs (set by
#: rlexp.tracking.sweep.SweepCallback; inherited by joblib/submitit workers)
ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME = "RLEXP_PARENT_RUN_ID", "RLEXP_SWEEP_ID", "RLEXP_SWEEP_NAME"


def resolve_tracking_uri(tracking_cfg, launch_dir: str | Path) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<launch dir>/mlflow.db``."""
    if tracking_cfg.get("uri"):
        return str(tracking_cfg.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(launch_dir).resolve() / 'mlflow.db'}"
