"""Where rlexp sends a researcher in the MLflow UI (rlexp.tracking.links), checked in headless Chromium:
the URLs that `rlexp ui` and the end-of-run / end-of-sweep lines print open the training runs (not
MLflow 3's GenAI overview), the sweep's URL lists its jobs, and the parent run's description links the
report, which the UI shows. Also: the experiment kind tag goes on the experiments rlexp creates only.

Set ``RLEXP_UI_SCREENSHOTS=DIR`` to keep the screenshots (the ones in docs/sweeps.md were taken so).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow.tracking import MlflowClient
from packaging.version import Version

from fast_overrides import FAST
from mlflow_server import CHROMIUM, CHROMIUM_FLAGS, wait_for_health
from rlexp.cli import main
from rlexp.tracking.common import experiment_id, open_store
from rlexp.tracking.links import (DEFAULT_UI, KIND, KIND_TAG, NOTE_TAG, run_page, sweep_note, sweep_page,
                                  write_note)
from rlexp.tracking.ui import free_port

FLAGS = CHROMIUM_FLAGS
#: text only MLflow 3's GenAI overview shows (its charts), and its GenAI side menu (which MLflow 3.10-3.14
#: show beside the runs table too: they ignore ``workflowType`` in the URL, 3.15 and later read it)
GENAI_OVERVIEW, GENAI_MENU = ("Latency", "Token Usage"), ("Sessions", "Observability")
MODE_FROM_URL = Version(version("mlflow")) >= Version("3.15")
URL = re.compile(r"http://127\.0\.0\.1:\d+/#/\S+")


def test_new_experiments_get_the_kind_tag_and_existing_ones_keep_theirs(tmp_path):
    client = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mine = client.create_experiment("mine", tags={KIND_TAG: "genai_development"})
    plain = client.create_experiment("plain")
    assert experiment_id(client, "mine") == mine and experiment_id(client, "plain") == plain
    assert client.get_experiment(mine).tags[KIND_TAG] == "genai_development"
    assert KIND_TAG not in client.get_experiment(plain).tags  # rlexp did not create it: left as it is
    fresh = experiment_id(client, "fresh")
    assert client.get_experiment(fresh).tags[KIND_TAG] == KIND == "custom_model_development"


def test_a_description_someone_else_wrote_is_kept(tmp_path):
    client = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(experiment_id(client, "notes")).info.run_id
    note = sweep_note(experiment_id="1", parent_id=run, sweep_id="s-1", name="s", report=False)
    assert write_note(client, run, note) and client.get_run(run).data.tags[NOTE_TAG] == note
    again = sweep_note(experiment_id="1", parent_id=run, sweep_id="s-1", name="s", report=True, jobs=2, failed=0)
    assert write_note(client, run, again) and "[Comparison report](" in client.get_run(run).data.tags[NOTE_TAG]
    client.set_tag(run, NOTE_TAG, "my own notes")
    assert not write_note(client, run, note) and client.get_run(run).data.tags[NOTE_TAG] == "my own notes"


def test_urls_carry_the_model_training_mode_and_an_exact_filter():
    query = parse_qs(urlsplit(sweep_page("7", "ppo_gae-1-abc").removeprefix("#")).query)
    assert query == {"workflowType": ["machine_learning"], "orderByKey": ["metrics.`eval/reward_mean`"],
                     "orderByAsc": ["false"],
                     "searchFilter": ["tags.`rlexp.sweep_id` = 'ppo_gae-1-abc' and tags.`rlexp.role` = 'job'"]}
    assert run_page("7", "abc", "report/report.html") == \
        "#/experiments/7/runs/abc/artifacts/report/report.html?workflowType=machine_learning"


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real (tiny) sweep of 2 jobs, and the lines it logged (end of each run, end of the sweep)."""
    root = tmp_path_factory.mktemp("links")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    said, logger = _Lines(), logging.getLogger("rlexp")  # rlexp.train's and rlexp.sweep's lines
    logger.addHandler(said)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["sweep", "ppo_gae", *FAST, "algorithm.clip_eps=0.1,0.2", "algorithm.gamma=1.0", "algorithm.lam=0.95",
              "seed=0", f"tracking.uri={uri}", "tracking.experiment=links"])
    finally:
        os.chdir(cwd)
        logger.removeHandler(said)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("links")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("rlexp.role") == "sweep")
    jobs = [r for r in runs if r.data.tags.get("rlexp.role") == "job"]
    return {"uri": uri, "exp": exp, "client": client, "parent": parent, "jobs": jobs, "lines": said.lines}


@pytest.mark.slow
def test_the_sweep_experiment_is_tagged_and_its_filter_selects_its_jobs(sweep):
    assert sweep["exp"].tags[KIND_TAG] == KIND
    assert len(sweep["jobs"]) == 2
    sweep_id = sweep["parent"].data.tags["rlexp.sweep_id"]
    query = parse_qs(urlsplit(sweep_page(sweep["exp"].experiment_id, sweep_id).removeprefix("#")).query)
    found = sweep["client"].search_runs([sweep["exp"].experiment_id], filter_string=query["searchFilter"][0])
    assert sorted(r.info.run_id for r in found) == sorted(r.info.run_id for r in sweep["jobs"])


def _printed(lines: list[str], prefix: str) -> str:
    line = next((x for x in lines if x.startswith(prefix)), None)
    assert line is not None, f"no line starting with {prefix!r} among: {lines}"
    return URL.search(line).group(0)


