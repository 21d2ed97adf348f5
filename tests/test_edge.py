"""The edge runtime (edge/, ``vitforge-edge``) against a real MLflow server on 127.0.0.1.

Packages are real: a tiny model fine-tuned on the digits, packaged by the pipeline, registered through
MLflow's REST API on a server this module starts. Agents run as separate processes, as on devices.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import EDGE_MODEL, make_project, register, set_params
from PIL import Image
from vitforge_edge.agent import EDGE_FILES, bucket
from vitforge_edge.model import EdgeModel
from vitforge_edge.store import Store

import mlflow
from pipeline.loopback import free_port, stop_group, wait_http
from pipeline.weights import sha256_file

MODEL = EDGE_MODEL
FLEET = "lab"


def point(uri: str, alias: str, version: str | None) -> None:
    client = mlflow.MlflowClient(uri)
    if version is None:
        client.delete_registered_model_alias(MODEL, alias)
    else:
        client.set_registered_model_alias(MODEL, alias, version)


def set_rollout(uri: str, state: dict | None) -> None:
    client = mlflow.MlflowClient(uri)
    if state is None:
        client.delete_registered_model_tag(MODEL, f"fleet.{FLEET}.rollout")
    else:
        client.set_registered_model_tag(MODEL, f"fleet.{FLEET}.rollout", json.dumps(state))


def agent_once(uri: str, device: str, state: Path, fleet: str = FLEET) -> dict:
    proc = subprocess.run([sys.executable, "-m", "vitforge_edge.cli", "agent", "--tracking-uri", uri, "--model", MODEL,
                           "--fleet", fleet, "--device-id", device, "--state-dir", str(state), "--once"],
                          capture_output=True, text=True, timeout=180)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def versions(server, packages):
    uri, _ = server
    return {name: register(uri, pkg) for name, pkg in packages.items()}


def test_agent_proves_then_activates_and_reports(server, versions, tmp_path):
    uri, _ = server
    point(uri, f"fleet-{FLEET}", versions["good"])
    state = tmp_path / "dev"
    first = agent_once(uri, "dev-a", state)
    assert first["state"] == "active" and first["serving"] == versions["good"]
    assert first["agreement"] == 1.0 and 0 < first["p50_ms"] <= first["p99_ms"]
    assert sorted(p.name for p in (state / "versions" / versions["good"]).iterdir()) == sorted(EDGE_FILES +
                                                                                               ["onboard.json"])
    assert agent_once(uri, "dev-a", state)["state"] == "serving"  # nothing new: no download
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name(f"fleet-{FLEET}").experiment_id],
        filter_string="tags.device_id = 'dev-a'")
    assert sorted(r.data.tags["state"] for r in runs) == ["active", "serving"]
    assert all(r.data.tags["version"] == versions["good"] for r in runs)


@pytest.mark.parametrize("bad,why", [("slow", "over the target's budget"), ("wrongnorm", "probe agreement"),
                                     ("corrupt", "does not match the registry")])
def test_a_bad_candidate_is_rejected_and_the_old_version_keeps_serving(server, versions, packages, tmp_path, bad,
                                                                       why):
    uri, artifacts = server
    point(uri, f"fleet-{FLEET}", versions["good"])
    state = tmp_path / "dev"
    assert agent_once(uri, "dev-b", state)["state"] == "active"
    version = register(uri, packages["good2"]) if bad == "corrupt" else versions[bad]
    if bad == "corrupt":  # a version of its own, whose stored artifact gets bytes flipped after registration
        run_id = mlflow.MlflowClient(uri).get_model_version(MODEL, version).run_id
        stored = next(artifacts.rglob(f"{run_id}/artifacts/edge_package/model.onnx"))
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))
    point(uri, f"fleet-{FLEET}", version)
    report = agent_once(uri, "dev-b", state)
    assert report["state"] == "rejected" and why in report["reasons"]
    assert report["serving"] == versions["good"] == Store(state).current()
    assert EdgeModel(Store(state).current_dir(), versions["good"]).logits(
        np.zeros((1, 16, 16, 3), np.uint8)).shape == (1, 10)  # still loads and runs
    assert not any((state / "tmp").iterdir())  # the rejected download is gone
    again = agent_once(uri, "dev-b", state)
    if bad == "corrupt":  # a bad download is fetched again (it may have been the network), and fails again
        assert again["state"] == "rejected" and why in again["reasons"]
    else:  # a bad model is not downloaded again
        assert again["reasons"] == "rejected here before"
    assert again["serving"] == versions["good"]


def test_canary_moves_only_the_devices_in_the_stage(server, versions, tmp_path):
    uri, _ = server
    point(uri, f"fleet-{FLEET}", versions["good"])
    devices = [f"cam-{i}" for i in range(5)]
    for d in devices:
        assert agent_once(uri, d, tmp_path / d)["serving"] == versions["good"]
    point(uri, f"fleet-{FLEET}-next", versions["good2"])
    cut = sorted(bucket(FLEET, d) for d in devices)[1] + 1  # the two lowest buckets are in the first stage
    set_rollout(uri, {"version": versions["good2"], "percent": cut})
    try:
        moved = {d for d in devices if agent_once(uri, d, tmp_path / d)["serving"] == versions["good2"]}
        assert moved == {d for d in devices if bucket(FLEET, d) < cut} and len(moved) == 2
        set_rollout(uri, {"version": versions["good2"], "percent": 100})
        assert all(agent_once(uri, d, tmp_path / d)["serving"] == versions["good2"] for d in devices)
    finally:
        set_rollout(uri, None)
        point(uri, f"fleet-{FLEET}-next", None)


def test_buckets_are_stable_and_spread():
    assert bucket("lab", "cam-1") == bucket("lab", "cam-1")
    share = np.mean([bucket("lab", f"d{i}") < 10 for i in range(2000)])
    assert 0.07 < share < 0.13


def digit_png(tmp_path: Path) -> bytes:
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def test_serving_swaps_under_load_without_a_failed_request(server, versions, tmp_path):
    uri, _ = server
    point(uri, f"fleet-{FLEET}", versions["good"])
    state = tmp_path / "dev"
    assert agent_once(uri, "dev-s", state)["state"] == "active"
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "vitforge_edge.cli", "serve", "--state-dir", str(state), "--port",
                            str(port)], start_new_session=True, stderr=subprocess.DEVNULL)
    body = digit_png(tmp_path)
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:  # bounded in count and time
        deadline = time.monotonic() + 120
        for _ in range(20000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST")
                with urllib.request.urlopen(req, timeout=10) as resp:
                    out = json.loads(resp.read())
                    seen.append(out["version"])
                    assert abs(sum(out["scores"].values()) - 1) < 1e-4 and out["label"] in out["scores"]
            except Exception as err:  # noqa: BLE001  (any failure counts)
                failures.append(repr(err))

    def served(version: str, timeout_s: float = 30) -> None:  # until the server answers with ``version``
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(seen) > 20 and seen[-1] == version:
                return
            time.sleep(0.05)
        raise TimeoutError(f"still serving {seen[-1:]} after {timeout_s} s, expected {version}")

    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        worker = threading.Thread(target=load)
        worker.start()
        served(versions["good"])
        point(uri, f"fleet-{FLEET}", versions["good2"])
        assert agent_once(uri, "dev-s", state)["state"] == "active"  # swap 1, under load
        served(versions["good2"])
        subprocess.run([sys.executable, "-m", "vitforge_edge.cli", "rollback", "--state-dir", str(state)], check=True)
        served(versions["good"])  # swap 2: the local rollback
        again = agent_once(uri, "dev-s", state)  # the agent does not undo it: the version left is rejected here
        assert again["serving"] == versions["good"] and again["reasons"] == "rejected here before"
        n = len(seen)
        time.sleep(0.5)
        assert len(seen) > n and set(seen[n:]) == {versions["good"]}
        stop.set()
        worker.join(60)
    finally:
        stop.set()
        stop_group(srv)
    assert not failures, failures[:3]
    assert len(seen) > 50
    changes = [b for a, b in zip(seen, seen[1:], strict=False) if a != b]
    assert changes == [versions["good2"], versions["good"]], changes


SWAPPER = """
import sys, shutil
from pathlib import Path
from vitforge_edge.store import Store
store, src = Store(Path(sys.argv[1])), Path(sys.argv[2])
for i in range(100000):
    with store.lock():
        tmp = store.staging()
        for f in src.iterdir():
            shutil.copy(f, tmp / f.name)
        store.install(str(i), tmp)
        store.activate(str(i))
        store.prune(keep=2)
