"""Dagster metadata helpers shared by the assets."""


from urllib.parse import urlparse

from dagster import MetadataValue


def artifact(uri: str) -> MetadataValue:
    """A PNG or file logged to MLflow: a local path when the store is local, else its URL."""
    parsed = urlparse(uri)
    return MetadataValue.path(parsed.path) if parsed.scheme == "file" else MetadataValue.url(uri)


def mlflow_run(tracker, run_id: str) -> dict[str, MetadataValue]:
    return {"mlflow_run_id": MetadataValue.text(run_id), "mlflow_run": MetadataValue.url(tracker.run_url(run_id))}
