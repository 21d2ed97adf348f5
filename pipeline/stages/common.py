"""What every training stage needs: the dataset it reads and the provenance it records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.errors import DatasetError
from pipeline.data.versioning import dvc_file, journal_path, verified_version
from pipeline.errors import ParamsError
from pipeline.params import git_sha, resolve
from pipeline.paths import paths


def dataset_ref(root: Path, params: dict[str, Any]) -> dict[str, str]:
    """The dataset as the dataset stage left it (for the CLI; Dagster passes the asset's value).

    A commit a killed dataset run left half done is rolled back or forward first, and the folder is held to
    the version its ``.dvc`` file records: a mismatch is a one-line DatasetError, a missing version a
    MissingStageError."""
    folder = paths(root, params).dataset()
    return {"tracked_dir": paths(root, params).rel(folder), "version": verified_version(folder)}


def data_dir(dataset: dict[str, Any], root: Path | None = None) -> Path:
    """The dataset's folder: ``tracked_dir`` as recorded (relative to the project root), resolved."""
    return resolve(dataset["tracked_dir"], root)


def model_name(root: Path, params: dict[str, Any], dataset_dir: Path | None = None) -> str:
    """The registered model: params.yaml ``registry.model_name``, else ``vitforge-<dataset name>``, the name the
    dataset stage recorded in the manifest of ``dataset_dir`` (default: the tracked folder)."""
    from pipeline.data.manifest import load_manifest

    name = params["registry"]["model_name"]
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ParamsError(f"params.yaml: registry.model_name: expected a name (a string) or null, got {name!r}")
    if name:
        return name
    return f"vitforge-{load_manifest(dataset_dir or paths(root, params).dataset()).name or 'dataset'}"


def check_dataset(dataset: dict[str, Any], root: Path | None = None) -> None:
    """Before a stage trusts ``dataset`` (``dataset_ref``'s or the Dagster asset's value): the folder must hold
    the version its ``.dvc`` file records (after recovering an interrupted commit), and that must be the
    version the stage was given. A folder that no ``.dvc`` file versions (tests, benchmarks on a bare folder
    with a manifest) has nothing recorded to check against and passes."""
    folder = data_dir(dataset, root)
    journal = journal_path(folder)
    if not dvc_file(folder).is_file() and (journal is None or not journal.is_file()):
        return
    recorded = verified_version(folder)
    if recorded != dataset["version"]:
        raise DatasetError(dvc_file(folder), f"records version {recorded}, but this run was given "
                           f"{dataset['version']}: the dataset changed since; run the chain again from the "
                           "dataset stage")


def provenance(dataset: dict[str, Any], tags: dict[str, str] | None) -> dict[str, str]:
    """Carried by every checkpoint and weights file: dataset version, git SHA, Dagster run id."""
    return {"dataset_version": dataset["version"], "git_sha": git_sha(),
            "dagster_run_id": (tags or {}).get("dagster_run_id", "")}


def mark_failed(run_id: str, failed: list[str]) -> None:
    """A stage whose gate failed: its MLflow run ends FAILED (not FINISHED), tagged with the gates that failed,
    so the run list shows it as the UI's checks do."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "vitforge.failed_gates", ", ".join(failed))
    client.set_terminated(run_id, "FAILED")
