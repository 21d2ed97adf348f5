"""Typed resources: where the project lives, and where MLflow tracks it."""


from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from pipeline.params import load_params, project_root, section
from pipeline.tracking import Tracker, absolute_tracking_uri

_MLFLOW = section("mlflow")


class ProjectResource(ConfigurableResource):
    """The project root: params.yaml, the DVC repo, the tracked data and run folders."""

    root: str = str(project_root())

    @property
    def path(self) -> Path:
        return Path(self.root).resolve()

    def params(self) -> dict[str, Any]:
        return load_params(self.path)


class MlflowTracking(ConfigurableResource):
    """MLflow tracking and registry; the embedded SQLite store by default, a server URI in prod."""

    project: ProjectResource
    tracking_uri: str = _MLFLOW["tracking_uri"]
    experiment: str = _MLFLOW["experiment"]
    artifact_root: str = _MLFLOW["artifact_root"]

    def tracker(self) -> Tracker:
        root = self.project.path
        artifacts = Path(self.artifact_root)
        return Tracker(absolute_tracking_uri(self.tracking_uri, root), self.experiment,
                       artifacts if artifacts.is_absolute() else root / artifacts)
