"""``vitforge serve``: the Dagster UI and the MLflow UI of one project, on 127.0.0.1, stopped together.

Dagster runs as ``dagster dev`` on the project's own instance (``DAGSTER_HOME`` = ``<root>/.dagster/home``,
git-ignored, the instance every ``vitforge`` command records into: assets/recording.py), so what the CLI
made shows in the UI and a new target only runs its own assets. The target partitions are synced with the
targets folder before the UI starts. The MLflow UI serves the project's store; Dagster's metadata links
and inline plots point at it. Each server runs in its own session; Ctrl-C (or SIGTERM) stops both by
process group: SIGINT first, as a terminal would, then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.params import load_params, resolve

STOP_WAIT_S = 10.0  # per signal, before the next (SIGINT, then SIGKILL)


@dataclass
class Service:
    name: str
    url: str
    proc: subprocess.Popen

    def stop(self) -> None:
        for sig in (signal.SIGINT, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(STOP_WAIT_S)
                return
            except subprocess.TimeoutExpired:
                continue


def sync_target_partitions(root: Path, params: dict) -> tuple[list[str], list[str]]:
    """The instance's ``targets`` partitions made equal to the target files (added, removed)."""
    from assets.partitions import sync_targets
    from assets.recording import project_instance
    from pipeline.targets import list_targets

    with project_instance(root) as instance:
        return sync_targets(instance, sorted(list_targets(resolve(params["targets_dir"], root))))


def _wait(service: Service, path: str, timeout_s: float) -> None:
    from pipeline.loopback import wait_http

    wait_http(service.url + path, timeout_s=timeout_s, proc=service.proc)


def start_services(root: Path, *, dagster_port: int, mlflow_port: int, log_dir: Path,
                   timeout_s: float = 180.0) -> list[Service]:
    """MLflow UI and ``dagster dev`` for ``root``, both answering; stopped (and raised) if either fails."""
    from assets.recording import dagster_home, project_instance
    from pipeline.tracking import Tracker

    params = load_params(root)
    tracker = Tracker.from_params(params, root)
    project_instance(root).dispose()  # the instance folder exists before dagster dev reads DAGSTER_HOME
    log_dir.mkdir(parents=True, exist_ok=True)
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home(root)), "VITFORGE_ROOT": str(root),
           "VITFORGE_MLFLOW_UI_URL": mlflow_url}
    commands = {
        "mlflow": ([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracker.tracking_uri,
                    "--host", "127.0.0.1", "--port", str(mlflow_port)], mlflow_url, "/health"),
        "dagster": ([sys.executable, "-m", "dagster", "dev", "-m", "assets.definitions", "-h", "127.0.0.1",
                     "-p", str(dagster_port)], f"http://127.0.0.1:{dagster_port}", "/server_info"),
    }
    services: list[Service] = []
    try:
        for name, (cmd, url, _) in commands.items():
            log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
            services.append(Service(name, url, subprocess.Popen(cmd, cwd=root, env=env, stdout=log,
                                                                stderr=subprocess.STDOUT, start_new_session=True)))
        for service, (_, _, health) in zip(services, commands.values(), strict=True):
            _wait(service, health, timeout_s)
    except BaseException:
        for service in services:
            service.stop()
        raise
    return services


def cmd_serve(args: argparse.Namespace) -> int:
    root = args.root
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started where SIGINT is ignored (`&`)
    params = load_params(root)
    default_port = urlparse(params["mlflow"].get("ui_url") or "http://127.0.0.1:5000").port or 5000
    added, removed = sync_target_partitions(root, params)
    if added or removed:
        print(f"target partitions: added {added}, removed {removed}")
    log_dir = root / ".dagster" / "logs"
    services = start_services(root, dagster_port=args.dagster_port, mlflow_port=args.mlflow_port or default_port,
                              log_dir=log_dir)
    for s in services:
        print(f"{s.name:<8} {s.url}", flush=True)
    print(f"logs in {log_dir}; Ctrl-C stops both", flush=True)
    try:
        while all(s.proc.poll() is None for s in services):
            time.sleep(0.5)
        gone = next(s for s in services if s.proc.poll() is not None)
        print(f"{gone.name} exited with {gone.proc.returncode}; see {log_dir / (gone.name + '.log')}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        for s in services:
            s.stop()


def cmd_targets_sync(args: argparse.Namespace) -> int:
    from pipeline.dvc_targets import INDEX, sync_index

    params = load_params(args.root)
    added, removed = sync_target_partitions(args.root, params)
    print(f"target partitions: added {added or 'none'}, removed {removed or 'none'}")
    if not (args.root / "dvc.yaml").is_file():  # a project made by `vitforge init`: no dvc pipeline to keep
        print("no dvc.yaml in this project: no dvc target list to keep")
        return 0
    names, changed = sync_index(args.root, params)
    print(f"{INDEX} (dvc.yaml's targets): {', '.join(names) or 'none'}{'' if changed else ' (unchanged)'}")
    return 0


def add_serve_commands(sub, targets_sub) -> None:
    p = sub.add_parser("serve", help="the Dagster UI and the MLflow UI of this project, on 127.0.0.1")
    p.add_argument("--dagster-port", type=int, default=3000)
    p.add_argument("--mlflow-port", type=int, default=None, help="default: the port of params.yaml mlflow.ui_url")
    p.set_defaults(func=cmd_serve)
    p = targets_sub.add_parser("sync", help="make the Dagster target partitions and dvc.yaml's target list "
                                            "match the target files")
    p.set_defaults(func=cmd_targets_sync)
