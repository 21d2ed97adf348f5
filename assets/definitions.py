"""The one ``Definitions`` of vitforge. Resources are picked by $VITFORGE_DEPLOYMENT (local | prod)."""

import os

# Run logs stay readable: no carriage-return progress bars in Dagster's captured output (the stages log their
# progress as lines; the CLI keeps its bars).
os.environ.setdefault("TQDM_DISABLE", "1")

from dagster import Definitions, in_process_executor  # noqa: E402

from assets.architecture import architecture
from assets.checks import check_dataset_valid
from assets.dataset import dataset
from assets.deployments import deployment_resources
from assets.fleets import fleet_candidate_sensor, fleet_progress_sensor, fleet_rollout
from assets.schedules import retrain_job, retrain_targets_sensor, ship_job, weekly_retrain
from assets.sensors import data_change_sensor, targets_sensor
from assets.shipping import edge_package, model
from assets.training import pretrained_backbone, supernet


def definitions(resources: dict) -> Definitions:
    """The code location with ``resources``: a deployment's (assets/deployments.py), or a test's own."""
    return Definitions(
        assets=[dataset, pretrained_backbone, supernet, architecture, model, edge_package],
        sensors=[targets_sensor, data_change_sensor, retrain_targets_sensor, fleet_candidate_sensor,
                 fleet_progress_sensor],
        jobs=[retrain_job, ship_job, fleet_rollout],
        schedules=[weekly_retrain],
        asset_checks=[check_dataset_valid],
        resources=resources,
        # The chain is serial (each asset needs the one before), so its steps share one process: no torch import
        # and model load per step. A run is still one process (one pod under K8sRunLauncher).
        executor=in_process_executor,
    )


defs = definitions(deployment_resources(os.environ.get("VITFORGE_DEPLOYMENT", "local")))
