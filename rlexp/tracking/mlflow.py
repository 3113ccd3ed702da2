"""Recording a run in MLflow through Lightning's ``MLFlowLogger``.

Conventions: the default store is ``sqlite:///<launch dir>/mlflow.db``;
``MLFLOW_TRACKING_URI`` or ``tracking.uri=`` override it. Params are the resolved config with
dotted keys (``algorithm.gamma``), less the model keys that change nothing in the run (``run_params``,
named by the ``rlexp.inactive_params`` tag); metrics are namespaced (``train/``, ``eval/``, ``perf/``) with
step = RL iterations completed; tags name the algorithm, task, model, git commit and the overrides;
artifacts are the resolved config and tables of sample completions with their rewards. A sweep is a
parent run with nested child runs tagged with the sweep id (``rlexp.sweep_id``).
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from rlexp.tracking.common import (  # noqa: F401  (ENV_* and resolve_tracking_uri re-exported)
    ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME, experiment_id, log_params, open_store, resolve_tracking_uri,
)

log = logging.getLogger(__name__)
MAX_PARAM_LEN = 6000
#: the tag holding the run's output directory (``hydra.run.dir``: its policy/, checkpoints/, .hydra/)
OUTPUT_DIR_TAG = "rlexp.output_dir"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written."""


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


#: the tag naming the config keys left out of a run's params (`run_params`), and why
INACTIVE_TAG = "rlexp.inactive_params"


def run_params(cfg: DictConfig) -> tuple[dict[str, str], str]:
    """A run's MLflow params and its ``rlexp.inactive_params`` tag (empty: none left out). The params are
    ``flatten_config(cfg)`` without the keys that change nothing in this run (``inactive_model_keys``: every
    ``model.lora.*`` key but ``enabled`` while LoRA is off, every ``model.warmstart.*`` key but ``enabled``, and
    ``model=hf``'s ``init_seed``, while the warm start is off; ``inactive_task_keys``: ``task.reward.*`` while
    ``task.rewards`` replaces it), so that a run's params never describe a warm start, adapters or a reward it
    did not have. The tag names those keys and why; ``config/resolved.yaml`` keeps them all."""
    from rlexp.config.knobs import inactive_entry, inactive_model_keys, inactive_task_keys

    params = flatten_config(cfg)
    model = cfg.get("model")
    inactive = {**(inactive_model_keys(model) if isinstance(model, DictConfig) else {}),
                **inactive_task_keys(cfg.get("task"))}
    covered = {k: inactive_entry(k, inactive) for k in params}
    used = {name for name in covered.values() if name is not None}
    said = [f"{name}{'*' if name.endswith('.') else ''}: {why}" for name, why in inactive.items() if name in used]
    return {k: v for k, v in params.items() if covered[k] is None}, "; ".join(said)


_NAME_PREFIXES = ("algorithm.", "rollout.", "task.", "model.")


def short_run_name(algorithm: str, overrides: list[str]) -> str:
    """``ppo clip_eps=0.2 lam=0.95 seed=1``: the algorithm and the overrides that change the experiment
    (run length, tracking and Hydra settings left out; the full list is the ``rlexp.overrides`` tag)."""
    parts = [algorithm]
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key == "seed" or key.startswith(_NAME_PREFIXES) and not key.startswith("model.warmstart."):
            parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts)[:120]


def sweep_job_tags() -> dict[str, str]:
    """Nesting tags for a job of a multirun (empty outside one)."""
    parent = os.environ.get(ENV_PARENT)
    if not parent:
        return {}
    return {"mlflow.parentRunId": parent, "rlexp.sweep_id": os.environ.get(ENV_SWEEP_ID, ""),
            "rlexp.sweep_name": os.environ.get(ENV_SWEEP_NAME, ""), "rlexp.role": "job"}


def record_failed_run(cfg: DictConfig, *, launch_dir: str | Path, overrides: list[str], error: str) -> None:
    """A FAILED run for a job refused before it started (e.g. a bad value in one sweep job), so that
    the sweep shows every job. Params are logged as given, tags say why."""
    t = cfg.get("tracking")
    if t is None or t.get("name") == "none":
        return
    from mlflow.entities import RunStatus

    client = open_store(resolve_tracking_uri(t, launch_dir))
    algorithm = OmegaConf.select(cfg, "algorithm.name") or "run"
    tags = {"rlexp.overrides": " ".join(overrides), "rlexp.error": error[:5000],
            "mlflow.runName": short_run_name(str(algorithm), overrides), **sweep_job_tags()}
    run = client.create_run(experiment_id(client, t.experiment), tags=tags)
    try:
        params, inactive = run_params(cfg)
    except Exception:  # noqa: BLE001 - an unresolvable config: keep the overrides only
        params, inactive = dict(o.split("=", 1) for o in overrides if "=" in o), ""
    if inactive:
        client.set_tag(run.info.run_id, INACTIVE_TAG, inactive)
    log_params(client, run.info.run_id, params)
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))


