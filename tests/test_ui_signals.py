"""`rlexp ui` as a process: a port already in use is refused in one line, and closing the terminal
(SIGHUP) stops the MLflow server's whole process group. Real `rlexp ui` processes, real sockets and
real signals, bound to 127.0.0.1 only; every wait is bounded. (No browser needed: `test_ui.py` has the
browser tests.)
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlexp.tracking.ui import free_port

UI = [sys.executable, "-m", "rlexp", "ui"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _processes():
    """``(pid, process group, argv)`` of every live (not zombie) process, from /proc."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state, _, pgrp = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if state not in ("Z", "X"):
            yield int(proc.name), int(pgrp), args


def _server_pids(port: int) -> list[int]:
    """The mlflow/uvicorn processes started with ``--port <port>``."""
    return [pid for pid, _, args in _processes()
            if str(port) in args and any(a in ("mlflow", "uvicorn") for a in args)]


def _group(pgid: int) -> list[int]:
    return [pid for pid, pgrp, _ in _processes() if pgrp == pgid]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_until(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def _healthy(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except OSError:
        return False


def test_a_port_in_use_is_refused_in_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([*UI, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)],
                           capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("rlexp ui: error: ")
    assert f"--port {port} is already in use on 127.0.0.1" in p.stderr and "--port 0" in p.stderr
    assert "http://" not in p.stdout  # no URL that would show whatever holds the port
    assert not _server_pids(port)


@pytest.mark.slow
def test_sighup_stops_the_server_group_and_a_second_ui_on_its_port_is_refused(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
        (d / "mlflow.db").touch()  # an empty SQLite file: each directory has its own store
    port = free_port()
    ui = subprocess.Popen([*UI, "--port", str(port)], cwd=first, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    try:
        assert _wait_until(lambda: _healthy(port) or ui.poll() is not None, 120) and ui.poll() is None, \
            "the first `rlexp ui` never served"
        assert ui.stdout.readline().strip().endswith(f"http://127.0.0.1:{port}  (Ctrl-C to stop)")
        pids = _server_pids(port)
        assert pids, "no mlflow/uvicorn process found for the port"
        pgid = os.getpgid(pids[0])
        assert pgid != os.getpgid(ui.pid)  # its own group: the terminal's signals reach only `rlexp ui`

        # `rlexp ui` from another directory, same port: refused, instead of a URL showing the first store
        p = subprocess.run([*UI, "--port", str(port)], cwd=second, capture_output=True, text=True, timeout=60,
                           env=_env())
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and f"--port {port} is already in use" in p.stderr
        assert "http://" not in p.stdout and _healthy(port)

        ui.send_signal(signal.SIGHUP)  # what closing the terminal sends
        assert ui.wait(timeout=30) == 0
        assert _wait_until(lambda: not _group(pgid), 10), f"orphaned server processes: {_group(pgid)}"
        assert not _server_pids(port) and _port_free(port)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait(timeout=10)
        for pid in _server_pids(port):  # only what this test started: the processes serving its port
            os.kill(pid, signal.SIGKILL)
