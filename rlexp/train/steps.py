"""The steps of one run, in the order `rlexp.train.run` takes them; each a function of the `Job` built so far.

Heavy libraries (torch, Lightning, transformers, MLflow) are imported inside the functions: ``run`` reaches
them only after the config was validated, so a config error costs no torch import.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlexp.config import ConfigError
from rlexp.train.resume import CHECKPOINTED_MODULES, Resume

log = logging.getLogger("rlexp")


@dataclass
class Job:
    """One run as it is built: what its end (`mark_ended`, `finish`) reads."""
    cfg: Any  # the composed DictConfig
    launch_dir: str  # where `rlexp train` was started: the default MLflow store, resume=auto's search
    output_dir: str | None  # Hydra's run directory (policy/, checkpoints/); None when run from Python
    overrides: list[str]
    resume: Resume | None = None  # resume=: the checkpoint it continues from
    logger: Any = None  # the MLflow run (rlexp.tracking.RunLogger); None with tracking=none, or on workers > 0
    checkpoint: Any = None  # online runs: the IterationCheckpoint callback (Ctrl-C / SIGTERM at an iteration's end)
    trainer: Any = None
    warmstart: dict = field(default_factory=dict)  # what the warm start did (`warm_start`); {} when none was used

    @property
    def root_dir(self) -> str:
        """Where the run writes: its output directory, the launch directory when run from Python."""
        return self.output_dir or self.launch_dir


def prepare_process(cfg) -> None:
    """Library log levels and warnings, ``hardware.num_threads``, and the start-up line (`say_machine`)."""
    import warnings

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for pattern in (r".*in eval mode at the start of training.*", r".*isinstance\(treespec, LeafSpec\).*",
                    r".*smaller than the logging interval.*", r".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.hardware.num_threads:
        torch.set_num_threads(cfg.hardware.num_threads)
    lag = int(cfg.rollout.get("off_policy_lag", 0) or 0)
    if lag:  # the generator process takes one of the threads (rlexp.rollout.pipeline)
        from rlexp.rollout.pipeline import GENERATOR_THREADS, trainer_threads

        torch.set_num_threads(trainer_threads(torch.get_num_threads()))
        log.info("rollout.off_policy_lag=%d: a generator process (%d thread) beside the trainer", lag, GENERATOR_THREADS)
    say_machine(cfg.hardware, cfg.model.name, torch.cuda.is_available())


def say_machine(hw, model_name: str, cuda: bool) -> None:
    """The start-up line: accelerator, precision, threads and a CPU's bf16 instructions (`rlexp.config.precision`);
    a warning for ``bf16-true``. Said once, by the first worker."""
    import os

    from rlexp.config.precision import bf16_true_warning, startup_line

    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return
    log.info(startup_line(hw, model_name, cuda))
    warning = bf16_true_warning(hw)
    if warning:
        log.warning(warning)


def warn_dead_knobs(cfg, overrides: list[str]) -> dict[str, str]:
    """``{override: why it has no effect in this run}``, each said in a warning."""
    from rlexp.config.knobs import dead_model_overrides, dead_overrides, dead_task_overrides

    dead = {**dead_overrides(cfg.algorithm, overrides), **dead_model_overrides(cfg.model, overrides),
            **dead_task_overrides(cfg.task, overrides)}
    for key, why in dead.items():
        log.warning("%s has no effect in this run: %s", key, why)
    return dead


def signal_name(signum: int | None) -> str:
    return "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"


class StopSignals:
    """Ctrl-C (SIGINT) or SIGTERM outside the training loop (creating the MLflow run, building the warm start
    and the models, saving the policy) stops the run at once, as a ``KeyboardInterrupt("interrupted (SIGTERM)")``,
    and is recorded in ``received``. The training loop has its own handlers, which stop at an iteration
    boundary (`IterationCheckpoint`). A context manager: the previous handlers are back on leaving it."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        self._deferring = False

    def __enter__(self) -> StopSignals:
        from rlexp.modules.checkpoint import STOP_SIGNALS
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def _on_signal(self, signum, frame):
        self.received = self.received or signum
        if not self._deferring:
            raise KeyboardInterrupt(f"interrupted ({signal_name(signum)})")

    @contextlib.contextmanager
    def deferred(self):
        """A signal received inside the block is raised when the block ends, not in its middle: creating the
        MLflow run and logging its params is one step (a job's run is never left without its params)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received is not None:
            raise KeyboardInterrupt(f"interrupted ({signal_name(self.received)})")

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def open_run(job: Job, dead: dict[str, str]) -> None:
    """``job.logger``: the MLflow run, created now (so that a later crash is recorded) or reopened by a resume,
    tagged with the overrides that have no effect."""
    from rlexp.tracking import make_logger

    job.logger = make_logger(job.cfg, launch_dir=job.launch_dir, overrides=job.overrides,
                             resume_run_id=job.resume.state.get("mlflow_run_id") if job.resume else None,
                             resumed_from=job.resume.path if job.resume else None, output_dir=job.output_dir)
    if job.logger is not None and dead:
        job.logger.experiment.set_tag(job.logger.run_id, "rlexp.dead_knobs", ", ".join(sorted(dead)))


def instantiate_task(cfg):
    """The task from ``cfg.task``; an import or argument error in it (``task.reward._target_``...) is a
    config error naming what failed (``task.rewards``: `rlexp.tasks.combine.instantiate_task`)."""
    from hydra.errors import InstantiationException

    from rlexp.tasks.combine import instantiate_task as instantiate
    try:
        return instantiate(cfg.task)
    except InstantiationException as e:
        first = " ".join(str(e).split()).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception.", ";")
        raise ConfigError(f"task: {first[:500]}") from e


def record_data(job: Job, task) -> None:
    """A task read from files (``task=dataset``): their paths and content hashes as tags, their rows as the run's
    MLflow dataset inputs, the malformed rows skipped as ``data/skipped_records`` (`rlexp.tracking.inputs`);
    a resumed run has them already."""
    if job.logger is None or job.resume:
        return
    from rlexp.tracking.inputs import log_task_data

    log_task_data(job.logger, task)


def warm_start(cfg, task) -> tuple[Path, dict]:
    """The policy's starting directory (the warm start built on first use, then cached) and its report."""
    from rlexp.warmstart import prepare_model_dir

    model_dir, info = prepare_model_dir(cfg.model, task, cfg.hardware)
    if info.get("built"):
        log.info("Warm start built in %.1f s (greedy accuracy %.3f) and cached at %s",
                 info["seconds"], info["accuracy"], model_dir)
    return model_dir, info


