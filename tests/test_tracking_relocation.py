"""A project's own MLflow store follows the project when it is copied, and only then."""

from __future__ import annotations

import shutil

from conftest import set_params

import mlflow
from pipeline.params import load_params
from pipeline.tracking import PROJECT_TAG, Tracker


def one_run(root) -> str:
    tracker = Tracker.from_params(load_params(root), root)
    with tracker.run("probe") as run:
        mlflow.log_text("x", "probe.txt")
        return run.info.run_id


def artifact_uris(root) -> dict[str, str]:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vitforge")
    return {r.info.run_id: r.info.artifact_uri for r in client.search_runs([exp.experiment_id])}


def test_a_copied_project_rewrites_its_store_to_the_copy(project, tmp_path):
    first = one_run(project)
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    before = artifact_uris(project)
    second = one_run(copy)
    uris = artifact_uris(copy)
    assert set(uris) == {first, second}
    assert all(u.startswith(copy.resolve().as_uri() + "/") for u in uris.values()), uris
    assert artifact_uris(project) == before  # the original's store is its own
    exp = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow' / 'mlflow.db'}").get_experiment_by_name("vitforge")
    assert exp.tags[PROJECT_TAG] == copy.resolve().as_uri()


def test_an_artifact_root_moved_in_params_is_not_taken_for_a_copy(project, tmp_path):
    """Artifacts first kept in a shared folder whose path ends like the project's own (…/mlflow/artifacts),
    then params.yaml points back into the project: the store was made here, so nothing is rewritten and the
    first run's artifacts stay where they are."""
    shared = tmp_path / "shared" / "mlflow" / "artifacts"
    set_params(project, mlflow__artifact_root=str(shared))
    first = one_run(project)
    assert artifact_uris(project)[first].startswith(shared.as_uri())
    set_params(project, mlflow__artifact_root="mlflow/artifacts")
    one_run(project)
    assert artifact_uris(project)[first].startswith(shared.as_uri())
