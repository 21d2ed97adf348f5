"""The Dagster UI path in a real browser (Debian's chromium through playwright), on a tiny config.

The CLI makes dataset, backbone and supernet; `vitforge serve` starts both UIs on the same project; a new
target file appears as a partition; one launch from the UI builds only that target's assets; its checks and
plots show for that partition, and the MLflow UI shows the registered version with its tags. Screenshots go
to test-artifacts/browser/.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import REPO, set_params

from pipeline.cli import main

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "browser"
TARGET = "ui-box"

pytestmark = pytest.mark.browser


def _browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (the Python package, in the dev extra) is not installed")
    return sync_playwright


def _serve(root: Path) -> tuple[subprocess.Popen, str, str]:
    """`vitforge serve` in its own session; its two URLs once it printed them (bounded)."""
    from pipeline.loopback import free_port

    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--root", str(root), "serve", "--dagster-port",
                             str(free_port()), "--mlflow-port", str(free_port())], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 240
    while len(urls) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        name, _, url = line.strip().partition(" ")
        if name in ("dagster", "mlflow") and url.strip().startswith("http://127.0.0.1:"):
            urls[name] = url.strip()
    if len(urls) < 2:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"vitforge serve did not come up: {proc.stdout.read()[-3000:] if proc.poll() else urls}")
    return proc, urls["dagster"], urls["mlflow"]


def _skip_welcome_dialog(dagster: str) -> None:
    """What the Skip button of Dagster's one-time "Join the Dagster community" dialog does, done before any page
    opens: the dialog opens a second after load, over whatever is being clicked, so a handler raced it."""
    reply = requests.post(f"{dagster}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30)
    reply.raise_for_status()
    shown = requests.post(f"{dagster}/graphql", json={"query": "{ shouldShowNux }"}, timeout=30).json()
    assert shown == {"data": {"shouldShowNux": False}}, shown


def _wait_for_run(root: Path, timeout_s: float = 480.0):
    """The one run the UI launched, once it has ended (bounded)."""
    from dagster import DagsterRunStatus

    from assets.recording import project_instance

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with project_instance(root) as instance:
            runs = instance.get_runs()
        if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                       DagsterRunStatus.CANCELED):
            return runs
        time.sleep(2)
    pytest.fail(f"no run ended within {timeout_s:.0f} s")


def test_a_new_target_from_the_ui_builds_only_its_own_assets(tiny_project, digits_few):
    sync_playwright = _browser()
    root = tiny_project
    set_params(root, targets_dir="targets", dataset__data=str(digits_few))
    (root / "targets").mkdir()
    for args in (["stage", "dataset"], ["stage", "pretrain"], ["stage", "supernet"]):
        assert main(["--root", str(root), *args]) == 0, args
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)

    proc, dagster, mlflow_ui = _serve(root)
    try:
        (root / "targets" / f"{TARGET}.yaml").write_text(
            "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch_size: 1\nlatency_budget_ms: 50\n")
        assert main(["--root", str(root), "targets", "sync"]) == 0  # no waiting for the sensor's tick
        _skip_welcome_dialog(dagster)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)


            # the asset graph's partitions: the new target is there, the CLI's assets are materialized
            page.goto(f"{dagster}/assets/architecture?view=partitions")
            page.get_by_text(TARGET, exact=True).first.wait_for()
            page.screenshot(path=SHOTS / "1-new-partition.png")

            # one launch, clicks only: the target job, its missing partition
            page.goto(f"{dagster}/locations/assets.definitions/jobs/ship_target")
            page.get_by_role("button", name="Materialize all").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_role("button", name="Missing", exact=True).click()
            dialog.get_by_text(TARGET, exact=True).first.wait_for()
            page.screenshot(path=SHOTS / "2-launch.png")
            dialog.get_by_role("button", name="Launch 1 run").click()

            runs = _wait_for_run(root)
            assert [(r.job_name, r.tags.get("dagster/partition"), r.status.value) for r in runs] == [
                ("ship_target", TARGET, "SUCCESS")]  # dataset, backbone and supernet came from the CLI's state

            # that partition: materialized, its checks passed, its plots rendered
            page.goto(f"{dagster}/assets/edge_package?view=partitions&partition={TARGET}")
            page.get_by_text("registered_version_page").first.wait_for()
            image = page.locator("img[src*='get-artifact']").first
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            page.screenshot(path=SHOTS / "3-partition-metadata.png", full_page=True)
            page.goto(f"{dagster}/assets/edge_package?view=checks")
            page.get_by_text("Checks (3)").first.wait_for()
            page.get_by_text("Succeeded", exact=True).nth(2).wait_for()  # parity, latency budget, champion
            assert page.get_by_text("Failed", exact=True).count() == 0
            page.screenshot(path=SHOTS / "4-checks.png", full_page=True)

            # the MLflow UI: the registered version and its tags
            page.goto(f"{mlflow_ui}/#/models/vitforge-digits/versions/1")
            page.get_by_text("candidate-" + TARGET).first.wait_for()
            body = page.inner_text("body")
            for tag in ("target", TARGET, "dataset_version", "git_sha", "sha256.model.onnx"):
                assert tag in body, tag
            page.screenshot(path=SHOTS / "5-mlflow-version.png", full_page=True)
            browser.close()

        # the run's logs are lines: no carriage-return bars, no export warnings
        logs = list((root / ".dagster" / "home" / "storage" / runs[0].run_id).rglob("*.err"))
        assert logs
        text = "".join(f.read_text(errors="replace") for f in logs)
        assert "\r" not in text and "TracerWarning" not in text
    finally:
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert rc == 0 and time.monotonic() - t0 < 40, f"serve stopped with {rc} after {time.monotonic() - t0:.0f} s"
