"""MLflow wiring (layer 4): the run, its params/tags/artifacts, its status on failure, sweeps, the UI.

Attributes load lazily, so ``rlexp ui`` and the sweep callback do not pay for importing Lightning.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "RunArtifacts": "mlflow", "TrackingError": "mlflow", "flatten_config": "mlflow", "log_summary": "mlflow",
    "make_logger": "mlflow", "mark_error": "mlflow", "mark_run_status": "mlflow", "record_failed_run": "mlflow",
    "resolve_tracking_uri": "common", "run_params": "mlflow", "sweep_job_tags": "mlflow", "short_run_name": "mlflow",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"rlexp.tracking.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'rlexp.tracking' has no attribute {name!r}")
