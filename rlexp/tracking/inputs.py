"""What a run was trained and evaluated on, recorded in its MLflow run: the data files of a task read from files.

A task with ``data_sources`` (``task=dataset``, ``rlexp.tasks.dataset``) gets, on its run:

- tags ``dataset.path`` / ``dataset.sha256``: the training file's resolved path and the sha256 of its bytes (of
  a ``save_to_disk`` directory: of its files), and ``dataset.eval_path`` / ``dataset.eval_sha256`` for a
  held-out file of its own (``task.eval_path``); the config keys themselves are params like every key;
- one MLflow dataset input per side, ``mlflow.data.context`` ``train`` and ``eval``: the prompts and answers
  taken from the file (columns ``prompt``, ``answer``; its schema, row count and digest), the file as its
  source (``client.get_run(id).inputs.dataset_inputs``);
- the metric ``data/skipped_records`` at step 0: the malformed rows skipped (``task.skip_invalid=true``).

Each record goes through ``RunLogger.guarded``: a store that fails here does not stop the run; what it did not
record is listed at the run's end, as for metrics.
"""
from __future__ import annotations


def dataset_tags(task) -> dict[str, str]:
    """``{tag: value}`` of the task's data files (empty for a task that reads none)."""
    tags: dict[str, str] = {}
    sources = {s.context: s for s in getattr(task, "data_sources", None) or []}
    if "train" in sources:
        tags["dataset.path"], tags["dataset.sha256"] = str(sources["train"].path), sources["train"].sha256
    held_out = sources.get("eval")
    if held_out is not None and "train" in sources and held_out.path != sources["train"].path:
        tags["dataset.eval_path"], tags["dataset.eval_sha256"] = str(held_out.path), held_out.sha256
    return tags


def _dataset_input(source):
    import json

    import mlflow.data
    import pandas as pd
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    frame = pd.DataFrame({"prompt": [e.prompt for e in source.examples], "answer": [e.target for e in source.examples]})
    local = get_dataset_source_from_json(json.dumps({"uri": str(source.path)}), "local")  # a local file, said so
    dataset = mlflow.data.from_pandas(frame, source=local, targets="answer", name=source.path.name)
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, source.context)])


def log_task_data(logger, task) -> None:
    """Record the task's data files on ``logger``'s run (nothing for a task without ``data_sources``, or
    without a run)."""
    sources = getattr(task, "data_sources", None)
    if logger is None or not sources:
        return
    from mlflow.entities import RunTag

    client, run_id = logger.experiment, logger.run_id
    tags = [RunTag(k, v) for k, v in dataset_tags(task).items()]
    logger.guarded("the dataset tags", client.log_batch, run_id, tags=tags)
    logger.guarded("the dataset inputs", lambda: client.log_inputs(run_id, [_dataset_input(s) for s in sources]))
    logger.log_metrics({"data/skipped_records": float(len(getattr(task, "skipped", [])))}, step=0)