def one_line(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``error`` (a store's error wraps the one that says what
    happened: ``sqlite3.OperationalError: attempt to write a readonly database``, a refused connection)."""
    seen, root = {id(error)}, error
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    text = (str(root).splitlines() or [""])[0].strip()
    return f"{type(root).__name__}: {text}"[:300] if text else type(root).__name__


class _DropStoreTracebacks(logging.Filter):
    """MLflow's SQL store logs every failed call with its traceback (``SQLAlchemy database error...``) before
    raising it; rlexp reports the raised error itself, in one line per kind of failure (`RunLogger`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def quiet_store_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DropStoreTracebacks) for f in logger.filters):
        logger.addFilter(_DropStoreTracebacks())


class RunLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger``, except that a store failing in the middle of a run does not stop the
    run: what could not be recorded is listed in ``unlogged`` (and reported in one log line per kind of
    record: metrics, a sample table, the run's end...), training, checkpoints and the saved policy go on, and
    ``rlexp train`` reports the gap at the end."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unlogged: list[str] = []
        self._kinds_said: set[str] = set()

    def record_failure(self, what: str, error: BaseException) -> None:
        kind = re.sub(r"\d+", "N", what)  # "metrics of step 7" and "... step 9" are one kind of failure
        if kind not in self._kinds_said:
            first = not self._kinds_said
            self._kinds_said.add(kind)
            log.error("MLflow store %s failed: %s not recorded (%s)%s", self._tracking_uri, what, one_line(error),
                      "; the run goes on, its checkpoints and saved policy are not affected (each kind of failure "
                      "is reported once; the run's last line lists what is missing)" if first else "")
        self.unlogged.append(what)

    def guarded(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, a store failure recorded instead of raised."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - recorded and reported; the run's work matters more
            self.record_failure(what, e)
            return None

    def log_metrics(self, metrics, step=None) -> None:
        self.guarded(f"metrics of step {step}", super().log_metrics, metrics, step)

    def finalize(self, status: str = "success") -> None:  # Lightning's teardown; rlexp sets the status itself
        self.guarded("the run's end", super().finalize, status)

    @property
    def tracking_uri(self) -> str:
        """The store this run is recorded in."""
        return self._tracking_uri

    @property
    def experiment_name(self) -> str:
        return self._experiment_name

    def logged_steps(self) -> dict[str, int]:
        """``{metric: last step}`` that this run already holds. A resumed run computes again (identically: same
        state, same random streams) the iterations the killed run logged after its last checkpoint, and does
        not log them a second time (MLflow cannot delete a metric point), so its history keeps exactly one
        value per step."""
        client, run_id = self.experiment, self.run_id
        return {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1)
                for k in client.get_run(run_id).data.metrics}

    def unlogged_summary(self) -> str:
        metric_steps = list(dict.fromkeys(w.rsplit(" ", 1)[1] for w in self.unlogged if w.startswith("metrics of step ")))
        other = [w for w in self.unlogged if not w.startswith("metrics of step ")]
        shown = metric_steps if len(metric_steps) <= 3 else [*metric_steps[:3], "…", metric_steps[-1]]
        parts = [f"metrics of {len(metric_steps)} step(s) ({', '.join(shown)})"] if metric_steps else []
        return "; ".join(parts + other)


def log_summary(logger: MLFlowLogger | None, history: list[dict], max_steps: int, wall_seconds: float) -> dict:
    """Summary metrics of a finished run, for the MLflow compare view and parallel coordinates:
    the final eval/reward_mean, the area under its curve per iteration, and the wall time. A resumed run's
    ``history`` holds the evaluations before its checkpoint too, and ``wall_seconds`` the training time of
    the processes it continues, so its summaries are those of the run as a whole."""
    evals = [(h["step"], h["eval/reward_mean"]) for h in history if "eval/reward_mean" in h]
    summary = {"summary/wall_seconds": wall_seconds}
    if evals:
        summary["summary/final_eval_reward"] = evals[-1][1]
        area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(evals, evals[1:]))
        summary["summary/reward_auc"] = area / max(max_steps, 1) if len(evals) > 1 else evals[0][1]
    if logger is not None:
        logger.log_metrics(summary, step=max_steps)
    return summary


