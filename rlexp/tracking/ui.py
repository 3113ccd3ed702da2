"""``rlexp ui``: the MLflow UI over rlexp's store, bound to 127.0.0.1 unless told otherwise.

It runs ``mlflow server`` with one worker and background job execution off (ready in ~11 s here,
against ~50 s for a default ``mlflow ui``), on the same tracking URI resolution as ``rlexp train``.
A port already in use is refused in one line (exit status 2) before the server starts; SIGINT,
SIGTERM and SIGHUP stop the server's whole process group (exit status 0). Once the server answers, it
prints the URL of each experiment's training runs and of its latest sweep's runs (`announce`).
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from rlexp.tracking.common import MissingStore, resolve_tracking_uri

# what stops `rlexp ui` and its server: Ctrl-C, `kill`/`timeout`/`docker stop`, the terminal closing
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_TIMEOUT_S = 20.0  # the server's graceful shutdown, after which its group is killed


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(uri: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
            "--port", str(port), "--workers", "1"]


def server_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def port_problem(host: str, port: int) -> str | None:
    """Why ``mlflow server`` could not listen on ``host:port`` (the port is taken, the host is not an
    address of this machine), in one line; None when it can. Binds the way uvicorn does (IPv6 for a
    host with ``:``, ``SO_REUSEADDR``: a port left in TIME_WAIT by a stopped server counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return (f"--port {port} is already in use on {host} (another `rlexp ui` or server?); stop it, "
                    f"or pass another --port (--port 0 picks a free one)")
        return f"cannot listen on --host {host} --port {port}: {e.strerror or e}"
    return None


def group_alive(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` still runs (zombies do not count; /proc where there is one)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_group(pgid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to every process of the group ``pgid``; SIGKILL to what is left after ``timeout`` s."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not group_alive(pgid):
            return


#: at most this many experiments get their own line when `rlexp ui` starts
SHOWN_EXPERIMENTS = 5


def experiment_lines(base: str) -> list[str]:
    """What `rlexp ui` prints once its server at ``base`` answers: for each experiment holding runs (the
    most recently run first, at most `SHOWN_EXPERIMENTS`), the URL of its training-runs page and of its
    latest sweep's runs (`rlexp.tracking.links`: MLflow 3 would otherwise open it on its GenAI overview).
    Read through the server itself, so this process never opens (or migrates) the store beside it."""
    from mlflow.tracking import MlflowClient

    from rlexp.tracking.links import experiments_page, runs_page, sweep_page, ui_url

    client, found = MlflowClient(base), []
    for exp in client.search_experiments(max_results=50, order_by=["last_update_time DESC"]):
        newest = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])
        if newest:
            found.append((newest[0].info.start_time or 0, exp))
    found.sort(key=lambda f: f[0], reverse=True)
    lines = []
    for _, exp in found[:SHOWN_EXPERIMENTS]:
        lines.append(f"  experiment {exp.name!r}, its runs: {ui_url(base, runs_page(exp.experiment_id))}")
        sweep = client.search_runs([exp.experiment_id], filter_string="tags.`rlexp.role` = 'sweep'", max_results=1,
                                   order_by=["attributes.start_time DESC"])
        if sweep and sweep[0].data.tags.get("rlexp.sweep_id"):
            sweep_id = sweep[0].data.tags["rlexp.sweep_id"]
            lines.append(f"    its latest sweep, {sweep_id}: {ui_url(base, sweep_page(exp.experiment_id, sweep_id))}")
    if len(found) > SHOWN_EXPERIMENTS:
        lines.append(f"  ({len(found) - SHOWN_EXPERIMENTS} more experiments: {ui_url(base, experiments_page())})")
    return lines


def announce(base: str, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    """Once the server answers at ``base`` (checked every 0.5 s while it runs), print `experiment_lines`."""
    deadline, opener = time.monotonic() + timeout, urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with opener.open(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        return
    try:
        lines = experiment_lines(base)
    except Exception as e:  # noqa: BLE001 - the UI itself works; say why the list is missing
        lines = [f"  (its experiments could not be listed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]})"]
    print("\n".join(lines or ["  (no runs in this store yet)"]), flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rlexp ui", description="Open the MLflow UI on rlexp's runs.")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    args = ap.parse_args(argv)
    try:
        uri = resolve_tracking_uri(args.tracking_uri, Path.cwd(), must_exist="default")
    except MissingStore as e:
        print(f"rlexp ui: error: no store at {e.path}; run `rlexp train` here first or pass --tracking-uri",
              file=sys.stderr)
        return 2
    port = args.port or free_port(args.host)
    problem = port_problem(args.host, port)
    if problem:  # else the server would fail to bind, and the URL would show whatever holds the port
        print(f"rlexp ui: error: {problem}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"rlexp ui: warning: binding to {args.host} exposes the UI (and its store) to the network",
              file=sys.stderr)
    # The server (mlflow -> uvicorn worker) runs in its own process group, with no controlling terminal.
    # Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop that whole group, and so does a server that
    # exits by itself: no orphaned server keeps the port and its store's runs. The handlers are in place
    # before the server starts, and only record the signal, so no signal falls between start and wait.
    received: list[int] = []
    proc: subprocess.Popen | None = None

    def terminate():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def on_signal(signum, frame):
        received.append(signum)
        if proc is not None:
            terminate()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        base = f"http://[{args.host}]:{port}" if ":" in args.host else f"http://{args.host}:{port}"
        print(f"MLflow UI on {uri}: {base}  (Ctrl-C to stop)", flush=True)
        proc = subprocess.Popen(server_command(uri, args.host, port), env=server_env(), start_new_session=True)
        threading.Thread(target=announce, args=(base, proc), daemon=True).start()
        if received:  # a signal came while the server was starting
            terminate()
        rc = proc.wait()
    finally:
        if proc is not None:
            stop_group(proc.pid)
            proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return 0
    print(f"rlexp ui: error: the MLflow server on port {port} exited by itself (status {rc}); "
          f"its messages are above", file=sys.stderr)
    return rc or 1
