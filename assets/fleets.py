"""Fleets in Dagster: a job that starts a rollout, and sensors that start and drive it.

- ``fleet_candidate_sensor``: for every ``infra/fleets/*.yaml``, when the fleet's target has a
  ``candidate-<target>`` that the fleet neither runs nor has tried before, and no rollout is under way,
  it requests a ``fleet_rollout`` run for that fleet (run key: fleet and version, so once per candidate).
- ``fleet_rollout``: promotes the candidate (``pipeline.fleet.rollout.promote``) and records the fleet as
  the asset ``fleet/<name>`` with the rollout state as metadata.
- ``fleet_progress_sensor``: for every fleet with a rollout under way, reads the device reports and
  advances, finishes or aborts it (``evaluate``), and records the stage's figures on ``fleet/<name>``.
"""

from dagster import (
    AssetKey,
    AssetMaterialization,
    Config,
    DefaultSensorStatus,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
    sensor,
)

from assets.resources import MlflowTracking, ProjectResource
from pipeline.fleet import Fleet, list_fleets, load_fleet
from pipeline.params import resolve


def _fleets(project: ProjectResource) -> dict[str, Fleet]:
    folder = resolve(project.params()["fleets_dir"], project.path)
    return {name: load_fleet(path) for name, path in list_fleets(folder).items()}


def fleet_metadata(fleet: Fleet, details: dict) -> dict:
    from pipeline.fleet.rollout import device_reports

    devices = {d: {k: r.get(k) for k in ("serving", "state", "p50_ms", "p99_ms", "agreement")}
               for d, r in device_reports(fleet).items()}
    return {"target": fleet.target, "model": fleet.model, "rollout": MetadataValue.json(details.get("state") or {}),
            "stage_health": MetadataValue.json(details.get("health") or {}), "devices": MetadataValue.json(devices)}


class FleetConfig(Config):
    fleet: str


@op(description="Start rolling out the target's candidate to the fleet (pipeline.fleet.rollout.promote).")
def promote_fleet(context: OpExecutionContext, config: FleetConfig, project: ProjectResource,
                  mlflow: MlflowTracking) -> None:
    import mlflow as mlflow_lib
    from pipeline.fleet.rollout import promote

    mlflow_lib.set_tracking_uri(mlflow.tracker().tracking_uri)
    fleet = _fleets(project)[config.fleet]
    state = promote(fleet)
    context.log.info(f"fleet {fleet.name}: rolling out v{state['version']} from v{state['from']}")
    context.log_event(AssetMaterialization(AssetKey(["fleet", fleet.name]), description="rollout started",
                                           metadata=fleet_metadata(fleet, {"state": state})))


@job(description="Promote a fleet target's candidate: the first stage of a staged rollout.")
def fleet_rollout():
    promote_fleet()


@sensor(job=fleet_rollout, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED,
        description="Starts fleet_rollout when a fleet's target has a new passing candidate.")
def fleet_candidate_sensor(context: SensorEvaluationContext, project: ProjectResource, mlflow: MlflowTracking):
    import mlflow as mlflow_lib
    from pipeline.fleet.rollout import candidate_to_roll_out

    mlflow_lib.set_tracking_uri(mlflow.tracker().tracking_uri)
    requests = []
    for name, fleet in _fleets(project).items():
        try:
            version = candidate_to_roll_out(fleet)
        except Exception as err:  # noqa: BLE001  (one fleet's trouble must not stop the others)
            context.log.error(f"fleet {name}: {type(err).__name__}: {err}")
            continue
        if version is not None:
            requests.append(RunRequest(run_key=f"{name}-v{version}",
                                       run_config={"ops": {"promote_fleet": {"config": {"fleet": name}}}},
                                       tags={"fleet": name, "version": version}))
    return requests or SkipReason("no fleet has a new candidate")


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.STOPPED,
        description="Advances, finishes or aborts each fleet's rollout from its devices' reports.")
def fleet_progress_sensor(context: SensorEvaluationContext, project: ProjectResource, mlflow: MlflowTracking):
    import mlflow as mlflow_lib
    from pipeline.fleet.rollout import evaluate

    mlflow_lib.set_tracking_uri(mlflow.tracker().tracking_uri)
    events, actions = [], []
    for name, fleet in _fleets(project).items():
        try:
            action, details = evaluate(fleet)
        except Exception as err:  # noqa: BLE001  (one fleet's trouble must not stop the others)
            context.log.error(f"fleet {name}: {type(err).__name__}: {err}")
            continue
        if action in ("idle", "wait"):  # only moves become asset events
            continue
        actions.append(f"{name}: {action}: {details['why']}")
        events.append(AssetMaterialization(AssetKey(["fleet", name]), description=f"{action}: {details['why']}",
                                           metadata=fleet_metadata(fleet, details)))
    if not events:
        return SkipReason("no rollout moved")
    context.log.info("; ".join(actions))
    return SensorResult(asset_events=events)
