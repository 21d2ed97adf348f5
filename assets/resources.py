"""Typed resources: where the project lives, and where MLflow tracks it."""


import os
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from pipeline.params import load_params, project_root
from pipeline.tracking import Tracker, absolute_tracking_uri


class ProjectResource(ConfigurableResource):
    """The project root: params.yaml, the DVC repo, the tracked data and run folders."""

    root: str = str(project_root())

    @property
    def path(self) -> Path:
        return Path(self.root).resolve()

    def params(self) -> dict[str, Any]:
        return load_params(self.path)


class MlflowTracking(ConfigurableResource):
    """MLflow tracking and registry; the embedded SQLite store by default, a server URI in prod.
    Unset fields take the project's params.yaml ``mlflow:`` values when a tracker is made."""

    project: ProjectResource
    tracking_uri: str | None = None
    experiment: str | None = None
    artifact_root: str | None = None
    ui_url: str | None = None  # the MLflow UI that Dagster metadata links to (default: params.yaml mlflow.ui_url)

    def tracker(self) -> Tracker:
        root = self.project.path
        p = self.project.params()["mlflow"]
        artifacts = Path(self.artifact_root or p["artifact_root"])
        artifacts = artifacts if artifacts.is_absolute() else root / artifacts
        uri = absolute_tracking_uri(self.tracking_uri or p["tracking_uri"], root)
        tracker = Tracker(uri, self.experiment or p["experiment"], artifacts, root)
        # read by assets/metadata.py: `vitforge serve` names the MLflow UI it started
        tracker.ui_url = self.ui_url or os.environ.get("VITFORGE_MLFLOW_UI_URL") or p.get("ui_url")
        return tracker
