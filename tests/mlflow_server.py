"""A real `mlflow server` for tests (SQLite backend), started the way `rlexp ui` starts one."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from rlexp.tracking.ui import free_port, server_command, server_env


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
