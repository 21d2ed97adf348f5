"""Local servers for tests and benchmarks: a free port, waiting for HTTP, an ``mlflow server``, stopping a group.

Every server binds 127.0.0.1, runs in its own session (``start_new_session``) and is stopped by process group.
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 90.0) -> None:
    """Until ``url`` answers 2xx/3xx (bounded by ``timeout_s``); TimeoutError after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout_s:.0f} s")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def start_mlflow_server(root: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on loopback with its own SQLite store and proxied artifacts under ``root``; returns the
    process (stop it with ``stop_group``) and its URI once ``/health`` answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers",
         str(workers), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts")],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health")
    except TimeoutError:
        stop_group(proc)
        raise
    return proc, uri