def attach_checkpoints(job: Job, module, loader):
    """A module kind that checkpoints (`CHECKPOINTED_MODULES`: online) gets ``job.checkpoint``, which saves
    at iteration boundaries and stops there on Ctrl-C / SIGTERM; a resumed run does not log again the steps
    the killed run logged, and its loader starts at the next iteration. Returns the loader to fit on."""
    cfg, resume = job.cfg, job.resume
    if resume and job.logger is not None:
        module.already_logged = job.logger.logged_steps()
    if cfg.algorithm.module not in CHECKPOINTED_MODULES:
        return loader
    from rlexp.modules.checkpoint import IterationCheckpoint
    from rlexp.modules.data import iteration_loader
    from rlexp.tracking import flatten_config

    ck = cfg.checkpoint
    job.checkpoint = IterationCheckpoint(Path(ck.dir) if ck.dir else Path(job.root_dir) / "checkpoints",
                                         ck.every_n_steps, cfg.trainer.max_steps, keep_all=ck.keep_all,
                                         config=flatten_config(cfg))
    if resume:  # the dataloader continues at the next iteration
        return iteration_loader(cfg.trainer.max_steps, start=int(resume.state["iteration"]))
    return loader


def make_callbacks(job: Job, warmstart_info: dict, extra: list | None) -> list:
    """The Trainer's callbacks: ``extra`` (from Python), the iteration checkpoints, the MLflow artifacts (the
    run is tagged ``warmstart.built``), the progress bar."""
    callbacks = list(extra or [])
    if job.checkpoint is not None:
        callbacks.append(job.checkpoint)
    if job.logger is not None:
        from rlexp.tracking import RunArtifacts

        job.logger.experiment.set_tag(job.logger.run_id, "warmstart.built", str(bool(warmstart_info.get("built"))))
        callbacks.append(RunArtifacts(job.logger, warmstart_info))
    if job.cfg.trainer.progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar
        callbacks.append(RichProgressBar())
    return callbacks


def make_trainer(job: Job, callbacks: list):
    """Lightning's Trainer on ``hardware``: one pass over the loader (one item per optimizer step or iteration),
    no validation loop, no Lightning checkpoints (rlexp's own), every step logged."""
    import lightning as L

    hw, cfg = job.cfg.hardware, job.cfg
    return L.Trainer(
        max_epochs=1, max_steps=-1, accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes,
        strategy=hw.strategy, precision=hw.precision, logger=job.logger if job.logger is not None else False,
        callbacks=callbacks, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=bool(cfg.trainer.progress_bar), use_distributed_sampler=False,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1, default_root_dir=job.root_dir)


def fit(job: Job, module, loader) -> None:
    """``Trainer.fit`` (from the resumed checkpoint, if any), then the run's summary metrics; a resumed run's
    wall time counts the processes it continues."""
    from rlexp.tracking import log_summary

    t_fit = time.perf_counter()
    try:
        job.trainer.fit(module, train_dataloaders=loader, ckpt_path=str(job.resume.path) if job.resume else None,
                        weights_only=True)  # a checkpoint is data: no pickled code runs when it is read
    finally:  # an off-policy generator process ends with the fit, however it ended (Lightning's teardown
        close = getattr(module, "close_pipeline", None)  # hook is skipped when the fit raises)
        if close is not None:
            close()
    last_step = max((h["step"] for h in module.history), default=job.cfg.trainer.max_steps)
    wall = time.perf_counter() - t_fit + (job.checkpoint.wall_before if job.checkpoint is not None else 0.0)
    log_summary(job.logger, module.history, last_step, wall)


