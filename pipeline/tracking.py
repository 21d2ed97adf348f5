"""MLflow tracking for every stage: one run per stage, the same way from the CLI and Dagster.

The embedded default is a SQLite store at ``mlflow/mlflow.db`` with artifacts under
``mlflow/artifacts`` (both relative to the project root). With a tracking server (an ``http(s)://`` URI, as in
the prod deployment) the server decides where artifacts go (its ``--artifacts-destination``, e.g. S3): the
experiment is created without a local artifact location.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.params import git_sha, resolve

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "VITFORGE_MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "VITFORGE_MLFLOW_EXPERIMENT"


def absolute_tracking_uri(uri: str, root: Path) -> str:
    """``sqlite:///relative.db`` is taken from the project root, not the current directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        db = resolve(uri[len(prefix):], root)
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def is_server(uri: str) -> bool:
    """A tracking server (which owns the artifact store), not a store this process writes itself."""
    return uri.startswith(("http://", "https://"))


@dataclass
class Tracker:
    tracking_uri: str
    experiment: str
    artifact_root: Path

    @classmethod
    def from_params(cls, params: dict[str, Any], root: Path) -> Tracker:
        """params.yaml ``mlflow:``; ``$VITFORGE_MLFLOW_TRACKING_URI`` and ``$VITFORGE_MLFLOW_EXPERIMENT`` win (a
        rebuild sends its runs to a store of its own without touching params.yaml, whose hash it proves)."""
        m = params["mlflow"]
        uri = os.environ.get(ENV_TRACKING_URI) or m["tracking_uri"]
        experiment = os.environ.get(ENV_EXPERIMENT) or m["experiment"]
        return cls(absolute_tracking_uri(uri, root), experiment, resolve(m["artifact_root"], root))

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if not is_server(self.tracking_uri):  # a server's artifacts go where the server says
            self.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self.artifact_root.resolve().as_uri()
        try:
            return mlflow.create_experiment(self.experiment, artifact_location=location)
        except MlflowException as err:  # another run created it meanwhile (runs on other machines)
            exp = mlflow.get_experiment_by_name(self.experiment)
            if err.error_code != "RESOURCE_ALREADY_EXISTS" or exp is None:
                raise
            return exp.experiment_id

    @contextmanager
    def run(self, stage: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
        """An MLflow run for ``stage``, tagged with the stage, the git SHA and ``tags``; it ends FINISHED,
        FAILED on an error, or KILLED when the user interrupts it."""
        import mlflow

        exp_id = self._experiment_id()
        from pipeline.params import overrides

        sets = overrides()  # `--set`: what this run used beside params.yaml
        all_tags = {"vitforge.stage": stage, "git_sha": git_sha(),
                    **({"vitforge.params_set": json.dumps(sets, sort_keys=True)} if sets else {}), **(tags or {})}
        run = mlflow.start_run(experiment_id=exp_id, run_name=stage, tags=all_tags)
        log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, self.tracking_uri)
        try:
            yield run
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM through the CLI): the user stopped it, it did not fail
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run("FINISHED")

    def run_url(self, run_id: str) -> str:
        """Where a person finds the run: the server page, or the store plus run id."""
        if is_server(self.tracking_uri):
            import mlflow

            exp_id = mlflow.get_run(run_id).info.experiment_id
            return f"{self.tracking_uri}/#/experiments/{exp_id}/runs/{run_id}"
        return f"{self.tracking_uri}#runs/{run_id}"


def log_history(values: list[float], key: str = "loss", max_points: int = 200) -> None:
    """A training curve as an MLflow metric, thinned to at most ``max_points`` steps."""
    import mlflow

    stride = max(1, len(values) // max_points)
    for i in range(0, len(values), stride):
        mlflow.log_metric(key, values[i], step=i)


def log_json(obj: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(json.dumps(obj, indent=1, sort_keys=True, default=str), artifact_file)


def log_figure(fig: Any, artifact_file: str) -> str:
    """Log a matplotlib figure as a PNG; return its artifact URI (for Dagster metadata)."""
    import matplotlib.pyplot as plt

    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)
    return f"{mlflow.get_artifact_uri()}/{artifact_file}"


def log_file(path: Path, artifact_path: str | None = None) -> str:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)
    return f"{mlflow.get_artifact_uri()}/{(artifact_path + '/') if artifact_path else ''}{Path(path).name}"

