"""Composing a run from the config and fitting it: the function behind ``rlexp train``.

``run(cfg)`` validates the config (before any model is built), creates the MLflow run, prepares the
policy directory (building the warm start on first use), instantiates the task, actor, critic and
reference, and calls ``Trainer.fit``; each of those steps is a function of `rlexp.train.steps`, and
``resume=`` is checked in `rlexp.train.resume`. ``hydra_main`` (the ``@hydra.main`` entry the CLI calls)
returns the final ``eval/reward_mean``: the number a sweeper optimizes. ``compose(overrides)``
gives the composed config without running anything (tests, notebooks).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rlexp.config import ConfigError, validate
from rlexp.resources import conf_dir

log = logging.getLogger("rlexp")
# the installed config tree (package data rlexp/conf; the repository's conf/ in an editable install)
CONF_DIR = str(conf_dir())


def compose(overrides=()) -> DictConfig:
    """The composed config for ``overrides`` (as on the command line), without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def build_module(cfg: DictConfig, task, model_dir: Path):
    """The run's LightningModule and its train dataloader, from the builder named by ``algorithm.module``."""
    from rlexp.modules.builders import MODULE_BUILDERS

    return MODULE_BUILDERS.get(cfg.algorithm.module)(cfg, task, model_dir)


def run(cfg: DictConfig, *, overrides: list[str] | None = None, launch_dir: str | None = None,
        output_dir: str | None = None, callbacks: list | None = None):
    """Validate, build and fit one experiment. Returns the fitted module (``module.last_eval`` holds
    the final evaluation, ``module.history`` every logged metric). ``callbacks``: extra Lightning
    callbacks for the Trainer (e.g. timers when rlexp is driven from Python)."""
    validate(cfg)
    from rlexp.config.validate import check_machine

    check_machine(cfg)  # CUDA, precision, writable directories: before any model is built or run recorded
    import lightning as L

    from rlexp.train import steps
    from rlexp.train.resume import resume_point

    steps.prepare_process(cfg)  # library log levels, torch threads
    job = steps.Job(cfg, launch_dir=launch_dir or os.getcwd(), output_dir=output_dir, overrides=list(overrides or []))
    dead = steps.warn_dead_knobs(cfg, job.overrides)
    job.resume = resume_point(cfg, job.launch_dir)  # resume=: its checkpoint, checked; None for a fresh run
    with steps.StopSignals() as stops:  # Ctrl-C / SIGTERM outside the training loop: the run ends KILLED
        try:
            with stops.deferred():  # the run is created with its params and tags, then a signal may stop it
                steps.open_run(job, dead)  # job.logger: the MLflow run, created (or reopened)
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            task = steps.instantiate_task(cfg)
            steps.record_data(job, task)  # task=dataset: its files' paths and hashes, the MLflow dataset inputs
            model_dir, job.warmstart = steps.warm_start(cfg, task)
            module, loader = build_module(cfg, task, model_dir)
            loader = steps.attach_checkpoints(job, module, loader)  # online: job.checkpoint; a resume goes on
            job.trainer = steps.make_trainer(job, steps.make_callbacks(job, job.warmstart, callbacks))
            steps.fit(job, module, loader)  # Trainer.fit, then the summary metrics
            steps.save_policy(job, module)
        except BaseException as e:
            steps.mark_ended(job, e, stops.received)  # Ctrl-C / SIGTERM: KILLED, one line, exit 1 / 143
            raise  # any other error: the run is FAILED
    steps.finish(job, module)  # FINISHED (or FAILED, naming what the store did not record) and the report
    return module


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported in one line, without a traceback."""
    from rlexp.models import ModelLoadError
    from rlexp.modules.checkpoint import CheckpointError
    from rlexp.modules.preference_data import DatasetError
    from rlexp.rollout.pipeline import GeneratorDied
    from rlexp.tasks import RewardError
    from rlexp.tracking import TrackingError

    return CheckpointError, ConfigError, DatasetError, GeneratorDied, ModelLoadError, RewardError, TrackingError


def _failed_job(cfg: DictConfig, overrides: list[str], error: Exception) -> float:
    """A multirun job that failed: already FAILED in MLflow if it had started (else recorded now);
    report it in one line and return NaN so that the sweeper (and Optuna) move on."""
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    log.error("job %s failed: %s", " ".join(overrides), text)
    if isinstance(error, ConfigError):
        from rlexp.tracking import record_failed_run

        record_failed_run(cfg, launch_dir=hydra.utils.get_original_cwd(), overrides=overrides, error=text)
    elif not isinstance(error, _user_errors()):
        log.exception("traceback of the failed job")
    return float("nan")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    from rlexp.tracking.sweep import finished_result

    done = finished_result(overrides) if hc.mode == RunMode.MULTIRUN else None
    if done is not None:  # a resumed sweep: this configuration already finished under the same parent
        return done
    try:
        module = run(cfg, overrides=overrides, launch_dir=hydra.utils.get_original_cwd(),
                     output_dir=hc.runtime.output_dir)
    except Exception as e:
        if hc.mode == RunMode.MULTIRUN:  # one failed job must not stop the sweep: record it, go on
            return _failed_job(cfg, overrides, e)
        if isinstance(e, ConfigError):  # checked first: classifying it must not import torch
            print(f"rlexp: config error: {e}", file=sys.stderr)
            sys.exit(2)
        if not isinstance(e, _user_errors()):
            raise
        print(f"rlexp: error: {e}", file=sys.stderr)
        sys.exit(1)
    return float(module.last_eval.get("eval/reward_mean", float("nan")))
