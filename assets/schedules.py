"""Retraining: the whole chain, weekly and whenever the data changes, ending in one candidate per target.

- ``retrain`` (job): dataset → pretrained_backbone → supernet, on the data params.yaml names.
- ``ship_target`` (job, partitioned by target): architecture → model → edge_package for one target; its
  blocking checks keep a worse model out of the registry, and a passing one becomes ``candidate-<target>``,
  which the fleet sensors then judge and roll out (assets/fleets.py).
- ``weekly_retrain`` (schedule, Sunday 03:00) starts ``retrain``; so does ``data_change_sensor``
  (assets/sensors.py) when the data folder's content changes.
- ``retrain_targets_sensor``: when a ``retrain`` run succeeds, one ``ship_target`` run per target partition
  that this deployment can measure, so a new supernet reaches every target.
"""

from dagster import (
    AssetSelection,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    ScheduleDefinition,
    SkipReason,
    define_asset_job,
    run_status_sensor,
)

from assets.partitions import targets_partitions
from assets.resources import ProjectResource
from pipeline.params import resolve
from pipeline.targets import TargetError, list_targets, load_target

retrain_job = define_asset_job(
    "retrain", selection=AssetSelection.groups("data", "training"),
    description="dataset → pretrained_backbone → supernet, on the current data",
)

ship_job = define_asset_job(
    "ship_target", selection=AssetSelection.groups("search", "ship"), partitions_def=targets_partitions,
    description="architecture → model → edge_package for one target: a new candidate-<target> if every gate passes",
)

weekly_retrain = ScheduleDefinition(job=retrain_job, cron_schedule="0 3 * * 0", name="weekly_retrain")


@run_status_sensor(run_status=DagsterRunStatus.SUCCESS, monitored_jobs=[retrain_job], request_job=ship_job,
                   default_status=DefaultSensorStatus.RUNNING,
                   description="After a successful retrain: a ship_target run for every target measurable here.")
def retrain_targets_sensor(context: RunStatusSensorContext, project: ProjectResource):
    files = list_targets(resolve(project.params()["targets_dir"], project.path))
    requests = []
    for name in sorted(context.instance.get_dynamic_partitions(targets_partitions.name)):
        if name not in files:
            continue  # its file is gone; targets_sensor removes the partition
        try:
            ok, why = load_target(files[name]).measurable_here()
        except TargetError as err:
            context.log.error(str(err))
            continue
        if not ok:
            context.log.info(f"target {name} not retrained here: {why}")
            continue
        requests.append(RunRequest(run_key=f"{context.dagster_run.run_id}-{name}", partition_key=name,
                                   tags={"retrain_run": context.dagster_run.run_id}))
    return requests or SkipReason("no target partition can be measured here")
