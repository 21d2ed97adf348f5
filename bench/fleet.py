"""A fleet on loopback: one MLflow server, N agents as processes, a version rolled out in three stages.

Takes a package the chain built (``runs/package/<target>`` of a project root, e.g. after ``vitforge
demo``), registers it twice on a fresh ``mlflow server`` bound to 127.0.0.1, and starts ``--devices``
``vitforge-edge agent`` processes polling every ``--interval`` seconds. ``--serving`` of them also run
``vitforge-edge serve`` under a steady request load. It then rolls out v1, then v2, in stages of
10 / 50 / 100 % (soak 0), calling ``pipeline.fleet.rollout.evaluate`` once a second, and prints per
stage the time to converge, failed polls, requests failed during swaps and bytes downloaded per device.

    vitforge demo && python bench/fleet.py --package runs/package/cpu-ort-fp32 --devices 20
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

import mlflow
from pipeline.export.package import EdgePackage, Parity
from pipeline.fleet.rollout import device_reports, evaluate, promote
from pipeline.fleet.schema import Fleet
from pipeline.loopback import free_port, start_mlflow_server, stop_group, wait_http
from pipeline.registry.mlflow_registry import register_package, version_tags
from pipeline.targets.latency import LatencyReport

MODEL = "fleet-bench"


def load_package(folder: Path) -> EdgePackage:
    """The package folder the chain wrote, as the registry code takes it."""
    spec = json.loads((folder / "package.json").read_text())
    lat = spec["latency"]
    latency = LatencyReport(**{k: lat[k] for k in LatencyReport.__dataclass_fields__ if k in lat})
    return EdgePackage(folder, folder / "model.onnx", spec["target"], spec["arch"], spec["classes"],
                       Parity(**spec["parity"]), latency, spec["optimizer"], spec["files_sha256"])


def register(pkg: EdgePackage) -> str:
    with mlflow.start_run():
        return register_package(pkg, MODEL, version_tags(pkg, dataset_version="bench", git_sha="bench",
                                                         dagster_run_id="", params={}, test_top1=0.0,
                                                         latency_mape=None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, required=True, help="a package folder the chain built")
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--serving", type=int, default=3, help="devices that also serve HTTP under load")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between an agent's polls")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a stage may take before the bench gives up")
    ap.add_argument("--budget-slack", type=float, default=10.0,
                    help="the registered copy's latency budget is this many times the package's")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitforge-fleet-"))
    # All agents share this machine's cores, so each one's latency check sees the others' load: the copy
    # registered here has its budget raised --budget-slack times (the check itself is in tests/test_edge.py).
    folder = work / "package"
    shutil.copytree(args.package.resolve(), folder)
    spec = json.loads((folder / "package.json").read_text())
    spec["target_spec"]["latency_budget_ms"] *= args.budget_slack
    (folder / "package.json").write_text(json.dumps(spec, indent=1))
    pkg = load_package(folder)
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    try:
        server, uri = start_mlflow_server(work, workers=2)
        procs.append(server)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("fleet-bench")
        v1, v2 = register(pkg), register(pkg)
        fleet = Fleet(name="bench", target=pkg.target, model=MODEL,
                      stages=[{"percent": p, "min_devices": 1, "soak_s": 0} for p in (10, 50, 100)],
                      abort={"max_failure_share": 0.0, "max_p99_regression": 3.0})
        devices = [f"dev-{i:02d}" for i in range(args.devices)]
        for d in devices:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vitforge_edge.cli", "agent", "--tracking-uri", uri, "--model", MODEL,
                 "--fleet", fleet.name, "--device-id", d, "--state-dir", str(work / d), "--interval",
                 str(args.interval)], stdout=subprocess.DEVNULL, stderr=open(work / f"{d}.log", "wb"),
                start_new_session=True))
        # the serving devices, under load (bounded in count and time), on a probe image as PNG
        buf = io.BytesIO()
        Image.fromarray(np.load(folder / "probe.npz")["images"][0]).save(buf, format="PNG")
        body = buf.getvalue()
        counts = {"ok": 0, "failed": 0}
        ports = []
        for d in devices[: args.serving]:
            ports.append(free_port())
            procs.append(subprocess.Popen([sys.executable, "-m", "vitforge_edge.cli", "serve", "--state-dir",
                                           str(work / d), "--port", str(ports[-1])],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

        def load(p: int) -> None:
            deadline = time.monotonic() + 3600
            for _ in range(10**6):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{p}/predict", data=body, method="POST")
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        json.loads(resp.read())
                    counts["ok"] += 1
                except Exception:  # noqa: BLE001
                    counts["failed"] += 1
                time.sleep(0.01)

        print(f"{args.devices} agents polling every {args.interval:g} s; {args.serving} serving under load; "
              f"MLflow server {uri}")
        t_join = time.monotonic()
        while len(device_reports(fleet)) < args.devices:  # the fleet's devices are those that have reported
            if time.monotonic() - t_join > args.timeout:
                log = (work / f"{devices[0]}.log").read_text()[-2000:]
                raise SystemExit(f"only {len(device_reports(fleet))} of {args.devices} agents reported; "
                                 f"{devices[0]}'s log ends:\n{log}")
            time.sleep(1)
        print(f"all {args.devices} agents reported in {time.monotonic() - t_join:.1f} s")
        rows = []
        for version in (v1, v2):
            if version == v2:  # the servers start once v1 is installed, then the load runs through the v2 swaps
                for p in ports:
                    wait_http(f"http://127.0.0.1:{p}/healthz", 60)
                    threading.Thread(target=load, args=(p,), daemon=True).start()
            mlflow.MlflowClient().set_registered_model_alias(MODEL, f"candidate-{pkg.target}", version)
            promote(fleet)
            stage, t0, failed_before = 0, time.monotonic(), counts["failed"]
            while True:
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit(f"v{version} stage {stage + 1} did not converge in {args.timeout:.0f} s")
                action, details = evaluate(fleet)
                if action in ("advance", "finish"):
                    reps = device_reports(fleet)
                    poll_fail = sum(r["state"] in ("unreachable", "error") for r in reps.values())
                    rows.append((version, stage + 1, fleet.stages[stage].percent, time.monotonic() - t0,
                                 len(details["health"]["healthy"]), poll_fail, counts["failed"] - failed_before))
                    stage, t0, failed_before = stage + 1, time.monotonic(), counts["failed"]
                    if action == "finish":
                        break
                elif action == "abort":
                    raise SystemExit(f"v{version} aborted: {details['health']}")
                time.sleep(1)
        stop.set()
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(f"fleet-{fleet.name}").experiment_id
        runs = client.search_runs([exp], "tags.device_id LIKE '%'", max_results=50000)
        per_device: dict[str, float] = {}
        for r in runs:
            per_device[r.data.tags["device_id"]] = per_device.get(r.data.tags["device_id"], 0) + \
                r.data.metrics.get("bytes_downloaded", 0)
        bad_polls = sum(r.data.tags["state"] in ("unreachable", "error") for r in runs)
        print(f"\n{'version':>7} {'stage':>5} {'share':>6} {'converge s':>10} {'devices on it':>13} "
              f"{'failed polls':>12} {'failed requests':>15}")
        for version, st, share, secs, healthy, pf, rf in rows:
            print(f"{version:>7} {st:>5} {share:>5}% {secs:>10.1f} {healthy:>13} {pf:>12} {rf:>15}")
        mb = [b / 1e6 for b in per_device.values()]
        print(f"polls {len(runs)}, failed polls (unreachable or error) {bad_polls}; requests served {counts['ok']}, "
              f"failed {counts['failed']}")
        files = sum((folder / f).stat().st_size for f in ("model.onnx", "label_map.json", "package.json", "probe.npz"))
        print(f"downloaded per device: {min(mb):.3f}-{max(mb):.3f} MB for two versions (one version's files: "
              f"{files / 1e6:.3f} MB)")
    finally:
        stop.set()
        for p in procs:
            stop_group(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