def mark_error(logger: MLFlowLogger | None, error: BaseException) -> None:
    if logger is None or logger._run_id is None:
        return
    try:
        text = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
        logger.experiment.set_tag(logger.run_id, "rlexp.error", text[:5000])
    except Exception as e:  # noqa: BLE001
        log.error("could not tag MLflow run %s with its error: %s", logger._run_id, one_line(e))


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def launch_rank() -> int:
    """This process's global rank as its launcher set it (Lightning's DDP subprocesses, torchrun, SLURM);
    0 for a plain process. Read before the Trainer exists, so that worker processes never open a run."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key):
            return int(os.environ[key])
    return int(os.environ.get("NODE_RANK", 0) or 0) + int(os.environ.get("LOCAL_RANK", 0) or 0)


def make_logger(cfg: DictConfig, *, launch_dir: str | Path, overrides: list[str], resume_run_id: str | None = None,
                resumed_from=None, output_dir: str | Path | None = None) -> MLFlowLogger | None:
    """Create the MLflow run now (so a later crash is recorded) and log params and tags; ``output_dir`` (the
    run's own directory: policy, checkpoints) is the tag ``rlexp.output_dir``. With ``resume_run_id``
    (``resume=``), continue that run instead: back to RUNNING, its params kept (MLflow params cannot change),
    tagged ``rlexp.resumed_from`` and ``rlexp.output_dir`` (now the resumed run's directory); metrics go on at
    the next step."""
    t = cfg.tracking
    if t.name == "none" or launch_rank() != 0:  # distributed: only the first worker talks to MLflow
        return None
    uri = resolve_tracking_uri(t, launch_dir)
    override_str = " ".join(overrides)
    run_name = t.run_name or short_run_name(cfg.algorithm.name, overrides)
    tags = {"algorithm": cfg.algorithm.name, "task": cfg.task.name, "model": cfg.model.name,
            "rlexp.overrides": override_str or "(none)"}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if output_dir is not None:
        tags[OUTPUT_DIR_TAG] = str(Path(output_dir).resolve())
    tags.update(sweep_job_tags())
    tags.update({str(k): str(v) for k, v in (t.tags or {}).items()})
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    quiet_store_errors()
    logger = None
    try:  # the store is opened here: an unreachable or unwritable one fails before any model is built
        open_store(uri, experiment=t.experiment)  # created/upgraded under a file lock: concurrent first runs
        if resume_run_id is not None:
            logger = RunLogger(experiment_name=str(t.experiment), tracking_uri=uri, run_id=resume_run_id)
            client, run_id = logger.experiment, logger.run_id
            client.get_run(run_id)  # a run id this store does not know: refused here, named
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "rlexp.resumed_from", str(resumed_from))
            if OUTPUT_DIR_TAG in tags:
                client.set_tag(run_id, OUTPUT_DIR_TAG, tags[OUTPUT_DIR_TAG])
        else:
            logger = RunLogger(experiment_name=str(t.experiment), run_name=run_name[:250], tracking_uri=uri,
                               tags=tags)
            client, run_id = logger.experiment, logger.run_id
            params, inactive = run_params(cfg)
            log_params(client, run_id, params)
            if inactive:
                client.set_tag(run_id, INACTIVE_TAG, inactive)
            client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
    except Exception as e:  # noqa: BLE001 - any store failure at start-up is fatal and named
        raise TrackingError(f"tracking store {uri} is not usable: {type(e).__name__}: {e}") from e
    except BaseException as e:  # Ctrl-C / SIGTERM (rlexp.train's handlers: "interrupted (SIGTERM)") meanwhile:
        mark_error(logger, e)  # the run it created (or reopened) ends KILLED, not RUNNING
        mark_run_status(logger, "KILLED")
        raise
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
        log.error("could not mark MLflow run %s as %s: %s", logger._run_id, status, one_line(e))


class RunArtifacts(L.Callback):
    """Logs the module's pending sample tables and the warm-start report as MLflow artifacts."""

    def __init__(self, logger: RunLogger, warmstart_info: dict | None = None):
        self.logger, self.warmstart_info = logger, warmstart_info or {}

    def on_train_start(self, trainer, pl_module):
        if self.warmstart_info:
            self.logger.guarded("warmstart.json", self.logger.experiment.log_dict, self.logger.run_id,
                                self.warmstart_info, "warmstart.json")
        self._flush(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._flush(pl_module)

    def _flush(self, pl_module):
        while getattr(pl_module, "pending_samples", None):
            step, rows = pl_module.pending_samples.pop(0)
            table = {k: [r[k] for r in rows] for k in rows[0]}
            name = f"samples/eval_step_{step:06d}.json"
            self.logger.guarded(name, self.logger.experiment.log_table, self.logger.run_id, data=table,
                                artifact_file=name)