"""


def test_sigkill_mid_swap_leaves_a_loadable_current(packages, tmp_path):
    from vitforge_edge.checks import sha256

    state = tmp_path / "dev"
    src = packages["good"].folder
    files = {f.name: sha256(f) for f in src.iterdir()}
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(8):  # bounded: eight kills at random moments of install, switch and prune
        proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(state), str(src)])
        time.sleep(float(rng.uniform(0.5, 2.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        store = Store(state)
        folder = store.current_dir()
        if folder is None:
            continue  # killed before the first switch
        assert {f.name: sha256(f) for f in folder.iterdir()} == files  # complete, byte for byte
        model = EdgeModel(folder, store.current())
        assert model.logits(np.zeros((1, model.size, model.size, 3), np.uint8)).shape == (1, 10)
        with store.lock():  # the next writer clears what the killed one left
            pass
        assert not any(store.tmp.iterdir()) and not list(state.glob(".*.link-*"))
        assert len(list(store.versions.iterdir())) <= 5  # prune ran: no pile-up of versions
    assert kills == 8 and Store(state).current() is not None


def test_rollout_stages_finish_abort_and_rollback_with_history(server, versions, tmp_path, capsys):
    from pipeline.cli import main as vitforge
    from pipeline.fleet import load_fleet
    from pipeline.fleet.rollout import evaluate, history, promote

    uri, _ = server
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    devices = [f"ship-{i}" for i in range(5)]
    cut = sorted(bucket("ship", d) for d in devices)[1] + 1  # two devices in the first stage
    root = make_project(tmp_path / "project")
    set_params(root, mlflow__tracking_uri=uri, fleets_dir="fleets")
    (root / "fleets").mkdir()
    (root / "fleets" / "ship.yaml").write_text(
        f"target: cpu-ort-fp32\nmodel: {MODEL}\nstages:\n  - {{percent: {cut}, min_devices: 1, soak_s: 0}}\n"
        "  - {percent: 100, min_devices: 1, soak_s: 0}\n"
        "abort: {max_failure_share: 0.0, max_p99_regression: 3.0}\n")  # p99 rule: its own test below
    fleet = load_fleet(root / "fleets" / "ship.yaml")

    reports: dict[str, dict] = {}

    def poll_all() -> dict[str, str]:
        reports.update({d: agent_once(uri, d, tmp_path / d, "ship") for d in devices})
        return {d: r["serving"] for d, r in reports.items()}

    def roll(version: str) -> None:
        client.set_registered_model_alias(MODEL, "candidate-cpu-ort-fp32", version)
        assert vitforge(["--root", str(root), "fleet", "promote", "ship"]) == 0
        before = "the fleet's first version" if version == versions["good"] else f"from v{versions['good']}"
        assert f"fleet ship: rolling out v{version} ({before}); stage 1 of 2" in capsys.readouterr().out
        assert vitforge(["--root", str(root), "fleet", "evaluate", "ship"]) == 0  # no device has the version
        said = capsys.readouterr().out
        assert said.startswith("fleet ship: wait: ") and "{" not in said, said
        first = poll_all()
        assert {d for d in devices if first[d] == version} == {d for d in devices if bucket("ship", d) < cut}
        others = {reports[d]["state"] for d in devices if bucket("ship", d) >= cut}
        assert others == ({"no-version"} if version == versions["good"] else {"serving"})  # never "unreachable"
        assert vitforge(["--root", str(root), "fleet", "evaluate", "ship"]) == 0
        said = capsys.readouterr().out
        assert said.startswith("fleet ship: advance: stage 1 healthy; stage 2: 100 % of devices (stage_devices 2, "
                               "healthy 2, failed 0, failure_share 0.00"), said
        assert set(poll_all().values()) == {version}
        assert evaluate(fleet)[0] == "finish"

    roll(versions["good"])
    roll(versions["good2"])
    assert str(client.get_model_version_by_alias(MODEL, "champion-cpu-ort-fp32").version) == versions["good2"]
    # a candidate over budget on the devices: the first stage rejects it, the rollout aborts
    client.set_registered_model_alias(MODEL, "candidate-cpu-ort-fp32", versions["slow"])
    promote(fleet)
    polled = poll_all()
    assert set(polled.values()) == {versions["good2"]}  # nobody switched
    assert evaluate(fleet)[0] == "abort"
    assert set(poll_all().values()) == {versions["good2"]}
    # rollback restores the version before the last finished rollout
    assert vitforge(["--root", str(root), "fleet", "rollback", "ship"]) == 0
    assert set(poll_all().values()) == {versions["good"]}
    moves = [(m["move"], m["from"], m["to"], m["status"]) for m in history(fleet)]
    g, g2, slow = versions["good"], versions["good2"], versions["slow"]
    assert moves == [("start", "", g, "FINISHED"), ("advance", "", g, "FINISHED"), ("finish", "", g, "FINISHED"),
                     ("start", g, g2, "FINISHED"), ("advance", g, g2, "FINISHED"), ("finish", g, g2, "FINISHED"),
                     ("start", g2, slow, "FINISHED"), ("abort", slow, g2, "FINISHED"),
                     ("rollback", g2, g, "FINISHED")]
    assert vitforge(["--root", str(root), "fleet", "promote", "nope"]) == 2  # unknown fleet: one line, exit 2


def test_p99_rule_compares_with_the_serving_version_timed_beside_it(packages, versions, tmp_path):
    from vitforge_edge.checks import Rules, self_check

    new, old = packages["good2"].folder, packages["good"].folder
    expected = {f: sha256_file(new / f) for f in EDGE_FILES}
    fast = Rules(max_p99_regression=-0.9, warmup=2, runs=40)  # demands 10x faster than the serving version
    res = self_check(new, "2", expected, fast, serving=old)
    assert not res.ok and "regresses" in res.reasons[0] and "timed beside it" in res.reasons[0]
    assert self_check(new, "2", expected, Rules(max_p99_regression=10.0, warmup=10, runs=400), serving=old).ok
