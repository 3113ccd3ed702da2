"""The comparison UI in a real browser: `rlexp ui` (the MLflow UI) over a store holding a real sweep,
and rlexp's HTML report, opened in headless Chromium (Debian's `chromium`, driven by Playwright).

Skipped, with the reason, only where the browser or Playwright is absent (`.ci/run` installs both).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from mlflow_server import CHROMIUM, CHROMIUM_FLAGS, wait_for_health
from rlexp.cli import main
from rlexp.tracking.ui import free_port

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                     reason="Debian's chromium is not installed (apt-get install chromium)")]
FLAGS = CHROMIUM_FLAGS


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A real (tiny) ppo_gae sweep: 2 ε × 2 λ, one seed, 2 iterations each."""
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["sweep", "ppo_gae", *[o for o in FAST if not o.startswith("trainer.eval_every")], "trainer.eval_every=2",
              "algorithm.clip_eps=0.1,0.2", "algorithm.gamma=1.0", "algorithm.lam=0,0.95", "seed=0",
              f"tracking.uri={uri}", "tracking.experiment=ui"])
    finally:
        os.chdir(cwd)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ui")
    runs = client.search_runs([exp.experiment_id])
    return {"uri": uri, "root": root, "exp_id": exp.experiment_id, "runs": runs, "client": client}


@pytest.fixture(scope="module")
def ui_server(sweep_store):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlexp", "ui", "--tracking-uri", sweep_store["uri"],
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(url, proc, output=proc.stdout.read)
    yield url
    proc.terminate()  # `rlexp ui` stops its server's whole process group
    proc.wait(timeout=30)


def _server_processes(port: int) -> list[str]:
    """Command lines of the MLflow server processes (mlflow server, uvicorn) listening on ``port``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(port) in args and any(a in ("mlflow", "uvicorn") for a in args):
            found.append(" ".join(args))
    return found


def test_stopping_rlexp_ui_stops_its_server(sweep_store):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlexp", "ui", "--tracking-uri", sweep_store["uri"],
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not _server_processes(port) and time.time() < deadline:
            time.sleep(0.5)
        assert _server_processes(port), "the server never started"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    deadline = time.time() + 20
    while _server_processes(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _server_processes(port), "orphaned server processes after `rlexp ui` stopped"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _text(page, needle: str, timeout_s: float = 60) -> str:
    deadline = time.time() + timeout_s
    body = ""
    while time.time() < deadline:
        body = page.inner_text("body")
        if needle in body:
            return body
        page.wait_for_timeout(500)
    raise AssertionError(f"{needle!r} never appeared; the page shows: {body[:2000]}")


def test_ui_binds_to_loopback_by_default():
    from rlexp.tracking.ui import server_command

    assert server_command("sqlite:///x.db", "127.0.0.1", 5000)[-5:-2] == ["127.0.0.1", "--port", "5000"]


def test_mlflow_ui_shows_the_sweep_runs_and_their_params(sweep_store, ui_server, browser, tmp_path):
    jobs = [r for r in sweep_store["runs"] if r.data.tags.get("rlexp.role") == "job"]
    assert len(jobs) == 4
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    parent = next(r for r in sweep_store["runs"] if r.data.tags.get("rlexp.role") == "sweep")
    # the runs page lists the sweep as one parent run, its jobs nested (folded) under it
    page.goto(f"{ui_server}/#/experiments/{sweep_store['exp_id']}/runs", wait_until="commit")
    _text(page, parent.info.run_name)
    page.screenshot(path=str(tmp_path / "runs.png"))
    # the compare view shows every job with the swept params (parallel coordinates, params table)
    ids = ",".join(f'"{r.info.run_id}"' for r in jobs)
    page.goto(f"{ui_server}/#/compare-runs?runs=[{ids}]&experiments=[\"{sweep_store['exp_id']}\"]",
              wait_until="commit")
    body = _text(page, "Comparing 4 Runs")
    body = _text(page, "algorithm.clip_eps")
    for key in ("algorithm.gamma", "algorithm.lam", "algorithm.clip_eps", "eval/reward_mean"):
        assert key in body
    for job in jobs:
        assert job.info.run_name in body, job.info.run_name
    page.close()


def test_the_report_renders_with_its_figures(sweep_store, browser, tmp_path):
    client, exp_id = sweep_store["client"], sweep_store["exp_id"]
    parent = next(r for r in sweep_store["runs"] if r.data.tags.get("rlexp.role") == "sweep")
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in files  # written onto the parent run when the sweep ended
    local = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path)))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto((local / "report.html").as_uri())
    images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert images and all(w > 0 for w in images)
    assert "clip_eps" in page.inner_text("body")
    page.close()
