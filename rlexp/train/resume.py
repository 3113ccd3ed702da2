"""``resume=PATH|auto``: the checkpoint a run continues from, checked before anything is built or recorded."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from rlexp.config import ConfigError

log = logging.getLogger("rlexp")
#: the module kinds (``algorithm.module``) that checkpoint at iteration boundaries, and so can be resumed
CHECKPOINTED_MODULES = ("online",)


class Resume(NamedTuple):
    path: Path  # the checkpoint file
    state: dict  # its ``rlexp_state``: iteration, max_steps, mlflow_run_id...


def resume_point(cfg, launch_dir: str) -> Resume | None:
    """The checkpoint and its state for ``resume=PATH|auto``, None for a fresh run."""
    resume = cfg.get("resume")
    if resume is None:
        return None
    from rlexp.modules.checkpoint import config_changes, find_last_checkpoint, read_checkpoint
    from rlexp.tracking import flatten_config
    if cfg.algorithm.get("module") not in CHECKPOINTED_MODULES:
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
    return Resume(path, state)


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
