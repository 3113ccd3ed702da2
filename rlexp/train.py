"""Composing a run from the config and fitting it: the function behind ``rlexp train``.

``run(cfg)`` validates the config (before any model is built), creates the MLflow run, prepares the
policy directory (building the warm start on first use), instantiates the task, actor, critic and
reference, and calls ``Trainer.fit``. ``hydra_main`` (the ``@hydra.main`` entry the CLI calls)
returns the final ``eval/reward_mean``: the number a sweeper optimizes. ``compose(overrides)``
gives the composed config without running anything (tests, notebooks).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
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


def _quiet_libraries() -> None:
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    for pattern in (r".*in eval mode at the start of training.*", r".*isinstance\(treespec, LeafSpec\).*",
                    r".*smaller than the logging interval.*", r".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    import torch
    from hydra.utils import instantiate

    import time

    from rlexp.tracking import RunArtifacts, log_summary, make_logger, mark_error, mark_run_status
    from rlexp.warmstart import prepare_model_dir

    _quiet_libraries()
    hw = cfg.hardware
    if hw.num_threads:
        torch.set_num_threads(hw.num_threads)
    launch_dir = launch_dir or os.getcwd()
    from rlexp.config.knobs import dead_model_overrides, dead_overrides

    dead = {**dead_overrides(cfg.algorithm, overrides or []), **dead_model_overrides(cfg.model, overrides or [])}
    for key, why in dead.items():
        log.warning("%s has no effect in this run: %s", key, why)
    ckpt_path, resume_state = _resume_point(cfg, launch_dir)
    logger = make_logger(cfg, launch_dir=launch_dir, overrides=overrides or [],
                         resume_run_id=(resume_state or {}).get("mlflow_run_id"), resumed_from=ckpt_path,
                         output_dir=output_dir)
    if logger is not None and dead:
        logger.experiment.set_tag(logger.run_id, "rlexp.dead_knobs", ", ".join(sorted(dead)))
    trainer = ckpt_cb = None
    stops = _StopSignals()  # Ctrl-C / SIGTERM outside the training loop: recorded, the run marked KILLED
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        task = _instantiate_task(cfg)
        model_dir, ws_info = prepare_model_dir(cfg.model, task, hw)
        if ws_info.get("built"):
            log.info("Warm start built in %.1f s (greedy accuracy %.3f) and cached at %s",
                     ws_info["seconds"], ws_info["accuracy"], model_dir)
        module, train_loader = build_module(cfg, task, model_dir)
        if resume_state and logger is not None:  # steps the killed run logged past its checkpoint: not again
            module.already_logged = _logged_steps(logger)
        callbacks = list(callbacks or [])
        if cfg.algorithm.module == "online":  # checkpoints at iteration boundaries, Ctrl-C at one
            from rlexp.modules.checkpoint import IterationCheckpoint
            from rlexp.modules.data import iteration_loader
            from rlexp.tracking import flatten_config
            ck = cfg.checkpoint
            ckpt_cb = IterationCheckpoint(Path(ck.dir) if ck.dir else Path(output_dir or launch_dir) / "checkpoints",
                                          ck.every_n_steps, cfg.trainer.max_steps, keep_all=ck.keep_all,
                                          config=flatten_config(cfg))
            callbacks.append(ckpt_cb)
            if resume_state:  # the dataloader continues at the next iteration
                train_loader = iteration_loader(cfg.trainer.max_steps, start=int(resume_state["iteration"]))
        if logger is not None:
            logger.experiment.set_tag(logger.run_id, "warmstart.built", str(bool(ws_info.get("built"))))
            callbacks.append(RunArtifacts(logger, ws_info))
        if cfg.trainer.progress_bar:
            from lightning.pytorch.callbacks import RichProgressBar
            callbacks.append(RichProgressBar())
        trainer = L.Trainer(
            max_epochs=1, max_steps=-1, accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes,
            strategy=hw.strategy, precision=hw.precision, logger=logger if logger is not None else False,
            callbacks=callbacks, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=bool(cfg.trainer.progress_bar), use_distributed_sampler=False,
            num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1,
            default_root_dir=output_dir or launch_dir)
        t_fit = time.perf_counter()
        trainer.fit(module, train_dataloaders=train_loader, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=True)  # a checkpoint is data: no pickled code runs when it is read
        last_step = max((h["step"] for h in module.history), default=cfg.trainer.max_steps)
        wall = time.perf_counter() - t_fit + (ckpt_cb.wall_before if ckpt_cb is not None else 0.0)  # resumed: all of it
        log_summary(logger, module.history, last_step, wall)
        _save_policy(cfg, module, trainer, logger, output_dir)
    except BaseException as e:
        signum = (ckpt_cb.stop_signal if ckpt_cb is not None else None) or stops.received
        # Ctrl-C: Lightning turns the KeyboardInterrupt into SystemExit(1) after its graceful shutdown
        killed = signum is not None or isinstance(e, KeyboardInterrupt) or (
            isinstance(e, SystemExit) and trainer is not None and trainer.interrupted)
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        mark_error(logger, KeyboardInterrupt(f"interrupted ({name})") if killed else e)
        mark_run_status(logger, "KILLED" if killed else "FAILED")
        if not killed:
            raise
        if ckpt_cb is None or ckpt_cb.stopped_after is None:  # not stopped at an iteration boundary: say so here
            last = (ckpt_cb.last_path if ckpt_cb is not None else None) or ckpt_path
            log.warning("Interrupted (%s) %s; the MLflow run is marked KILLED; %s", name,
                        "before training started" if trainer is None else "during the run, not at an iteration boundary",
                        f"continue with resume={last}" if last else "nothing to resume: start the run again")
        raise SystemExit(128 + signal.SIGTERM if signum == signal.SIGTERM else 1) from e  # 143: killed by SIGTERM
    finally:
        stops.restore()
    unlogged = getattr(logger, "unlogged", None)
    if unlogged:  # the work is done and saved; the record of it is not complete: say what is missing
        from rlexp.tracking import TrackingError
        mark_run_status(logger, "FAILED")
        where = f" Its last checkpoint is {ckpt_cb.last_path}." if ckpt_cb is not None and ckpt_cb.last_path else ""
        raise TrackingError(f"the run finished, but the MLflow store {logger._tracking_uri} failed during it and did "
                            f"not record: {logger.unlogged_summary()}.{where}")
    mark_run_status(logger, "FINISHED")
    _report(module, logger)
    return module


class _StopSignals:
    """Ctrl-C (SIGINT) or SIGTERM outside the training loop (building the warm start and the models, saving
    the policy) stops the run at once, as a ``KeyboardInterrupt``, and is recorded in ``received``. The
    training loop has its own handlers, which stop at an iteration boundary (`IterationCheckpoint`)."""

    def __init__(self):
        from rlexp.modules.checkpoint import STOP_SIGNALS
        self.received: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def _on_signal(self, signum, frame):
        self.received = self.received or signum
        raise KeyboardInterrupt

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def _instantiate_task(cfg):
    """The task from ``cfg.task``; an import or argument error in it (``task.reward._target_``...) is a
    config error naming what failed."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    try:
        return instantiate(cfg.task)
    except InstantiationException as e:
        first = " ".join(str(e).split()).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception.", ";")
        raise ConfigError(f"task: {first[:500]}") from e


