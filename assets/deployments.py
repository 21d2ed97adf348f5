"""The resources of each deployment, picked whole by $VITFORGE_DEPLOYMENT (local | prod).

``local`` (the default): everything on this machine, under the project root: the SQLite MLflow store, the
DVC remote folder, Dagster's values under ``.dagster/storage``, the run folders under ``runs/``.

``prod``: a scaled-out deployment where each run may start on a machine of its own (K8sRunLauncher, one pod
per run), with nothing shared but these services:

- Dagster's runs, event log and schedules in PostgreSQL: the instance's dagster.yaml (infra/dagster.yaml;
  ``$DAGSTER_HOME/dagster.yaml`` in each pod) reads ``DAGSTER_PG_HOST``, ``DAGSTER_PG_PORT``,
  ``DAGSTER_PG_USER``, ``DAGSTER_PG_PASSWORD`` and ``DAGSTER_PG_DB``;
- MLflow: a tracking server at ``MLFLOW_TRACKING_URI`` (``http(s)://``), backed by PostgreSQL
  (``--backend-store-uri postgresql+psycopg2://...``: SQLAlchemy 2.1 takes a bare ``postgresql://`` to
  psycopg 3, which is not installed), with its artifacts in S3 (``--artifacts-destination s3://...``):
  experiments take the server's artifact location;
- the IO manager (assets/io_managers.py) in ``VITFORGE_BUCKET`` (``s3://bucket/prefix``): asset values, and
  every file they name under the project root (weights, checkpoints, result JSONs, package folders), uploaded
  by the run that made them and fetched, sha256-checked, by a later run that lacks them;
- the DVC remote: ``dataset.dvc_remote_url: s3://bucket/dvc`` in params.yaml, or ``VITFORGE_DVC_REMOTE``
  (which wins); the dataset stage pushes there and the IO manager pulls the version a later run is given.

S3 clients (boto3, DVC, the MLflow server) take ``AWS_ENDPOINT_URL`` for an S3-compatible server (MinIO;
unset for AWS), ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (or a profile or the pod's role); the
MLflow server itself also needs ``MLFLOW_S3_ENDPOINT_URL`` for such a server. ``VITFORGE_ROOT`` is the
project root (params.yaml, infra/targets) when vitforge is installed as a package rather than run from a
checkout. Install the services' clients with ``pip install .[prod]``.
"""

from dagster import EnvVar, FilesystemIOManager

from assets.io_managers import ProjectFilesIOManager
from assets.resources import MlflowTracking, ProjectResource
from pipeline.params import project_root


def deployment_resources(deployment: str) -> dict:
    """The resources of ``deployment``: ``local`` (SQLite, files under the project) or ``prod`` (above)."""
    project = ProjectResource(root=str(project_root()))  # $VITFORGE_ROOT as it is now, not at import
    if deployment == "local":
        return {
            "project": project,
            "mlflow": MlflowTracking(project=project),
            "io_manager": FilesystemIOManager(base_dir=str(project.path / ".dagster" / "storage")),
        }
    if deployment == "prod":
        return {
            "project": project,
            "mlflow": MlflowTracking(project=project, tracking_uri=EnvVar("MLFLOW_TRACKING_URI")),
            "io_manager": ProjectFilesIOManager(project=project, bucket=EnvVar("VITFORGE_BUCKET")),
        }
    raise ValueError(f"VITFORGE_DEPLOYMENT={deployment!r}: expected local or prod")
