"""MLflow wiring (layer 4): the run, its params/tags/artifacts, and its status on failure."""
from rlexp.tracking.mlflow import (
    RunArtifacts, TrackingError, flatten_config, log_summary, make_logger, mark_error, mark_run_status,
    record_failed_run, resolve_tracking_uri, sweep_job_tags,
)

__all__ = ["RunArtifacts", "TrackingError", "flatten_config", "log_summary", "make_logger", "mark_error",
           "mark_run_status", "record_failed_run", "resolve_tracking_uri", "sweep_job_tags"]