def _resume_point(cfg, launch_dir: str):
    """``(checkpoint path, its rlexp_state)`` for ``resume=PATH|auto``, ``(None, None)`` for a fresh run."""
    resume = cfg.get("resume")
    if resume is None:
        return None, None
    from rlexp.modules.checkpoint import config_changes, find_last_checkpoint, read_checkpoint
    from rlexp.tracking import flatten_config
    if cfg.algorithm.get("module") != "online":
        raise ConfigError(f"resume={resume}: resuming is supported for the online algorithms (PPO, the GRPO "
                          f"family); algorithm={cfg.algorithm.name} runs are short: start them again")
    if resume == "auto":
        roots = [Path(launch_dir) / "outputs", Path(launch_dir) / "multirun"]
        if cfg.checkpoint.get("dir"):
            roots.insert(0, Path(str(cfg.checkpoint.dir)))
        path = find_last_checkpoint(roots)
        if path is None:
            raise ConfigError(f"resume=auto: no last.ckpt under {', '.join(str(r) for r in roots)}")
    else:
        path = Path(str(resume)).expanduser()
    try:  # every byte checked before MLflow is touched: a damaged file must not reopen (and fail) its run
        state, saved_config = read_checkpoint(path, whole=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: name it
        why = (str(e).splitlines() or [""])[0][:300]
        raise ConfigError(f"resume={path}: cannot be read as an rlexp checkpoint: {type(e).__name__}: {why}") from e
    changed = config_changes(saved_config, flatten_config(cfg))
    if changed:
        raise ConfigError(f"resume={path}: this run's config differs from the checkpointed run's where it decides "
                          f"the update ({'; '.join(changed[:5])}{'; …' if len(changed) > 5 else ''}): resume with "
                          f"the same overrides, or start a new run")
    if state["iteration"] >= state.get("max_steps", cfg.trainer.max_steps):
        raise ConfigError(f"resume={path}: that run finished all its {state['iteration']} iterations; to train "
                          f"further, start a new run from its saved policy (model=hf model.name_or_path=<its "
                          f"output dir>/policy)")
    if state["iteration"] >= cfg.trainer.max_steps:
        raise ConfigError(f"resume={path}: the checkpoint is at iteration {state['iteration']}, which is already "
                          f"trainer.max_steps={cfg.trainer.max_steps}: raise trainer.max_steps to train further")
    _refuse_finished_run(cfg, launch_dir, path, state)
    log.info("Resuming from %s at iteration %d", path, state["iteration"])
    return path, state


def _refuse_finished_run(cfg, launch_dir: str, path: Path, state: dict) -> None:
    """A checkpoint (e.g. an ``iter-NNNNNN.ckpt``) of a run whose MLflow record has since FINISHED is refused:
    resuming it would reopen a complete record and log its steps again. The store is only read here."""
    from rlexp.tracking.mlflow import launch_rank, resolve_tracking_uri
    run_id = state.get("mlflow_run_id")
    if not run_id or cfg.tracking.name == "none" or launch_rank() != 0:
        return
    from mlflow.tracking import MlflowClient
    try:
        status = MlflowClient(resolve_tracking_uri(cfg.tracking, launch_dir)).get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - an unusable store or an unknown run id: make_logger names it
        return
    if status == "FINISHED":
        output = path.parent.parent if path.parent.name == "checkpoints" else None
        policy = output / "policy" if output is not None and (output / "policy").is_dir() else "<its output dir>/policy"
        raise ConfigError(f"resume={path}: its MLflow run {run_id} has FINISHED since this checkpoint was written, "
                          f"and a resume would reopen it; to train further, start a new run from its saved policy "
                          f"(model=hf model.name_or_path={policy})")


def _logged_steps(logger) -> dict[str, int]:
    """``{metric: last step}`` that the MLflow run being resumed already holds. A killed run may have logged
    iterations after its last checkpoint; the resumed run computes them again (identically: same state, same
    random streams) and does not log them a second time (MLflow cannot delete a metric point), so the
    history keeps exactly one value per step."""
    client, run_id = logger.experiment, logger.run_id
    return {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1)
            for k in client.get_run(run_id).data.metrics}


