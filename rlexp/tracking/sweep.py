"""A multirun as an MLflow parent run, through a Hydra callback (``hydra.callbacks`` in conf/config.yaml).

``on_multirun_start`` creates the parent run (tag ``rlexp.role=sweep``, a fresh ``rlexp.sweep_id``,
the sweep's name, and the sweep definition as ``sweep.<key>`` params) and exports its id in the
environment, where every job's run finds it and nests under it (``mlflow.parentRunId``) — in process
with the basic launcher, in worker processes with joblib or submitit. ``on_multirun_end`` finishes
the parent (FAILED when every job failed), prints how many jobs failed and why, and writes the
comparison report (``rlexp compare``) onto the parent run.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rlexp.tracking.common import (
    ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME, experiment_id, log_params, resolve_tracking_uri,
)

log = logging.getLogger("rlexp.sweep")


def sweep_definition(config: DictConfig) -> dict[str, str]:
    """What is swept: ``hydra.sweeper.params`` and the command-line overrides of the multirun."""
    out: dict[str, str] = {}
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    for k, v in params.items():
        out[str(k)] = str(v)
    for o in OmegaConf.select(config, "hydra.overrides.task") or []:
        if "=" in o:
            k, v = o.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


class SweepCallback(Callback):
    def __init__(self, report: bool = True) -> None:
        self.report = report
        self.client = None
        self.parent_id: str | None = None
        self.sweep_id: str | None = None
        self.t0 = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        t = config.get("tracking")
        if t is None or t.get("name") == "none":
            return
        from mlflow.tracking import MlflowClient

        name = str(OmegaConf.select(config, "sweep.name") or "multirun")
        self.sweep_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.uri = resolve_tracking_uri(t, os.getcwd())
        self.client = MlflowClient(self.uri)
        tags = {"rlexp.role": "sweep", "rlexp.sweep_id": self.sweep_id, "rlexp.sweep_name": name,
                "mlflow.runName": f"sweep {self.sweep_id}",
                "rlexp.launcher": str(OmegaConf.select(config, "hydra.launcher._target_") or "")}
        run = self.client.create_run(experiment_id(self.client, t.experiment), tags=tags)
        self.parent_id, self.t0 = run.info.run_id, time.perf_counter()
        params = {f"sweep.{k}": v[:6000] for k, v in sweep_definition(config).items()}
        log_params(self.client, self.parent_id, {**params, "sweep.name": name})
        os.environ[ENV_PARENT], os.environ[ENV_SWEEP_ID], os.environ[ENV_SWEEP_NAME] = (
            self.parent_id, self.sweep_id, name)
        log.info("sweep %s: parent MLflow run %s at %s", self.sweep_id, self.parent_id, self.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for var in (ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME):
            os.environ.pop(var, None)
        if self.parent_id is None:
            return
        runs = self.client.search_runs([self.client.get_run(self.parent_id).info.experiment_id],
                                       filter_string=f"tags.`rlexp.sweep_id` = '{self.sweep_id}' "
                                                     f"and tags.`rlexp.role` = 'job'", max_results=10000)
        failed = [r for r in runs if r.info.status == "FAILED"]
        status = "FAILED" if runs and len(failed) == len(runs) else "FINISHED"
        self.client.log_metric(self.parent_id, "sweep/jobs", len(runs))
        self.client.log_metric(self.parent_id, "sweep/failed_jobs", len(failed))
        self.client.log_metric(self.parent_id, "sweep/wall_seconds", time.perf_counter() - self.t0)
        log.info("sweep %s: %d jobs, %d finished, %d failed", self.sweep_id, len(runs), len(runs) - len(failed),
                 len(failed))
        for r in failed:
            log.info("  failed: %s — %s", r.data.tags.get("rlexp.overrides", r.info.run_id),
                     r.data.tags.get("rlexp.error", "(no error recorded)"))
        if self.report and len(failed) < len(runs):
            try:
                from rlexp.compare.cli import main as compare_main

                compare_main(["--sweep", self.sweep_id, "--tracking-uri", self.uri,
                              "--experiment", str(config.tracking.experiment)])
            except Exception as e:  # noqa: BLE001 - a report failure must not fail the sweep
                log.error("sweep %s: the comparison report could not be written: %s", self.sweep_id, e)
        self.client.set_terminated(self.parent_id, status)
        log.info("compare it again with: rlexp compare --sweep %s", self.sweep_id)
        self.parent_id = None
