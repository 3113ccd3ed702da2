"""Loading training runs from an MLflow store for comparison.

``load_runs`` finds the runs to compare — the jobs of one sweep (by sweep id, parent run id, or
``"latest"``), every training run of an experiment, or runs chosen by id — and returns them as ``RunRecord``s holding
params, tags, the latest value of every metric and the step histories of the metrics the report
plots. Nothing here aggregates or plots (``aggregate.py``, ``report.py``); nothing here writes.

MLflow is imported inside the functions so that ``rlexp compare --help`` stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_EXPERIMENT = "rlexp"
SWEEP_ROLE = "sweep"
PARENT_TAG = "mlflow.parentRunId"

# Metrics whose whole step history is loaded (the report's curves, fits and diagnostics).
HISTORY_METRICS = (
    "eval/reward_mean",
    "train/reward_mean",
    "train/clipfrac",
    "train/approx_kl",
    "train/entropy",
    "train/response_length",
    "train/advantage_var",
    "train/explained_variance",
    "train/adv_bias_vs_mc",
    "train/adv_mse_vs_mc",
    "perf/total_tokens",
    "perf/total_seconds",
)


class CompareError(ValueError):
    """Bad input to ``rlexp compare``: the message names what is wrong and what exists instead."""


@dataclass
class RunRecord:
    """One training run as read from MLflow (params and tags are strings, as MLflow stores them)."""

    run_id: str
    name: str
    status: str  # FINISHED, FAILED, RUNNING, KILLED, SCHEDULED
    start_time: int  # ms since the epoch
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # latest value (at the largest step) of every metric the run logged
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]

    @property
    def summary(self) -> dict[str, float]:
        """The ``summary/...`` metrics logged once at the end of training."""
        return {k: v for k, v in self.metrics.items() if k.startswith("summary/")}

    @property
    def error(self) -> str | None:
        """The one-line ``rlexp.error`` tag of a failed run."""
        return self.tags.get("rlexp.error")

    def history(self, metric: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` sorted by step; empty when the run never logged ``metric``."""
        return self.histories.get(metric, [])


@dataclass
class SweepParent:
    """A sweep's parent run: its id, name, and the sweep definition it logged as params."""

    run_id: str
    sweep_id: str
    sweep_name: str
    experiment_id: str
    status: str
    params: dict[str, str]


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every active run matching ``filter_string``, newest first (follows MLflow's pagination)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_names(client) -> list[str]:
    return sorted(e.name for e in client.search_experiments())


def _experiment_ids(client, experiment: str | None) -> list[str]:
    """The id of ``experiment``, or (``None``) the ids of every active experiment."""
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(f"no experiment named {experiment!r} in the tracking store; "
                           f"experiments there: {', '.join(_experiment_names(client)) or '(none)'}")
    return [exp.experiment_id]


def _where(experiment: str | None) -> str:
    return f"experiment {experiment!r}" if experiment else "any experiment"


def _parent_record(run) -> SweepParent:
    tags = run.data.tags
    return SweepParent(run_id=run.info.run_id, sweep_id=tags.get("rlexp.sweep_id", run.info.run_id),
                       sweep_name=tags.get("rlexp.sweep_name", ""), experiment_id=run.info.experiment_id,
                       status=run.info.status, params=dict(run.data.params))


def _find_parent(client, experiment: str | None, sweep: str) -> SweepParent | None:
    """The parent run of ``sweep`` (a sweep id, a parent run id, or ``latest``); None if it has none."""
    ids = _experiment_ids(client, experiment)
    parents = _search_all(client, ids, f"tags.`rlexp.role` = '{SWEEP_ROLE}'")
    if sweep == "latest":
        if not parents:
            raise CompareError(f"no sweep found in {_where(experiment)}: no run is tagged "
                               f"rlexp.role=sweep; experiments in the store: "
                               f"{', '.join(_experiment_names(client)) or '(none)'}")
        return _parent_record(max(parents, key=lambda r: r.info.start_time))
    for run in parents:
        if run.data.tags.get("rlexp.sweep_id") == sweep or run.info.run_id == sweep:
            return _parent_record(run)
    return None


def _describe_sweeps(client, experiment: str | None) -> str:
    ids = _experiment_ids(client, experiment)
    parents = _search_all(client, ids, f"tags.`rlexp.role` = '{SWEEP_ROLE}'")
    known = [r.data.tags.get("rlexp.sweep_id", r.info.run_id) for r in parents[:10]]
    more = f" (+{len(parents) - 10} more)" if len(parents) > 10 else ""
    return ", ".join(known) + more if known else "(none)"


def _record(client, run, history_metrics: tuple[str, ...]) -> RunRecord:
    histories = {}
    for key in history_metrics:
        if key in run.data.metrics:
            hist = client.get_metric_history(run.info.run_id, key)
            # several values at one step (a resumed run) keep the last one logged
            by_step = {m.step: m.value for m in sorted(hist, key=lambda m: (m.step, m.timestamp))}
            histories[key] = sorted(by_step.items())
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
                     status=run.info.status, start_time=run.info.start_time or 0,
                     params=dict(run.data.params), tags=dict(run.data.tags),
                     metrics=dict(run.data.metrics), histories=histories)


