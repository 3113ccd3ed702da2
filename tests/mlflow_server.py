"""A real `mlflow server` for tests (SQLite backend), started the way `rlexp ui` starts one."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rlexp.tracking.ui import free_port, server_command, server_env

#: Debian's Chromium, driven headless by the browser tests (playwright)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def wait_for_health(url: str, proc: subprocess.Popen, *, what: str = "rlexp ui", output=lambda: "",
                    timeout: float = 120) -> None:
    """Return once ``url/health`` answers 200; fail the test when ``proc`` exits first (with ``output()``, what it
    printed) or after ``timeout`` seconds (killing it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {output()}")
    proc.kill()
    pytest.fail(f"{what} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def mlflow_server(store: Path, timeout: float = 120):
    """Yields ``(url, process)`` once the server answers ``/health``; stops it (if still running) after."""
    store.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(server_command(f"sqlite:///{store / 'mlflow.db'}", "127.0.0.1", port), cwd=store,
                            env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
