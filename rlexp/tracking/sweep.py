"""A multirun as an MLflow parent run, through a Hydra callback (``hydra.callbacks`` in conf/config.yaml).

``on_multirun_start`` creates the parent run (tag ``rlexp.role=sweep``, a fresh ``rlexp.sweep_id``,
the sweep's name, and the sweep definition as ``sweep.<key>`` params) and exports its id in the
environment, where every job's run finds it and nests under it (``mlflow.parentRunId``) — in process
with the basic launcher, in worker processes with joblib or submitit. ``on_multirun_end`` finishes
the parent (FAILED when every job failed), prints how many jobs failed and why, and writes the
comparison report (``rlexp compare``) onto the parent run.

A sweep that stops early closes its parent too: ``close_interrupted`` (called by ``rlexp train``/``rlexp
sweep`` around Hydra) marks it KILLED after Ctrl-C or SIGTERM, FAILED after an error such as a typo in a
swept key, and prints how to resume it. Resuming (``SweepCallback(resume=ID)``, i.e. ``rlexp sweep NAME
--resume ID``) reopens the same parent, and each job whose configuration already has a FINISHED run
under it is skipped (``finished_result``). A grid sweep's planned configurations are its parent's
``sweep.*`` params expanded as Hydra's basic sweeper does (``planned_jobs``); ``unfinished`` lists those
without a FINISHED run, for ``rlexp compare``.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rlexp.tracking.common import (
    ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME, experiment_id, log_params, open_store, resolve_tracking_uri,
)
from rlexp.tracking.links import RANK_METRIC, browse, run_page, sweep_note, sweep_page, write_note

log = logging.getLogger("rlexp.sweep")

#: set in the environment of a resumed sweep's jobs: the tracking URI where ``finished_result`` looks for
#: the FINISHED runs of their sweep (``ENV_SWEEP_ID``) that make a job unnecessary
ENV_RESUMING = "RLEXP_SWEEP_RESUMING"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
#: the sweep in progress in this process (``close_interrupted`` closes its parent)
_ACTIVE: SweepCallback | None = None


class SweepError(Exception):
    """A sweep that cannot be resumed as asked (unknown id, another definition, still running)."""


class SweepTerminated(KeyboardInterrupt):
    """SIGTERM during a sweep: stops it like Ctrl-C (the job in progress is interrupted, the parent KILLED)."""


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


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_key(overrides: list[str] | str) -> str:
    """One spelling of a job's configuration: its overrides (a list, or the ``rlexp.overrides`` tag that
    joins them with spaces) sorted, ``+``/``~`` dropped, so that the order on the command line does not matter."""
    text = overrides if isinstance(overrides, str) else " ".join(overrides)
    return " ".join(sorted(p.lstrip("+~") for p in text.split(" ") if p))


def planned_jobs(definition: dict[str, str]) -> list[list[str]] | None:
    """The jobs (override lists) Hydra's basic sweeper launches for a sweep definition (``sweep_definition``):
    the Cartesian product of its comma lists, values spelled as Hydra spells them to the jobs; None when
    it cannot be expanded here (e.g. a ``glob`` over a config group)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    try:
        overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in definition.items()])
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # noqa: BLE001 - a plan we cannot know is reported as unknown, not as an error
        return None


def _plan_of(parent) -> list[list[str]] | None:
    """The planned jobs of a sweep's parent run, from its ``sweep.*`` params (a grid sweep only)."""
    if parent.data.tags.get("rlexp.sweeper") != BASIC_SWEEPER:
        return None
    params = {k[len("sweep."):]: v for k, v in parent.data.params.items() if k.startswith("sweep.") and k != "sweep.name"}
    if any(len(v) >= 6000 for v in params.values()):  # truncated when logged: the plan is not recorded whole
        return None
    return planned_jobs(params)


