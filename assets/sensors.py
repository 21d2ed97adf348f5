"""Sensors: keep the ``targets`` partitions in step with infra/targets/, and retrain when the data changes."""

import json

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import partition_changes, targets_partitions
from assets.resources import ProjectResource
from assets.schedules import retrain_job
from pipeline.data.fingerprint import content_hash, stat_fingerprint
from pipeline.params import resolve
from pipeline.stages.dataset import source_folder
from pipeline.targets import list_targets


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Adds a `targets` partition per infra/targets/*.yaml and removes those whose file is gone.")
def targets_sensor(context: SensorEvaluationContext, project: ProjectResource):
    folder = resolve(project.params()["targets_dir"], project.path)
    on_disk = sorted(list_targets(folder))
    added, removed = partition_changes(context.instance, on_disk)
    if not added and not removed:
        return SkipReason(f"targets unchanged: {on_disk}")
    context.log.info(f"targets added {added}, removed {removed}")
    requests = []
    if added:
        requests.append(targets_partitions.build_add_request(added))
    if removed:
        requests.append(targets_partitions.build_delete_request(removed))
    return SensorResult(dynamic_partitions_requests=requests)


@sensor(job=retrain_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED,
        description="Starts `retrain` when the content of params.yaml's dataset.data differs from the last version's.")
def data_change_sensor(context: SensorEvaluationContext, project: ProjectResource):
    """The folder's content hash against the ``source_hash`` of the newest ``dataset`` materialization.

    The cursor keeps the last stat fingerprint and hash, so an untouched folder is not read again. The run
    key names both hashes: one run per change (a tick while it runs requests nothing new), and data put
    back to an older content after a newer version still counts as a change.
    """
    folder = source_folder(project.params()["dataset"]["data"], project.path)
    if not folder.is_dir():
        return SkipReason(f"{folder} does not exist (yet)")
    seen = json.loads(context.cursor) if context.cursor else {}
    stat = stat_fingerprint(folder)
    content = seen["content"] if seen.get("stat") == stat else content_hash(folder)
    context.update_cursor(json.dumps({"stat": stat, "content": content}))
    event = context.instance.get_latest_materialization_event(AssetKey("dataset"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    versioned = meta["source_hash"].value if "source_hash" in meta else None
    if content == versioned:
        return SkipReason(f"{folder}: unchanged since the last dataset version")
    context.log.info(f"{folder}: content {content[:12]} differs from the last version's {str(versioned)[:12]}")
    return RunRequest(run_key=f"data-{content[:16]}-after-{str(versioned)[:16]}", tags={"source_hash": content})