def save_policy(job: Job, module) -> None:
    """``save_pretrained`` of the trained policy under ``<output dir>/policy`` (first worker only), and its
    upload as the MLflow run's ``policy/`` artifact with ``tracking.log_model=true``. Called from Python
    without ``output_dir``, ``run`` saves nothing unless ``log_model`` asks (then via a temporary dir)."""
    import tempfile

    from rlexp.models.export import export_policy

    cfg, logger = job.cfg, job.logger
    save = bool(job.output_dir) and cfg.trainer.save_policy
    log_model = logger is not None and cfg.tracking.log_model
    if not job.trainer.is_global_zero or not (save or log_model):
        return
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(job.output_dir) / "policy" if save else Path(tmp)
        export_policy(module.policy_model, module.tokenizer, target)
        log.info("Trained policy saved with save_pretrained at %s", target)
        if log_model:
            logger.guarded("the policy artifact", logger.experiment.log_artifacts, logger.run_id, str(target), "policy")


def mark_ended(job: Job, error: BaseException, signum: int | None) -> None:
    """The run stopped by ``error``: marked FAILED (and the caller re-raises ``error``), or, stopped by Ctrl-C /
    SIGTERM (``signum``: outside the training loop; ``job.checkpoint``'s: at an iteration boundary), marked
    KILLED, said in one line with how to continue, and ended with ``SystemExit`` 1 (Ctrl-C) or 143 (SIGTERM)."""
    from rlexp.tracking import mark_error, mark_run_status

    ck = job.checkpoint
    signum = (ck.stop_signal if ck is not None else None) or signum
    # Ctrl-C: Lightning turns the KeyboardInterrupt into SystemExit(1) after its graceful shutdown
    killed = signum is not None or isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and job.trainer is not None and job.trainer.interrupted)
    name = signal_name(signum)
    mark_error(job.logger, KeyboardInterrupt(f"interrupted ({name})") if killed else error)
    mark_run_status(job.logger, "KILLED" if killed else "FAILED")
    if not killed:
        return
    if ck is None or ck.stopped_after is None:  # not stopped at an iteration boundary: say so here
        last = (ck.last_path if ck is not None else None) or (job.resume.path if job.resume else None)
        log.warning("Interrupted (%s) %s; the MLflow run is marked KILLED; %s", name,
                    "before training started" if job.trainer is None else "during the run, not at an iteration boundary",
                    f"continue with resume={last}" if last else "nothing to resume: start the run again")
    raise SystemExit(128 + signal.SIGTERM if signum == signal.SIGTERM else 1) from error  # 143: killed by SIGTERM


def finish(job: Job, module) -> None:
    """The run's end: FINISHED and the end-of-run report, or, when the store failed during the run (the work is
    done and saved, its record is not complete), FAILED and a `TrackingError` saying what is missing."""
    from rlexp.tracking import TrackingError, mark_run_status

    logger = job.logger
    if logger is not None and logger.unlogged:
        mark_run_status(logger, "FAILED")
        ck = job.checkpoint
        where = f" Its last checkpoint is {ck.last_path}." if ck is not None and ck.last_path else ""
        raise TrackingError(f"the run finished, but the MLflow store {logger.tracking_uri} failed during it and did "
                            f"not record: {logger.unlogged_summary()}.{where}")
    mark_run_status(logger, "FINISHED")
    report(module, logger, warm_started=bool(job.warmstart))


def report(module, logger, *, warm_started: bool) -> None:
    """Two lines: the greedy evaluation's reward at the start (``step 0, warm start`` only when the run
    started from a warm start) and at the end, and where the MLflow run is."""
    first = next((h for h in module.history if "eval/reward_mean" in h), {})  # resumed: restored from the checkpoint
    last = module.last_eval
    start = f"step {first.get('step')}"
    if first.get("step") == 0:
        start += ", warm start" if warm_started else ", the model as loaded"
    log.info("eval/reward_mean %.3f (%s) -> %.3f (step %s)", first.get("eval/reward_mean", float("nan")), start,
             last.get("eval/reward_mean", float("nan")), last.get("step"))
    if logger is not None:
        from rlexp.tracking.links import browse, run_page

        log.info("MLflow run %s in experiment %r at %s; browse: %s", logger.run_id, logger.experiment_name,
                 logger.tracking_uri, browse(logger.tracking_uri, run_page(logger.experiment_id, logger.run_id)))