def _job_runs(client, parent) -> list:
    """Every job run of the sweep whose parent run is ``parent``, oldest first."""
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`rlexp.sweep_id` = '{parent.data.tags['rlexp.sweep_id']}' "
                                            f"and tags.`rlexp.role` = 'job'", max_results=50000)
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def unfinished(tracking_uri: str, parent_run_id: str) -> tuple[int, list[tuple[str, str]]] | None:
    """``(number of planned configurations, [(configuration, what became of it), ...])`` for each planned
    configuration of a grid sweep without a FINISHED job run: ``never ran``, or the status of its last run
    (KILLED, FAILED, RUNNING). A configuration shows only its swept keys. None when the plan is not known
    (another sweeper than the grid, such as Optuna, which proposes as it goes)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    jobs = _plan_of(parent)
    if jobs is None:
        return None
    statuses: dict[str, list[str]] = {}
    for r in _job_runs(client, parent):
        statuses.setdefault(job_key(r.data.tags.get("rlexp.overrides", "")), []).append(r.info.status)
    swept = {k for k in {_key(o) for job in jobs for o in job} if len({o for job in jobs for o in job if _key(o) == k}) > 1}
    out = []
    for job in jobs:
        seen = statuses.get(job_key(job), [])
        if "FINISHED" not in seen:
            out.append((" ".join(o for o in job if _key(o) in swept) or " ".join(job), seen[-1] if seen else "never ran"))
    return len(jobs), out


def print_unfinished(tracking_uri: str, parent_run_id: str) -> None:
    """For ``rlexp compare``: which planned configurations of the sweep have not finished, and how to run them."""
    found = unfinished(tracking_uri, parent_run_id)
    if not found or not found[1]:
        return
    total, missing = found
    from mlflow.tracking import MlflowClient

    command = MlflowClient(tracking_uri).get_run(parent_run_id).data.tags.get("rlexp.resume_command")
    shown = "; ".join(f"{c} ({s})" for c, s in missing[:20]) + ("; …" if len(missing) > 20 else "")
    print(f"{len(missing)} of {total} configurations of this sweep have no finished run: {shown}."
          + (f" Run them under the same parent with: {command}" if command else ""))


def finished_result(overrides: list[str]) -> float | None:
    """In a resumed sweep, a job whose configuration already has a FINISHED run under the same parent is
    not run again: its final ``eval/reward_mean`` (what the sweeper gets from a job) is returned instead.
    None outside a resumed sweep, or when the job must run."""
    uri, sweep_id, parent_id = (os.environ.get(v) for v in (ENV_RESUMING, ENV_SWEEP_ID, ENV_PARENT))
    if not (uri and sweep_id and parent_id):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    key = job_key(overrides)
    for r in _job_runs(client, client.get_run(parent_id)):
        if r.info.status == "FINISHED" and job_key(r.data.tags.get("rlexp.overrides", "")) == key:
            log.info("sweep %s: %s already finished in run %s: not run again", sweep_id, " ".join(overrides),
                     r.info.run_id)
            return float(r.data.metrics.get("eval/reward_mean", float("nan")))
    return None


def resume_command(config: DictConfig, sweep_id: str) -> str:
    """The command that resumes this sweep: the same overrides, plus ``--resume SWEEP_ID``."""
    import shlex

    task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task") or []]
    extra = [str(o) for o in OmegaConf.select(config, "hydra.overrides.hydra") or []
             if not str(o).startswith(("hydra.mode=", "hydra.callbacks.mlflow_sweep.resume="))]
    name = next((o.split("=", 1)[1] for o in task if _key(o) == "sweeps"), None)
    rest = [o for o in task if _key(o) != "sweeps"] if name else task
    head = f"rlexp sweep {name}" if name else "rlexp train -m"
    return " ".join([head, *(shlex.quote(o) for o in rest + extra), "--resume", sweep_id])


def _error_chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        chain.append(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return chain


def close_interrupted(error: BaseException) -> int | None:
    """Called with whatever stopped a multirun (``rlexp train``/``rlexp sweep``): when a sweep's parent run
    is still open, close it — KILLED after Ctrl-C or SIGTERM, FAILED after an error (a typo in a swept key)
    — and print one line saying so and how to resume it. Returns the exit status to use (143 after SIGTERM,
    1 after Ctrl-C, 2 after a config composition error), or None when no sweep was open."""
    cb = _ACTIVE
    if cb is None or cb.parent_id is None:
        return None
    cb._restore_sigterm()
    chain = _error_chain(error)
    codes = {e.code for e in chain if isinstance(e, SystemExit)}
    terminated = cb.terminated or 143 in codes
    killed = terminated or 130 in codes or any(isinstance(e, KeyboardInterrupt) for e in chain)
    cause = next((e for e in chain if not isinstance(e, SystemExit)), error)
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    text = ("SIGTERM" if terminated else "interrupted (Ctrl-C)") if killed else f"{type(cause).__name__}: {first}"
    status = "KILLED" if killed else "FAILED"
    done = total = None
    try:
        cb.client.set_tag(cb.parent_id, "rlexp.error", text[:5000])
        runs = _job_runs(cb.client, cb.client.get_run(cb.parent_id))
        for r in runs:  # a job stopped before its run could record how (e.g. Ctrl-C right as the run was created)
            if r.info.status == "RUNNING":
                cb.client.set_tag(r.info.run_id, "rlexp.error", f"its sweep stopped ({text}) while it ran")
                cb.client.set_terminated(r.info.run_id, "KILLED")
        cb.client.log_metric(cb.parent_id, "sweep/jobs", len(runs))
        plan = unfinished(cb.uri, cb.parent_id)
        if plan is not None:
            total, done = plan[0], plan[0] - len(plan[1])
        cb.client.set_terminated(cb.parent_id, status)
    except Exception as e:  # noqa: BLE001 - the store may be what failed: say so, keep the original error
        log.error("sweep %s: its parent run %s could not be closed: %s", cb.sweep_id, cb.parent_id, e)
    finished = f"{done} of {total} configurations finished; " if total is not None else ""
    how = f"; resume it with: {cb.command}" if killed or done else ""
    print(f"rlexp: sweep {cb.sweep_id} stopped ({text}): {finished}its parent run {cb.parent_id} is {status}{how}",
          file=sys.stderr)
    cb._clear()
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if terminated:
        return 143
    if killed:
        return 1
    if isinstance(cause, (ConfigCompositionException, MissingConfigException, OverrideParseException)):
        return 2
    return next((c for c in codes if isinstance(c, int)), 1)


class SweepCallback(Callback):
    def __init__(self, report: bool = True, resume: str | None = None) -> None:
        self.report = report
        self.resume = None if resume is None else str(resume)
        self.client = None
        self.parent_id: str | None = None
        self.sweep_id: str | None = None
        self.experiment_id: str | None = None
        self.command = ""
        self.terminated = False
        self._previous_sigterm = None
        self.t0 = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _ACTIVE
        t = config.get("tracking")
        if t is None or t.get("name") == "none":
            if self.resume:
                self._refuse(f"--resume {self.resume}: this sweep is not tracked (tracking=none), so there is "
                             f"nothing to resume")
            return
        name = str(OmegaConf.select(config, "sweep.name") or "multirun")
        self.uri = resolve_tracking_uri(t, os.getcwd())
        self.client = open_store(self.uri, experiment=t.experiment)  # a fresh SQLite store: made under its lock
        if self.resume:
            self._reopen(config, t)
        else:
            self.sweep_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            tags = {"rlexp.role": "sweep", "rlexp.sweep_id": self.sweep_id, "rlexp.sweep_name": name,
                    "mlflow.runName": f"sweep {self.sweep_id}",
                    "rlexp.launcher": str(OmegaConf.select(config, "hydra.launcher._target_") or ""),
                    "rlexp.sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_") or "")}
            self.experiment_id = experiment_id(self.client, t.experiment)
            run = self.client.create_run(self.experiment_id, tags=tags)
            self.parent_id = run.info.run_id
            params = {f"sweep.{k}": v[:6000] for k, v in sweep_definition(config).items()}
            log_params(self.client, self.parent_id, {**params, "sweep.name": name})
            self._describe(name, report=False)
        self.t0 = time.perf_counter()
        self.command = resume_command(config, self.sweep_id)
        self.client.set_tag(self.parent_id, "rlexp.resume_command", self.command[:5000])
        self.client.set_tag(self.parent_id, "rlexp.launcher_pid", f"{socket.gethostname()}:{os.getpid()}")
        os.environ[ENV_PARENT], os.environ[ENV_SWEEP_ID], os.environ[ENV_SWEEP_NAME] = (
            self.parent_id, self.sweep_id, name)
        if self.resume:
            os.environ[ENV_RESUMING] = self.uri
        self._install_sigterm()
        _ACTIVE = self
        log.info("sweep %s: parent MLflow run %s at %s", self.sweep_id, self.parent_id, self.uri)

    # ------------------------------------------------------------------ resuming
    def _refuse(self, message: str) -> None:
        print(f"rlexp: config error: {message}", file=sys.stderr)
        sys.exit(2)

    def _reopen(self, config: DictConfig, t) -> None:
        """Continue the sweep ``self.resume`` (a sweep id or its parent run id): the same definition, the same
        parent run (back to RUNNING); job runs left RUNNING by a killed launcher are marked KILLED."""
        exp = self.client.get_experiment_by_name(str(t.experiment))
        parents = [] if exp is None else self.client.search_runs(
            [exp.experiment_id], filter_string="tags.`rlexp.role` = 'sweep'", max_results=50000)
        parent = next((r for r in parents if self.resume in (r.data.tags.get("rlexp.sweep_id"), r.info.run_id)), None)
        if parent is None:
            known = ", ".join(r.data.tags.get("rlexp.sweep_id", r.info.run_id) for r in parents[:5]) or "(none)"
            self._refuse(f"--resume {self.resume}: no sweep with that id or parent run id in experiment "
                         f"{t.experiment!r} at {self.uri}; sweeps there (newest first): {known}")
        before = {k[len("sweep."):]: v for k, v in parent.data.params.items() if k.startswith("sweep.") and k != "sweep.name"}
        now = {k: v[:6000] for k, v in sweep_definition(config).items()}
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            shown = "; ".join(f"{k}: {before.get(k, '(not set)')} -> {now.get(k, '(not set)')}" for k in changed[:5])
            self._refuse(f"--resume {self.resume}: the sweep is defined differently now ({shown}); resume it with "
                         f"the overrides it was started with: {parent.data.tags.get('rlexp.resume_command', '')}")
        host, _, pid = parent.data.tags.get("rlexp.launcher_pid", "").rpartition(":")
        if parent.info.status == "RUNNING" and host == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
            self._refuse(f"--resume {self.resume}: the sweep is still running (process {pid} on this machine)")
        self.parent_id, self.sweep_id = parent.info.run_id, parent.data.tags["rlexp.sweep_id"]
        self.experiment_id = parent.info.experiment_id
        stale = [r for r in _job_runs(self.client, parent) if r.info.status == "RUNNING"]
        for r in stale:  # their launcher was killed (SIGKILL): they will never end by themselves
            self.client.set_tag(r.info.run_id, "rlexp.error", "its sweep's launcher was killed while it ran")
            self.client.set_terminated(r.info.run_id, "KILLED")
        self.client.update_run(self.parent_id, status="RUNNING")
        self.client.set_tag(self.parent_id, "rlexp.resumed", str(int(parent.data.tags.get("rlexp.resumed", "0")) + 1))
        if "rlexp.error" in parent.data.tags:  # why it stopped last time
            self.client.delete_tag(self.parent_id, "rlexp.error")
        left = unfinished(self.uri, self.parent_id)
        log.info("sweep %s resumed under parent run %s%s", self.sweep_id, self.parent_id,
                 f": {len(left[1])} of {left[0]} configurations to run" if left else "")

    # ------------------------------------------------------------------ SIGTERM, and leaving
    def _on_sigterm(self, signum, frame):
        """SIGTERM is Ctrl-C for the whole sweep: the SIGINT handler in place decides how the job in progress
        stops (a training job's: at the end of its iteration, with a checkpoint); otherwise it stops now."""
        self.terminated = True
        log.warning("SIGTERM: stopping the sweep (the job in progress stops as on Ctrl-C)")
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)
            return
        raise SweepTerminated("SIGTERM")

    def _install_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _clear(self) -> None:
        global _ACTIVE
        for var in (ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME, ENV_RESUMING):
            os.environ.pop(var, None)
        self._restore_sigterm()
        self.parent_id = None
        if _ACTIVE is self:
            _ACTIVE = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_id is None:
            self._clear()
            return
        self._restore_sigterm()
        runs = _job_runs(self.client, self.client.get_run(self.parent_id))
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
        reported = any(a.path == "report/report.html" for a in self.client.list_artifacts(self.parent_id, "report"))
        self._describe(str(OmegaConf.select(config, "sweep.name") or "multirun"), report=reported,
                       jobs=len(runs), failed=len(failed))
        self.client.set_terminated(self.parent_id, status)
        log.info("compare it again with: rlexp compare --sweep %s", self.sweep_id)
        log.info("sweep %s, its runs (best %s first): %s", self.sweep_id, RANK_METRIC,
                 browse(self.uri, sweep_page(self.experiment_id, self.sweep_id)))
        log.info("sweep %s, its parent run%s: %s", self.sweep_id, " and the report" if reported else "",
                 browse(self.uri, run_page(self.experiment_id, self.parent_id)))
        self._clear()

    def _describe(self, name: str, **counts) -> None:
        """The parent run's description: `links.sweep_note` (the report, the sweep's runs)."""
        write_note(self.client, self.parent_id, sweep_note(
            experiment_id=self.experiment_id, parent_id=self.parent_id, sweep_id=self.sweep_id, name=name, **counts))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
