"""What the tracking code shares and that must stay cheap to import (no Lightning, no MLflow):
the store's URI resolution and the environment variables that carry a sweep to its jobs."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from rlexp.tracking.links import EXPERIMENT_TAGS

#: environment variables through which a multirun's parent run reaches its jobs (set by
#: rlexp.tracking.sweep.SweepCallback; inherited by joblib/submitit workers)
ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_NAME = "RLEXP_PARENT_RUN_ID", "RLEXP_SWEEP_ID", "RLEXP_SWEEP_NAME"


def experiment_id(client, name) -> str:
    """The id of experiment ``name``, created if missing (``str()``: names like ``2024`` or ``nan``
    reach us from Hydra as numbers), with the tags that make MLflow's UI open it on its training runs
    (`rlexp.tracking.links.EXPERIMENT_TAGS`); an experiment that exists keeps its own tags. Another
    process creating it at the same moment is not an error."""
    exp = client.get_experiment_by_name(str(name))
    if exp:
        return exp.experiment_id
    try:
        return client.create_experiment(str(name), tags=EXPERIMENT_TAGS)
    except Exception:  # noqa: BLE001 - created meanwhile by another run (a server store): use it
        exp = client.get_experiment_by_name(str(name))
        if exp is None:
            raise
        return exp.experiment_id


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def store_lock(uri: str):
    """Hold an exclusive ``fcntl.flock`` on ``<db>.lock`` beside a SQLite store while it is created or its
    schema upgraded: two first runs in a fresh directory would otherwise race through MLflow's migrations
    (``table _alembic_tmp_... already exists``) and leave a store that no later run can open. Other stores
    (a tracking server, which migrates once at its own start) need no lock."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_store(uri: str, experiment=None):
    """An ``MlflowClient`` on ``uri``, the store created (or upgraded) and experiment ``experiment`` made to
    exist under `store_lock`, so that any number of processes may do this at once on a fresh directory."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        client = MlflowClient(uri)  # a SQLite store's tables are created and migrated here
        if experiment is not None:
            experiment_id(client, experiment)
    return client


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` on a run, in batches of 100 (MLflow's limit per ``log_batch``)."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


class MissingStore(FileNotFoundError):
    """`resolve_tracking_uri(..., must_exist=...)`: the SQLite file of the resolved store does not exist.
    ``default``: it is the default store (nothing explicit was given), ``path`` its file, ``uri`` the URI."""

    def __init__(self, uri: str, path: Path, default: bool):
        super().__init__(f"no MLflow store at {path}")
        self.uri, self.path, self.default = uri, path, default


def resolve_tracking_uri(explicit, launch_dir: str | Path, *, must_exist: str | None = None) -> str:
    """The MLflow store's URI, by the one precedence rule of every rlexp command: the explicit URI, else
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<launch dir>/mlflow.db`` (``launch dir`` made absolute).

    ``explicit``: the run's ``tracking`` config (its ``uri``: ``tracking.uri=``), or the URI given on the
    command line (``--tracking-uri``), or None; an empty one counts as not given. A command that only reads
    the store (``rlexp compare``, ``rlexp ui``), where MLflow would silently create an empty one, passes
    ``must_exist``: ``"default"`` raises `MissingStore` when the default store's file does not exist,
    ``"sqlite"`` also when an explicit (or ``$MLFLOW_TRACKING_URI``) ``sqlite:///`` URI names a missing file.
    """
    given = explicit.get("uri") if hasattr(explicit, "get") else explicit
    uri = str(given) if given else os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        db = sqlite_path(uri) if must_exist == "sqlite" else None
        if db is not None and not db.exists():
            raise MissingStore(uri, db, default=False)
        return uri
    db = Path(launch_dir).resolve() / "mlflow.db"
    if must_exist and not db.exists():
        raise MissingStore(f"sqlite:///{db}", db, default=True)
    return f"sqlite:///{db}"
