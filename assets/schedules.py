"""Scheduled retraining: re-version the data and retrain the backbone and supernet weekly.

The per-target assets (architecture, model, edge_package) follow from the UI or a
run request per partition; their blocking checks keep a worse model out of the registry.
"""

from dagster import AssetSelection, ScheduleDefinition, define_asset_job

retrain_job = define_asset_job(
    "retrain", selection=AssetSelection.groups("data", "training"),
    description="dataset → pretrained_backbone → supernet, on the current data",
)

weekly_retrain = ScheduleDefinition(job=retrain_job, cron_schedule="0 3 * * 0", name="weekly_retrain")