def parse_run_ids(text: str) -> list[str]:
    """``"ID,ID,…"`` (``--runs``) as a list of distinct run ids, in order; CompareError when empty."""
    ids = list(dict.fromkeys(i.strip() for i in text.split(",") if i.strip()))
    if not ids:
        raise CompareError(f"--runs {text!r} names no run: expected comma-separated MLflow run ids, "
                           f"e.g. --runs 3f2a9c...,9c1b4e... (the ids the MLflow UI shows on each run's page)")
    return ids


def _chosen(client, tracking_uri: str, run_ids: list[str]) -> list:
    """The runs with these ids, whatever their experiment; CompareError naming the first id that is not
    a training run (unknown, deleted, or a sweep's parent run)."""
    from mlflow.exceptions import MlflowException

    found = []
    for rid in run_ids:
        try:
            run = client.get_run(rid)
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise  # the store itself failed: reported as a store error
            named = [] if "'" in rid else _search_all(client, _experiment_ids(client, None),
                                                      f"attributes.run_name = '{rid}'")
            hint = (f"; {rid!r} is the name of run{'s' if len(named) > 1 else ''} "
                    f"{', '.join(r.info.run_id for r in named[:3])}: --runs takes run ids") if named else ""
            raise CompareError(f"--runs: no run with id {rid!r} in the tracking store {tracking_uri}{hint}") from None
        if run.info.lifecycle_stage == "deleted":
            raise CompareError(f"--runs: run {rid} is deleted (restore it in the MLflow UI to compare it)")
        if run.data.tags.get("rlexp.role") == SWEEP_ROLE:
            sweep_id = run.data.tags.get("rlexp.sweep_id", rid)
            raise CompareError(f"--runs: run {rid} is the parent run of sweep {sweep_id!r}, not a training "
                               f"run; compare its jobs with --sweep {sweep_id}")
        found.append(run)
    return found


def load_runs(tracking_uri: str, *, experiment: str | None = None, sweep: str | None = None,
              run_ids: list[str] | None = None,
              history_metrics: tuple[str, ...] = HISTORY_METRICS) -> tuple[list[RunRecord], SweepParent | None]:
    """Load the runs to compare and the sweep's parent run (``None`` unless comparing a sweep).

    ``sweep``: a sweep id (tag ``rlexp.sweep_id``), a parent run id, ``"latest"`` (the newest run tagged
    ``rlexp.role=sweep`` by start time, within ``experiment`` if given, else in any experiment), or
    ``None``: every run of ``experiment`` (default ``"rlexp"``) that is not a sweep parent.
    ``run_ids``: exactly these runs, from any experiment (not with ``sweep`` or ``experiment``).
    Runs come back oldest first. Raises ``CompareError`` when nothing matches.
    """
    if sweep is not None and ("'" in sweep or '"' in sweep or not sweep.strip()):
        raise CompareError(f"--sweep {sweep!r} is not a sweep id: expected an id such as the "
                           f"rlexp.sweep_id tag of a sweep, a parent run id, or 'latest'")
    client = _client(tracking_uri)
    if run_ids is not None:
        if sweep is not None or experiment is not None:
            raise CompareError("--runs chooses the runs itself: it cannot be combined with --sweep or --experiment")
        found, parent = _chosen(client, tracking_uri, run_ids), None
    elif sweep is None:
        name = experiment or DEFAULT_EXPERIMENT
        found = _search_all(client, _experiment_ids(client, name))
        found = [r for r in found if r.data.tags.get("rlexp.role") != SWEEP_ROLE]
        if not found:
            raise CompareError(f"experiment {name!r} has no training runs "
                               f"(tracking store {tracking_uri})")
        parent = None
    else:
        parent = _find_parent(client, experiment, sweep)
        sweep_id = parent.sweep_id if parent else sweep
        ids = [parent.experiment_id] if parent else _experiment_ids(client, experiment)
        found = _search_all(client, ids, f"tags.`rlexp.sweep_id` = '{sweep_id}'")
        if parent is not None:
            by_parent = _search_all(client, ids, f"tags.`{PARENT_TAG}` = '{parent.run_id}'")
            seen = {r.info.run_id for r in found}
            found += [r for r in by_parent if r.info.run_id not in seen]
        found = [r for r in found if r.data.tags.get("rlexp.role") != SWEEP_ROLE]
        if parent is None and not found:
            raise CompareError(f"no sweep {sweep!r} in {_where(experiment)}: no parent run with that "
                               f"sweep id or run id and no job tagged rlexp.sweep_id={sweep!r}; sweeps "
                               f"there (newest first): {_describe_sweeps(client, experiment)}")
        if not found:
            exp_name = client.get_experiment(parent.experiment_id).name
            raise CompareError(f"sweep {parent.sweep_id!r} ({parent.sweep_name or 'unnamed'}, parent run "
                               f"{parent.run_id} in experiment {exp_name!r}) has no jobs: no run there is "
                               f"tagged rlexp.sweep_id={parent.sweep_id!r} or has the parent as {PARENT_TAG}")
    found.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return [_record(client, r, history_metrics) for r in found], parent


def log_report(tracking_uri: str, parent: SweepParent, report_dir) -> None:
    """Attach the report directory to the sweep's parent run as artifacts under ``report/``."""
    _client(tracking_uri).log_artifacts(parent.run_id, str(report_dir), artifact_path="report")
