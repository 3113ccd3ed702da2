"""Where the MLflow UI shows rlexp's runs: the experiment kind rlexp sets, and the URLs it prints.

MLflow 3's UI opens an experiment on a GenAI page (traces, latency, token usage) unless it knows the
experiment holds model training. What decides it depends on the MLflow version (each checked in
Chromium, opening ``#/experiments/<id>`` in a fresh browser profile):

- 3.0 to 3.9 (3.5.1, 3.8.1, 3.9.0) read the experiment tag ``mlflow.experimentKind``:
  ``custom_model_development`` opens the runs table. Without the tag the UI guesses from what the
  experiment holds and asks to confirm; an experiment without runs yet gets "Choose experiment type".
- 3.10 and later (3.10.1, 3.11.1, 3.14.0, 3.15.0, 3.16.1, 3.17.2) ignore that tag: one global "GenAI /
  Model training" switch decides (``genai`` by default, remembered per browser once flipped), and the
  bare experiment URL opens the GenAI overview. From 3.15 the URL query parameter
  ``workflowType=machine_learning`` sets the switch; 3.10 to 3.14 ignore it, but still show the runs
  table ("Training runs", under the GenAI side menu) at ``#/experiments/<id>/runs``.

So rlexp tags the experiments it creates (`EXPERIMENT_TAGS`, never an experiment that exists: a user's
own tag stays), and every URL it prints or writes into a run's description goes straight to a runs
page (``.../runs``, a run's page) and carries ``workflowType=machine_learning`` (older versions ignore
it). No server option chooses the page.

URLs are built as fragments (``#/experiments/1/runs?...``): relative links in a run's description work
on whichever host serves the UI; `ui_url` joins one to a base URL for printing.
"""
from __future__ import annotations

from urllib.parse import quote

#: the experiment tag MLflow 3.0-3.9 read to choose an experiment's first page, and rlexp's value for it
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
#: the tags rlexp gives the experiments it creates
EXPERIMENT_TAGS = {KIND_TAG: KIND}
#: the query parameter that puts MLflow 3.15+'s UI in its "Model training" mode
WORKFLOW = "workflowType=machine_learning"
#: where `rlexp ui` serves by default
DEFAULT_UI = "http://127.0.0.1:5000"
#: the metric a sweep's runs view is sorted by (best first): what the sweeper and `rlexp compare` use
RANK_METRIC = "eval/reward_mean"


def _query(**params: str) -> str:
    return "&".join([WORKFLOW, *(f"{k}={quote(v, safe='')}" for k, v in params.items())])


def experiments_page() -> str:
    """The list of experiments."""
    return f"#/experiments?{_query()}"


def runs_page(experiment_id: str) -> str:
    """The experiment's runs table (sweeps as parent runs with their jobs folded under them)."""
    return f"#/experiments/{experiment_id}/runs?{_query()}"


def sweep_page(experiment_id: str, sweep_id: str, metric: str = RANK_METRIC) -> str:
    """The runs table filtered to the jobs of sweep ``sweep_id``, best ``metric`` first. Sorting by a
    metric makes MLflow list the jobs flat (sorted by date it folds them under their parent)."""
    return f"#/experiments/{experiment_id}/runs?" + _query(
        searchFilter=f"tags.`rlexp.sweep_id` = '{sweep_id}' and tags.`rlexp.role` = 'job'",
        orderByKey=f"metrics.`{metric}`", orderByAsc="false")


def run_page(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page, or its Artifacts tab opened on ``artifact`` (an HTML file is shown in the page)."""
    tab = f"/artifacts/{artifact}" if artifact else ""
    return f"#/experiments/{experiment_id}/runs/{run_id}{tab}?{_query()}"


def ui_url(base: str, fragment: str) -> str:
    return f"{base.rstrip('/')}/{fragment}"


def browse(tracking_uri: str, fragment: str) -> str:
    """How to open ``fragment``: on the tracking server itself for an ``http(s)://`` store, else through
    ``rlexp ui`` on this store (at its default address)."""
    if tracking_uri.startswith(("http://", "https://")):
        return ui_url(tracking_uri, fragment)
    return f"rlexp ui --tracking-uri {tracking_uri}, then {ui_url(DEFAULT_UI, fragment)}"


#: the tag MLflow shows as a run's description (Markdown)
NOTE_TAG = "mlflow.note.content"
#: how the description rlexp writes on a sweep's parent run starts (a description that does not start
#: with it was written by someone else, and is left alone)
NOTE_HEAD = "**rlexp sweep"


def write_note(client, run_id: str, text: str) -> bool:
    """Set run ``run_id``'s description to ``text``, unless it has one that rlexp did not write."""
    note = client.get_run(run_id).data.tags.get(NOTE_TAG, "")
    if note and not note.startswith(NOTE_HEAD):
        return False
    client.set_tag(run_id, NOTE_TAG, text)
    return True


def sweep_note(*, experiment_id: str, parent_id: str, sweep_id: str, name: str, report: bool,
               jobs: int | None = None, failed: int | None = None) -> str:
    """The parent run's description (Markdown, the ``mlflow.note.content`` tag), its links on the first
    line (the UI folds a long description to it): the report logged on the run, the sweep's runs.
    ``report``: whether ``report/report.html`` is logged there; ``jobs``, ``failed``: once it ended."""
    head = f"{NOTE_HEAD} `{sweep_id}`** (`{name}`)" + (f": {jobs} jobs, {failed} failed" if jobs is not None else "")
    runs = f"[its runs, best `{RANK_METRIC}` first]({sweep_page(experiment_id, sweep_id)})"
    if report:
        links = [f"[Comparison report]({run_page(experiment_id, parent_id, 'report/report.html')})", runs]
        tail = f"The report is `report/report.html` on this run; `rlexp compare --sweep {sweep_id}` writes it again."
    else:
        links = [runs]
        tail = (f"The comparison report is logged on this run under `report/` when the sweep ends"
                if jobs is None else "No comparison report was logged on this run") + \
            f"; `rlexp compare --sweep {sweep_id}` writes it."
    return " · ".join([head, *links]) + "\n\n" + tail
