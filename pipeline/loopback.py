"""Local servers for tests and benchmarks: a free port, waiting for HTTP, an ``mlflow server``, moto's S3,
a PostgreSQL cluster, stopping a group.

Every server binds 127.0.0.1, runs in its own session (``start_new_session``) and is stopped by process group;
PostgreSQL is started and stopped by its own ``pg_ctl``. Every wait is bounded in time.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Until ``url`` answers 2xx/3xx (bounded by ``timeout_s``); TimeoutError after, RuntimeError at once when
    ``proc`` (the server) has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode} before it answered")
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


def start_mlflow_server(root: Path, workers: int = 1, *, backend_store_uri: str | None = None,
                        artifacts_destination: str | None = None,
                        env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on loopback with proxied artifacts; returns the process (stop it with ``stop_group``)
    and its URI once ``/health`` answers. By default its own SQLite store and artifact folder under ``root``;
    ``backend_store_uri`` (``postgresql://...``) and ``artifacts_destination`` (``s3://...``, with
    ``MLFLOW_S3_ENDPOINT_URL`` and credentials in ``env``) replace them. ``root`` holds its log."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers",
         str(workers), "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", artifacts_destination or str(root / "artifacts")],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
        env={**os.environ, **(env or {})})
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc=proc)
    except (TimeoutError, RuntimeError):
        stop_group(proc)
        raise
    return proc, uri


def start_moto_server(log_dir: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 (and every other AWS API it mocks) in server mode on loopback; returns the process and its
    endpoint URL once it answers. Any access key is accepted."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log_dir / "moto.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", timeout_s=60, proc=proc)
    except (TimeoutError, RuntimeError):
        stop_group(proc)
        raise
    return proc, url


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's binaries (``/usr/lib/postgresql/<major>/bin``), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def dsn(self, db: str) -> str:
        """libpq's URL (psycopg2.connect)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def url(self, db: str) -> str:
        """SQLAlchemy's URL with the psycopg2 driver (SQLAlchemy 2.1 takes a bare postgresql:// to psycopg 3)."""
        return self.dsn(db).replace("postgresql://", "postgresql+psycopg2://", 1)


@contextmanager
def postgres_server(databases: list[str], timeout_s: int = 60) -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (a free port, password auth) holding ``databases``;
    stopped and deleted on exit. Run as root, the cluster belongs to the ``postgres`` user (PostgreSQL refuses
    root). FileNotFoundError when PostgreSQL is not installed."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb")
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = "postgres" if _user_exists("postgres") else "nobody"
        as_user = ["runuser", "-u", owner, "--"]
    folder = Path(tempfile.mkdtemp(prefix="vitforge-pg-"))  # not under a root-only pytest tmp folder
    user, password, port = "vitforge", "vitforge-test", free_port()
    (folder / "pw").write_text(password)
    if as_user:
        shutil.chown(folder, as_user[2])
        shutil.chown(folder / "pw", as_user[2])
    data = folder / "data"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        _run_logged([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={folder / 'pw'}",
                     "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], folder, timeout_s)
        _run_logged([*pg_ctl, "-l", str(folder / "server.log"), "-w", "-t", str(timeout_s), "-o",
                     f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off", "start"], folder, timeout_s + 10)
        started = True
        server = Postgres("127.0.0.1", port, user, password)
        import psycopg2

        conn = psycopg2.connect(server.dsn("postgres"), connect_timeout=10)
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in databases:
                cur.execute(f'CREATE DATABASE "{db}"')
        conn.close()
        yield server
    finally:
        if started:
            # check=False: a failed stop must not hide the error that ended the block; the folder goes anyway
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "-t", "30", "stop"], capture_output=True, timeout=40,
                           check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _run_logged(cmd: list[str], folder: Path, timeout_s: float) -> None:
    """``cmd`` (check=True, bounded); a failure is a RuntimeError with its output and the server log."""
    try:
        subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.CalledProcessError as err:
        log = (folder / "server.log").read_text() if (folder / "server.log").is_file() else ""
        raise RuntimeError(f"{' '.join(cmd)} exited {err.returncode}: {err.stderr.strip()} {log}".strip()) from None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
