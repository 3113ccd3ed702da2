"""MLflow wiring (layer 4): the run, its params/tags/artifacts, and its status on failure."""
from rlexp.tracking.mlflow import (
    RunArtifacts, TrackingError, flatten_config, make_logger, mark_run_status, resolve_tracking_uri,
)

__all__ = ["RunArtifacts", "TrackingError", "flatten_config", "make_logger", "mark_run_status",
           "resolve_tracking_uri"]
