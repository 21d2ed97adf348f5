"""Sensors: keep the ``targets`` partitions in step with the files in infra/targets/."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from assets.partitions import targets_partitions
from assets.resources import ProjectResource
from pipeline.params import resolve
from pipeline.targets import list_targets


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Adds a `targets` partition per infra/targets/*.yaml and removes those whose file is gone.")
def targets_sensor(context: SensorEvaluationContext, project: ProjectResource):
    folder = resolve(project.params()["targets_dir"], project.path)
    on_disk = set(list_targets(folder))
    known = set(context.instance.get_dynamic_partitions(targets_partitions.name))
    added, removed = sorted(on_disk - known), sorted(known - on_disk)
    if not added and not removed:
        return SkipReason(f"targets unchanged: {sorted(on_disk)}")
    context.log.info(f"targets added {added}, removed {removed}")
    requests = []
    if added:
        requests.append(targets_partitions.build_add_request(added))
    if removed:
        requests.append(targets_partitions.build_delete_request(removed))
    return SensorResult(dynamic_partitions_requests=requests)