def _save_policy(cfg, module, trainer, logger, output_dir: str | None) -> None:
    """``save_pretrained`` of the trained policy under ``<output dir>/policy`` (first worker only), and its
    upload as the MLflow run's ``policy/`` artifact with ``tracking.log_model=true``. Called from Python
    without ``output_dir``, ``run`` saves nothing unless ``log_model`` asks (then via a temporary dir)."""
    import tempfile

    from rlexp.models.export import export_policy

    save = bool(output_dir) and cfg.trainer.save_policy
    log_model = logger is not None and cfg.tracking.log_model
    if not trainer.is_global_zero or not (save or log_model):
        return
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(output_dir) / "policy" if save else Path(tmp)
        export_policy(module.policy_model, module.tokenizer, target)
        log.info("Trained policy saved with save_pretrained at %s", target)
        if log_model:
            logger.guarded("the policy artifact", logger.experiment.log_artifacts, logger.run_id, str(target), "policy")


def _report(module, logger) -> None:
    first = next((h for h in module.history if "eval/reward_mean" in h), {})  # resumed: restored from the checkpoint
    last = module.last_eval
    start = "step 0, warm start" if first.get("step") == 0 else f"step {first.get('step')}"
    log.info("eval/reward_mean %.3f (%s) -> %.3f (step %s)", first.get("eval/reward_mean", float("nan")), start,
             last.get("eval/reward_mean", float("nan")), last.get("step"))
    if logger is not None:
        log.info("MLflow run %s in experiment %r at %s  (browse: mlflow ui --backend-store-uri %s)",
                 logger.run_id, logger._experiment_name, logger._tracking_uri, logger._tracking_uri)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported in one line, without a traceback."""
    from rlexp.models import ModelLoadError
    from rlexp.modules.checkpoint import CheckpointError
    from rlexp.modules.preference_data import DatasetError
    from rlexp.tasks import RewardError
    from rlexp.tracking import TrackingError

    return CheckpointError, ConfigError, DatasetError, ModelLoadError, RewardError, TrackingError


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
