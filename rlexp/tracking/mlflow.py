"""Recording a run in MLflow through Lightning's ``MLFlowLogger``.

Conventions (shared/DESIGN.md): the default store is ``sqlite:///<launch dir>/mlflow.db``;
``MLFLOW_TRACKING_URI`` or ``tracking.uri=`` override it. Params are the whole resolved config with
dotted keys (``algorithm.gamma``); metrics are namespaced (``train/``, ``eval/``, ``perf/``) with
step = RL iterations completed; tags name the algorithm, task, model, git commit and the overrides;
artifacts are the resolved config and tables of sample completions with their rewards.
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
MAX_PARAM_LEN = 6000


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written."""


def resolve_tracking_uri(tracking_cfg, launch_dir: str | Path) -> str:
    if tracking_cfg.get("uri"):
        return str(tracking_cfg.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(launch_dir).resolve() / 'mlflow.db'}"


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as ``{"algorithm.gamma": "1.0", ...}`` (the ``hydra`` node excluded)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    out: dict[str, str] = {}

    def walk(prefix: str, node):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = ("null" if node is None else str(node))[:MAX_PARAM_LEN]
    walk("", container)
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def make_logger(cfg: DictConfig, *, launch_dir: str | Path, overrides: list[str]) -> MLFlowLogger | None:
    """Create the MLflow run now (so a later crash is recorded) and log params and tags."""
    t = cfg.tracking
    if t.name == "none":
        return None
    uri = resolve_tracking_uri(t, launch_dir)
    override_str = " ".join(overrides)
    run_name = t.run_name or "-".join([cfg.algorithm.name, cfg.task.name] + ([override_str] if overrides else []))
    tags = {"algorithm": cfg.algorithm.name, "task": cfg.task.name, "model": cfg.model.name,
            "rlexp.overrides": override_str or "(none)"}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags.update({str(k): str(v) for k, v in (t.tags or {}).items()})
    logger = MLFlowLogger(experiment_name=t.experiment, run_name=run_name[:250], tracking_uri=uri, tags=tags)
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        client, run_id = logger.experiment, logger.run_id
        from mlflow.entities import Param
        params = [Param(k, v) for k, v in flatten_config(cfg).items()]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
    except Exception as e:  # noqa: BLE001 - any store failure at start-up is fatal and named
        raise TrackingError(f"tracking store {uri} is not usable: {type(e).__name__}: {e}") from e
    finally:
        # mlflow.set_tracking_uri (called by MLFlowLogger) exports MLFLOW_TRACKING_URI to the process
        # environment; undo it so that one run's tracking.uri does not redirect later runs or children
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before
    return logger


def mark_run_status(logger: MLFlowLogger | None, status: str) -> None:
    """Terminate the run with ``FINISHED`` / ``FAILED`` / ``KILLED`` (what it logged is kept)."""
    if logger is None or logger._run_id is None:
        return
    try:
        logger.experiment.set_terminated(logger.run_id, status)
    except Exception as e:  # noqa: BLE001 - the original error matters more
        log.error("could not mark MLflow run %s as %s: %s", logger._run_id, status, e)


class RunArtifacts(L.Callback):
    """Logs the module's pending sample tables and the warm-start report as MLflow artifacts."""

    def __init__(self, logger: MLFlowLogger, warmstart_info: dict | None = None):
        self.logger, self.warmstart_info = logger, warmstart_info or {}

    def on_train_start(self, trainer, pl_module):
        if self.warmstart_info:
            self.logger.experiment.log_dict(self.logger.run_id, self.warmstart_info, "warmstart.json")
        self._flush(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._flush(pl_module)

    def _flush(self, pl_module):
        while getattr(pl_module, "pending_samples", None):
            step, rows = pl_module.pending_samples.pop(0)
            table = {k: [r[k] for r in rows] for k in rows[0]}
            self.logger.experiment.log_table(self.logger.run_id, data=table,
                                             artifact_file=f"samples/eval_step_{step:06d}.json")
