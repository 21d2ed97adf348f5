"""Fleets in Dagster: the candidate sensor starts ``fleet_rollout``, the progress sensor drives it.

Devices are stood in for by the reports an agent writes (tags device_id, version, serving, state);
the agent itself, against a real server, is tested in test_edge.py.
"""

from __future__ import annotations

import time

from conftest import make_project, set_params
from dagster import DagsterInstance, build_sensor_context

import mlflow
from assets.definitions import defs
from assets.fleets import fleet_candidate_sensor, fleet_progress_sensor, fleet_rollout
from assets.resources import MlflowTracking, ProjectResource
from pipeline.fleet import load_fleet
from pipeline.fleet.rollout import bucket, history, rollout_state
from pipeline.tracking import Tracker

DEVICES = [f"cam-{i}" for i in range(6)]
SKEW = {d: 3600.0 * (-1) ** i for i, d in enumerate(DEVICES)}  # device clocks an hour ahead of or behind the server's


def report(fleet: str, device: str, version: str, state: str = "active", stage: str = "") -> None:
    """A device's poll report as the agent writes it, timed by the device's own (skewed) clock;
    ``stage``: the id of the rollout stage it acted on."""
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(f"fleet-{fleet}")
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(f"fleet-{fleet}")
    run = client.create_run(exp_id, start_time=int((time.time() + SKEW[device]) * 1000), tags={
        "device_id": device, "version": version, "state": state, "rollout_stage": stage,
        "serving": version if state == "active" else "0", "reasons": ""})
    client.log_metric(run.info.run_id, "p99_ms", 0.1)
    client.set_terminated(run.info.run_id)


def test_sensors_start_and_drive_a_rollout(tmp_path):
    root = make_project(tmp_path / "project")
    set_params(root, fleets_dir="fleets")
    (root / "fleets").mkdir()
    (root / "fleets" / "ship.yaml").write_text(
        "target: cpu-ort-fp32\nmodel: vitforge-digits\nstages:\n  - {percent: 50, min_devices: 1, soak_s: 0}\n"
        "  - {percent: 100, min_devices: 1, soak_s: 0}\n")
    project = ProjectResource(root=str(root))
    resources = {"project": project, "mlflow": MlflowTracking(project=project)}
    mlflow.set_tracking_uri(Tracker.from_params(project.params(), root).tracking_uri)
    client = mlflow.MlflowClient()
    fleet = load_fleet(root / "fleets" / "ship.yaml")

    with DagsterInstance.ephemeral() as instance, build_sensor_context(instance=instance, resources=resources) as ctx:
        assert type(fleet_candidate_sensor(ctx)).__name__ == "SkipReason"  # no registered model yet
        client.create_registered_model("vitforge-digits")
        mv = client.create_model_version("vitforge-digits", str(tmp_path), run_id=None)
        client.set_registered_model_alias("vitforge-digits", "candidate-cpu-ort-fp32", mv.version)
        requests = fleet_candidate_sensor(ctx)
        assert [r.run_key for r in requests] == [f"ship-v{mv.version}"]

        result = fleet_rollout.execute_in_process(run_config=requests[0].run_config, resources=resources,
                                                  instance=instance)
        assert result.success
        state = rollout_state(fleet)
        assert state["version"] == str(mv.version) and state["percent"] == 50
        mats = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
        assert mats and mats[0].asset_key.path == ["fleet", "ship"]
        assert type(fleet_candidate_sensor(ctx)).__name__ == "SkipReason"  # a rollout is under way

        stage = [d for d in DEVICES if bucket("ship", d) < 50]
        for d in DEVICES:
            report("ship", d, "0", "no-version")  # the fleet's devices, known from their polls
        assert type(fleet_progress_sensor(ctx)).__name__ == "SkipReason"
        assert rollout_state(fleet)["stage"] == 0  # stage devices have not taken it yet: wait
        time.sleep(0.01)
        first = state["stage_id"]
        for d in stage:  # skewed device clocks: the stage id counts, not the time
            report("ship", d, str(mv.version), stage=first)
        out = fleet_progress_sensor(ctx)
        assert out.asset_events[0].description == "advance: stage 1 healthy; stage 2: 100 % of devices"
        second = rollout_state(fleet)
        assert second["percent"] == 100 and second["stage_id"] != first
        for d in DEVICES:  # reports about the first stage do not complete the second
            report("ship", d, str(mv.version), stage=first)
        assert type(fleet_progress_sensor(ctx)).__name__ == "SkipReason"
        assert rollout_state(fleet)["stage"] == 1
        time.sleep(0.01)
        for d in DEVICES:
            report("ship", d, str(mv.version), stage=second["stage_id"])
        out = fleet_progress_sensor(ctx)
        assert out.asset_events[0].description.startswith("finish: every stage healthy: fleet-ship and champion-")
        assert rollout_state(fleet) is None
        assert str(client.get_model_version_by_alias("vitforge-digits", "fleet-ship").version) == str(mv.version)
        assert str(client.get_model_version_by_alias("vitforge-digits", "champion-cpu-ort-fp32").version) == \
            str(mv.version)
        assert [m["move"] for m in history(fleet)] == ["start", "advance", "finish"]
        assert type(fleet_candidate_sensor(ctx)).__name__ == "SkipReason"  # the fleet runs the candidate


def test_definitions_hold_the_fleet_job_and_sensors():
    assert defs.resolve_job_def("fleet_rollout") is not None
    for name in ("fleet_candidate_sensor", "fleet_progress_sensor"):
        assert defs.resolve_sensor_def(name) is not None