@pytest.fixture(scope="module")
def ui(sweep):
    """`rlexp ui` on the sweep's store, and what it printed before its server answered."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlexp", "ui", "--tracking-uri", sweep["uri"], "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = f"http://127.0.0.1:{port}"
    printed: list[str] = []
    threading.Thread(target=lambda: printed.extend(line.rstrip() for line in proc.stdout), daemon=True).start()
    wait_for_health(base, proc, output=lambda: f"it printed {printed}")
    deadline = time.time() + 60  # the experiments are listed once the server answers
    while not any("its latest sweep" in p for p in printed) and time.time() < deadline:
        time.sleep(0.2)
    yield {"base": base, "printed": [p for p in printed if p.startswith(("MLflow UI on", "  "))]}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _open(browser, url: str, *needles: str, timeout_s: float = 60):
    """A fresh browser profile (MLflow remembers its GenAI/Model training switch per browser) on ``url``,
    once the page shows every one of ``needles``; returns the page and its text."""
    page = browser.new_context(viewport={"width": 1500, "height": 900}).new_page()
    page.goto(url, wait_until="commit")
    deadline, body = time.time() + timeout_s, ""
    while time.time() < deadline:
        body = page.inner_text("body")
        if all(n in body for n in needles):
            return page, body
        page.wait_for_timeout(500)
    raise AssertionError(f"{needles} never all appeared at {url}; the page shows: {body[:2000]}")


def _not_genai(page, body: str) -> None:
    assert "/overview" not in page.url and "workflowType=machine_learning" in page.url, page.url
    shown = [t for t in GENAI_OVERVIEW + (GENAI_MENU if MODE_FROM_URL else ()) if t in body]
    assert not shown, f"a GenAI page ({shown}) at {page.url}: {body[:1500]}"


def _shot(page, tmp_path: Path, name: str) -> None:
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():  # MLflow opens its assistant pane on a browser's first visit; the picture needs no chat
        close.first.click()
        page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / name))
    keep = os.environ.get("RLEXP_UI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(keep) / name)


@pytest.mark.slow
def test_rlexp_ui_prints_the_training_runs_and_the_latest_sweep(sweep, ui, browser, tmp_path):
    first, experiment, latest = ui["printed"]
    assert first.endswith(f"{ui['base']}  (Ctrl-C to stop)")
    assert experiment.startswith("  experiment 'links', its runs: ")
    sweep_id = sweep["parent"].data.tags["rlexp.sweep_id"]
    assert latest.startswith(f"    its latest sweep, {sweep_id}: ")
    # the experiment's runs table, the sweep as one parent run (its jobs folded under it)
    page, body = _open(browser, URL.search(experiment).group(0), sweep["parent"].info.run_name, "matching runs")
    _not_genai(page, body)
    page.context.close()
    # the latest sweep: its jobs, flat, best eval/reward_mean first
    page, body = _open(browser, URL.search(latest).group(0), *(j.info.run_name for j in sweep["jobs"]))
    _not_genai(page, body)
    assert "2 matching runs" in body and sweep["parent"].info.run_name not in body
    _shot(page, tmp_path, "mlflow_ui_sweep_runs.png")
    page.context.close()


@pytest.mark.slow
def test_the_end_of_run_and_end_of_sweep_urls_open_the_runs_and_the_report(sweep, ui, browser, tmp_path):
    def here(url: str) -> str:  # printed for `rlexp ui` at its default address; this one has its own port
        assert url.startswith(DEFAULT_UI + "/#/"), url
        return ui["base"] + url.removeprefix(DEFAULT_UI)

    sweep_id, parent = sweep["parent"].data.tags["rlexp.sweep_id"], sweep["parent"]
    for job in sweep["jobs"]:  # each job's end-of-run line opens that run's page
        line = next(x for x in sweep["lines"] if x.startswith(f"MLflow run {job.info.run_id} "))
        assert f"rlexp ui --tracking-uri {sweep['uri']}, then " in line
        page, body = _open(browser, here(URL.search(line).group(0)), job.info.run_name, "Parameters")
        _not_genai(page, body)
        page.context.close()
    page, body = _open(browser, here(_printed(sweep["lines"], f"sweep {sweep_id}, its runs")),
                       *(j.info.run_name for j in sweep["jobs"]))
    _not_genai(page, body)
    page.context.close()
    # the parent run: its description links the report, which opens in the UI with the report inside
    page, body = _open(browser, here(_printed(sweep["lines"], f"sweep {sweep_id}, its parent run and the report")),
                       "Comparison report", "2 jobs, 0 failed")
    _not_genai(page, body)
    link = page.locator("a", has_text="Comparison report")
    link.scroll_into_view_if_needed()
    _shot(page, tmp_path, "mlflow_ui_sweep_parent.png")
    with page.context.expect_page() as opened:
        link.click()
    report = opened.value
    deadline, inside = time.time() + 60, ""
    while time.time() < deadline and "clip_eps" not in inside:
        report.wait_for_timeout(500)
        inside = " ".join(f.inner_text("body") for f in report.frames[1:] if f.url.startswith("blob:"))
    assert "clip_eps" in inside, f"the report did not show in {report.url}: {report.inner_text('body')[:1500]}"
    assert f"/runs/{parent.info.run_id}/artifacts/report/report.html" in report.url
    widths = "els => els.map(e => e.naturalWidth)"
    images = [w for f in report.frames[1:] if f.url.startswith("blob:") for w in f.eval_on_selector_all("img", widths)]
    assert images and all(w > 0 for w in images)
    report.wait_for_timeout(1000)
    _shot(report, tmp_path, "mlflow_ui_sweep_report.png")
    page.context.close()
